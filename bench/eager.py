"""The "eager" implementation: the chip's nominal model through the op's naive form
(kernels/chip_lif/naive.py), a per-step loop with plain autograd. It is both timed and the
independent reference the correctness checks compare the chip layers with."""
import torch
from torch import nn

from bss2_backend.kernels.chip_lif.naive import chip_lif as naive_lif


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
        kind, alpha = self.surrogate.id, self.surrogate.alpha
        rec = None if self.w_rec is None else (self.w_rec, None)
        z, _ = naive_lif(spikes @ self.w_in.t(), None, hp, surrogate=kind, alpha=alpha,
                         recurrence=rec)
        if self.w_out is None:
            return z, None
        op = self.out_params.to(spikes.device, spikes.dtype)
        _, out = naive_lif(z @ self.w_out.t(), None, op, surrogate=kind, alpha=alpha,
                           spiking=False)
        return z, out
