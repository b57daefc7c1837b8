"""The chip's neuron populations as functions: cuba_lif (CUBA-LIF) and li (the LI readout).

Forward integrates the chip's model (bss2_backend.parameters) with per-neuron parameter vectors,
refractory counter, hard reset, membrane noise and the CADC readout, and returns what the host
records: spikes z and the read membrane u (sampled before the reset of the same step).

Backward is the in-the-loop rule of Cramer et al. (2022): the gradient of the NOMINAL model's
linear dynamics, with the surrogate evaluated at the OBSERVED membrane u against the nominal
threshold, no gradient through the reset (nor through a refractory clamp), straight-through the
readout quantisation. The derivation is in bss2_backend/DYNAMICS.md.

This module is the validating front of the op kernels.chip_lif (which holds the math three ways:
naive, the plain-PyTorch twin, the fused Triton kernels): it checks the arguments once, resolves
the backend once, packs the parameters and calls the op. Layers placed on a Chip call `run` with
parameters the Chip packed once.
"""
from typing import NamedTuple

import torch

from .kernels import backend as kernel_backend
from .kernels.scoped import ScopedChoice
from .kernels.chip_lif import NOMINAL_ROWS, PARAM_ROWS, ChipLIFConfig, chip_lif
from .noise import MAX_NOISE_LSB
from .parameters import LIFParams
from .readout import ReadoutParams
from .surrogates import Surrogate, as_surrogate
from .validation import check_allocation, check_choice, check_finite, check_number, check_tensor, \
    checks_values

BACKENDS = ("auto", "torch", "triton")
MAX_SEED = 2**63 - 1
# How a recurrent layer runs on the fused kernels: "fused" (one launch: a program owns a batch
# tile and all N neurons, the recurrent product inside the kernel), "per_step" (per step a
# recurrent GEMM of the last spikes, then the fused neuron update of that step: what scales to
# wide layers, and cheap to launch under a CUDA graph), "auto" (fused up to RECURRENT_FUSED_MAX
# neurons: beyond, one program's N-wide tile spills registers). The torch twin runs every
# width in one call.
RECURRENT_STRATEGIES = ("auto", "fused", "per_step")
RECURRENT_FUSED_MAX = 512
_recurrent_strategy = ["auto"]


class Recurrence(NamedTuple):
    """Recurrent synapses: z[t-1] -> input of step t. weight: float [N, N] the gradient sees
    (row = postsynaptic); exc, inh: the non-negative effective weights the chip realises."""
    weight: torch.Tensor
    exc: torch.Tensor
    inh: torch.Tensor


class Packed(NamedTuple):
    """Parameters as the op takes them (kernels.chip_lif): one row per field, compute dtype."""
    par: torch.Tensor           # [6, N] kernels.chip_lif.PARAM_ROWS of the chip's parameters
    ref: torch.Tensor           # [N] int32 refractory steps
    offset: torch.Tensor        # [N] CADC channel offsets (LSB)
    nom: torch.Tensor           # [4, N] kernels.chip_lif.NOMINAL_ROWS of the nominal model


def pack(params, nominal, readout, dtype, device=None):
    """Packed parameters in compute dtype `dtype` on `device`."""
    row = lambda p, f: getattr(p, f).to(device=device, dtype=dtype)
    return Packed(torch.stack([row(params, f) for f in PARAM_ROWS]).contiguous(),
                  params.ref_steps.to(device=device, dtype=torch.int32).contiguous(),
                  readout.offset_lsb.to(device=device, dtype=dtype).contiguous(),
                  torch.stack([row(nominal, f) for f in NOMINAL_ROWS]).contiguous())


def compute_dtype(dtype):
    """State runs in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_backend(backend, device):
    """'auto' -> 'triton' for CUDA tensors, 'torch' otherwise; never a silent switch."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton":
        kernel_backend.check_triton_device(device)
    return backend


def config(readout, membrane_noise_lsb, surrogate, spiking, mirrored):
    """The op's ChipLIFConfig for a readout, noise level and surrogate."""
    return ChipLIFConfig(spiking=spiking, quantise=readout.quantise,
                         membrane_noise_lsb=float(membrane_noise_lsb),
                         readout_noise_lsb=float(readout.noise_lsb), unit_lsb=readout.unit_lsb,
                         zero_lsb=readout.zero_lsb, surrogate=surrogate.id,
                         alpha=float(surrogate.alpha), mirrored=mirrored)


def _check_inputs(x_exc, x_inh, n, recurrence):
    """Static checks, then the size, then the input values (an expanded view of a huge shape
    would otherwise be read in full by the NaN check)."""
    check_tensor("x_exc", x_exc, ndim=3, finite=False)
    T, B, N = x_exc.shape
    if T == 0 or B == 0 or N == 0:
        raise ValueError(f"x_exc must have T, B, N >= 1, got shape {tuple(x_exc.shape)}")
    if n is not None and N != n:
        raise ValueError(f"x_exc has {N} neurons (last dim) but the parameters {n}")
    device = x_exc.device
    if x_inh is not None:
        check_tensor("x_inh", x_inh, shape=x_exc.shape, finite=False)
        if x_inh.device != device:
            raise ValueError(f"x_inh is on {x_inh.device} but x_exc on {device}")
    if recurrence is not None:
        if not isinstance(recurrence, Recurrence):
            raise TypeError(f"recurrence must be a bss2_backend.Recurrence, got "
                            f"{type(recurrence).__name__}")
        for name in ("weight", "exc", "inh"):
            t = check_tensor(f"recurrence.{name}", getattr(recurrence, name), shape=(N, N),
                             finite=False)
            if t.device != device:
                raise ValueError(f"recurrence.{name} is on {t.device} but x_exc on {device}")
    item = 8 if x_exc.dtype == torch.float64 else 4
    check_allocation(f"the spikes and membranes of [T={T}, B={B}, N={N}]",
                     T * B * N * (2 * item + 1), device)
    check_finite("x_exc", x_exc)
    if x_inh is not None:
        check_finite("x_inh", x_inh)
    if recurrence is not None:
        for name in ("weight", "exc", "inh"):
            check_finite(f"recurrence.{name}", getattr(recurrence, name))


def check_output(op, u, x_dtype):
    """Refuse a membrane that overflowed (finite inputs so large that the state reached inf, or a
    value beyond the range of a half-precision output dtype): never hand back NaN or inf as a
    result. A value check: it runs where checks_values(u)."""
    if checks_values(u) and not bool(torch.isfinite(u.sum())) and not bool(torch.isfinite(u).all()):
        if x_dtype in (torch.float16, torch.bfloat16):
            raise FloatingPointError(
                f"{op}: the membrane exceeds the range of {x_dtype} (max "
                f"{torch.finfo(x_dtype).max:.4g}); pass float32 inputs")
        raise FloatingPointError(
            f"{op}: the membrane overflowed to inf/NaN: the input currents are too large for "
            f"float32 state; scale the inputs (weights) down")
    return u


def run(x_exc, x_inh, packed, config, seed, recurrence=None, backend="auto"):
    """The op on packed parameters (valid by construction, e.g. a Chip's): checks the inputs,
    resolves the backend, runs, checks the membrane. Returns (z, u) [T, B, N]."""
    _check_inputs(x_exc, x_inh, packed.par.shape[1], recurrence)
    if packed.par.device != x_exc.device:
        raise ValueError(f"the parameters are on {packed.par.device} but x_exc on {x_exc.device}")
    return execute(x_exc, x_inh, packed, config, seed, recurrence, backend)[:2]


class recurrent_strategy(ScopedChoice):
    """Context manager (and setter) of how recurrent layers run: `with recurrent_strategy(
    "per_step"): ...` (RECURRENT_STRATEGIES; see the comment there)."""
    choices, current = RECURRENT_STRATEGIES, _recurrent_strategy

    @classmethod
    def check(cls, mode):
        check_choice("strategy", mode, cls.choices)


def _by_steps(impl, n):
    strategy = _recurrent_strategy[0]
    if impl != "triton" or strategy == "fused":
        return False
    return strategy == "per_step" or n > RECURRENT_FUSED_MAX


def execute(x_exc, x_inh, packed, config, seed, recurrence=None, backend="auto", state=None,
            step=0):
    """run() for callers that validated the inputs themselves (the chip layers: their spikes and
    weights); the membrane is still checked. Returns (z, u, state after the last step): a run
    continues from `state` at step `step` of the run (kernels.chip_lif.chip_lif)."""
    impl = resolve_backend(backend, x_exc.device)
    if recurrence is not None and _by_steps(impl, x_exc.shape[-1]):
        z, u, state = _recurrent_by_steps(x_exc, x_inh, packed, config, seed, recurrence, impl,
                                          state, step)
    else:
        z, u, state = chip_lif(x_exc, x_inh, *packed, config, seed, recurrence=recurrence,
                               impl=impl, state=state, step=step)
    return z, check_output("cuba_lif" if config.spiking else "li", u, x_exc.dtype), state


def _recurrent_by_steps(x_exc, x_inh, packed, config, seed, recurrence, impl, state, step):
    """A recurrent run as T steps: the recurrent input of step t is z[t-1] through the synapse
    array (the in-the-loop rule: effective weights forward, the float weight's gradient), then
    the neuron op runs that one step from the state the last one left. Same dynamics and noise
    (keyed by step) as the one-launch kernel; the recurrent weight's gradient accumulates over
    the steps' GEMMs."""
    from .weights import synapses
    w, w_exc, w_inh = recurrence
    T = x_exc.shape[0]
    z_prev = state.z if state is not None else None
    zs, us = [], []
    for t in range(T):
        x_e = x_exc[t:t + 1]
        x_i = x_inh[t:t + 1] if x_inh is not None else torch.zeros_like(x_e)
        if z_prev is not None:
            r_e, r_i = synapses(z_prev.unsqueeze(0), w, w_exc, w_inh, None, config.mirrored)
            x_e, x_i = x_e + r_e, x_i + r_i
        z, u, state = chip_lif(x_e, x_i, *packed, config, seed, impl=impl, state=state,
                               step=step + t)
        zs.append(z)
        us.append(u)
        z_prev = z[0]
    return torch.cat(zs), torch.cat(us), state


def cuba_lif(x_exc, x_inh=None, *, params, nominal=None, readout=None, recurrence=None,
             membrane_noise_lsb=0.0, seed=0, surrogate=Surrogate(), backend="auto"):
    """Run a population of current-based LIF neurons over all time steps.

    Args:
        x_exc, x_inh: excitatory / inhibitory input currents [T, B, N] (model units per step);
            x_inh may be None (no inhibitory input).
        params: LIFParams the chip integrates (per-neuron vectors, mismatch included).
        nominal: LIFParams of the nominal model the backward uses (default: params).
        readout: ReadoutParams of the CADC (default: ideal, the exact membrane).
        recurrence: optional Recurrence, applied to the previous step's spikes.
        membrane_noise_lsb: std of the per-step membrane noise (CADC LSB).
        seed: seed of this run's temporal noise (an int in [0, 2^63-1]).
        surrogate: surrogate of the spike's derivative, evaluated at the read membrane.
        backend: "auto" | "torch" | "triton".

    Returns:
        (spikes, membrane), both [T, B, N] in the input dtype (state is kept in float32, or float64
        for float64 inputs); membrane is the read membrane, sampled before the step's reset.
    """
    return _public(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed,
                   as_surrogate(surrogate), backend, spiking=True)


def li(x_exc, x_inh=None, *, params, nominal=None, readout=None, membrane_noise_lsb=0.0, seed=0,
       backend="auto"):
    """Leaky-integrator readout (no threshold, no reset): same arguments as cuba_lif; returns the
    read membrane [T, B, N]."""
    return _public(x_exc, x_inh, params, nominal, readout, None, membrane_noise_lsb, seed,
                   Surrogate(), backend, spiking=False)[1]


def _public(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed, surrogate,
            backend, spiking):
    """Validate every argument (the parameters too: they come from the caller), pack, run."""
    nominal = params if nominal is None else nominal
    _check_inputs(x_exc, x_inh, None, recurrence)
    N = x_exc.shape[-1]
    if readout is None:
        readout = ReadoutParams.ideal(N, device=x_exc.device)
    for name, p in (("params", params), ("nominal", nominal)):
        if not isinstance(p, LIFParams):
            raise TypeError(f"{name} must be a bss2_backend.LIFParams, got {type(p).__name__}")
    if not isinstance(readout, ReadoutParams):
        raise TypeError(f"readout must be a bss2_backend.ReadoutParams, got {type(readout).__name__}")
    check_number("membrane_noise_lsb", membrane_noise_lsb, low=0.0, high=MAX_NOISE_LSB)
    check_number("seed", seed, low=0, high=MAX_SEED, integer=True)
    params = params.validate(N, "params")
    nominal = nominal.validate(N, "nominal")
    readout.validate(N)
    # equal nominal decays let the twin mirror the inhibitory adjoint; deciding it reads the
    # values, so where value reads are off (a GPU) it is not assumed
    mirrored = checks_values(nominal.a_syn_exc) and \
        bool(torch.equal(nominal.a_syn_exc, nominal.a_syn_inh))
    packed = pack(params, nominal, readout, compute_dtype(x_exc.dtype), x_exc.device)
    cfg = config(readout, membrane_noise_lsb, surrogate, spiking, mirrored)
    return execute(x_exc, x_inh, packed, cfg, seed, recurrence, backend)[:2]
