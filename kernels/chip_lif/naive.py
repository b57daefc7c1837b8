"""The chip LIF op step by step with plain autograd: slow, and as plainly written as possible.

Autograd through this loop gives the in-the-loop rule by construction: the surrogate sits on the
spike, the reset and the refractory clamp pass no gradient (a detached spike selects them), the
readout is straight-through. It is what reference.py's hand-written reverse sweep and the fused
kernels are checked against, and the "eager" implementation the benchmark times.

params: anything with tensors v_leak, v_reset, v_th, a_mem, a_syn_exc, a_syn_inh, ref_steps [N]
(e.g. bss2_backend.LIFParams); readout: anything with offset_lsb [N], quantise, unit_lsb, zero_lsb
(e.g. bss2_backend.ReadoutParams), or None for the exact membrane.
"""
import torch

from .. import surrogate as sg
from .reference import read


def inject(value, observed):
    """Forward returns `observed`; the gradient flows to `value` (hxtorch's "Unterjubel")."""
    return value + (observed - value).detach()


def chip_lif(x_exc, x_inh, params, *, surrogate=sg.SUPERSPIKE, alpha=50.0, readout=None,
             recurrence=None, spiking=True, observed=None):
    """One population over all steps; returns (z, u) [T, B, N] (z all zeros when not spiking).

    x_exc, x_inh: input currents [T, B, N] (x_inh None: no inhibitory input). recurrence: a float
    weight w [N, N] (exc = relu(w), inh = relu(-w)) or a pair (w_exc, w_inh; w_inh None for one
    signed current), applied to z[t-1]. The comparator sees the true membrane; the gradient flows
    through the recorded one (after the readout). observed=(z, u) injects the observables of
    another run (the chip's) in the forward, so the gradient is the nominal model's at the
    observed membrane, with the refractory clamp implied by the observed spikes."""
    T, B, N = x_exc.shape
    p = params
    v = p.v_leak.expand(B, N)
    i_e = x_exc.new_zeros(B, N)
    i_i = x_exc.new_zeros(B, N)
    ref = torch.zeros(B, N, dtype=torch.int32, device=x_exc.device)
    z = x_exc.new_zeros(B, N)
    w_exc = w_inh = None
    if isinstance(recurrence, torch.Tensor):
        w_exc, w_inh = torch.clamp(recurrence, min=0), torch.clamp(-recurrence, min=0)
    elif recurrence is not None:
        w_exc, w_inh = recurrence
    zs, us = [], []
    for t in range(T):
        x_e = x_exc[t]
        x_i = None if x_inh is None else x_inh[t]
        if w_exc is not None:
            x_e = x_e + z @ w_exc.t()
            if w_inh is not None:
                x_i = z @ w_inh.t() if x_i is None else x_i + z @ w_inh.t()
        v = v + p.a_mem * ((p.v_leak - v) + (i_e - i_i))
        i_e = i_e * (1.0 - p.a_syn_exc) + x_e
        if x_i is not None:
            i_i = i_i * (1.0 - p.a_syn_inh) + x_i
        if spiking:
            held = ref > 0 if observed is None else _held_from(observed[0], t, p.ref_steps)
            v = torch.where(held, p.v_reset, v)
        u = v if readout is None else read(v, readout.offset_lsb, readout.quantise,
                                           readout.unit_lsb, readout.zero_lsb)
        u = inject(v, u)                       # straight-through the readout
        if observed is not None:
            u = inject(v, observed[1][t])
        us.append(u)
        if not spiking:
            v = u if observed is not None else v
            continue
        z = sg.Spike.apply(v - p.v_th, u - p.v_th, surrogate, alpha) * (~held).to(v.dtype)
        if observed is not None:
            z = inject(z, observed[0][t])
        zs.append(z)
        fired = z.detach() > 0
        v = torch.where(fired, p.v_reset, u if observed is not None else v)
        ref = torch.where(fired, p.ref_steps, torch.clamp(ref - 1, min=0))
    u = torch.stack(us)
    return (torch.stack(zs) if spiking else torch.zeros_like(u)), u


def _held_from(z_obs, t, ref_steps):
    """Refractory clamp implied by the observed spikes: a spike within the last ref_steps steps."""
    held = torch.zeros(z_obs.shape[1:], dtype=torch.bool, device=z_obs.device)
    for k in range(1, int(ref_steps.max()) + 1):
        if t - k >= 0:
            held |= (z_obs[t - k] > 0) & (k <= ref_steps)
    return held
