"""snntorch's neuron updates over all time steps in plain PyTorch: the twin of snntorch_neurons.py.

The forward repeats snntorch 1.0's arithmetic op for op (../shared/notes/snntorch-1.0-semantics.md
section 1.4), so spikes and membranes are bit-identical to stock snntorch given the same input
currents. The backward is one hand-written reverse sweep equal to what autograd computes through
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
import math

import torch

from .snntorch_spec import REC_DENSE, REC_EXTERNAL, REC_ONE_TO_ONE, RESET_NONE, RESET_SUB, \
    RESET_ZERO, SURROGATE_ATAN, SURROGATE_FAST_SIGMOID, SURROGATE_NONE, \
    SURROGATE_SIGMOID, SURROGATE_STE, SURROGATE_TRIANGULAR


def surrogate_grad(kind, p, u):
    """d spike / d u of snntorch's surrogates at u = U' - th."""
    if kind == SURROGATE_ATAN:
        return p / 2 / (1 + (math.pi / 2 * p * u) ** 2)
    if kind == SURROGATE_FAST_SIGMOID:
        return 1.0 / (p * u.abs() + 1.0) ** 2
    if kind == SURROGATE_SIGMOID:
        e = torch.exp(-p * u)
        return p * e / (e + 1) ** 2
    if kind == SURROGATE_STE:
        return torch.ones_like(u)
    if kind == SURROGATE_TRIANGULAR:
        return torch.where(u >= 0, -p, p).to(u.dtype)
    if kind == SURROGATE_NONE:
        return torch.zeros_like(u)
    raise ValueError(f"unknown surrogate id {kind}")


def _recurrent(spec, s, v, w, bias):
    if spec.rec == REC_ONE_TO_ONE:
        return s * v
    if spec.rec == REC_DENSE:
        return torch.nn.functional.linear(s, w, bias)
    return None


def neuron_fwd(spec, x, u0, i0, s0, beta, alpha, theta, g, r=None, v=None, w=None, bias=None):
    """Forward over T steps without autograd. x, r: [T, *S]; states and parameters: [*S] (parameters
    broadcast to the step shape S). Returns (spk, syn, mem, pre) [T, *S]; syn is None unless
    synaptic, pre (the membrane before the same-step reset) is None unless reset_delay=False."""
    T = x.shape[0]
    spk = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    mem = torch.empty_like(x)
    syn = torch.empty_like(x) if spec.synaptic else None
    pre = None if spec.delay else torch.empty_like(x)
    U, I, S = u0, i0, s0
    for t in range(T):
        R = (U > theta).float()
        x_t = x[t]
        rec = r[t] if spec.rec == REC_EXTERNAL else _recurrent(spec, S, v, w, bias)
        if spec.synaptic:
            I = alpha * I + x_t
            if rec is not None:
                I = I + rec
            U1 = beta * U + I
        elif spec.reset == RESET_ZERO and spec.zero_before_decay:
            U1 = beta * ((1 - R) * U) + x_t
        else:
            U1 = beta * U + x_t
            if rec is not None:
                U1 = U1 + rec
        if spec.reset == RESET_SUB:
            U1 = U1 - R * theta
        elif spec.reset == RESET_ZERO and not (spec.zero_before_decay and not spec.synaptic):
            U1 = U1 - U1 * R
        S = (U1 > theta).float() * g
        U2 = U1
        if not spec.delay:
            pre[t] = U1
            D = S / g - R
            if spec.late_reset == RESET_SUB:
                U2 = U1 - D * theta
            elif spec.late_reset == RESET_ZERO:
                U2 = U1 - D * U1
        spk[t], mem[t] = S, U2
        if syn is not None:
            syn[t] = I
        U = U2
    return spk, syn, mem, pre


def neuron_bwd(spec, g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g,
               v=None, w=None, need=(False, False, False, False)):
    """Reverse sweep. g_*: cotangents of the outputs ([T, *S] or None). need: which of (beta, alpha,
    theta, g) want a gradient. Returns (g_x [T, *S], g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta,
    g_g), the parameter gradients per element of the step shape (summed over time)."""
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
        sg = gH * surrogate_grad(spec.surrogate, spec.surrogate_param, U1 - theta)
        gU = gU + sg
        if acc[2] is not None:
            acc[2] -= sg
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
