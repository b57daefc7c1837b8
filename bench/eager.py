"""Plain eager PyTorch: the chip's neuron model as a straightforward per-step loop with autograd.

It is both a timed implementation (on the nominal model: leak 0, threshold 1, hard reset to
v_reset, refractory steps, one synaptic current) and the independent reference the correctness
checks compare the chip layers with. Autograd through this loop gives the in-the-loop rule of
bss2_backend.dynamics by construction: the surrogate sits on the spike, torch.where cuts the
gradient through the reset and the refractory clamp.
"""
import torch
from torch import nn

from bss2_backend.readout import read_membrane


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_true, x_read, surrogate):
        # the comparator sees the true membrane; the gradient flows through the recorded one
        ctx.save_for_backward(x_read)
        ctx.surrogate = surrogate
        return (x_true > 0).to(x_true.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x_read,) = ctx.saved_tensors
        return None, grad * ctx.surrogate.grad(x_read), None


def lif_steps(x_exc, x_inh, params, surrogate, *, readout=None, rec=None, spiking=True):
    """One population over all steps.

    x_exc, x_inh: input currents [T, B, N] (x_inh None: one current); params: LIFParams;
    readout: ReadoutParams applied to the recorded membrane (None: the exact membrane);
    rec: (w_exc, w_inh) [N, N] recurrent weights (w_inh None: signed w_exc) fed by z[t-1].
    Returns (z, u) [T, B, N]: spikes and the recorded membrane, sampled before the reset."""
    T, B, N = x_exc.shape
    p = params
    v = p.v_leak.expand(B, N)
    i_e = x_exc.new_zeros(B, N)
    i_i = x_exc.new_zeros(B, N)
    ref = torch.zeros(B, N, dtype=torch.int32, device=x_exc.device)
    z = x_exc.new_zeros(B, N)
    zs, us = [], []
    for t in range(T):
        x_e = x_exc[t]
        x_i = None if x_inh is None else x_inh[t]
        if rec is not None:
            x_e = x_e + z @ rec[0].t()
            if rec[1] is not None:
                x_i = z @ rec[1].t() if x_i is None else x_i + z @ rec[1].t()
        v = v + p.a_mem * ((p.v_leak - v) + (i_e - i_i))
        i_e = i_e * (1.0 - p.a_syn_exc) + x_e
        if x_i is not None:
            i_i = i_i * (1.0 - p.a_syn_inh) + x_i
        if spiking:
            held = ref > 0
            v = torch.where(held, p.v_reset, v)
        u = v if readout is None else read_membrane(v, readout)
        us.append(u)
        if spiking:
            z = _Spike.apply(v - p.v_th, u - p.v_th, surrogate) * (~held).to(v.dtype)
            zs.append(z)
            fired = z > 0
            v = torch.where(fired, p.v_reset, v)
            ref = torch.where(fired, p.ref_steps, torch.clamp(ref - 1, min=0))
    u = torch.stack(us)
    return (torch.stack(zs) if spiking else torch.zeros_like(u)), u


class EagerNet(nn.Module):
    """input -> (recurrent) LIF -> optional LI readout on the nominal model, one signed current.

    weights() names the parameters as every benchmark net does (w_in, w_rec, w_out), so the
    correctness checks can copy weights between implementations."""

    def __init__(self, n_in, n_hidden, n_out, recurrent, hidden_params, out_params, surrogate):
        super().__init__()
        self.w_in = nn.Parameter(torch.zeros(n_hidden, n_in))
        self.w_rec = nn.Parameter(torch.zeros(n_hidden, n_hidden)) if recurrent else None
        self.w_out = nn.Parameter(torch.zeros(n_out, n_hidden)) if n_out else None
        self.hidden_params, self.out_params, self.surrogate = hidden_params, out_params, surrogate

    def weights(self):
        return {k: getattr(self, k) for k in ("w_in", "w_rec", "w_out") if getattr(self, k) is not None}

    def forward(self, spikes):
        """spikes [T, B, n_in] -> (hidden spikes [T, B, N], readout membrane [T, B, n_out] or None)."""
        hp = self.hidden_params.to(spikes.device, spikes.dtype)
        rec = None if self.w_rec is None else (self.w_rec, None)
        z, _ = lif_steps(spikes @ self.w_in.t(), None, hp, self.surrogate, rec=rec)
        if self.w_out is None:
            return z, None
        op = self.out_params.to(spikes.device, spikes.dtype)
        _, out = lif_steps(z @ self.w_out.t(), None, op, self.surrogate, spiking=False)
        return z, out
