"""Synaptic products from spike events: what the chip does, and on a CPU far cheaper than a dense
GEMM when few presynaptic neurons fire.

For presynaptic activity s [M, K] (rows: time steps x batch; mostly zeros) and weights W [N, K]:

    forward        x = s @ W^T           x[m] = sum over the events (m, k) of s[m, k] W[:, k]
    weight grad    dW = g^T @ s          dW[:, k] = sum over the events (m, k) of s[m, k] g[m]

Both are sums over the events in row order (the forward per row, the weight gradient per column:
each column's events in row order): a C loop (events.c, into reused buffers) where native.py
builds it, else `embedding_bag(mode="sum")` (the weight gradient's events stably sorted by
column). Sums of the same terms in another order: bit-identical where every partial sum is exact
(0/1 spikes times integer weight codes), equal up to rounding otherwise.

Measured here (1 thread, 2-core CPU shared with other jobs), A's input layer [25600 x 256] x
[256 -> 246], forward + weight gradient, events (including finding them) vs dense GEMMs:
0.4 % density 17.6 vs 122 ms; 1 % 23 vs 109 ms; 3 % 39 vs 108 ms; 10 % 118 vs 125 ms;
20 % 286 vs 162 ms. So `product="auto"` takes the events up to EVENTS_MAX_DENSITY, measured per
call (one count of the nonzeros, ~3 ms there) on the CPU only: on CUDA it would synchronise the
host, so auto keeps the dense GEMM there.
"""
import ctypes
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import backend, native, paths
from .scoped import ScopedChoice

PRODUCTS = ("auto", "dense", "events")
EVENTS_MAX_DENSITY = 0.05
# a [M, K] @ [K, N] GEMM with many rows runs on the CPU as a batch of ROW_BLOCK-row GEMMs: measured
# here (1 thread, MKL, output preallocated) [25600, 10] @ [10, 246] 16 -> 5 ms, [25600, 256] @
# [256, 246] 82 -> 49 ms
ROW_BLOCK = 256
SOURCE = Path(__file__).with_name("events.c")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_product = ["auto"]


class product_path(ScopedChoice):
    """Set (or, as a context manager, scope) how synaptic products run: PRODUCTS ("events" on a
    CUDA tensor is refused: finding events there synchronises the host)."""
    choices, label, current = PRODUCTS, "product", _product


class Events(NamedTuple):
    """The nonzeros of s [M, K], row-major: offsets [M + 1] (row m's events are
    cols[offsets[m]:offsets[m + 1]]), rows / cols [nnz], values [nnz] (None: all ones)."""
    offsets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple


def events_of(flat, capacity=None):
    """Events of a 2-D tensor; None when there are more than `capacity` (default: no limit). On
    the CPU one pass of the C event finder (events.c) where it is built (native.cpu_loop), else
    torch's nonzero."""
    M, K = flat.shape
    lib = _finder(flat)
    if lib is not None:
        return _found(lib, flat, flat.numel() if capacity is None else int(capacity))
    if capacity is not None and int(flat.count_nonzero()) > capacity:
        return None
    idx = flat.reshape(-1).nonzero().squeeze(1)
    rows = torch.div(idx, K, rounding_mode="floor")
    cols = idx - rows * K
    values = flat.reshape(-1)[idx]
    # 0/1 spikes need no per-event factor: the sum of weights is then exactly the product's terms
    if bool((values == 1).all()):
        values = None
    offsets = torch.zeros(M + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(torch.bincount(rows, minlength=M), 0, out=offsets[1:])
    return Events(offsets, rows, cols, values, (M, K))


def _finder(flat):
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64) or \
            not flat.is_contiguous():
        return None
    return native.library(SOURCE)


def _found(lib, flat, capacity):
    M, K = flat.shape
    offsets = torch.empty(M + 1, dtype=torch.int64)
    cols = torch.empty(max(capacity, 1), dtype=torch.int64)
    ones = torch.zeros(1, dtype=torch.int32)
    fn = lib.spike_events_f32 if flat.dtype == torch.float32 else lib.spike_events_f64
    fn.restype = ctypes.c_int64
    nnz = fn(ctypes.c_int64(M), ctypes.c_int64(K), ctypes.c_void_p(flat.data_ptr()),
             ctypes.c_int64(capacity), ctypes.c_void_p(offsets.data_ptr()),
             ctypes.c_void_p(cols.data_ptr()), ctypes.c_void_p(ones.data_ptr()))
    if nnz < 0:
        return None
    cols = cols[:nnz]
    rows = torch.repeat_interleave(torch.arange(M), offsets.diff())
    values = None if int(ones) else flat.reshape(-1)[rows * K + cols]
    return Events(offsets, rows, cols, values, (M, K))


def choose(flat, may_read=True):
    """Events of `flat` when the product should use them, else None (dense). Measured per call
    on the CPU ("auto"); never on CUDA unless asked for. may_read=False: the caller's hot path
    must read no tensor value on the host (bss2_backend's value-check policy off, as on a GPU and
    for steps meant for capture): auto keeps the dense product without counting."""
    mode = _product[0]
    # traced code cannot branch on a count (data-dependent): compiled graphs keep the GEMM
    if mode == "dense" or torch.compiler.is_compiling() or (mode == "auto" and not may_read):
        return None
    if flat.device.type != "cpu":
        if mode == "events":
            raise ValueError("product_path('events') runs on CPU tensors only: finding events on "
                             "a GPU synchronises the host; use 'auto' or 'dense' there")
        return None
    return events_of(flat, EVENTS_MAX_DENSITY * flat.numel() if mode == "auto" else None)


def product(flat, events, weight):
    """flat [M, K] @ weight [N, K]^T, from `events` (events_of(flat)) or dense when None."""
    if events is None:
        paths.note("product", "dense")
        return rows_matmul(flat, weight.t())
    paths.note("product", "events")
    table = weight.t().contiguous()
    lib = _summer(table)
    if lib is not None:
        M, N = events.shape[0], table.shape[1]
        out = backend.output("events.product", (M, N), table.dtype, "cpu")
        _call(getattr(lib, f"events_product_{_SUFFIX[table.dtype]}"), M, N, events.offsets,
              events.cols, _values(events, table), table, out)
        return out
    return F.embedding_bag(events.cols, table, events.offsets[:-1], mode="sum",
                           per_sample_weights=events.values)


def weight_grad(grad, flat, events):
    """grad [M, N]^T @ flat [M, K] -> [N, K], from `events` or dense when None."""
    if events is None:
        return grad.t() @ flat
    M, K = events.shape
    grad = grad.contiguous()
    lib = _summer(grad)
    if lib is not None:
        out = torch.zeros(K, grad.shape[1], dtype=grad.dtype)
        _call(getattr(lib, f"events_weight_grad_{_SUFFIX[grad.dtype]}"), M, grad.shape[1],
              events.offsets, events.cols, _values(events, grad), grad, out)
        return out.t()
    order = torch.argsort(events.cols, stable=True)
    offsets = torch.zeros(K + 1, dtype=torch.int64, device=grad.device)
    torch.cumsum(torch.bincount(events.cols, minlength=K), 0, out=offsets[1:])
    values = None if events.values is None else events.values[order]
    return F.embedding_bag(events.rows[order], grad, offsets[:-1], mode="sum",
                           per_sample_weights=values).t()


def _summer(t):
    """The C library for the sums over events of `t`'s dtype on the CPU, else None (torch)."""
    if t.device.type != "cpu" or t.dtype not in _SUFFIX:
        return None
    return native.library(SOURCE)


def _values(events, like):
    return None if events.values is None else events.values.to(like.dtype).contiguous()


def _call(fn, *args):
    """fn(*args): tensors as pointers (held here until fn returns), ints as int64."""
    fn(*(ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else
         None if a is None else ctypes.c_int64(a) for a in args))


def rows_matmul(a, b):
    """a [M, K] @ b [K, N]; on the CPU, for many rows, as a batch of ROW_BLOCK-row GEMMs (same
    terms per element; MKL's single GEMM over all rows was slower, see ROW_BLOCK)."""
    M = a.shape[0]
    if a.device.type != "cpu" or M < 2 * ROW_BLOCK or torch.compiler.is_compiling() or \
            (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return a @ b
    q = M // ROW_BLOCK * ROW_BLOCK
    out = torch.empty(M, b.shape[1], dtype=torch.result_type(a, b))
    torch.bmm(a[:q].reshape(-1, ROW_BLOCK, a.shape[1]), b.expand(q // ROW_BLOCK, *b.shape),
              out=out[:q].view(-1, ROW_BLOCK, b.shape[1]))
    if q < M:
        torch.mm(a[q:], b, out=out[q:])
    return out


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, events):
        y = product(None, events, weight).to(x.dtype)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(weight)
        ctx.events, ctx.shape, ctx.has_bias = events, x.shape, bias is not None
        ctx.set_materialize_grads(False)
        return y.reshape(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        if g is None:
            return None, None, None, None
        g = g.reshape(-1, g.shape[-1])
        g_x = rows_matmul(g, weight).reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        g_w = None
        if ctx.needs_input_grad[1]:
            g_w = weight_grad(g, None, ctx.events).to(weight.dtype)
        g_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return g_x, g_w, g_b, None


def spike_linear(x, weight, bias=None, may_read=True):
    """F.linear(x, weight, bias) for x [..., K] of mostly-zero presynaptic activity: from its
    events where product_path allows and the measured density is low (module docstring), else
    F.linear itself (unchanged results). The weight gradient comes from the same events."""
    events = choose(x.reshape(-1, x.shape[-1]), may_read)
    if events is None:
        paths.note("product", "dense")
        return F.linear(x, weight, bias)
    return _SpikeLinear.apply(x, weight, bias, events)
