"""snntorch's neuron update step by step with plain autograd: as plainly written as possible.

The update of snntorch 1.0 (see reference.py's docstring), one step at a time, with autograd doing
the backward: the reset signal R is detached, the spike's derivative is the surrogate. It is what
reference.py's hand-written reverse sweep and the fused kernels are checked against.
"""
import torch

from .. import surrogate as sg
from . import REC_DENSE, REC_EXTERNAL, REC_ONE_TO_ONE, RESET_SUB, RESET_ZERO


def snn_neuron(spec, x, u0, i0=None, s0=None, *, beta, alpha=None, theta, g, r=None, v=None,
               w=None, bias=None):
    """The same arguments and results as kernels.snn_neuron.snn_neuron: (spk, syn or None, mem)
    [T, *S]; differentiable by autograd w.r.t. every tensor argument."""
    fire = lambda u: sg.Spike.apply(u - theta, u - theta, spec.surrogate, spec.surrogate_param)
    U, I, S = u0, i0, s0
    spks, syns, mems = [], [], []
    for t in range(x.shape[0]):
        R = (U > theta).to(x.dtype).detach()
        if spec.rec == REC_EXTERNAL:
            rec = r[t]
        elif spec.rec == REC_ONE_TO_ONE:
            rec = S * v
        elif spec.rec == REC_DENSE:
            rec = torch.nn.functional.linear(S, w, bias)
        else:
            rec = None
        zero_pre = spec.reset == RESET_ZERO and spec.zero_before_decay and not spec.synaptic
        if spec.synaptic:
            I = alpha * I + x[t] + (rec if rec is not None else 0)
            U1 = beta * U + I
        elif zero_pre:
            U1 = beta * ((1 - R) * U) + x[t]
        else:
            U1 = beta * U + x[t] + (rec if rec is not None else 0)
        if spec.reset == RESET_SUB:
            U1 = U1 - R * theta
        elif spec.reset == RESET_ZERO and not zero_pre:
            U1 = U1 - U1 * R
        S = fire(U1) * g
        U = U1
        if not spec.delay:
            D = S / g - R
            if spec.late_reset == RESET_SUB:
                U = U1 - D * theta
            elif spec.late_reset == RESET_ZERO:
                U = U1 - D * U1
        spks.append(S)
        mems.append(U)
        if spec.synaptic:
            syns.append(I)
    return torch.stack(spks), (torch.stack(syns) if spec.synaptic else None), torch.stack(mems)
