"""snntorch's neuron op on the CPU through the compiled C loop (cpu_loop.c): the forward of
reference.forward and the reverse sweep of its backward, for neurons without recurrence and with
reset_delay=True (what forward_pass runs for Leaky, Synaptic, Lapicque); everything else keeps
the twin. Same results bit for bit: the C code repeats the twin's operations in its order."""
import ctypes
from pathlib import Path

import torch

from .. import native, paths
from ..backend import output, scratch
from . import REC_NONE, RESET_ZERO
from .reference import backward as reference_backward

SOURCE = Path(__file__).with_name("cpu_loop.c")
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def loop_for(spec, x):
    """The loaded C library when the compiled loop runs this neuron, else None."""
    if x.device.type != "cpu" or x.dtype not in SUFFIX or spec.rec != REC_NONE or not spec.delay:
        return None
    return native.library(SOURCE)


def _call(fn, *args):
    """fn(*args), tensors as pointers (held here until fn returns)."""
    fn(*(ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args))


def _flat(t, like):
    """A step-shaped tensor (maybe a broadcast view) as a contiguous [E] buffer."""
    return None if t is None else t.expand(like.shape[1:]).contiguous()


def forward(lib, spec, x, u0, i0, beta, alpha, theta, g):
    """reference.forward for loop_for's neurons: (spk, syn, mem, None)."""
    T = x.shape[0]
    x = x.contiguous()
    mem = output("snn.mem", x.shape, x.dtype, "cpu")
    syn = output("snn.syn", x.shape, x.dtype, "cpu") if spec.synaptic else None
    zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
    _call(getattr(lib, f"snn_fwd_{SUFFIX[x.dtype]}"), ctypes.c_int64(T),
          ctypes.c_int64(x[0].numel()), x, _flat(u0, x), _flat(i0, x), _flat(beta, x),
          _flat(alpha, x), _flat(theta, x), ctypes.c_int(spec.synaptic), ctypes.c_int(spec.reset),
          ctypes.c_int(zero_pre), mem, syn)
    spk = output("snn.spk", x.shape, torch.float32, "cpu")
    torch.mul(torch.gt(mem, theta, out=scratch("snn.fired", mem.shape, torch.bool, "cpu")), g,
              out=spk)
    paths.note("loop", "compiled")
    return spk, syn, mem, None


def backward(lib, spec, *args, **kwargs):
    """reference.backward with the sweep of the adjoints in C (the rest is whole-sequence ops)."""
    def sweep(spec, g_mem, g_fire, keep, g_syn, beta, alpha, zero_post, zero_pre, g_x, g_u1, u0):
        lam_u = torch.zeros(u0.shape, dtype=g_x.dtype)
        lam_i = torch.zeros(u0.shape, dtype=g_x.dtype) if spec.synaptic else None
        cast = lambda t: None if t is None else t.to(g_x.dtype).contiguous()
        _call(getattr(lib, f"snn_bwd_{SUFFIX[g_x.dtype]}"), ctypes.c_int64(g_x.shape[0]),
              ctypes.c_int64(u0.numel()), cast(g_mem), cast(g_fire), cast(keep), cast(g_syn),
              _flat(beta, g_x), _flat(alpha, g_x), ctypes.c_int(spec.synaptic),
              ctypes.c_int(zero_post), ctypes.c_int(zero_pre), g_x, g_u1, lam_u, lam_i,
              torch.empty(u0.numel(), dtype=g_x.dtype))
        paths.note("loop", "compiled")
        return lam_u, lam_i
    return reference_backward(spec, *args, **kwargs, sweep=sweep)
