"""snntorch's neuron updates over all time steps in plain PyTorch: the twin of triton.py.

The forward repeats snntorch 1.0's arithmetic op for op, in its order (the update below, with the
reset signal R taken from the previous membrane before the decay), so spikes and membranes are
bit-identical to stock snntorch given the same input currents. The backward is one hand-written reverse sweep equal to what autograd computes through
snntorch's graph (reset signal detached, clamp masks applied by the caller).

Per step (U, I, S: previous membrane, synaptic current, spikes; b, a: clamped beta, alpha;
th: threshold; g: graded spike factor; r: recurrent input):
    R  = H(U - th)
    synaptic:  I' = a I + x (+ r);  U' = b U + I'
    leaky:     U' = b U + x (+ r)               or, Leaky's zero reset: U' = b ((1 - R) U) + x
    reset:     subtract U' - R th | zero U' - U' R | none
    S  = H(U' - th) g
    reset_delay=False:  D = S / g - R;  subtract U'' = U' - D th | zero U'' = U' - D U'
"""
import torch

from .. import surrogate as sg
from ..backend import output as _output
from ..backend import scratch as _scratch
from . import REC_DENSE, REC_EXTERNAL, REC_ONE_TO_ONE, RESET_NONE, RESET_SUB, RESET_ZERO


def _recurrent(spec, s, v, w, bias):
    if spec.rec == REC_ONE_TO_ONE:
        return s * v
    if spec.rec == REC_DENSE:
        return torch.nn.functional.linear(s, w, bias)
    return None


def forward(spec, x, u0, i0, s0, beta, alpha, theta, g, r=None, v=None, w=None, bias=None):
    """Forward over T steps without autograd. x, r: [T, *S]; states and parameters: [*S] (parameters
    broadcast to the step shape S). Returns (spk, syn, mem, pre) [T, *S]; syn is None unless
    synaptic, pre (the membrane before the same-step reset) is None unless reset_delay=False.

    Each step writes into its output slice in place, with the ops snntorch runs in its order; R th
    and U' R are selected (R is 0 or 1), which changes nothing but the sign of a zero."""
    T = x.shape[0]
    spk = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    mem = torch.empty_like(x)
    syn = torch.empty_like(x) if spec.synaptic else None
    pre = None if spec.delay else torch.empty_like(x)
    zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
    spikes_in_loop = spec.rec in (REC_ONE_TO_ONE, REC_DENSE) or not spec.delay
    U, I, S = u0, i0, s0
    for t in range(T):
        above = U > theta
        U1 = mem[t] if spec.delay else pre[t]
        rec = r[t] if spec.rec == REC_EXTERNAL else _recurrent(spec, S, v, w, bias)
        if spec.synaptic:
            I = torch.mul(alpha, I, out=syn[t]).add_(x[t])
            if rec is not None:
                I.add_(rec)
            torch.mul(beta, U, out=U1).add_(I)
        elif zero_pre:
            torch.mul(beta, (1 - above.float()) * U, out=U1).add_(x[t])
        else:
            torch.mul(beta, U, out=U1).add_(x[t])
            if rec is not None:
                U1.add_(rec)
        if spec.reset == RESET_SUB:
            U1.sub_(torch.where(above, theta, 0.0))
        elif spec.reset == RESET_ZERO and not zero_pre:
            U1.sub_(torch.where(above, U1, 0.0))
        if spikes_in_loop:
            S = torch.mul(U1 > theta, g, out=spk[t])
        if not spec.delay:
            D = S / g - above.float()
            if spec.late_reset == RESET_SUB:
                torch.sub(U1, D * theta, out=mem[t])
            elif spec.late_reset == RESET_ZERO:
                torch.sub(U1, D * U1, out=mem[t])
            else:
                mem[t] = U1
        U = mem[t]
    if not spikes_in_loop:
        torch.mul(torch.gt(mem, theta, out=_scratch("snn.fired", mem.shape, torch.bool,
                                                    mem.device)), g, out=spk)
    return spk, syn, mem, pre


def backward(spec, g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g,
             v=None, w=None, sweep=None):
    """Reverse sweep. g_*: cotangents of the outputs ([T, *S] or None); spec.need_* say which of
    (beta, alpha, theta, g) want a gradient. Returns (g_x [T, *S], g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta,
    g_g), the parameter gradients per element of the step shape (summed over time)."""
    need = (spec.need_beta, spec.need_alpha, spec.need_theta, spec.need_g)
    spikes_carry = spec.rec in (REC_ONE_TO_ONE, REC_DENSE) or \
        (not spec.delay and spec.late_reset != RESET_NONE)
    if spikes_carry:
        return _bwd_stepwise(spec, g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha,
                             theta, g, v, w, need)
    return _bwd_vectorized(spec, g_spk, g_syn, g_mem, syn, mem, pre, u0, i0, beta, alpha, theta, g,
                           need, sweep)


def _bwd_vectorized(spec, g_spk, g_syn, g_mem, syn, mem, pre, u0, i0, beta, alpha, theta, g, need,
                    sweep=None):
    """When no spike gradient flows back in time (no recurrence, no same-step reset), everything
    but the membrane/current adjoints is computed over all steps at once; the loop carries only
    those (three or four tensor ops per step): `sweep` (default: sweep_eager; the CPU's compiled
    loop passes its own)."""
    sweep = sweep_eager if sweep is None else sweep
    zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
    zero_post = spec.reset == RESET_ZERO and not zero_pre
    # whole-sequence temporaries come from reused buffers (backend.scratch): none leaves here
    temp = lambda name, dtype=mem.dtype: _scratch(f"snn.{name}", mem.shape, dtype, mem.device)
    u_prev = reset = keep = None
    if need[0] or spec.reset != RESET_NONE:
        u_prev = temp("u_prev")
        u_prev[0] = u0
        u_prev[1:] = mem[:-1]
    if spec.reset == RESET_ZERO or spec.reset == RESET_SUB and need[2]:
        # the reset signal R of every step; products with R and 1 - R (not masking) keep
        # snntorch's NaN propagation
        reset = temp("reset").copy_(torch.gt(u_prev, theta, out=temp("fired", torch.bool)))
        keep = torch.neg(reset, out=temp("keep")).add_(1)       # 1 - R, exactly
    u1 = mem if spec.delay else pre
    # the spike's contribution to d/dU' of every step: g_spk g surrogate(U' - th)
    g_fire = None
    if g_spk is not None:
        g_fire = sg.grad_(spec.surrogate, spec.surrogate_param,
                          torch.sub(u1, theta, out=temp("g_fire"))).mul_(g).mul_(g_spk)
    keep_u1 = need[2] and spec.reset == RESET_SUB or need[0] and (zero_pre or spec.synaptic)
    g_u1 = temp("g_u1") if keep_u1 else None
    g_x = _output("snn.g_x", mem.shape, mem.dtype, mem.device)
    lam_u, lam_i = sweep(spec, g_mem, g_fire, keep, g_syn, beta, alpha, zero_post, zero_pre, g_x,
                         g_u1, u0)
    g_beta = g_alpha = g_theta = g_g = None
    if need[0]:
        if zero_pre:
            g_beta = (g_u1 * (keep * u_prev)).sum(0)
        else:
            g_beta = ((g_u1 if spec.synaptic else g_x) * u_prev).sum(0)
    if need[1] and spec.synaptic:
        g_alpha = (g_x * torch.cat([i0.unsqueeze(0), syn[:-1]])).sum(0)
    if need[2]:
        g_theta = torch.zeros_like(u0) if g_fire is None else -g_fire.sum(0)
        if spec.reset == RESET_SUB:
            g_theta = g_theta - (g_u1 * reset).sum(0)
    if need[3]:
        g_g = torch.zeros_like(u0) if g_spk is None else (g_spk * (u1 > theta)).sum(0)
    return g_x, lam_u, lam_i, None, g_beta, g_alpha, g_theta, g_g


def sweep_eager(spec, g_mem, g_fire, keep, g_syn, beta, alpha, zero_post, zero_pre, g_x, g_u1, u0):
    """The reverse sweep of the membrane / current adjoints over all steps: writes g_x (and g_u1,
    when given: dL/dU' per step) and returns (lam_u, lam_i), the adjoints of u0 and i0."""
    T = g_x.shape[0]
    lam_u = torch.zeros_like(u0)
    lam_i = torch.zeros_like(u0) if spec.synaptic else None
    scratch = torch.empty_like(u0) if spec.synaptic else None
    for t in range(T - 1, -1, -1):
        g_u = scratch if spec.synaptic else g_x[t]
        if g_mem is None:
            g_u.copy_(lam_u)
        else:
            torch.add(g_mem[t], lam_u, out=g_u)
        if g_fire is not None:
            g_u.add_(g_fire[t])
        if zero_post:
            g_u.mul_(keep[t])
        if g_u1 is not None:
            g_u1[t] = g_u
        lam_u = g_u * beta
        if spec.synaptic:
            g_i = torch.add(g_u, lam_i, out=g_x[t])
            if g_syn is not None:
                g_i.add_(g_syn[t])
            lam_i = g_i * alpha
        elif zero_pre:
            lam_u.mul_(keep[t])
    return lam_u, lam_i


def _bwd_stepwise(spec, g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g,
                  v, w, need):
    T = mem.shape[0]
    zero = torch.zeros_like(u0)
    g_x = torch.empty_like(mem)
    lam_u, lam_i, lam_s = zero, zero, zero
    acc = [zero.clone() if n else None for n in need]
    for t in range(T - 1, -1, -1):
        U = mem[t - 1] if t > 0 else u0
        R = (U > theta).float()
        U1 = mem[t] if spec.delay else pre[t]
        S = spk[t]
        gU = lam_u if g_mem is None else g_mem[t] + lam_u
        gS = lam_s if g_spk is None else g_spk[t] + lam_s
        if not spec.delay and spec.late_reset != RESET_NONE:
            D = S / g - R
            if spec.late_reset == RESET_SUB:
                gD = -gU * theta
                if acc[2] is not None:
                    acc[2] -= gU * D
            else:
                gD = -gU * U1
                gU = gU - gU * D
            gS = gS + gD / g
            if acc[3] is not None:
                acc[3] -= gD * S / (g * g)
        H = (U1 > theta).float()
        gH = gS * g
        if acc[3] is not None:
            acc[3] += gS * H
        g_sur = gH * sg.grad_(spec.surrogate, spec.surrogate_param, U1 - theta)
        gU = gU + g_sur
        if acc[2] is not None:
            acc[2] -= g_sur
        if spec.reset == RESET_SUB and acc[2] is not None:
            acc[2] -= gU * R
        zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
        if spec.reset == RESET_ZERO and not zero_pre:
            gU = gU * (1 - R)
        if spec.synaptic:
            I = syn[t - 1] if t > 0 else i0
            gI = gU + lam_i if g_syn is None else gU + lam_i + g_syn[t]
            if acc[0] is not None:
                acc[0] += gU * U
            lam_u = gU * beta
            if acc[1] is not None:
                acc[1] += gI * I
            lam_i = gI * alpha
            g_x[t] = gI
        elif zero_pre:
            if acc[0] is not None:
                acc[0] += gU * ((1 - R) * U)
            lam_u = gU * beta * (1 - R)
            g_x[t] = gU
        else:
            if acc[0] is not None:
                acc[0] += gU * U
            lam_u = gU * beta
            g_x[t] = gU
        if spec.rec == REC_ONE_TO_ONE:
            lam_s = g_x[t] * v
        elif spec.rec == REC_DENSE:
            lam_s = g_x[t] @ w
    g_s0 = lam_s if spec.rec in (REC_ONE_TO_ONE, REC_DENSE) else None
    return (g_x, lam_u, lam_i if spec.synaptic else None, g_s0, *acc)
