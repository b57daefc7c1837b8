"""Surrogate derivatives of the spike z = H(u), u = membrane - threshold: one table for every op.

Forward is always the Heaviside step with strict `>`; only the backward's d z / d u differs. Each
entry is an id (the kernels' compile-time flag, the same in both forms) with its PyTorch form here
and its Triton form in triton.py beside this file, written in the same order of operations:

    ZERO                  0                                  (snntorch's surrogate_disable)
    SUPERSPIKE            1 / (alpha |u| + 1)^2              (snntorch's fast_sigmoid)
    ATAN                  alpha/2 / (1 + (pi/2 alpha u)^2)
    SIGMOID               alpha s (1 - s), s = sigmoid(alpha u)
    STRAIGHT_THROUGH      1
    TRIANGULAR            alpha max(0, 1 - alpha |u|)        (a window of half-width 1/alpha)
    SNNTORCH_SIGMOID      alpha e / (e + 1)^2, e = exp(-alpha u): snntorch 1.0's form, kept for
                          bit-compatibility (NaN where e overflows, for u < -88/alpha)
    SNNTORCH_TRIANGULAR   +alpha for u < 0, -alpha for u >= 0: snntorch 1.0's `triangular`
"""
import math

import torch

ZERO, SUPERSPIKE, ATAN, SIGMOID, STRAIGHT_THROUGH, TRIANGULAR, SNNTORCH_SIGMOID, \
    SNNTORCH_TRIANGULAR = range(8)
NAMES = ("zero", "superspike", "atan", "sigmoid", "straight_through", "triangular",
         "snntorch_sigmoid", "snntorch_triangular")


def grad_(kind, alpha, u):
    """d z / d u of surrogate `kind` at u, computed in place where the formula allows (u may be
    overwritten; use the returned tensor)."""
    if kind == SUPERSPIKE:
        u.abs_().mul_(alpha).add_(1.0)
        return u.mul_(u).reciprocal_()
    if kind == ATAN:
        u.mul_(math.pi / 2 * alpha)
        return u.mul_(u).add_(1.0).reciprocal_().mul_(alpha / 2)
    if kind == SIGMOID:
        u.mul_(alpha).sigmoid_()
        return u.mul_(1.0 - u).mul_(alpha)
    if kind == STRAIGHT_THROUGH:
        return u.fill_(1.0)
    if kind == TRIANGULAR:
        return u.abs_().mul_(-alpha).add_(1.0).clamp_(min=0.0).mul_(alpha)
    if kind == SNNTORCH_SIGMOID:
        e = torch.exp(-alpha * u)
        return alpha * e / (e + 1) ** 2
    if kind == SNNTORCH_TRIANGULAR:
        return torch.where(u >= 0, -alpha, alpha).to(u.dtype)
    if kind == ZERO:
        return u.zero_()
    raise ValueError(f"unknown surrogate id {kind}; the ids are 0..{len(NAMES) - 1} ({NAMES})")


class Spike(torch.autograd.Function):
    """z = H(u_fire) forward (strict >), d z / d u_grad = the surrogate `kind` at u_grad backward:
    the spike of the step-by-step autograd models (naive.py of each op). The comparator may see
    another membrane (the true one) than the gradient (the recorded one)."""

    @staticmethod
    def forward(ctx, u_fire, u_grad, kind, alpha):
        ctx.save_for_backward(u_grad)
        ctx.kind, ctx.alpha = kind, alpha
        return (u_fire > 0).to(u_fire.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return None, g * grad_(ctx.kind, ctx.alpha, u.clone()), None, None
