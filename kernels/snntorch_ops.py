"""snntorch's neurons over all time steps as one differentiable op, on the Triton kernels or the twin.

Registered with torch.library (bss2::snntorch_neuron_fwd / _bwd, with fake implementations and
autograd), so it passes opcheck and composes with torch.compile. The torch path
(snntorch_reference) never imports Triton; backend="triton" imports the kernels (snntorch_neurons)
on first use.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from bss2_backend.dynamics import resolve_backend
from bss2_backend.validation import refuse_double_backward

from . import snntorch_reference as reference
from .snntorch_spec import REC_DENSE, REC_EXTERNAL, REC_ONE_TO_ONE, NeuronSpec


def _impl(backend):
    if backend == "triton":
        from . import snntorch_neurons
        return snntorch_neurons
    return reference


def _spec(flags, surrogate_param):
    synaptic, rec, reset, zero_pre, delay, late, surrogate = flags
    return NeuronSpec(bool(synaptic), rec, reset, bool(zero_pre), bool(delay), late, surrogate,
                      surrogate_param)


def _none_if_empty(t):
    return None if t is None or t.numel() == 0 and t.dim() == 1 else t


def _fwd_impl(x: Tensor, u0: Tensor, i0: Optional[Tensor], s0: Optional[Tensor], beta: Tensor,
            alpha: Optional[Tensor], theta: Tensor, g: Tensor, r: Optional[Tensor],
            v: Optional[Tensor], w: Optional[Tensor], bias: Optional[Tensor], flags: List[int],
            surrogate_param: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    spec = _spec(flags, surrogate_param)
    spk, syn, mem, pre = _impl(backend).neuron_fwd(spec, x, u0, i0, s0, beta, alpha, theta, g, r, v,
                                                   w, bias)
    return spk, x.new_empty(0) if syn is None else syn, mem, x.new_empty(0) if pre is None else pre


_fwd_op = torch.library.custom_op("bss2::snntorch_neuron_fwd", mutates_args=())(_fwd_impl)


@_fwd_op.register_fake
def _(x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias, flags, surrogate_param, backend):
    spec = _spec(flags, surrogate_param)
    full = lambda: x.new_empty(x.shape)
    return (x.new_empty(x.shape, dtype=torch.float32), full() if spec.synaptic else x.new_empty(0),
            full(), x.new_empty(0) if spec.delay else full())


def _bwd_impl(g_spk: Optional[Tensor], g_syn: Optional[Tensor], g_mem: Optional[Tensor], spk: Tensor,
            syn: Tensor, mem: Tensor, pre: Tensor, u0: Tensor, i0: Optional[Tensor],
            s0: Optional[Tensor], beta: Tensor, alpha: Optional[Tensor], theta: Tensor, g: Tensor,
            v: Optional[Tensor], w: Optional[Tensor], need: List[bool], flags: List[int],
            surrogate_param: float, backend: str) -> List[Tensor]:
    spec = _spec(flags, surrogate_param)
    out = _impl(backend).neuron_bwd(spec, g_spk, _none_if_empty(g_syn) if spec.synaptic else None,
                                    g_mem, spk, _none_if_empty(syn), mem, _none_if_empty(pre), u0,
                                    i0, s0, beta, alpha, theta, g, v, w, tuple(need))
    return [mem.new_empty(0) if t is None else t for t in out]


_bwd_op = torch.library.custom_op("bss2::snntorch_neuron_bwd", mutates_args=())(_bwd_impl)


@_bwd_op.register_fake
def _(g_spk, g_syn, g_mem, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w, need, flags,
      surrogate_param, backend):
    spec = _spec(flags, surrogate_param)
    step = lambda cond: u0.new_empty(u0.shape) if cond else u0.new_empty(0)
    recurrent = spec.rec in (REC_ONE_TO_ONE, REC_DENSE)
    return [mem.new_empty(mem.shape), step(True), step(spec.synaptic), step(recurrent),
            *(step(n) for n in need)]


def _setup_context(ctx, inputs, output):
    x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias, flags, surrogate_param, backend = inputs
    spk, syn, mem, pre = output
    ctx.flags, ctx.surrogate_param, ctx.backend = flags, surrogate_param, backend
    ctx.bwd = _bwd_op
    ctx.save_for_backward(spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w)


def _backward(ctx, g_spk, g_syn, g_mem, g_pre):
    spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w = ctx.saved_tensors
    spec = _spec(ctx.flags, ctx.surrogate_param)
    need = [bool(ctx.needs_input_grad[i]) for i in (4, 5, 6, 7)]
    out = ctx.bwd(g_spk, g_syn if spec.synaptic else None, g_mem, spk, syn, mem, pre, u0, i0, s0,
                  beta, alpha, theta, g, v, w, need, ctx.flags, ctx.surrogate_param, ctx.backend)
    g_x, g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta, g_g = (_none_if_empty(t) for t in out)
    g_r = g_v = g_w = g_bias = None
    if spec.rec == REC_EXTERNAL:
        g_r = g_x
    elif spec.rec in (REC_ONE_TO_ONE, REC_DENSE) and any(ctx.needs_input_grad[9:12]):
        s_prev = torch.cat([s0.unsqueeze(0).to(g_x.dtype), spk[:-1].to(g_x.dtype)])
        if spec.rec == REC_ONE_TO_ONE:
            g_v = (g_x * s_prev).sum(0)
        else:
            n = w.shape[0]
            g_x2 = g_x.reshape(-1, n)
            g_w = g_x2.t() @ s_prev.reshape(-1, n)
            g_bias = g_x2.sum(0) if ctx.needs_input_grad[11] else None
    return (g_x, g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta, g_g, g_r, g_v, g_w, g_bias, None,
            None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerNeuron(torch.autograd.Function):
    """The same forward and backward as the custom ops, without the custom-op dispatcher, whose
    host time per call outweighs the kernels' outside torch.compile (it runs under compile)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.bwd = _bwd_impl
        return output

    @staticmethod
    def backward(ctx, *grads):
        refuse_double_backward("snntorch neuron op")
        return _backward(ctx, *grads)


def _step_param(name, p, step_shape, like):
    if p is None:
        return None
    p = p.to(like.dtype) if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=like.dtype)
    p = p.to(like.device)
    try:
        return p.expand(step_shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(p.shape)} does not broadcast to one step of the "
                         f"input, shape {tuple(step_shape)}") from None


def snntorch_neuron(spec, x, u0, i0=None, s0=None, *, beta, alpha=None, theta, g, r=None, v=None,
                    w=None, bias=None, backend="auto"):
    """snntorch neuron updates over all steps of x.

    Args:
        spec: NeuronSpec (which neuron, reset, reset_delay, recurrence, surrogate).
        x: input current [T, *S] (float32 or float64); u0, i0, s0: initial membrane, synaptic
            current (synaptic neurons) and spikes (recurrent ones) [*S].
        beta, alpha: clamped decays; theta: threshold; g: graded spike factor; each broadcastable
            to S (gradients flow to them as autograd leaves or through the caller's clamp).
        r: external recurrent input [T, *S]; v: one-to-one recurrent weight (broadcast to S);
            w, bias: dense recurrent weight [N, N] and bias [N] (S = [B, N]).
        backend: "auto" | "torch" | "triton".

    Returns:
        (spk [T, *S] float32, syn [T, *S] or None, mem [T, *S]).
    """
    if not isinstance(spec, NeuronSpec):
        raise TypeError(f"spec must be a NeuronSpec, got {type(spec).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor [T, ...] with T >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    S = x.shape[1:]
    for name, t in (("u0", u0), ("i0", i0), ("s0", s0)):
        if t is not None and t.shape != S:
            raise ValueError(f"{name} must have the shape of one step of x, {tuple(S)}, got {tuple(t.shape)}")
    if spec.synaptic and i0 is None:
        raise ValueError("a synaptic neuron needs i0")
    if spec.rec in (REC_ONE_TO_ONE, REC_DENSE) and s0 is None:
        raise ValueError("a recurrent neuron needs s0")
    if spec.rec == REC_EXTERNAL and (r is None or r.shape != x.shape):
        raise ValueError(f"r must have the shape of x, {tuple(x.shape)}")
    if spec.rec == REC_DENSE:
        n = S[-1]
        if x.dim() != 3 or w is None or w.shape != (n, n):
            raise ValueError(f"dense recurrence needs x [T, B, N] and w [N, N]; got x "
                             f"{tuple(x.shape)}, w {None if w is None else tuple(w.shape)}")
    backend = resolve_backend(backend, x.device)
    params = [_step_param(n, p, S, x) for n, p in
              (("beta", beta), ("alpha", alpha), ("theta", theta), ("g", g))]
    v = _step_param("v", v, S, x) if spec.rec == REC_ONE_TO_ONE else None
    if s0 is not None:
        s0 = s0.to(x.dtype)
    flags = [int(spec.synaptic), spec.rec, spec.reset, int(spec.zero_before_decay), int(spec.delay),
             spec.late_reset, spec.surrogate]
    op = _fwd_op if torch.compiler.is_compiling() else _EagerNeuron.apply
    spk, syn, mem, _ = op(x, u0, i0, s0, *params, r, v, w, bias, flags,
                          float(spec.surrogate_param), backend)
    return spk, syn if spec.synaptic else None, mem
