"""Reference dynamics in plain PyTorch, time-major [T, B, N]: the twin every fused kernel must match.

Forward integrates the chip's model (bss2_backend.parameters) with per-neuron parameter vectors,
refractory counter, hard reset, membrane noise and the CADC readout, and returns what the host
records: spikes z and the read membrane u (sampled before the reset of the same step).

Backward is the in-the-loop rule of Cramer et al. (2022): the gradient of the NOMINAL model's
linear dynamics, with the surrogate evaluated at the OBSERVED membrane u against the nominal
threshold, no gradient through the reset (nor through a refractory clamp), straight-through the
readout quantisation. It is one hand-written reverse sweep over time, so the CPU path builds no
per-step autograd graph. The derivation is in bss2_backend/DYNAMICS.md.
"""
import os
from typing import NamedTuple

import torch

from .parameters import LIFParams
from .noise import MAX_NOISE_LSB
from .readout import ReadoutParams, read_membrane_
from .surrogates import Surrogate, as_surrogate
from .validation import check_allocation, check_choice, check_finite, check_number, check_tensor, \
    checks_values, refuse_double_backward

BACKENDS = ("auto", "torch", "triton")
MAX_SEED = 2**63 - 1


class Recurrence(NamedTuple):
    """Recurrent synapses: z[t-1] -> input of step t. weight: float [N, N] the gradient sees
    (row = postsynaptic); exc, inh: the non-negative effective weights the chip realises."""
    weight: torch.Tensor
    exc: torch.Tensor
    inh: torch.Tensor


def resolve_backend(backend, device):
    """'auto' -> 'triton' for CUDA tensors, 'torch' otherwise; never a silent switch."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' needs CUDA tensors (got device {device}), or "
                         f"TRITON_INTERPRET=1 set before bss2_backend is imported to run the Triton "
                         f"interpreter on the CPU; use backend='torch' or 'auto' for the CPU path")
    return backend


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def lif_forward(x_exc, x_inh, params, readout, *, recurrence=None, membrane_noise_lsb=0.0, seed=0,
                spiking=True):
    """Chip forward without autograd. Returns (z, u, free) in the compute dtype; free is the bool
    mask of steps whose membrane was not held by the refractory clamp (None when nothing can be
    held: no refractory period, or no spikes at all)."""
    T, B, N = x_exc.shape
    dt = _compute_dtype(x_exc.dtype)
    dev = x_exc.device
    p = params.to(dev, dt)
    ro = readout.to(dev, dt)
    rec_e = rec_i = None
    if recurrence is not None:
        rec_e, rec_i = recurrence.exc.to(dev, dt).t(), recurrence.inh.to(dev, dt).t()
    # membrane and readout noise come from two streams of the run's seed
    gen_m = torch.Generator(device=dev).manual_seed(int(seed)) if membrane_noise_lsb > 0 else None
    sigma_m = membrane_noise_lsb / ro.unit_lsb
    has_inh = x_inh is not None or rec_i is not None
    refractory = spiking and bool(p.ref_steps.any())

    v = p.v_leak.expand(B, N).clone()          # membrane after the previous step's reset
    vt = torch.empty(B, N, dtype=dt, device=dev)  # membrane of this step before the reset
    i_e = torch.zeros(B, N, dtype=dt, device=dev)
    i_i = torch.zeros(B, N, dtype=dt, device=dev)
    ref = torch.zeros(B, N, dtype=torch.int32, device=dev)
    held = torch.zeros(B, N, dtype=torch.bool, device=dev)
    z = torch.zeros(B, N, dtype=torch.bool, device=dev)
    drive = torch.empty(B, N, dtype=dt, device=dev)
    syn = torch.empty(B, N, dtype=dt, device=dev)
    z_prev = torch.empty(B, N, dtype=dt, device=dev) if rec_e is not None else None
    noise_m = torch.empty(B, N, dtype=dt, device=dev) if gen_m is not None else None
    gen_r = torch.Generator(device=dev).manual_seed(int(seed) ^ 0x5DEECE66D) \
        if ro.noise_lsb > 0 else None
    noise_r = torch.empty(B, N, dtype=dt, device=dev) if gen_r is not None else None
    keep_e, keep_i = 1.0 - p.a_syn_exc, 1.0 - p.a_syn_inh
    u_out = torch.empty(T, B, N, dtype=dt, device=dev)
    z_out = (torch.empty if spiking else torch.zeros)(T, B, N, dtype=dt, device=dev)
    free_out = torch.empty(T, B, N, dtype=torch.bool, device=dev) if refractory else None
    # Everything works on [B, N] buffers reused every step (fresh [T, B, N] temporaries cost more
    # in page faults than in arithmetic on a CPU); the in-place ops compute exactly
    # v + a_mem * ((v_leak - v) + (i_e - i_i)) etc., op by op, as the kernels do.
    for t in range(T):
        x_e = x_exc[t].to(dt)
        x_i = x_inh[t].to(dt) if x_inh is not None else None
        if rec_e is not None:
            z_prev.copy_(z)
            x_e = x_e + z_prev @ rec_e
            x_i = z_prev @ rec_i if x_i is None else x_i + z_prev @ rec_i
        torch.sub(p.v_leak, v, out=drive)
        drive.add_(torch.sub(i_e, i_i, out=syn) if has_inh else i_e).mul_(p.a_mem)
        torch.add(v, drive, out=vt)
        if noise_m is not None:
            vt.add_(torch.randn(B, N, generator=gen_m, out=noise_m).mul_(sigma_m))
        i_e.mul_(keep_e).add_(x_e)
        if has_inh:
            i_i.mul_(keep_i).add_(x_i)
        if spiking and refractory:
            torch.gt(ref, 0, out=held)
            torch.where(held, p.v_reset, vt, out=vt)
            torch.logical_not(held, out=free_out[t])
            torch.gt(vt, p.v_th, out=z).logical_and_(free_out[t])
        elif spiking:
            torch.gt(vt, p.v_th, out=z)
        if noise_r is not None:
            torch.randn(B, N, generator=gen_r, out=noise_r).mul_(ro.noise_lsb)
        read_membrane_(vt, ro, noise_r, out=u_out[t])
        if not spiking:
            v, vt = vt, v
            continue
        z_out[t] = z
        torch.where(z, p.v_reset, vt, out=v)
        if refractory:
            ref.sub_(1).clamp_(min=0)
            torch.where(z, p.ref_steps, ref, out=ref)
    return z_out, u_out, free_out


def lif_backward(g_z, g_u, z, u, free, nominal, surrogate, *, recurrence=None, has_inh=True,
                 spiking=True):
    """Reverse-time sweep of the nominal model. Returns (g_exc, g_inh, g_w_rec)."""
    T, B, N = u.shape
    dt, dev = u.dtype, u.device
    p = nominal.to(dev, dt)
    keep_m, keep_e, keep_i = 1.0 - p.a_mem, 1.0 - p.a_syn_exc, 1.0 - p.a_syn_inh
    # with equal nominal synaptic decays the inhibitory adjoint is minus the excitatory one
    mirror = has_inh and bool(torch.equal(p.a_syn_exc, p.a_syn_inh))
    own_inh = has_inh and not mirror
    # adjoints of i_exc / i_inh live in g_exc / g_inh themselves: dL/dx[t] = dL/di[t]
    g_exc = torch.empty(T, B, N, dtype=dt, device=dev)
    g_inh = torch.empty(T, B, N, dtype=dt, device=dev) if own_inh else None
    g_exc[T - 1].zero_()
    if own_inh:
        g_inh[T - 1].zero_()
    lam_v = torch.zeros(B, N, dtype=dt, device=dev)
    g = torch.empty(B, N, dtype=dt, device=dev)
    sg = torch.empty(B, N, dtype=dt, device=dev)
    gate = torch.empty(B, N, dtype=dt, device=dev)
    g_z = g_z.to(dt) if g_z is not None else None
    g_u = g_u.to(dt) if g_u is not None else None
    w = w_pos = w_neg = None
    if recurrence is not None:
        w = recurrence.weight.to(dev, dt)
        w_pos, w_neg = torch.clamp(w, min=0), torch.clamp(-w, min=0)
    # per-step [B, N] buffers, reused: no [T, B, N] temporaries (see lif_forward)
    for t in range(T - 1, -1, -1):
        if g_u is not None:
            g.copy_(g_u[t])
        else:
            g.zero_()
        if spiking:
            gz = g_z[t] if g_z is not None else None
            if w is not None and t < T - 1:
                # mirrored adjoints: l_e @ relu(W) + (-l_e) @ relu(-W) = l_e @ W, one GEMM
                rec = g_exc[t + 1] @ w_pos + g_inh[t + 1] @ w_neg if own_inh else g_exc[t + 1] @ w
                gz = rec if gz is None else rec.add_(gz)
            if gz is not None:
                g.addcmul_(gz, surrogate.grad_(torch.sub(u[t], p.v_th, out=sg)))
            torch.sub(1.0, z[t], out=gate)
            g.addcmul_(gate, lam_v)
            if free is not None:
                g.mul_(free[t])
        else:
            g.add_(lam_v)
        torch.mul(g, keep_m, out=lam_v)
        if t > 0:
            torch.mul(g_exc[t], keep_e, out=g_exc[t - 1]).addcmul_(g, p.a_mem)
            if own_inh:
                torch.mul(g_inh[t], keep_i, out=g_inh[t - 1]).addcmul_(g, p.a_mem, value=-1.0)
    g_w = None
    if recurrence is not None and T > 1:
        z_prev = z[:-1].reshape(-1, N)
        ge = g_exc[1:].reshape(-1, N).t() @ z_prev
        if own_inh:
            gi = g_inh[1:].reshape(-1, N).t() @ z_prev
            ge = torch.where(recurrence.weight >= 0, ge, -gi)
        g_w = ge.to(recurrence.weight.dtype)            # mirrored: -gi == ge everywhere
    elif recurrence is not None:
        g_w = torch.zeros_like(recurrence.weight)
    if mirror:
        g_inh = -g_exc
    return g_exc, g_inh, g_w


class _LIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_exc, x_inh, w_rec, spec):
        rec = spec["recurrence"]
        z, u, free = lif_forward(x_exc, x_inh, spec["params"], spec["readout"], recurrence=rec,
                                 membrane_noise_lsb=spec["membrane_noise_lsb"], seed=spec["seed"],
                                 spiking=spec["spiking"])
        ctx.spec = spec
        ctx.set_materialize_grads(False)        # an unused output costs no [T, B, N] of zeros
        ctx.has_inh = x_inh is not None or rec is not None
        ctx.x_dtypes = (x_exc.dtype, None if x_inh is None else x_inh.dtype)
        ctx.save_for_backward(z, u, free)
        if not spec["spiking"]:
            ctx.mark_non_differentiable(z)
        return z.to(x_exc.dtype), u.to(x_exc.dtype)

    @staticmethod
    def backward(ctx, g_z, g_u):
        refuse_double_backward("cuba_lif / li")
        z, u, free = ctx.saved_tensors
        spec = ctx.spec
        rec = spec["recurrence"]
        g_exc, g_inh, g_w = lif_backward(
            g_z if spec["spiking"] else None, g_u, z, u, free, spec["nominal"], spec["surrogate"],
            recurrence=rec, has_inh=ctx.has_inh, spiking=spec["spiking"])
        g_exc = g_exc.to(ctx.x_dtypes[0])
        g_inh = g_inh.to(ctx.x_dtypes[1]) if ctx.x_dtypes[1] is not None else None
        return g_exc, g_inh, g_w, None


def _validate(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed):
    """Static checks, then the size, then values (an expanded view of a huge shape would otherwise
    be read in full by the NaN check). Returns (params, nominal) as the kernels take them."""
    check_tensor("x_exc", x_exc, ndim=3, finite=False)
    T, B, N = x_exc.shape
    if T == 0 or B == 0 or N == 0:
        raise ValueError(f"x_exc must have T, B, N >= 1, got shape {tuple(x_exc.shape)}")
    device = x_exc.device
    if x_inh is not None:
        check_tensor("x_inh", x_inh, shape=x_exc.shape, finite=False)
        if x_inh.device != device:
            raise ValueError(f"x_inh is on {x_inh.device} but x_exc on {device}")
    for name, p in (("params", params), ("nominal", nominal)):
        if not isinstance(p, LIFParams):
            raise TypeError(f"{name} must be a bss2_backend.LIFParams, got {type(p).__name__}")
    if not isinstance(readout, ReadoutParams):
        raise TypeError(f"readout must be a bss2_backend.ReadoutParams, got {type(readout).__name__}")
    if recurrence is not None:
        if not isinstance(recurrence, Recurrence):
            raise TypeError(f"recurrence must be a bss2_backend.Recurrence, got "
                            f"{type(recurrence).__name__}")
        for name in ("weight", "exc", "inh"):
            check_tensor(f"recurrence.{name}", getattr(recurrence, name), shape=(N, N), finite=False)
    check_number("membrane_noise_lsb", membrane_noise_lsb, low=0.0, high=MAX_NOISE_LSB)
    check_number("seed", seed, low=0, high=MAX_SEED, integer=True)
    item = 8 if x_exc.dtype == torch.float64 else 4
    check_allocation(f"the spikes and membranes of [T={T}, B={B}, N={N}]",
                     T * B * N * (2 * item + 1), device)
    check_finite("x_exc", x_exc)
    if x_inh is not None:
        check_finite("x_inh", x_inh)
    params = params.validate(N, "params")
    nominal = nominal.validate(N, "nominal")
    readout.validate(N)
    if recurrence is not None:
        for name in ("weight", "exc", "inh"):
            check_finite(f"recurrence.{name}", getattr(recurrence, name))
    return params, nominal


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
        seed: seed of this run's temporal noise.
        surrogate: surrogate of the spike's derivative, evaluated at the read membrane.
        backend: "auto" | "torch" | "triton".

    Returns:
        (spikes, membrane), both [T, B, N] in the input dtype (state is kept in float32, or float64
        for float64 inputs); membrane is the read membrane, sampled before the step's reset.
    """
    return _run(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed,
                as_surrogate(surrogate), backend, spiking=True)


def li(x_exc, x_inh=None, *, params, nominal=None, readout=None, membrane_noise_lsb=0.0, seed=0,
       backend="auto"):
    """Leaky-integrator readout (no threshold, no reset): same arguments as cuba_lif; returns the
    read membrane [T, B, N]."""
    return _run(x_exc, x_inh, params, nominal, readout, None, membrane_noise_lsb, seed,
                Surrogate(), backend, spiking=False)[1]


def _run(x_exc, x_inh, params, nominal, readout, recurrence, membrane_noise_lsb, seed, surrogate,
         backend, spiking):
    nominal = params if nominal is None else nominal
    if readout is None and isinstance(x_exc, torch.Tensor) and x_exc.dim() == 3 \
            and x_exc.device.type != "meta":
        readout = ReadoutParams.ideal(x_exc.shape[-1], device=x_exc.device)
    params, nominal = _validate(x_exc, x_inh, params, nominal, readout, recurrence,
                                membrane_noise_lsb, seed)
    backend = resolve_backend(backend, x_exc.device)
    op = "cuba_lif" if spiking else "li"
    if backend == "triton":
        from .kernels import dispatch  # imported lazily: the torch path never touches Triton
        z, u = dispatch.run_lif(x_exc, x_inh, params, nominal, readout, recurrence,
                                membrane_noise_lsb, seed, surrogate, spiking)
        return z, check_output(op, u, x_exc.dtype)
    spec = {"params": params, "nominal": nominal, "readout": readout, "recurrence": recurrence,
            "membrane_noise_lsb": float(membrane_noise_lsb), "seed": int(seed),
            "surrogate": surrogate, "spiking": spiking}
    w_rec = recurrence.weight if recurrence is not None else None
    z, u = _LIF.apply(x_exc, x_inh, w_rec, spec)
    return z, check_output(op, u, x_exc.dtype)
