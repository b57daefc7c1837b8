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
from .. import paths
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
    has_state: bool = False     # the run continues from a given state: set by chip_lif


class ChipState(NamedTuple):
    """The chip's true state between two steps of a run, [B, N] each: the membrane after the
    step's reset and the synaptic currents (model units), the refractory counter (int32), and the
    step's spikes (the recurrent input of the next step)."""
    v: torch.Tensor
    i_exc: torch.Tensor
    i_inh: torch.Tensor
    ref: torch.Tensor
    z: torch.Tensor


def _impl(impl):
    if impl == "triton":
        from . import triton            # imported on first use: the torch path never loads Triton
        return triton
    from . import reference
    return reference


def _int(t):
    """An int argument that is a 0-d CPU tensor while torch.compile traces (no recompilation per
    value), a plain int otherwise."""
    return int(t.item()) if isinstance(t, torch.Tensor) else t


def _seed(t, impl, device):
    """The seed as the implementations take it: an int, or for the kernels an int64 tensor on the
    inputs' device (read there: a captured CUDA graph advances it on every replay). The twin reads
    a tensor itself (reference.host_seed)."""
    if isinstance(t, torch.Tensor) and impl == "triton" and t.device != device:
        return int(t.reshape(-1)[0])
    return t


def _compiled_loop(impl, device, dtype, recurrent_backward=False):
    """The C loop's library when the torch implementation runs on the CPU through it (native.py
    decides: cpu_loop mode, a working compiler), else None: the twin's eager loop."""
    if impl != "torch":
        return None
    from . import compiled
    return compiled.loop_for(device, dtype, recurrent_backward)


def _forward(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec, w_exc, w_inh, seed, step,
             v0, ie0, ii0, ref0, z0):
    lib = _compiled_loop(impl, x_exc.device, par.dtype)
    if lib is not None:
        from . import compiled
        return compiled.forward(lib, config, x_exc, x_inh, par, ref, offset, w_exc, w_inh, seed,
                                _int(step), v0, ie0, ii0, ref0, z0)
    if impl == "torch" and x_exc.device.type == "cpu":
        paths.note("loop", "eager")
    return _impl(impl).forward(config, x_exc, x_inh, par, ref, offset, w_exc, w_inh,
                               _seed(seed, impl, x_exc.device),
                               _int(step), v0, ie0, ii0, ref0, z0)


def _fake_forward(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec, w_exc, w_inh, seed,
                  step, v0, ie0, ii0, ref0, z0):
    T, B, N = x_exc.shape
    # the twin keeps its mask as bool, the kernels store one byte per element
    free = x_exc.new_empty((T, B, N) if config.spiking else (0,),
                           dtype=torch.bool if impl == "torch" else torch.uint8)
    full = lambda *shape: x_exc.new_empty(shape, dtype=par.dtype)
    return (full(T, B, N), full(T, B, N), full(B, N), full(B, N), full(B, N), free,
            x_exc.new_empty((B, N), dtype=torch.int32))


def _own_inh(config, impl):
    """Whether the backward returns its own inhibitory gradient (the twin skips it when mirrored;
    the kernels always compute it)."""
    return config.has_inh and not (config.mirrored and impl == "torch")


def _backward(config, impl, z, u, free, nom, w_rec, z0, g_z, g_u, g_v, g_ie, g_ii):
    lib = _compiled_loop(impl, u.device, u.dtype, w_rec is not None)
    if lib is not None:
        from . import compiled
        g_exc, g_inh, g_v0, g_ie0, g_ii0, g_z0 = compiled.backward(
            lib, config, g_z, g_u, z, u, free, nom, g_v, g_ie, g_ii)
    else:
        if impl == "torch" and u.device.type == "cpu":
            paths.note("loop", "eager")
        g_exc, g_inh, g_v0, g_ie0, g_ii0, g_z0 = _impl(impl).backward(
            config, g_z, g_u, z, u, free, nom, w_rec, g_v, g_ie, g_ii)
    g_w = recurrent_weight_grad(g_exc, g_inh, z, w_rec, z0) if w_rec is not None else None
    return [g_exc, g_inh, g_w, g_v0, g_ie0, g_ii0, g_z0]


def _fake_backward(config, impl, z, u, free, nom, w_rec, z0, g_z, g_u, g_v, g_ie, g_ii):
    T, B, N = u.shape
    shape = lambda cond, *s: u.new_empty(s if cond else (0,))
    state = config.has_state
    return [u.new_empty(u.shape), shape(_own_inh(config, impl), T, B, N),
            shape(w_rec is not None, *(w_rec.shape if w_rec is not None else ())),
            shape(state, B, N), shape(state, B, N), shape(state, B, N),
            shape(state and w_rec is not None, B, N)]


def _save(ctx, config, inputs, output):
    x_exc, x_inh, par, ref, offset, nom, w_rec = inputs[:7]
    z0 = inputs[15]
    z, u, v, ie, ii, free, ref_out = output
    ctx.dtypes = (x_exc.dtype, None if x_inh is None else x_inh.dtype)
    return z, u, free, nom, w_rec, z0


def _gradients(ctx, config, results):
    g_exc, g_inh, g_w, g_v0, g_ie0, g_ii0, g_z0 = (
        None if t is None or t.numel() == 0 else t for t in results)
    g_x_inh = None
    if ctx.dtypes[1] is not None:
        g_x_inh = (_negated(g_exc) if g_inh is None else g_inh).to(ctx.dtypes[1])
    return (g_exc.to(ctx.dtypes[0]), g_x_inh, None, None, None, None, g_w, None, None, None, None,
            g_v0, g_ie0, g_ii0, None, g_z0)


def _negated(g):
    """-g: on the CPU in eager mode a lazy negated view (its consumer, the synapses' mirrored
    backward, never reads it: a [T, B, N] negation saved), else computed."""
    if g.device.type == "cpu" and not torch.compiler.is_compiling():
        return torch._neg_view(g)
    return -g


def recurrent_weight_grad(g_exc, g_inh, z, w_rec, z0=None):
    """dL/dW[post, pre] = sum_{t, b} g[t, b, post] z[t-1, b, pre] (z[-1] = z0, the spikes before
    the run, or none): the excitatory adjoint where W >= 0, minus the inhibitory one where W < 0
    (one GEMM when they mirror each other). One GEMM per sign over all rows after the sweep."""
    T, B, N = z.shape
    if z0 is None:
        if T == 1:
            return torch.zeros_like(w_rec)
        z_prev, g_e, g_i = z[:-1], g_exc[1:], None if g_inh is None else g_inh[1:]
    else:
        z_prev = torch.cat([z0.to(z.dtype).unsqueeze(0), z[:-1]])
        g_e, g_i = g_exc, g_inh
    z_prev = z_prev.reshape(-1, N)
    ge = g_e.reshape(-1, N).t() @ z_prev
    if g_i is None:
        return ge.to(w_rec.dtype)
    gi = g_i.reshape(-1, N).t() @ z_prev
    return torch.where(w_rec >= 0, ge, -gi).to(w_rec.dtype)


OP = FusedOp(
    "chip_lif", ChipLIFConfig,
    inputs=("x_exc", "x_inh?", "par", "ref", "offset", "nom", "w_rec?", "w_exc?", "w_inh?", "seed",
            "step", "v0?", "ie0?", "ii0?", "ref0?", "z0?"),
    outputs=7, saved=("z", "u", "free", "nom", "w_rec?", "z0?"), grad_outputs=5,
    forward=_forward, fake_forward=_fake_forward, backward=_backward, fake_backward=_fake_backward,
    save=_save, gradients=_gradients)


def chip_lif(x_exc, x_inh, par, ref, offset, nom, config, seed, *, recurrence=None,
             impl="torch", state=None, step=0):
    """Run the chip's LIF population (config.spiking) or LI readout over all steps.

    Args:
        x_exc, x_inh: input currents [T, B, N], model units per step; x_inh may be None.
        par, ref, offset, nom: packed parameters (module docstring), on the inputs' device.
        config: ChipLIFConfig. seed: the seed of this run's temporal noise: an int, or an int64
            tensor of one element on the inputs' device (the kernels read it there, so a captured
            CUDA graph that advances it draws new noise on every replay).
        recurrence: None or (w, w_exc, w_inh) [N, N]: w the float weight the gradient sees (row =
            postsynaptic), w_exc / w_inh the non-negative effective weights the chip realises,
            applied to the previous step's spikes.
        impl: "torch" (the twin) or "triton" (the fused kernels).
        state: None (the run starts at rest) or the ChipState a previous call of the same run
            returned; step: the index of x's first step in its run. The noise of a step depends on
            (seed, step, neuron) only, so a run computed in pieces equals the run computed whole.

    Returns:
        (spikes, membrane, state): spikes 0/1 and the read membrane (sampled before the step's
        reset) [T, B, N] in x_exc's dtype, and the ChipState after the last step.
        Differentiable w.r.t. x_exc, x_inh, w and the state (the in-the-loop rule).
    """
    if impl not in _backend.IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}; choose one of {_backend.IMPLEMENTATIONS}")
    w_rec = w_exc = w_inh = None
    if recurrence is not None:
        w_rec, w_exc, w_inh = recurrence
        if not config.spiking:
            raise ValueError("recurrence needs spiking=True: a leaky integrator emits no spikes")
    config = config._replace(has_inh=x_inh is not None or w_rec is not None,
                             has_state=state is not None)
    if impl == "triton":
        _backend.check_triton_device(x_exc.device)
        x_exc = x_exc.contiguous()
        x_inh = None if x_inh is None else x_inh.contiguous()
    v0 = ie0 = ii0 = ref0 = z0 = None
    if state is not None:
        v0, ie0, ii0, ref0, z0 = state
        z0 = z0 if w_rec is not None else None
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"seed: a seed tensor must hold one int64, got {seed.dtype} of shape "
                             f"{tuple(seed.shape)}")
        seed = seed.reshape(1)
    elif torch.compiler.is_compiling():
        seed = torch.tensor(int(seed))
    if torch.compiler.is_compiling():
        step = torch.tensor(int(step))
    z, u, v, ie, ii, _, ref_out = OP(config, impl, x_exc, x_inh, par, ref, offset, nom, w_rec,
                                     w_exc, w_inh, seed, step, v0, ie0, ii0, ref0, z0)
    return z.to(x_exc.dtype), u.to(x_exc.dtype), ChipState(v, ie, ii, ref_out, z[-1])
