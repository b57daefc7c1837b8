"""The chip LIF op in plain PyTorch: the twin the fused kernels match, and the CPU path.

Forward integrates the discrete model of kernels/README.md with per-neuron parameter vectors,
refractory counter, hard reset, membrane noise and the CADC readout, and returns what the host
records: spikes z and the read membrane u (sampled before the step's reset). Backward is one
hand-written reverse sweep of the nominal model (the in-the-loop rule), so the CPU path builds no
per-step autograd graph. Both work on [B, N] buffers reused every step: fresh [T, B, N]
temporaries cost more in page faults than in arithmetic on a CPU. The in-place ops compute exactly
v + a_mem * ((v_leak - v) + (i_e - i_i)) etc., op by op, as the kernels do.
"""
import torch

from .. import surrogate as sg
from . import CADC_MAX, CADC_MIN


def read(v, offset, quantise, unit, zero, noise=None):
    """What the host sees of membrane `v` (model units) through the CADC: with quantisation
    code = clamp(floor(v unit + zero + offset + noise + 1/2), 0, 255), u = (code - zero) / unit;
    without it u = v + offset / unit (+ noise / unit). noise: readout noise in LSB, or None."""
    return read_(v.clone(), offset, quantise, unit, zero, None if noise is None else noise.clone())


def code_(v, offset, unit, zero, noise=None, out=None):
    """The CADC code (a float tensor of integers 0..255) of membrane v, into `out` (default: v)."""
    out = v if out is None else out
    torch.mul(v, unit, out=out).add_(zero).add_(offset)
    if noise is not None:
        out.add_(noise)
    return out.add_(0.5).floor_().clamp_(CADC_MIN, CADC_MAX)


def read_(v, offset, quantise, unit, zero, noise=None, out=None):
    """read() without temporaries: the result goes to `out` (default: overwrite `v`), with the
    same operations in the same order; `noise` may be overwritten too."""
    out = v if out is None else out
    if not quantise:
        torch.add(v, offset * (1.0 / unit), out=out)
        return out if noise is None else out.add_(noise.mul_(1.0 / unit))
    return code_(v, offset, unit, zero, noise, out).sub_(zero).mul_(1.0 / unit)


def step_seed(seed, step, stream):
    """The twin's noise seed of one step: a 64-bit mix of the run's seed, the step index of the run
    and the stream (0 membrane, 1 readout), so a step's noise is the same whether the run is
    computed step by step or all at once."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 +
         int(stream) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def host_seed(seed, config):
    """The twin seeds a torch.Generator per step, which takes a Python int: a seed tensor is read
    on the host (free for a CPU tensor, a synchronisation on a GPU, impossible while a CUDA graph
    is captured: the fused kernels read it on the device)."""
    if not isinstance(seed, torch.Tensor):
        return seed
    if config.membrane_noise_lsb == 0 and config.readout_noise_lsb == 0:
        return 0                           # unused: nothing to read
    if seed.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("chip_lif: the torch twin draws its noise from a host-seeded "
                           "generator, which a CUDA graph cannot capture; use backend='triton' "
                           "(the default on CUDA) or a chip without noise")
    return int(seed.reshape(-1)[0])


def forward(config, x_exc, x_inh, par, ref_steps, offset, w_exc, w_inh, seed, step0=0, v0=None,
            ie0=None, ii0=None, ref0=None, z0=None):
    """(z, u, v, i_e, i_i, free, ref): spikes and read membranes [T, B, N] in the packed
    parameters' dtype; the state after the last step ([B, N]: membrane after its reset, currents,
    int32 refractory counter); free (bool [T, B, N]) marks the steps whose membrane the refractory
    clamp did not hold (all true when nothing can be held; empty for the LI readout).

    The run starts from v0, ie0, ii0, ref0 and the previous step's spikes z0 (each None: the
    resting state: leak, no current, not refractory, no spikes) at step `step0` of its run (the
    noise of a step depends on seed and step only)."""
    T, B, N = x_exc.shape
    cdtype, dev = par.dtype, x_exc.device
    v_leak, v_reset, v_th, a_mem, a_syn_exc, a_syn_inh = par
    seed = host_seed(seed, config)
    offset = offset.to(cdtype)
    rec_e = rec_i = None
    if w_exc is not None:
        rec_e, rec_i = w_exc.to(dev, cdtype).t(), w_inh.to(dev, cdtype).t()
    # membrane and readout noise come from two streams, seeded per step
    mem_noise, read_noise = config.membrane_noise_lsb, config.readout_noise_lsb
    gen_m = torch.Generator(device=dev) if mem_noise > 0 else None
    gen_r = torch.Generator(device=dev) if read_noise > 0 else None
    sigma_m = mem_noise / config.unit_lsb
    has_inh = x_inh is not None or rec_i is not None
    spiking = config.spiking
    refractory = spiking and bool(ref_steps.any())

    state = lambda t, default: default() if t is None else t.to(cdtype).clone()
    v = state(v0, lambda: v_leak.expand(B, N).clone())   # membrane after the previous reset
    vt = torch.empty(B, N, dtype=cdtype, device=dev)      # membrane of this step before the reset
    i_e = state(ie0, lambda: torch.zeros(B, N, dtype=cdtype, device=dev))
    i_i = state(ii0, lambda: torch.zeros(B, N, dtype=cdtype, device=dev))
    ref = torch.zeros(B, N, dtype=torch.int32, device=dev) if ref0 is None else \
        ref0.to(torch.int32).clone()
    held = torch.zeros(B, N, dtype=torch.bool, device=dev)
    z = torch.zeros(B, N, dtype=torch.bool, device=dev) if z0 is None else z0 > 0
    drive = torch.empty(B, N, dtype=cdtype, device=dev)
    syn = torch.empty(B, N, dtype=cdtype, device=dev)
    z_prev = torch.empty(B, N, dtype=cdtype, device=dev) if rec_e is not None else None
    noise_m = torch.empty(B, N, dtype=cdtype, device=dev) if gen_m is not None else None
    noise_r = torch.empty(B, N, dtype=cdtype, device=dev) if gen_r is not None else None
    keep_e, keep_i = 1.0 - a_syn_exc, 1.0 - a_syn_inh
    u_out = torch.empty(T, B, N, dtype=cdtype, device=dev)
    z_out = (torch.empty if spiking else torch.zeros)(T, B, N, dtype=cdtype, device=dev)
    free_out = torch.empty(0, dtype=torch.bool, device=dev) if not spiking else \
        (torch.empty if refractory else torch.ones)(T, B, N, dtype=torch.bool, device=dev)
    for t in range(T):
        x_e = x_exc[t].to(cdtype)
        x_i = x_inh[t].to(cdtype) if x_inh is not None else None
        if rec_e is not None:
            z_prev.copy_(z)
            x_e = x_e + z_prev @ rec_e
            x_i = z_prev @ rec_i if x_i is None else x_i + z_prev @ rec_i
        torch.sub(v_leak, v, out=drive)
        drive.add_(torch.sub(i_e, i_i, out=syn) if has_inh else i_e).mul_(a_mem)
        torch.add(v, drive, out=vt)
        if noise_m is not None:
            gen_m.manual_seed(step_seed(seed, step0 + t, 0))
            vt.add_(torch.randn(B, N, generator=gen_m, out=noise_m).mul_(sigma_m))
        i_e.mul_(keep_e).add_(x_e)
        if has_inh:
            i_i.mul_(keep_i).add_(x_i)
        if refractory:
            torch.gt(ref, 0, out=held)
            torch.where(held, v_reset, vt, out=vt)
            torch.logical_not(held, out=free_out[t])
            torch.gt(vt, v_th, out=z).logical_and_(free_out[t])
        elif spiking:
            torch.gt(vt, v_th, out=z)
        if noise_r is not None:
            gen_r.manual_seed(step_seed(seed, step0 + t, 1))
            torch.randn(B, N, generator=gen_r, out=noise_r).mul_(read_noise)
        read_(vt, offset, config.quantise, config.unit_lsb, config.zero_lsb, noise_r, out=u_out[t])
        if not spiking:
            v, vt = vt, v
            continue
        z_out[t] = z
        torch.where(z, v_reset, vt, out=v)
        if refractory:
            ref.sub_(1).clamp_(min=0)
            torch.where(z, ref_steps, ref, out=ref)
    return z_out, u_out, v, i_e, i_i, free_out, ref


def backward(config, g_z, g_u, z, u, free, nom, w, g_v=None, g_ie=None, g_ii=None):
    """Reverse-time sweep of the nominal model. Returns (g_exc, g_inh, g_v0, g_ie0, g_ii0, g_z0):
    the gradients of the input currents [T, B, N] (g_inh None when config.mirrored: then it is
    -g_exc) and, with config.has_state, of the initial state [B, N] (g_z0 None without
    recurrence; all None without a state). nom: [4, N] packed
    nominal parameters; w: the recurrent weight the gradient sees (None without recurrence);
    g_v, g_ie, g_ii: cotangents of the final state (None: zero)."""
    T, B, N = u.shape
    cdtype, dev = u.dtype, u.device
    v_th, a_mem, a_syn_exc, a_syn_inh = nom.to(dev, cdtype)
    keep_m, keep_e, keep_i = 1.0 - a_mem, 1.0 - a_syn_exc, 1.0 - a_syn_inh
    spiking, kind, alpha = config.spiking, config.surrogate, config.alpha
    own_inh = config.has_inh and not config.mirrored
    # adjoints of i_exc / i_inh live in g_exc / g_inh themselves: dL/dx[t] = dL/di[t]
    g_exc = torch.empty(T, B, N, dtype=cdtype, device=dev)
    g_inh = torch.empty(T, B, N, dtype=cdtype, device=dev) if own_inh else None
    _start(g_exc[T - 1], g_ie)
    if own_inh:
        _start(g_inh[T - 1], g_ii)
    lam_v = torch.zeros(B, N, dtype=cdtype, device=dev) if g_v is None else g_v.to(cdtype).clone()
    g = torch.empty(B, N, dtype=cdtype, device=dev)
    buf = torch.empty(B, N, dtype=cdtype, device=dev)
    gate = torch.empty(B, N, dtype=cdtype, device=dev)
    g_z = g_z.to(cdtype) if g_z is not None else None
    g_u = g_u.to(cdtype) if g_u is not None else None
    w_pos = w_neg = None
    if w is not None:
        w = w.to(dev, cdtype)
        w_pos, w_neg = torch.clamp(w, min=0), torch.clamp(-w, min=0)
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
                g.addcmul_(gz, sg.grad_(kind, alpha, torch.sub(u[t], v_th, out=buf)))
            torch.sub(1.0, z[t], out=gate)
            g.addcmul_(gate, lam_v)
            g.mul_(free[t])
        else:
            g.add_(lam_v)
        torch.mul(g, keep_m, out=lam_v)
        if t > 0:
            torch.mul(g_exc[t], keep_e, out=g_exc[t - 1]).addcmul_(g, a_mem)
            if own_inh:
                torch.mul(g_inh[t], keep_i, out=g_inh[t - 1]).addcmul_(g, a_mem, value=-1.0)
    if not config.has_state:
        return g_exc, g_inh, None, None, None, None
    # the state before the first step: the same recurrences one step further
    g_ie0 = torch.mul(g_exc[0], keep_e).addcmul_(g, a_mem)
    if own_inh:
        g_ii0 = torch.mul(g_inh[0], keep_i).addcmul_(g, a_mem, value=-1.0)
    else:                   # mirrored: -g_ie0; no inhibitory current: the state is not used
        g_ii0 = -g_ie0 if config.has_inh else torch.zeros_like(g_ie0)
    g_z0 = None
    if w is not None:
        g_z0 = g_exc[0] @ w_pos + g_inh[0] @ w_neg if own_inh else g_exc[0] @ w
    return g_exc, g_inh, lam_v, g_ie0, g_ii0, g_z0


def _start(out, cotangent):
    """The adjoint of a current after the last step: its final state's cotangent, or zero."""
    if cotangent is None:
        out.zero_()
    else:
        out.copy_(cotangent)
