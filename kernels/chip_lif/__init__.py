"""The chip's current-based LIF population (or its LI readout) over all time steps, as one op.

Three forms, one math (kernels/README.md):
    naive.py      a step-by-step autograd model, as plainly as possible (the checks' reference)
    reference.py  the hand-written plain-PyTorch twin: forward loop and reverse sweep (CPU path)
    triton.py     the fused Triton kernels: one forward and one backward launch
This module registers the op (bss2::chip_lif_fwd / _bwd) and is its entry point, `chip_lif`.

Parameters come packed, one row per field, in the compute dtype (float32, or float64 for float64
inputs): `par` [6, N] = PARAM_ROWS of the parameters the chip integrates (mismatch included),
`nom` [4, N] = NOMINAL_ROWS of the nominal model the backward differentiates, `ref` [N] int32
refractory steps, `offset` [N] the CADC channel offsets (LSB). Model units: leak 0, threshold 1.
"""
from typing import NamedTuple

import torch

from .. import backend as _backend
from ..op import FusedOp

PARAM_ROWS = ("v_leak", "v_reset", "v_th", "a_mem", "a_syn_exc", "a_syn_inh")
NOMINAL_ROWS = ("v_th", "a_mem", "a_syn_exc", "a_syn_inh")
# the 8-bit CADC's code range (bss2_backend.constants.CADC_MIN/MAX; a test checks they agree)
CADC_MIN, CADC_MAX = 0.0, 255.0


class ChipLIFConfig(NamedTuple):
    """What stays fixed for a layer: the kernels take these as compile-time flags and scalars."""
    spiking: bool               # False: the LI readout (no threshold, reset or spikes)
    quantise: bool              # the 8-bit CADC readout (False: the exact membrane)
    membrane_noise_lsb: float   # std of the per-step membrane noise (CADC LSB)
    readout_noise_lsb: float    # std of the readout noise (CADC LSB)
    unit_lsb: float             # CADC LSB per model unit
    zero_lsb: float             # CADC code of model potential 0
    surrogate: int              # a kernels.surrogate id
    alpha: float                # its steepness
    mirrored: bool              # equal nominal exc/inh decays: dL/dx_inh = -dL/dx_exc
    has_inh: bool = False       # an inhibitory current exists (x_inh or recurrence): set by chip_lif


def _impl(impl):
    if impl == "triton":
        from . import triton            # imported on first use: the torch path never loads Triton
        return triton
    from . import reference
    return reference


def _forward(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec, w_exc, w_inh, seed):
    return _impl(impl).forward(config, x_exc, x_inh, par, ref, offset, w_exc, w_inh,
                               int(seed.item()) if isinstance(seed, torch.Tensor) else seed)


def _fake_forward(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec, w_exc, w_inh, seed):
    shape = x_exc.shape
    # the twin keeps its mask as bool, the kernels store one byte per element
    free = x_exc.new_empty(shape if config.spiking else (0,),
                           dtype=torch.bool if impl == "torch" else torch.uint8)
    return x_exc.new_empty(shape, dtype=par.dtype), x_exc.new_empty(shape, dtype=par.dtype), free


def _own_inh(config, impl):
    """Whether the backward returns its own inhibitory gradient (the twin skips it when mirrored;
    the kernels always compute it)."""
    return config.has_inh and not (config.mirrored and impl == "torch")


def _backward(config, impl, z, u, free, nom, w_rec, g_z, g_u):
    g_exc, g_inh = _impl(impl).backward(config, g_z, g_u, z, u, free, nom, w_rec)
    g_w = recurrent_weight_grad(g_exc, g_inh, z, w_rec) if w_rec is not None else None
    return [g_exc, g_inh, g_w]


def _fake_backward(config, impl, z, u, free, nom, w_rec, g_z, g_u):
    return [u.new_empty(u.shape), u.new_empty(u.shape if _own_inh(config, impl) else (0,)),
            u.new_empty(w_rec.shape if w_rec is not None else (0,))]


def _save(ctx, config, inputs, output):
    x_exc, x_inh, par, ref, offset, nom, w_rec = inputs[:7]
    z, u, free = output
    ctx.dtypes = (x_exc.dtype, None if x_inh is None else x_inh.dtype)
    return z, u, free, nom, w_rec


def _gradients(ctx, config, results):
    g_exc, g_inh, g_w = (None if t is None or t.numel() == 0 else t for t in results)
    g_x_inh = None
    if ctx.dtypes[1] is not None:
        g_x_inh = (-g_exc if g_inh is None else g_inh).to(ctx.dtypes[1])
    return g_exc.to(ctx.dtypes[0]), g_x_inh, None, None, None, None, g_w, None, None, None


def recurrent_weight_grad(g_exc, g_inh, z, w_rec):
    """dL/dW[post, pre] = sum_{t>=1, b} g[t, b, post] z[t-1, b, pre]: the excitatory adjoint where
    W >= 0, minus the inhibitory one where W < 0 (one GEMM when they mirror each other). One GEMM
    per sign over all T*B rows after the reverse sweep."""
    T, B, N = z.shape
    if T == 1:
        return torch.zeros_like(w_rec)
    z_prev = z[:-1].reshape(-1, N)
    ge = g_exc[1:].reshape(-1, N).t() @ z_prev
    if g_inh is None:
        return ge.to(w_rec.dtype)
    gi = g_inh[1:].reshape(-1, N).t() @ z_prev
    return torch.where(w_rec >= 0, ge, -gi).to(w_rec.dtype)


OP = FusedOp(
    "chip_lif", ChipLIFConfig,
    inputs=("x_exc", "x_inh?", "par", "ref", "offset", "nom", "w_rec?", "w_exc?", "w_inh?", "seed"),
    outputs=3, saved=("z", "u", "free", "nom", "w_rec?"), grad_outputs=2,
    forward=_forward, fake_forward=_fake_forward, backward=_backward, fake_backward=_fake_backward,
    save=_save, gradients=_gradients)


def chip_lif(x_exc, x_inh, par, ref, offset, nom, config, seed, *, recurrence=None,
             impl="torch"):
    """Run the chip's LIF population (config.spiking) or LI readout over all steps.

    Args:
        x_exc, x_inh: input currents [T, B, N], model units per step; x_inh may be None.
        par, ref, offset, nom: packed parameters (module docstring), on the inputs' device.
        config: ChipLIFConfig. seed: int seed of this run's temporal noise.
        recurrence: None or (w, w_exc, w_inh) [N, N]: w the float weight the gradient sees (row =
            postsynaptic), w_exc / w_inh the non-negative effective weights the chip realises,
            applied to the previous step's spikes.
        impl: "torch" (the twin) or "triton" (the fused kernels).

    Returns:
        (spikes, membrane) [T, B, N] in x_exc's dtype: spikes 0/1, and the read membrane sampled
        before the step's reset. Differentiable w.r.t. x_exc, x_inh and w (the in-the-loop rule).
    """
    if impl not in _backend.IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}; choose one of {_backend.IMPLEMENTATIONS}")
    w_rec = w_exc = w_inh = None
    if recurrence is not None:
        w_rec, w_exc, w_inh = recurrence
        if not config.spiking:
            raise ValueError("recurrence needs spiking=True: a leaky integrator emits no spikes")
    config = config._replace(has_inh=x_inh is not None or w_rec is not None)
    if impl == "triton":
        _backend.check_triton_device(x_exc.device)
        x_exc = x_exc.contiguous()
        x_inh = None if x_inh is None else x_inh.contiguous()
    seed = torch.tensor(int(seed), dtype=torch.int64) if torch.compiler.is_compiling() else int(seed)
    z, u, _ = OP(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec, w_exc, w_inh, seed)
    return z.to(x_exc.dtype), u.to(x_exc.dtype)
