"""snntorch's neurons (Leaky, Synaptic, RLeaky, RSynaptic, Lapicque) over all time steps, as one op.

Three forms, one math (the update of snntorch 1.0, op for op):
    naive.py      a step-by-step autograd model, as plainly as possible (the checks' reference)
    reference.py  the hand-written plain-PyTorch twin: forward loop and reverse sweep (CPU path)
    triton.py     the fused Triton kernels: one forward and one backward launch
This module registers the op (bss2::snn_neuron_fwd / _bwd) and is its entry point, `snn_neuron`.
"""
from typing import NamedTuple

import torch

from .. import backend as _backend
from .. import paths
from .. import surrogate as sg
from ..op import FusedOp

RESET_SUB, RESET_ZERO, RESET_NONE = 0, 1, 2          # snntorch's reset_mechanism_val
REC_NONE, REC_EXTERNAL, REC_ONE_TO_ONE, REC_DENSE = 0, 1, 2, 3
# snntorch's surrogate factories -> the shared table's ids
SURROGATE_IDS = {"atan": sg.ATAN, "fast_sigmoid": sg.SUPERSPIKE, "sigmoid": sg.SNNTORCH_SIGMOID,
                 "straight_through_estimator": sg.STRAIGHT_THROUGH,
                 "triangular": sg.SNNTORCH_TRIANGULAR}


class NeuronSpec(NamedTuple):
    """The op's config. synaptic: Synaptic/RSynaptic (a current state) or Leaky/RLeaky/Lapicque.
    rec: REC_* (external: a recurrent input per step given by the caller; one_to_one: spikes * V;
    dense: F.linear(spikes, W, bias) over the last dimension).
    reset: the update's reset (RESET_*); zero_before_decay: Leaky's zero reset, b((1-R)U) + x.
    delay: reset_delay; late_reset: reset_mechanism_val used by reset_delay=False.
    surrogate, surrogate_param: a kernels.surrogate id and its alpha / slope / threshold.
    need_*: which parameters want a gradient (set for the backward from the autograd context)."""
    synaptic: bool = False
    rec: int = REC_NONE
    reset: int = RESET_SUB
    zero_before_decay: bool = False
    delay: bool = True
    late_reset: int = RESET_SUB
    surrogate: int = sg.ATAN
    surrogate_param: float = 2.0
    need_beta: bool = False
    need_alpha: bool = False
    need_theta: bool = False
    need_g: bool = False


def _impl(impl):
    if impl == "triton":
        from . import triton            # imported on first use: the torch path never loads Triton
        return triton
    from . import reference
    return reference


def _none_if_empty(t):
    return None if t is None or t.numel() == 0 and t.dim() == 1 else t


def _compiled_loop(spec, impl, x):
    """The C loop's library when the torch implementation runs this neuron on the CPU through it
    (compiled.loop_for; native.py: cpu_loop mode, a working compiler), else None."""
    if impl != "torch":
        return None
    from . import compiled
    return compiled.loop_for(spec, x)


def _forward(spec, impl, x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias):
    lib = _compiled_loop(spec, impl, x)
    if lib is not None:
        from . import compiled
        spk, syn, mem, pre = compiled.forward(lib, spec, x, u0, i0, beta, alpha, theta, g)
    else:
        if impl == "torch" and x.device.type == "cpu":
            paths.note("loop", "eager")
        spk, syn, mem, pre = _impl(impl).forward(spec, x, u0, i0, s0, beta, alpha, theta, g, r, v,
                                                 w, bias)
    return spk, x.new_empty(0) if syn is None else syn, mem, x.new_empty(0) if pre is None else pre


def _fake_forward(spec, impl, x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias):
    full = lambda: x.new_empty(x.shape)
    return (x.new_empty(x.shape, dtype=torch.float32), full() if spec.synaptic else x.new_empty(0),
            full(), x.new_empty(0) if spec.delay else full())


def _backward(spec, impl, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w,
              g_spk, g_syn, g_mem):
    lib = _compiled_loop(spec, impl, mem)
    if lib is not None:
        from . import compiled
        run = lambda *a: compiled.backward(lib, spec, *a)
    else:
        run = lambda *a: _impl(impl).backward(spec, *a)
    out = run(g_spk, _none_if_empty(g_syn) if spec.synaptic else None, g_mem, spk,
              _none_if_empty(syn), mem, _none_if_empty(pre), u0, i0, s0, beta, alpha, theta, g, v, w)
    return [mem.new_empty(0) if t is None else t for t in out]


def _fake_backward(spec, impl, spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w,
                   g_spk, g_syn, g_mem):
    step = lambda cond: u0.new_empty(u0.shape) if cond else u0.new_empty(0)
    recurrent = spec.rec in (REC_ONE_TO_ONE, REC_DENSE)
    return [mem.new_empty(mem.shape), step(True), step(spec.synaptic), step(recurrent),
            step(spec.need_beta), step(spec.need_alpha and spec.synaptic), step(spec.need_theta),
            step(spec.need_g)]


def _save(ctx, spec, inputs, output):
    x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias = inputs
    spk, syn, mem, pre = output
    return spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w


def _backward_spec(ctx, spec):
    need = ctx.needs
    return spec._replace(need_beta=bool(need[4]), need_alpha=bool(need[5]),
                         need_theta=bool(need[6]), need_g=bool(need[7]))


def _gradients(ctx, spec, results):
    g_x, g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta, g_g = (_none_if_empty(t) for t in results)
    g_r = g_v = g_w = g_bias = None
    spk, s0, w = ctx.saved_tensors[0], ctx.saved_tensors[6], ctx.saved_tensors[12]
    if spec.rec == REC_EXTERNAL:
        g_r = g_x
    elif spec.rec in (REC_ONE_TO_ONE, REC_DENSE) and any(ctx.needs[9:12]):
        s_prev = torch.cat([s0.unsqueeze(0).to(g_x.dtype), spk[:-1].to(g_x.dtype)])
        if spec.rec == REC_ONE_TO_ONE:
            g_v = (g_x * s_prev).sum(0)
        else:
            n = w.shape[0]
            g_x2 = g_x.reshape(-1, n)
            g_w = g_x2.t() @ s_prev.reshape(-1, n)
            g_bias = g_x2.sum(0) if ctx.needs[11] else None
    return g_x, g_u0, g_i0, g_s0, g_beta, g_alpha, g_theta, g_g, g_r, g_v, g_w, g_bias


OP = FusedOp(
    "snn_neuron", NeuronSpec,
    inputs=("x", "u0", "i0?", "s0?", "beta", "alpha?", "theta", "g", "r?", "v?", "w?", "bias?"),
    outputs=4,
    saved=("spk", "syn", "mem", "pre", "u0", "i0?", "s0?", "beta", "alpha?", "theta", "g", "v?",
           "w?"),
    grad_outputs=3, forward=_forward, fake_forward=_fake_forward, backward=_backward,
    fake_backward=_fake_backward, save=_save, gradients=_gradients,
    backward_config=_backward_spec)


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


def snn_neuron(spec, x, u0, i0=None, s0=None, *, beta, alpha=None, theta, g, r=None, v=None,
               w=None, bias=None, impl="torch"):
    """snntorch neuron updates over all steps of x.

    Args:
        spec: NeuronSpec (which neuron, reset, reset_delay, recurrence, surrogate).
        x: input current [T, *S] (float32 or float64); u0, i0, s0: initial membrane, synaptic
            current (synaptic neurons) and spikes (recurrent ones) [*S].
        beta, alpha: clamped decays; theta: threshold; g: graded spike factor; each broadcastable
            to S (gradients flow to them as autograd leaves or through the caller's clamp).
        r: external recurrent input [T, *S]; v: one-to-one recurrent weight (broadcast to S);
            w, bias: dense recurrent weight [N, N] and bias [N] (S = [B, N]).
        impl: "torch" (the twin) or "triton" (the fused kernels, float32).

    Returns:
        (spk [T, *S] float32, syn [T, *S] or None, mem [T, *S]).
    """
    if not isinstance(spec, NeuronSpec):
        raise TypeError(f"spec must be a NeuronSpec, got {type(spec).__name__}")
    if impl not in _backend.IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}; choose one of {_backend.IMPLEMENTATIONS}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor [T, ...] with T >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if impl == "triton":
        _backend.check_triton_device(x.device)
        if x.dtype != torch.float32:
            raise TypeError(f"the Triton snntorch kernels compute float32; got x of dtype "
                            f"{x.dtype} (use the torch implementation for float64)")
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
    params = [_step_param(n, p, S, x) for n, p in
              (("beta", beta), ("alpha", alpha), ("theta", theta), ("g", g))]
    v = _step_param("v", v, S, x) if spec.rec == REC_ONE_TO_ONE else None
    if s0 is not None:
        s0 = s0.to(x.dtype)
    spk, syn, mem, _ = OP(spec, impl, x, u0, i0, s0, *params, r, v, w, bias)
    return spk, syn if spec.synaptic else None, mem
