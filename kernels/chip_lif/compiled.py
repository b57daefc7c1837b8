"""The chip LIF op's CPU path through the compiled C loop (cpu_loop.c): same arguments and results
as reference.forward / backward. Recurrent layers run their forward here (the recurrent input from
the previous step's spike events) and their backward in the twin, whose per-step GEMMs of dense
adjoints BLAS does better than a plain C loop.

The loop draws its noise itself (a counter-based generator keyed per step, cpu_loop.c): noise-free
runs equal the twin bit for bit; noisy runs equal it in law (the twin's torch.Generator per step
cost more than the rest of the forward), and a run computed in pieces equals the run computed
whole, as for the twin and the Triton kernels.
"""
import ctypes
from pathlib import Path

import torch

from .. import backend as _backend
from .. import native, paths
from . import CADC_MAX, CADC_MIN
from .reference import host_seed, step_seed

SOURCE = Path(__file__).with_name("cpu_loop.c")
DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def loop_for(device, dtype, recurrent_backward=False):
    """The loaded C library when the compiled loop runs this call, else None (the twin runs): the
    forward of every layer, the backward of layers without recurrence."""
    if torch.device(device).type != "cpu" or recurrent_backward or dtype not in DTYPES:
        return None
    return native.library(SOURCE)


def _call(fn, *args):
    """fn(*args) with tensors passed as pointers: the tensors stay referenced here until fn
    returns (a temporary's memory is freed as soon as nothing holds it)."""
    fn(*(ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args))


def _scalar(dtype):
    return ctypes.c_float if dtype == torch.float32 else ctypes.c_double


def _keys(seed, step0, T):
    """[T, 3] int32: the generator's keys of each step (three 32-bit words from the twin's step
    mix of seed and step, stream 2)."""
    words = []
    for t in range(T):
        k = step_seed(seed, step0 + t, 2)
        lo, hi = k & 0xFFFFFFFF, k >> 32
        words += [lo, hi, (lo * 0x9E3779B9 + hi) & 0xFFFFFFFF]
    signed = [w - (1 << 32) if w >= 1 << 31 else w for w in words]
    return torch.tensor(signed, dtype=torch.int32).reshape(T, 3)


def forward(lib, config, x_exc, x_inh, par, ref_steps, offset, w_exc, w_inh, seed, step0=0, v0=None,
            ie0=None, ii0=None, ref0=None, z0=None):
    """reference.forward on the compiled loop."""
    T, B, N = x_exc.shape
    cdtype = par.dtype
    v_leak, v_reset, v_th, a_mem, a_syn_exc, a_syn_inh = (r.contiguous() for r in par)
    keep_e, keep_i = (1.0 - a_syn_exc).contiguous(), (1.0 - a_syn_inh).contiguous()
    offset = offset.to(cdtype).contiguous()
    offset_u = (offset * (1.0 / config.unit_lsb)).contiguous()
    seed = host_seed(seed, config)
    spiking = config.spiking
    refractory = spiking and bool(ref_steps.any())
    x_exc = x_exc.to(cdtype).contiguous()
    x_inh = x_inh.to(cdtype).contiguous() if x_inh is not None else None
    # row k of rec_*: the weights from presynaptic neuron k (the twin's z[t-1] @ w^T)
    rec_e = rec_i = None
    if w_exc is not None:
        rec_e = w_exc.to("cpu", cdtype).t().contiguous()
        rec_i = w_inh.to("cpu", cdtype).t().contiguous()
        z0 = None if z0 is None else z0.to(cdtype).contiguous()
    else:
        z0 = None
    noisy = config.membrane_noise_lsb > 0 or config.readout_noise_lsb > 0
    keys = _keys(seed, step0, T) if noisy else None
    sigma_r = config.readout_noise_lsb / (1.0 if config.quantise else config.unit_lsb)
    state = lambda t, default: default() if t is None else t.to(cdtype).contiguous().clone()
    v = state(v0, lambda: v_leak.expand(B, N).contiguous())
    i_e = state(ie0, lambda: torch.zeros(B, N, dtype=cdtype))
    i_i = state(ii0, lambda: torch.zeros(B, N, dtype=cdtype))
    ref = torch.zeros(B, N, dtype=torch.int32) if ref0 is None else \
        ref0.to(torch.int32).contiguous().clone()
    u_out = _backend.output("chip_lif.u", (T, B, N), cdtype, "cpu")
    z_out = _backend.output("chip_lif.z", (T, B, N), cdtype, "cpu") if spiking else \
        torch.zeros(T, B, N, dtype=cdtype)
    free_out = torch.empty(0, dtype=torch.bool) if not spiking else \
        (_backend.output("chip_lif.free", (T, B, N), torch.bool, "cpu") if refractory else
         _backend.output("chip_lif.free", (T, B, N), torch.bool, "cpu").fill_(True))
    real = _scalar(cdtype)
    _call(getattr(lib, f"chip_lif_fwd_{DTYPES[cdtype]}"),
          *(_int64(n) for n in (T, B, N)), x_exc, x_inh, v_leak, v_reset, v_th, a_mem, keep_e,
          keep_i, ref_steps.to(torch.int32).contiguous(), offset, offset_u,
          *(_int(f) for f in (spiking, refractory, config.quantise)),
          real(config.unit_lsb), real(config.zero_lsb), real(1.0 / config.unit_lsb),
          real(CADC_MIN), real(CADC_MAX), keys, real(config.membrane_noise_lsb / config.unit_lsb),
          real(sigma_r), v, i_e, i_i, ref, z_out, u_out, free_out if refractory else None,
          torch.empty(N, dtype=cdtype), torch.empty(N), torch.empty(N), rec_e, rec_i, z0,
          torch.empty(N, dtype=cdtype), torch.empty(N, dtype=cdtype))
    paths.note("loop", "compiled")
    return z_out, u_out, v, i_e, i_i, free_out, ref


def backward(lib, config, g_z, g_u, z, u, free, nom, g_v=None, g_ie=None, g_ii=None):
    """reference.backward without recurrence (w None), on the compiled loop."""
    T, B, N = u.shape
    cdtype = u.dtype
    v_th, a_mem, a_syn_exc, a_syn_inh = (r.contiguous() for r in nom.to(cdtype))
    keep_m, keep_e, keep_i = ((1.0 - a).contiguous() for a in (a_mem, a_syn_exc, a_syn_inh))
    own_inh = config.has_inh and not config.mirrored
    g_exc = _backend.output("chip_lif.g_exc", (T, B, N), cdtype, "cpu")
    g_inh = _backend.output("chip_lif.g_inh", (T, B, N), cdtype, "cpu") if own_inh else None
    _start(g_exc[T - 1], g_ie)
    if own_inh:
        _start(g_inh[T - 1], g_ii)
    lam_v = torch.zeros(B, N, dtype=cdtype) if g_v is None else \
        g_v.to(cdtype).contiguous().clone()
    g_last = torch.empty(B, N, dtype=cdtype)
    cast = lambda t: None if t is None else t.to(cdtype).contiguous()
    real = _scalar(cdtype)
    _call(getattr(lib, f"chip_lif_bwd_{DTYPES[cdtype]}"),
          *(_int64(n) for n in (T, B, N)), cast(g_z), cast(g_u), z.to(cdtype).contiguous(),
          u.contiguous(), free.to(torch.bool).contiguous() if config.spiking else None, v_th,
          a_mem, keep_m, keep_e, keep_i, _int(config.surrogate), real(config.alpha), lam_v,
          g_exc, g_inh, g_last, torch.empty(N, dtype=cdtype), torch.empty(N, dtype=cdtype))
    paths.note("loop", "compiled")
    if not config.has_state:
        return g_exc, g_inh, None, None, None, None
    g_ie0 = torch.mul(g_exc[0], keep_e).addcmul_(g_last, a_mem)
    if own_inh:
        g_ii0 = torch.mul(g_inh[0], keep_i).addcmul_(g_last, a_mem, value=-1.0)
    else:
        g_ii0 = -g_ie0 if config.has_inh else torch.zeros_like(g_ie0)
    return g_exc, g_inh, lam_v, g_ie0, g_ii0, None


def _start(out, cotangent):
    if cotangent is None:
        out.zero_()
    else:
        out.copy_(cotangent)


def _int(x):
    return ctypes.c_int(int(x))


def _int64(x):
    return ctypes.c_int64(int(x))
