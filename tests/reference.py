"""Step-by-step autograd references of the nominal model, written as plainly as possible.

They build an ordinary per-step autograd graph (slow, obviously right) so the hand-written reverse
sweep of bss2_backend.dynamics can be checked against torch.autograd.
"""
import torch


class SpikeFn(torch.autograd.Function):
    """H(u) forward (strict >), surrogate backward."""

    @staticmethod
    def forward(ctx, u, surrogate):
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * ctx.surrogate.grad(u), None


def inject(value, observed):
    """Forward returns `observed`; the gradient flows to `value` (hxtorch's "Unterjubel")."""
    return value + (observed - value).detach()


def lif_reference(x_exc, x_inh, p, surrogate, w_rec=None, observed=None, spiking=True):
    """Nominal CUBA-LIF with detached reset, per step. observed=(z, u) injects the chip's
    observables like the in-the-loop rule; returns (z, u) stacked [T, B, N]."""
    T, B, N = x_exc.shape
    v = p.v_leak.expand(B, N)
    i_e = torch.zeros(B, N, dtype=x_exc.dtype)
    i_i = torch.zeros(B, N, dtype=x_exc.dtype)
    ref = torch.zeros(B, N, dtype=torch.int32)
    z = torch.zeros(B, N, dtype=x_exc.dtype)
    zs, us = [], []
    for t in range(T):
        xe = x_exc[t]
        xi = x_inh[t] if x_inh is not None else torch.zeros_like(xe)
        if w_rec is not None:
            xe = xe + z @ torch.clamp(w_rec, min=0).t()
            xi = xi + z @ torch.clamp(-w_rec, min=0).t()
        v = v + p.a_mem * ((p.v_leak - v) + (i_e - i_i))
        i_e = i_e * (1 - p.a_syn_exc) + xe
        i_i = i_i * (1 - p.a_syn_inh) + xi
        if not spiking:
            u = v if observed is None else inject(v, observed[1][t])
            us.append(u)
            v = u
            continue
        held = ref > 0 if observed is None else _held_from(observed[0], t, p.ref_steps)
        v = torch.where(held, p.v_reset.expand(B, N), v)
        u = v if observed is None else inject(v, observed[1][t])
        z = SpikeFn.apply(u - p.v_th, surrogate) * (~held).to(u.dtype)
        if observed is not None:
            z = inject(z, observed[0][t])
        zs.append(z)
        us.append(u)
        zd = z.detach().bool()
        v = torch.where(zd, p.v_reset.expand(B, N), u)
        ref = torch.where(zd, p.ref_steps, torch.clamp(ref - 1, min=0))
    if not spiking:
        return None, torch.stack(us)
    return torch.stack(zs), torch.stack(us)


def _held_from(z_obs, t, ref_steps):
    """Refractory clamp implied by the observed spikes: a spike within the last ref_steps steps."""
    held = torch.zeros(z_obs.shape[1:], dtype=torch.bool)
    for k in range(1, int(ref_steps.max()) + 1):
        if t - k >= 0:
            held |= (z_obs[t - k] > 0) & (k <= ref_steps)
    return held
