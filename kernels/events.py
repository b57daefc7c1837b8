"""Synaptic products from spike events: what the chip does, and on a CPU far cheaper than a dense
GEMM when few presynaptic neurons fire.

For presynaptic activity s [M, K] (rows: time steps x batch; mostly zeros) and weights W [N, K]:

    forward        x = s @ W^T           x[m] = sum over the events (m, k) of s[m, k] W[:, k]
    weight grad    dW = g^T @ s          dW[:, k] = sum over the events (m, k) of s[m, k] g[m]

Both are `embedding_bag(mode="sum")` over the events, grouped by row for the forward and by
column for the weight gradient (a stable sort keeps each column's events in row order). Sums of
the same terms in another order: bit-identical where every partial sum is exact (0/1 spikes times
integer weight codes), equal up to rounding otherwise.

Measured here (1 thread, 2-core CPU shared with other jobs), A's input layer [25600 x 256] x
[256 -> 246], forward + weight gradient, events (including finding them) vs dense GEMMs:
0.4 % density 17.6 vs 122 ms; 1 % 23 vs 109 ms; 3 % 39 vs 108 ms; 10 % 118 vs 125 ms;
20 % 286 vs 162 ms. So `product="auto"` takes the events up to EVENTS_MAX_DENSITY, measured per
call (one count of the nonzeros, ~3 ms there) on the CPU only: on CUDA it would synchronise the
host, so auto keeps the dense GEMM there.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import paths

PRODUCTS = ("auto", "dense", "events")
EVENTS_MAX_DENSITY = 0.05
_product = ["auto"]


class product_path:
    """Set (or, as a context manager, scope) how synaptic products run: PRODUCTS ("events" on a
    CUDA tensor is refused: finding events there synchronises the host)."""

    def __init__(self, mode):
        if mode not in PRODUCTS:
            raise ValueError(f"product must be one of {PRODUCTS}, got {mode!r}")
        self.previous = _product[0]
        _product[0] = mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _product[0] = self.previous
        return False


class Events(NamedTuple):
    """The nonzeros of s [M, K], row-major: offsets [M + 1] (row m's events are
    cols[offsets[m]:offsets[m + 1]]), rows / cols [nnz], values [nnz] (None: all ones)."""
    offsets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple


def events_of(flat):
    """Events of a 2-D tensor."""
    M, K = flat.shape
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
    if mode == "auto" and int(flat.count_nonzero()) > EVENTS_MAX_DENSITY * flat.numel():
        return None
    return events_of(flat)


def product(flat, events, weight):
    """flat [M, K] @ weight [N, K]^T, from `events` (events_of(flat)) or dense when None."""
    if events is None:
        paths.note("product", "dense")
        return flat @ weight.t()
    paths.note("product", "events")
    table = weight.t().contiguous()
    return F.embedding_bag(events.cols, table, events.offsets, mode="sum",
                           per_sample_weights=events.values, include_last_offset=True)


def weight_grad(grad, flat, events):
    """grad [M, N]^T @ flat [M, K] -> [N, K], from `events` or dense when None."""
    if events is None:
        return grad.t() @ flat
    K = events.shape[1]
    order = torch.argsort(events.cols, stable=True)
    offsets = torch.zeros(K + 1, dtype=torch.int64, device=grad.device)
    torch.cumsum(torch.bincount(events.cols, minlength=K), 0, out=offsets[1:])
    values = None if events.values is None else events.values[order]
    return F.embedding_bag(events.rows[order], grad.contiguous(), offsets, mode="sum",
                           per_sample_weights=values, include_last_offset=True).t()


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
        g_x = (g @ weight).reshape(ctx.shape) if ctx.needs_input_grad[0] else None
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
