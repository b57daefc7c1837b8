"""The paper's networks as ordinary snntorch code, run in the loop on an emulated chip.

    mnist: 256 inputs -> 246 LIF -> 10 LI readout   (Cramer et al. 2022, Fig. 3; all 512 circuits)
    shd:   70 inputs -> 128 recurrent LIF -> 20 LI readout
    fsdd:  70 channels -> 186 recurrent LIF -> 10 LI readout (spoken digits, Fig. 5 with FSDD)

Each layer is an nn.Linear (the chip's synapse array) followed by an snntorch neuron;
bss2_backend.integrations.snntorch.convert places it on the chip, forward_pass runs it there.
alpha = beta = 0.9 at dt = 1 us are the chip's tau_syn = tau_mem = 10 us; reset_mechanism="none"
is the chip's leaky-integrator readout. snntorch weights are the chip's model-unit weights divided
by 1 / (1 - beta) = 10, so the 6-bit range +-63 covers snntorch weights of about +-0.098.
Hidden layer and readout are two Sequentials because forward_pass records the last layer only
(the loss regularises, and the plots show, the hidden spikes); their named layers give each its
own placement on the chip.
"""
from collections import OrderedDict

import snntorch as snn
import torch
from torch import nn

from .. import constants as C
from ..integrations.snntorch import convert, forward_pass

ALPHA = BETA = 0.9


class SpikeDropout(nn.Dropout):
    """Dropout of hidden spikes in training, as a failed neuron drops them: kept spikes stay 1
    (no 1/(1-p) rescaling: the chip's spikes are binary). An nn.Dropout, so chip mode passes it
    between layers."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * torch.bernoulli(torch.full_like(x, 1.0 - self.p))


class Network(nn.Module):
    """forward(spikes [T, B, n_in]) -> (hidden spikes [T, B, n_hidden], readout membrane [T, B, n_out])."""

    def __init__(self, chip, n_in=256, n_hidden=246, n_out=10, *, recurrent=False,
                 hidden_init=(-0.003, 0.005), readout_init=(-0.03, 0.03), dropout=0.0):
        super().__init__()
        self.chip = chip
        if recurrent:
            lif = snn.RSynaptic(alpha=ALPHA, beta=BETA, linear_features=n_hidden, init_hidden=True,
                                output=True, reset_mechanism="zero")
            # the chip's recurrent synapses have no bias
            lif.recurrent.register_parameter("bias", None)
            nn.init.uniform_(lif.recurrent.weight, -0.002, 0.002)
        else:
            lif = snn.Synaptic(alpha=ALPHA, beta=BETA, init_hidden=True, output=True,
                               reset_mechanism="zero")
        self.hidden = nn.Sequential(OrderedDict(fc1=nn.Linear(n_in, n_hidden, bias=False), lif1=lif))
        readout = OrderedDict(fc2=nn.Linear(n_hidden, n_out, bias=False),
                              li=snn.Synaptic(alpha=ALPHA, beta=BETA, init_hidden=True,
                                              output=True, reset_mechanism="none"))
        if dropout:
            readout = OrderedDict(dropout=SpikeDropout(dropout), **readout)
        self.readout = nn.Sequential(readout)
        nn.init.uniform_(self.hidden.fc1.weight, *hidden_init)
        nn.init.uniform_(self.readout.fc2.weight, *readout_init)
        convert(self.hidden, chip=chip)
        convert(self.readout, chip=chip)

    @torch.no_grad()
    def clamp_to_chip_(self):
        """Keep every weight within the chip's 6-bit range. Beyond it the chip clips and the
        gradient is zero, so a weight Adam pushed past the range would never come back."""
        for layer in (self.hidden, self.readout):
            linear, neuron = [m for m in layer if isinstance(m, nn.Linear)][0], layer[-1]
            chip = neuron._bss2_binding.chip
            limit = C.WEIGHT_MAX / (chip.weight_scale * neuron._bss2_binding.mapping.weight_gain)
            linear.weight.clamp_(-limit, limit)
            if isinstance(getattr(neuron, "recurrent", None), nn.Linear):
                neuron.recurrent.weight.clamp_(-limit, limit)

    def forward(self, spikes):
        steps = spikes.shape[0]
        hidden_spikes, _ = forward_pass(self.hidden, steps, spikes)
        _, readout_membrane = forward_pass(self.readout, steps, hidden_spikes)
        return hidden_spikes, readout_membrane


def mnist_network(chip, n_in=256, n_out=10, dropout=0.0):
    return Network(chip, n_in, 246, n_out, dropout=dropout)


def fsdd_network(chip, n_in=70, n_out=10, n_hidden=186, dropout=0.0):
    """Spoken digits: 70 channels -> 186 recurrent LIF -> 10 LI, chip-sized (bench workload B)."""
    return Network(chip, n_in, n_hidden, n_out, recurrent=True, hidden_init=(-0.003, 0.006),
                   dropout=dropout)


def shd_network(chip, n_in=70, n_out=20, n_hidden=128, dropout=0.0):
    return Network(chip, n_in, n_hidden, n_out, recurrent=True, hidden_init=(-0.003, 0.006),
                   dropout=dropout)
