"""snntorch's neurons (Leaky, Synaptic, RLeaky, RSynaptic, Lapicque) over all time steps in one
launch, forward and backward; the twin is reference.py (same arithmetic, same order).

Each program owns a tile [BB, BN] of one step's elements and loops over time with the state in
registers. Dense recurrence keeps the whole [N, N] weight on chip and needs the tile to span a
batch row (BN >= N). Kernels compile with enable_fp_fusion=False: snntorch runs every op as its own
PyTorch kernel, so a fused multiply-add would round differently and flip spikes at threshold.
"""
import torch
import triton
import triton.language as tl

from .. import backend
from ..surrogate.triton import surrogate_grad
from . import REC_DENSE, REC_ONE_TO_ONE, RESET_ZERO


@triton.jit
def _offsets(pid, M, N, DENSE: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr):
    o_b = pid * BB + tl.arange(0, BB)
    o_n = tl.arange(0, BN)
    if DENSE:
        offs = o_b[:, None] * N + o_n[None, :]
        mask = (o_b < M // N)[:, None] & (o_n < N)[None, :]
    else:
        offs = o_b[:, None] * BN + o_n[None, :]
        mask = offs < M
    return offs, mask


@triton.jit
def snn_neuron_fwd_kernel(
    p_x, p_r, p_u0, p_i0, p_s0, p_beta, p_alpha, p_theta, p_g, p_v, p_w, p_bias,
    p_spk, p_syn, p_mem, p_pre,
    T, M, N,
    SYNAPTIC: tl.constexpr, REC: tl.constexpr, RESET: tl.constexpr, ZERO_PRE: tl.constexpr,
    DELAY: tl.constexpr, LATE_RESET: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
):
    i_p = tl.program_id(0)
    offs, mask = _offsets(i_p, M, N, REC == 3, BB, BN)
    # [BB, BN] state and per-element parameters
    b_u = tl.load(p_u0 + offs, mask=mask, other=0.0)
    b_beta = tl.load(p_beta + offs, mask=mask, other=0.0)
    b_theta = tl.load(p_theta + offs, mask=mask, other=0.0)
    b_g = tl.load(p_g + offs, mask=mask, other=1.0)
    if SYNAPTIC:
        b_i = tl.load(p_i0 + offs, mask=mask, other=0.0)
        b_alpha = tl.load(p_alpha + offs, mask=mask, other=0.0)
    if REC == 2 or REC == 3:
        b_s = tl.load(p_s0 + offs, mask=mask, other=0.0)
    if REC == 2:
        b_v = tl.load(p_v + offs, mask=mask, other=0.0)
    if REC == 3:
        o_k = tl.arange(0, BN)
        w_mask = (o_k < N)[:, None] & (o_k < N)[None, :]
        # [BN, BN] W^T: b_wt[k, n] = W[n, k]
        b_wt = tl.load(p_w + o_k[None, :] * N + o_k[:, None], mask=w_mask, other=0.0)
        b_bias = tl.load(p_bias + o_k, mask=o_k < N, other=0.0)
    for t in range(T):
        b_x = tl.load(p_x + t * M + offs, mask=mask, other=0.0)
        b_reset = (b_u > b_theta).to(tl.float32)
        if REC == 1:
            b_r = tl.load(p_r + t * M + offs, mask=mask, other=0.0)
        elif REC == 2:
            b_r = b_s * b_v
        elif REC == 3:
            b_r = tl.dot(b_s, b_wt, input_precision="ieee") + b_bias[None, :]
        if SYNAPTIC:
            b_i = b_alpha * b_i + b_x
            if REC != 0:
                b_i = b_i + b_r
            b_u1 = b_beta * b_u + b_i
        elif ZERO_PRE:
            b_u1 = b_beta * ((1 - b_reset) * b_u) + b_x
        else:
            b_u1 = b_beta * b_u + b_x
            if REC != 0:
                b_u1 = b_u1 + b_r
        if RESET == 0:
            b_u1 = b_u1 - b_reset * b_theta
        elif RESET == 1 and not ZERO_PRE:
            b_u1 = b_u1 - b_u1 * b_reset
        b_s = (b_u1 > b_theta).to(tl.float32) * b_g
        b_u = b_u1
        if not DELAY:
            tl.store(p_pre + t * M + offs, b_u1, mask=mask)
            b_d = b_s / b_g - b_reset
            if LATE_RESET == 0:
                b_u = b_u1 - b_d * b_theta
            elif LATE_RESET == 1:
                b_u = b_u1 - b_d * b_u1
        tl.store(p_spk + t * M + offs, b_s, mask=mask)
        tl.store(p_mem + t * M + offs, b_u, mask=mask)
        if SYNAPTIC:
            tl.store(p_syn + t * M + offs, b_i, mask=mask)


@triton.jit
def snn_neuron_bwd_kernel(
    p_gspk, p_gsyn, p_gmem, p_spk, p_syn, p_mem, p_pre,   # syn, mem: [T + 1, M], row 0 initial
    p_beta, p_alpha, p_theta, p_g, p_v, p_w,
    p_gx, p_gu0, p_gi0, p_gs0, p_gbeta, p_galpha, p_gtheta, p_gg,
    T, M, N, surrogate_param,
    SYNAPTIC: tl.constexpr, REC: tl.constexpr, RESET: tl.constexpr, ZERO_PRE: tl.constexpr,
    DELAY: tl.constexpr, LATE_RESET: tl.constexpr, SURROGATE: tl.constexpr,
    HAS_GSPK: tl.constexpr, HAS_GSYN: tl.constexpr, HAS_GMEM: tl.constexpr,
    NEED_BETA: tl.constexpr, NEED_ALPHA: tl.constexpr, NEED_THETA: tl.constexpr,
    NEED_G: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
):
    i_p = tl.program_id(0)
    offs, mask = _offsets(i_p, M, N, REC == 3, BB, BN)
    b_beta = tl.load(p_beta + offs, mask=mask, other=0.0)
    b_theta = tl.load(p_theta + offs, mask=mask, other=0.0)
    b_g = tl.load(p_g + offs, mask=mask, other=1.0)
    if SYNAPTIC:
        b_alpha = tl.load(p_alpha + offs, mask=mask, other=0.0)
    if REC == 2:
        b_v = tl.load(p_v + offs, mask=mask, other=0.0)
    if REC == 3:
        o_k = tl.arange(0, BN)
        w_mask = (o_k < N)[:, None] & (o_k < N)[None, :]
        # [BN, BN] W: b_w[n, k]
        b_w = tl.load(p_w + o_k[:, None] * N + o_k[None, :], mask=w_mask, other=0.0)
    zero = tl.zeros([BB, BN], dtype=tl.float32)
    lam_u, lam_i, lam_s = zero, zero, zero
    acc_beta, acc_alpha, acc_theta, acc_g = zero, zero, zero, zero
    for i_t in range(T):
        t = T - 1 - i_t
        b_u = tl.load(p_mem + t * M + offs, mask=mask, other=0.0)
        b_reset = (b_u > b_theta).to(tl.float32)
        b_s = tl.load(p_spk + t * M + offs, mask=mask, other=0.0)
        if DELAY:
            b_u1 = tl.load(p_mem + (t + 1) * M + offs, mask=mask, other=0.0)
        else:
            b_u1 = tl.load(p_pre + t * M + offs, mask=mask, other=0.0)
        g_u = lam_u
        if HAS_GMEM:
            g_u = tl.load(p_gmem + t * M + offs, mask=mask, other=0.0) + g_u
        g_s = lam_s
        if HAS_GSPK:
            g_s = tl.load(p_gspk + t * M + offs, mask=mask, other=0.0) + g_s
        if not DELAY and LATE_RESET != 2:
            b_d = b_s / b_g - b_reset
            if LATE_RESET == 0:
                g_d = -g_u * b_theta
                if NEED_THETA:
                    acc_theta -= g_u * b_d
            else:
                g_d = -g_u * b_u1
                g_u = g_u - g_u * b_d
            g_s = g_s + g_d / b_g
            if NEED_G:
                acc_g -= g_d * b_s / (b_g * b_g)
        b_h = (b_u1 > b_theta).to(tl.float32)
        g_h = g_s * b_g
        if NEED_G:
            acc_g += g_s * b_h
        g_sur = g_h * surrogate_grad(b_u1 - b_theta, surrogate_param, SURROGATE)
        g_u = g_u + g_sur
        if NEED_THETA:
            acc_theta -= g_sur
            if RESET == 0:
                acc_theta -= g_u * b_reset
        if RESET == 1 and not ZERO_PRE:
            g_u = g_u * (1 - b_reset)
        if SYNAPTIC:
            b_i = tl.load(p_syn + t * M + offs, mask=mask, other=0.0)
            g_i = g_u + lam_i
            if HAS_GSYN:
                g_i = g_i + tl.load(p_gsyn + t * M + offs, mask=mask, other=0.0)
            if NEED_BETA:
                acc_beta += g_u * b_u
            lam_u = g_u * b_beta
            if NEED_ALPHA:
                acc_alpha += g_i * b_i
            lam_i = g_i * b_alpha
            g_x = g_i
        elif ZERO_PRE:
            if NEED_BETA:
                acc_beta += g_u * ((1 - b_reset) * b_u)
            lam_u = g_u * b_beta * (1 - b_reset)
            g_x = g_u
        else:
            if NEED_BETA:
                acc_beta += g_u * b_u
            lam_u = g_u * b_beta
            g_x = g_u
        tl.store(p_gx + t * M + offs, g_x, mask=mask)
        if REC == 2:
            lam_s = g_x * b_v
        elif REC == 3:
            lam_s = tl.dot(g_x, b_w, input_precision="ieee")
    tl.store(p_gu0 + offs, lam_u, mask=mask)
    if SYNAPTIC:
        tl.store(p_gi0 + offs, lam_i, mask=mask)
    if REC == 2 or REC == 3:
        tl.store(p_gs0 + offs, lam_s, mask=mask)
    if NEED_BETA:
        tl.store(p_gbeta + offs, acc_beta, mask=mask)
    if NEED_ALPHA:
        tl.store(p_galpha + offs, acc_alpha, mask=mask)
    if NEED_THETA:
        tl.store(p_gtheta + offs, acc_theta, mask=mask)
    if NEED_G:
        tl.store(p_gg + offs, acc_g, mask=mask)


def _tile(spec, step_shape):
    """(M, N, BB, BN, grid) for one step of shape step_shape."""
    M = int(torch.Size(step_shape).numel())
    if spec.rec == REC_DENSE:
        N = int(step_shape[-1])
        BN = max(16, backend.next_pow2(N))
        BB = 16
        return M, N, BB, BN, (triton.cdiv(M // N, BB),)
    BN = 128 if backend.interpreting() else 256
    BB = 16 if backend.interpreting() else 4
    return M, BN, BB, BN, (triton.cdiv(M, BB * BN),)


def _flat(t, M):
    return t.contiguous().reshape(M)


def _flags(spec):
    zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
    return dict(SYNAPTIC=spec.synaptic, REC=spec.rec, RESET=spec.reset, ZERO_PRE=zero_pre,
                DELAY=spec.delay, LATE_RESET=spec.late_reset)


def forward(spec, x, u0, i0, s0, beta, alpha, theta, g, r=None, v=None, w=None, bias=None):
    """Same contract as reference.forward (float32)."""
    T, S = x.shape[0], x.shape[1:]
    M, N, BB, BN, grid = _tile(spec, S)
    dev = x.device
    spk = backend.alloc((T, *S), torch.float32, dev)
    mem = backend.alloc((T, *S), torch.float32, dev)
    syn = backend.alloc((T, *S), torch.float32, dev) if spec.synaptic else None
    pre = backend.alloc((T, *S), torch.float32, dev) if not spec.delay else None
    dummy = x
    c = lambda t: dummy if t is None else t.contiguous()
    snn_neuron_fwd_kernel[grid](
        x.contiguous(), c(r), c(u0), c(i0), c(s0), _flat(beta, M),
        _flat(alpha, M) if alpha is not None else dummy, _flat(theta, M), _flat(g, M),
        _flat(v, M) if v is not None else dummy, w.contiguous() if w is not None else dummy,
        bias.contiguous() if bias is not None else
        (torch.zeros(N, device=dev) if spec.rec == REC_DENSE else dummy),
        spk, c(syn), mem, c(pre), T, M, N, BB=BB, BN=BN, enable_fp_fusion=False, **_flags(spec))
    return spk, syn, mem, pre


def backward(spec, g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g,
             v=None, w=None):
    """Same contract as reference.backward (float32)."""
    need = (spec.need_beta, spec.need_alpha, spec.need_theta, spec.need_g)
    T, S = mem.shape[0], mem.shape[1:]
    M, N, BB, BN, grid = _tile(spec, S)
    dev = mem.device
    # the kernel reads state t-1 at row t: prepend the initial state
    mem_all = torch.cat([u0.reshape(1, M), mem.reshape(T, M)])
    syn_all = torch.cat([i0.reshape(1, M), syn.reshape(T, M)]) if spec.synaptic else mem_all
    g_x = backend.alloc((T, M), torch.float32, dev)
    g_u0 = backend.alloc((M,), torch.float32, dev)
    g_i0 = backend.alloc((M,), torch.float32, dev) if spec.synaptic else None
    recurrent = spec.rec in (REC_ONE_TO_ONE, REC_DENSE)
    g_s0 = backend.alloc((M,), torch.float32, dev) if recurrent else None
    grads = [backend.alloc((M,), torch.float32, dev) if n else None for n in need]
    dummy = g_x
    c = lambda t: t.contiguous() if t is not None else dummy
    snn_neuron_bwd_kernel[grid](
        c(g_spk), c(g_syn), c(g_mem), spk.contiguous(), syn_all, mem_all, c(pre),
        _flat(beta, M), _flat(alpha, M) if alpha is not None else dummy, _flat(theta, M),
        _flat(g, M), _flat(v, M) if v is not None else dummy, c(w),
        g_x, g_u0, c(g_i0), c(g_s0), *(c(t) for t in grads),
        T, M, N, float(spec.surrogate_param), SURROGATE=spec.surrogate,
        HAS_GSPK=g_spk is not None, HAS_GSYN=g_syn is not None and spec.synaptic,
        HAS_GMEM=g_mem is not None, NEED_BETA=need[0], NEED_ALPHA=need[1] and spec.synaptic,
        NEED_THETA=need[2], NEED_G=need[3], BB=BB, BN=BN, enable_fp_fusion=False, **_flags(spec))
    shape = lambda t: None if t is None else t.reshape(S)
    return (g_x.reshape(T, *S), shape(g_u0), shape(g_i0), shape(g_s0), *(shape(t) for t in grads))
