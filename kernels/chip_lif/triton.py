"""The chip LIF op as two fused Triton kernels: every time step in one forward launch and one
reverse-time backward launch. Matches reference.py operation by operation (derivation, memory
layout, grid and noise scheme: kernels/README.md).
"""
import torch
import triton
import triton.language as tl

from .. import backend
from ..surrogate.triton import surrogate_grad


@triton.jit
def _tile(B, N, BB: tl.constexpr, BN: tl.constexpr):
    """This program's batch rows and neurons, their masks, and the [BB, BN] offsets inside one
    [B, N] time slice (the slice start is int64 in the callers: T*B*N may pass 2^31)."""
    o_b = tl.program_id(1) * BB + tl.arange(0, BB)
    o_n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_b, m_n = o_b < B, o_n < N
    return o_b, o_n, m_b, m_n, m_b[:, None] & m_n[None, :], o_b[:, None] * N + o_n[None, :]


@triton.jit
def _recurrent_input(p_prev, w_exc_t, w_inh_t, o_b, m_b, o_n, m_n, N,
                     BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DT: tl.constexpr,
                     PRECISION: tl.constexpr):
    """z_prev @ W_exc^T and z_prev @ W_inh^T for this program's rows, z_prev read in K tiles from
    p_prev (a [B, N] slice): [BB, BN] each."""
    b_re = tl.zeros([BB, BN], dtype=DT)
    b_ri = tl.zeros([BB, BN], dtype=DT)
    for k in range(0, N, BK):
        o_k = k + tl.arange(0, BK)
        m_k = o_k < N
        # [BB, BK]
        b_zk = tl.load(p_prev + o_b[:, None] * N + o_k[None, :], mask=m_b[:, None] & m_k[None, :],
                       other=0.0).to(DT)
        m_kn = m_k[:, None] & m_n[None, :]
        # [BK, BN]
        b_we = tl.load(w_exc_t + o_k[:, None] * N + o_n[None, :], mask=m_kn, other=0.0)
        b_wi = tl.load(w_inh_t + o_k[:, None] * N + o_n[None, :], mask=m_kn, other=0.0)
        b_re += tl.dot(b_zk, b_we, input_precision=PRECISION)
        b_ri += tl.dot(b_zk, b_wi, input_precision=PRECISION)
    return b_re, b_ri


@triton.jit
def chip_lif_fwd_kernel(
    x_exc, x_inh, par, ref_steps, offset, w_exc_t, w_inh_t,
    v0, ie0, ii0, ref0, z0,
    z, u, free, v_out, ie_out, ii_out, ref_out,
    seed, seed_ptr, noise_base, sigma_mem, sigma_read, unit, zero, inv_unit,
    T, B, N,
    HAS_INH: tl.constexpr, HAS_REC: tl.constexpr, SPIKING: tl.constexpr,
    QUANTISE: tl.constexpr, MEM_NOISE: tl.constexpr, READ_NOISE: tl.constexpr,
    HAS_STATE: tl.constexpr, SEED_PTR: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    o_b, o_n, m_b, m_n, m_bn, o_bn = _tile(B, N, BB, BN)
    DT = par.dtype.element_ty

    b_vleak = tl.load(par + o_n, mask=m_n, other=0.0)[None, :]
    b_vreset = tl.load(par + N + o_n, mask=m_n, other=0.0)[None, :]
    b_vth = tl.load(par + 2 * N + o_n, mask=m_n, other=0.0)[None, :]
    b_amem = tl.load(par + 3 * N + o_n, mask=m_n, other=0.0)[None, :]
    b_keep_e = 1.0 - tl.load(par + 4 * N + o_n, mask=m_n, other=0.0)[None, :]
    b_keep_i = 1.0 - tl.load(par + 5 * N + o_n, mask=m_n, other=0.0)[None, :]
    b_refsteps = tl.load(ref_steps + o_n, mask=m_n, other=0)[None, :]
    b_off = tl.load(offset + o_n, mask=m_n, other=0.0)[None, :]
    if SEED_PTR:
        # the seed lives in device memory (a captured CUDA graph advances it on every replay)
        seed = tl.load(seed_ptr)

    if HAS_STATE:
        # a run continued from its state after an earlier step
        b_v = tl.load(v0 + o_bn, mask=m_bn, other=0.0).to(DT)
        b_ie = tl.load(ie0 + o_bn, mask=m_bn, other=0.0).to(DT)
        b_ii = tl.load(ii0 + o_bn, mask=m_bn, other=0.0).to(DT)
        b_ref = tl.load(ref0 + o_bn, mask=m_bn, other=0)
    else:
        b_v = tl.zeros([BB, BN], dtype=DT) + b_vleak
        b_ie = tl.zeros([BB, BN], dtype=DT)
        b_ii = tl.zeros([BB, BN], dtype=DT)
        b_ref = tl.zeros([BB, BN], dtype=tl.int32)
    # the inputs of step t+1 are loaded while step t computes: the loop's only long-latency reads
    # do not depend on the state, so one step of prefetch hides them
    b_xe_next = tl.load(x_exc + o_bn, mask=m_bn, other=0.0)
    b_xi_next = b_xe_next
    if HAS_INH:
        b_xi_next = tl.load(x_inh + o_bn, mask=m_bn, other=0.0)
    for t in range(T):
        o_t = tl.cast(t, tl.int64) * B * N
        # the last step re-reads itself: a redundant load instead of a mask on the step index
        o_next = tl.cast(tl.minimum(t + 1, T - 1), tl.int64) * B * N
        b_xe = b_xe_next.to(DT)
        b_xe_next = tl.load(x_exc + o_next + o_bn, mask=m_bn, other=0.0)
        b_xi = tl.zeros([BB, BN], dtype=DT)
        if HAS_INH:
            b_xi = b_xi_next.to(DT)
            b_xi_next = tl.load(x_inh + o_next + o_bn, mask=m_bn, other=0.0)
        if HAS_REC:
            # z[t-1] @ W^T: the previous step's spikes are re-read from the output this program
            # wrote (the barrier makes them visible to all its threads), at t = 0 from the state;
            # BN covers all N here.
            b_re = tl.zeros([BB, BN], dtype=DT)
            b_ri = tl.zeros([BB, BN], dtype=DT)
            if t > 0:
                b_re, b_ri = _recurrent_input(z + o_t - B * N, w_exc_t, w_inh_t, o_b, m_b, o_n,
                                              m_n, N, BB, BN, BK, DT, PRECISION)
            elif HAS_STATE:
                b_re, b_ri = _recurrent_input(z0, w_exc_t, w_inh_t, o_b, m_b, o_n, m_n, N,
                                              BB, BN, BK, DT, PRECISION)
            b_xe = b_xe + b_re
            b_xi = b_xi + b_ri
        b_v = b_v + b_amem * ((b_vleak - b_v) + (b_ie - b_ii))
        if MEM_NOISE or READ_NOISE:
            # counter = the element's index in the whole run (noise_base: the steps before this
            # call): the stream depends neither on the block shape nor on how the run is split
            b_r0, b_r1, _, _ = tl.randn4x(seed, noise_base + o_t + o_bn)
        if MEM_NOISE:
            b_v = b_v + sigma_mem * b_r0.to(DT)
        b_ie = b_ie * b_keep_e + b_xe
        if HAS_INH or HAS_REC:
            b_ii = b_ii * b_keep_i + b_xi
        if SPIKING:
            b_free = b_ref == 0
            b_v = tl.where(b_free, b_v, b_vreset)
            b_z = (b_v > b_vth) & b_free
        if QUANTISE:
            b_x = b_v * unit + zero + b_off
            if READ_NOISE:
                b_x = b_x + sigma_read * b_r1.to(DT)
            b_code = tl.minimum(tl.maximum(tl.floor(b_x + 0.5), 0.0), 255.0)
            b_u = (b_code - zero) * inv_unit
        else:
            b_u = b_v + b_off * inv_unit
            if READ_NOISE:
                b_u = b_u + (sigma_read * b_r1.to(DT)) * inv_unit
        tl.store(u + o_t + o_bn, b_u.to(DT), mask=m_bn)
        if SPIKING:
            tl.store(z + o_t + o_bn, b_z.to(DT), mask=m_bn)
            tl.store(free + o_t + o_bn, b_free.to(tl.uint8), mask=m_bn)
            b_v = tl.where(b_z, b_vreset, b_v)
            b_ref = tl.where(b_z, b_refsteps, tl.maximum(b_ref - 1, 0))
            if HAS_REC:
                tl.debug_barrier()
        else:
            tl.store(z + o_t + o_bn, tl.zeros([BB, BN], dtype=DT), mask=m_bn)
    tl.store(v_out + o_bn, b_v, mask=m_bn)
    tl.store(ie_out + o_bn, b_ie, mask=m_bn)
    tl.store(ii_out + o_bn, b_ii, mask=m_bn)
    tl.store(ref_out + o_bn, b_ref, mask=m_bn)


@triton.jit
def chip_lif_bwd_kernel(
    g_z, g_u, z, u, free, nom, w, g_vT, g_ieT, g_iiT,
    g_exc, g_inh, g_v0, g_ie0, g_ii0, g_z0,
    alpha, T, B, N,
    HAS_GZ: tl.constexpr, HAS_GU: tl.constexpr, HAS_INH: tl.constexpr, HAS_REC: tl.constexpr,
    SPIKING: tl.constexpr, KIND: tl.constexpr, HAS_GSTATE: tl.constexpr,
    STATE_GRADS: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    o_b, o_n, m_b, m_n, m_bn, o_bn = _tile(B, N, BB, BN)
    DT = nom.dtype.element_ty

    b_vth = tl.load(nom + o_n, mask=m_n, other=0.0)[None, :]
    b_amem = tl.load(nom + N + o_n, mask=m_n, other=0.0)[None, :]
    b_keep_m = 1.0 - b_amem
    b_keep_e = 1.0 - tl.load(nom + 2 * N + o_n, mask=m_n, other=0.0)[None, :]
    b_keep_i = 1.0 - tl.load(nom + 3 * N + o_n, mask=m_n, other=0.0)[None, :]

    # adjoints of v, i_exc, i_inh after step t (lambda_{t+1} in README.md): after the last step,
    # the cotangents of the final state (a run continued by a later call)
    if HAS_GSTATE:
        b_lv = tl.load(g_vT + o_bn, mask=m_bn, other=0.0).to(DT)
        b_le = tl.load(g_ieT + o_bn, mask=m_bn, other=0.0).to(DT)
        b_li = tl.load(g_iiT + o_bn, mask=m_bn, other=0.0).to(DT)
    else:
        b_lv = tl.zeros([BB, BN], dtype=DT)
        b_le = tl.zeros([BB, BN], dtype=DT)
        b_li = tl.zeros([BB, BN], dtype=DT)
    b_gzrec = tl.zeros([BB, BN], dtype=DT)
    # the observables of step t-1 are loaded while step t computes (they do not depend on the
    # adjoints), hiding the loop's long-latency reads as in the forward
    o_last = tl.cast(T - 1, tl.int64) * B * N
    b_gu_next = tl.zeros([BB, BN], dtype=DT)
    b_gz_next = tl.zeros([BB, BN], dtype=DT)
    b_z_next = tl.zeros([BB, BN], dtype=DT)
    b_u_next = tl.zeros([BB, BN], dtype=DT)
    b_free_next = tl.zeros([BB, BN], dtype=DT)
    if HAS_GU:
        b_gu_next = tl.load(g_u + o_last + o_bn, mask=m_bn, other=0.0).to(DT)
    if SPIKING:
        b_z_next = tl.load(z + o_last + o_bn, mask=m_bn, other=0.0).to(DT)
        b_free_next = tl.load(free + o_last + o_bn, mask=m_bn, other=0).to(DT)
        if HAS_GZ:
            b_gz_next = tl.load(g_z + o_last + o_bn, mask=m_bn, other=0.0).to(DT)
        if HAS_GZ or HAS_REC:
            b_u_next = tl.load(u + o_last + o_bn, mask=m_bn, other=0.0).to(DT)
    for i_t in range(T):
        o_t = tl.cast(T - 1 - i_t, tl.int64) * B * N
        o_p = tl.cast(tl.maximum(T - 2 - i_t, 0), tl.int64) * B * N
        tl.store(g_exc + o_t + o_bn, b_le, mask=m_bn)
        if HAS_INH:
            tl.store(g_inh + o_t + o_bn, b_li, mask=m_bn)
        b_g = tl.zeros([BB, BN], dtype=DT)
        if HAS_GU:
            b_g = b_gu_next
            b_gu_next = tl.load(g_u + o_p + o_bn, mask=m_bn, other=0.0).to(DT)
        if SPIKING:
            b_zt = b_z_next
            b_free = b_free_next
            b_z_next = tl.load(z + o_p + o_bn, mask=m_bn, other=0.0).to(DT)
            b_free_next = tl.load(free + o_p + o_bn, mask=m_bn, other=0).to(DT)
            if HAS_GZ or HAS_REC:
                b_gz = tl.zeros([BB, BN], dtype=DT)
                if HAS_GZ:
                    b_gz = b_gz_next
                    b_gz_next = tl.load(g_z + o_p + o_bn, mask=m_bn, other=0.0).to(DT)
                if HAS_REC:
                    b_gz = b_gz + b_gzrec
                b_ut = b_u_next
                b_u_next = tl.load(u + o_p + o_bn, mask=m_bn, other=0.0).to(DT)
                b_g = b_g + b_gz * surrogate_grad(b_ut - b_vth, alpha, KIND)
            b_g = (b_g + (1.0 - b_zt) * b_lv) * b_free
        else:
            b_g = b_g + b_lv
        if HAS_REC:
            # dL/dz[t-1] = lambda_e @ W+ + lambda_i @ W-, with lambda as just stored for step t
            tl.debug_barrier()
            b_gzrec = tl.zeros([BB, BN], dtype=DT)
            for k in range(0, N, BK):
                o_k = k + tl.arange(0, BK)
                m_k = o_k < N
                m_bk = m_b[:, None] & m_k[None, :]
                # [BB, BK]
                b_lek = tl.load(g_exc + o_t + o_b[:, None] * N + o_k[None, :], mask=m_bk, other=0.0)
                b_lik = tl.load(g_inh + o_t + o_b[:, None] * N + o_k[None, :], mask=m_bk, other=0.0)
                # [BK, BN]: rows postsynaptic, columns presynaptic
                b_w = tl.load(w + o_k[:, None] * N + o_n[None, :],
                              mask=m_k[:, None] & m_n[None, :], other=0.0)
                b_gzrec += tl.dot(b_lek, tl.maximum(b_w, 0.0), input_precision=PRECISION)
                b_gzrec += tl.dot(b_lik, tl.maximum(-b_w, 0.0), input_precision=PRECISION)
        b_lv = b_keep_m * b_g
        b_le = b_amem * b_g + b_keep_e * b_le
        b_li = b_keep_i * b_li - b_amem * b_g
    if STATE_GRADS:
        # the adjoints before the first step: the gradients of the initial state
        tl.store(g_v0 + o_bn, b_lv, mask=m_bn)
        tl.store(g_ie0 + o_bn, b_le, mask=m_bn)
        if HAS_INH:
            tl.store(g_ii0 + o_bn, b_li, mask=m_bn)
        else:
            tl.store(g_ii0 + o_bn, tl.zeros([BB, BN], dtype=DT), mask=m_bn)
        if HAS_REC:
            tl.store(g_z0 + o_bn, b_gzrec, mask=m_bn)


def _blocks(B, N, recurrent):
    """(BB, BN, BK, num_warps), or None to autotune. Recurrent: one program owns a batch tile and
    all N (tl.dot needs tiles >= 16). Feed-forward: independent neurons; on a GPU the tile is
    autotuned per (B, N) over FF_CONFIGS (occupancy against latency hiding), in the interpreter it
    is as wide as possible, since the interpreter's cost grows with the number of programs."""
    if recurrent:
        bn = max(16, backend.next_pow2(N))
        bk = max(16, min(bn, 8192 // bn))
        return 16, bn, bk, 4 if bn <= 128 else (8 if bn <= 512 else 16)
    if not backend.interpreting():
        return None
    bn = min(backend.next_pow2(N), 128)
    bb = min(backend.next_pow2(B), max(1, (1 << 14) // bn))
    return bb, bn, 16, 4


# feed-forward tiles tried on a GPU: (BB, BN, num_warps), from 128 to 1024 elements per program
FF_CONFIGS = ((1, 128, 1), (2, 128, 2), (4, 128, 4), (8, 128, 4), (4, 256, 8))


def _autotuned(kernel, key):
    configs = [triton.Config({"BB": bb, "BN": bn, "BK": 16}, num_warps=w, num_stages=_stages(False))
               for bb, bn, w in FF_CONFIGS]
    # the kernels only store (no accumulation into outputs), so re-running a config is harmless
    return triton.autotune(configs, key=["B", "N", *key])(kernel)


def _dot_precision(dtype):
    """fp32 tl.dot: IEEE in the interpreter (bit-equal to the twin); tf32x3 on a GPU (tensor
    cores, error ~2^-22 relative: exact for spikes times weights with <= 22 significant bits)."""
    return "ieee" if backend.interpreting() or dtype == torch.float64 else "tf32x3"


def _stages(recurrent):
    """One stage for the recurrent W tiles: multi-buffering them overflows shared memory at
    N = 1024 (264 KB for sm_90 at 3 stages, 66 KB at 1) and costs registers."""
    return 1 if recurrent else 3


def _grid(B, N, bb, bn):
    return (triton.cdiv(N, bn), triton.cdiv(B, bb))


def forward(config, x_exc, x_inh, par, ref_steps, offset, w_exc, w_inh, seed, step0=0, v0=None,
            ie0=None, ii0=None, ref0=None, z0=None):
    """Same contract as reference.forward (inputs contiguous); free is uint8."""
    T, B, N = x_exc.shape
    cdtype, dev = par.dtype, x_exc.device
    spiking, unit = config.spiking, config.unit_lsb
    recurrent = w_exc is not None
    has_state = v0 is not None
    z = backend.alloc((T, B, N), cdtype, dev)
    u = backend.alloc((T, B, N), cdtype, dev)
    free = backend.alloc((T, B, N) if spiking else (0,), torch.uint8, dev)
    state_out = [backend.alloc((B, N), cdtype, dev) for _ in range(3)]
    ref_out = backend.alloc((B, N), torch.int32, dev)
    # W^T so that tiles of z[t-1] @ W^T read contiguous rows
    w_exc_t = w_exc.to(cdtype).t().contiguous() if recurrent else par
    w_inh_t = w_inh.to(cdtype).t().contiguous() if recurrent else par
    state = lambda t, dtype=cdtype: t.to(dtype).contiguous() if has_state and t is not None else par
    # a seed tensor (int64, on the device) is read by the kernel; an int is passed by value
    seed_ptr = seed.reshape(1) if isinstance(seed, torch.Tensor) else ref_steps
    _launch(chip_lif_fwd_kernel, B, N, recurrent,
            (x_exc, x_inh if x_inh is not None else x_exc, par, ref_steps,
             offset.to(cdtype).contiguous(), w_exc_t, w_inh_t,
             state(v0), state(ie0), state(ii0), state(ref0, torch.int32) if has_state else ref_steps,
             state(z0) if recurrent else par,
             z, u, free if spiking else z, *state_out, ref_out,
             0 if isinstance(seed, torch.Tensor) else seed, seed_ptr, int(step0) * B * N,
             config.membrane_noise_lsb / unit, config.readout_noise_lsb,
             unit, config.zero_lsb, 1.0 / unit, T, B, N),
            dict(HAS_INH=x_inh is not None, HAS_REC=recurrent, SPIKING=spiking,
                 QUANTISE=config.quantise, MEM_NOISE=config.membrane_noise_lsb > 0,
                 READ_NOISE=config.readout_noise_lsb > 0, HAS_STATE=has_state,
                 SEED_PTR=isinstance(seed, torch.Tensor), PRECISION=_dot_precision(cdtype)))
    return (z, u, *state_out, free, ref_out)


def _launch(kernel, B, N, recurrent, args, constexprs):
    """Launch with the tile of _blocks, or through the kernel's autotuner when it says None."""
    blocks = _blocks(B, N, recurrent)
    if blocks is None:
        tuned = _TUNED[kernel]
        grid = lambda meta: _grid(B, N, meta["BB"], meta["BN"])
        tuned[grid](*args, **constexprs, enable_fp_fusion=False)
        return
    bb, bn, bk, warps = blocks
    kernel[_grid(B, N, bb, bn)](*args, **constexprs, BB=bb, BN=bn, BK=bk, num_warps=warps,
                                num_stages=_stages(recurrent), enable_fp_fusion=False)


def backward(config, g_z, g_u, z, u, free, nom, w, g_v=None, g_ie=None, g_ii=None):
    """Same contract as reference.backward (nom packed in u's dtype); the inhibitory gradient is
    always computed."""
    T, B, N = u.shape
    cdtype, dev = u.dtype, u.device
    spiking, has_inh, has_state = config.spiking, config.has_inh, config.has_state
    recurrent = w is not None
    if recurrent:
        w = w.to(cdtype).contiguous()
    g_z = None if g_z is None or not spiking else g_z.contiguous()
    g_u = None if g_u is None else g_u.contiguous()
    g_exc = backend.alloc((T, B, N), cdtype, dev)
    g_inh = backend.alloc((T, B, N) if has_inh else (0,), cdtype, dev)
    grads0 = [backend.alloc((B, N) if has_state else (0,), cdtype, dev) for _ in range(3)]
    g_z0 = backend.alloc((B, N) if has_state and recurrent else (0,), cdtype, dev)
    has_gstate = g_v is not None or g_ie is not None or g_ii is not None
    cot = lambda t: (torch.zeros((B, N), dtype=cdtype, device=dev) if t is None
                     else t.to(cdtype).contiguous()) if has_gstate else u
    _launch(chip_lif_bwd_kernel, B, N, recurrent,
            (g_z if g_z is not None else u, g_u if g_u is not None else u, z, u,
             free if spiking else z, nom, w if recurrent else nom, cot(g_v), cot(g_ie), cot(g_ii),
             g_exc, g_inh if has_inh else g_exc, *(g if has_state else g_exc for g in grads0),
             g_z0 if has_state and recurrent else g_exc, config.alpha, T, B, N),
            dict(HAS_GZ=g_z is not None, HAS_GU=g_u is not None, HAS_INH=has_inh,
                 HAS_REC=recurrent, SPIKING=spiking, KIND=config.surrogate,
                 HAS_GSTATE=has_gstate, STATE_GRADS=has_state, PRECISION=_dot_precision(cdtype)))
    if not has_state:
        return g_exc, (g_inh if has_inh else None), None, None, None, None
    return (g_exc, (g_inh if has_inh else None), *grads0, g_z0 if recurrent else None)


_TUNED = {chip_lif_fwd_kernel: _autotuned(chip_lif_fwd_kernel, ["SPIKING", "HAS_INH", "MEM_NOISE"]),
          chip_lif_bwd_kernel: _autotuned(chip_lif_bwd_kernel, ["SPIKING", "HAS_INH", "HAS_GZ"])}
