"""Layers placed on an emulated chip: synapse array + neuron population, time-major [T, B, features].

    chip = Chip(seed=1)
    hidden = LIFLayer(chip, 256, 246)      # placed on 492 circuits
    readout = LILayer(chip, 246, 10)       # the remaining 20
    z, u = hidden(spikes)                  # spikes [T, B, 256] -> z, u [T, B, 246]
    out = readout(z)                       # [T, B, 10]

Forward runs the chip (mismatch, noise, 6-bit weights, CADC readout); backward is the in-the-loop
rule (bss2_backend.dynamics).
"""
import math

import torch
from torch import nn

from .chip import Chip
from .population import Chips, per_chip_input
from .dynamics import BACKENDS, compute_dtype
from .validation import check_allocation, check_choice, check_device, check_finite, check_number, \
    check_tensor


class _ChipLayer(nn.Module):
    """Common to the chip layers. Args: chip; in_features, out_features; name (placement name,
    default kind + the first free index); circuits_per_neuron (1 or 2, default: as many as the
    inputs need); weight_init: gain g >= 0 of the uniform init in +-g/sqrt(in_features), model
    units (threshold 1; default 1); backend: "auto" | "torch" | "triton"."""
    kind = "layer"

    def __init__(self, chip, in_features, out_features, *, name=None, circuits_per_neuron=None,
                 weight_init=None, backend="auto"):
        super().__init__()
        if not isinstance(chip, Chip):
            raise TypeError(f"chip must be a bss2_backend.Chip, got {type(chip).__name__}")
        check_number("in_features", in_features, low=1, integer=True)
        check_number("out_features", out_features, low=1, integer=True)
        weight_init = 1.0 if weight_init is None else weight_init
        check_number("weight_init", weight_init, low=0.0)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        check_choice("backend", backend, BACKENDS)
        self.chip = chip
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.name = name or chip.free_name(self.kind)
        self.backend = backend
        self.placement = chip.place(self.name, self._chip_inputs(), self.out_features,
                                    circuits_per_neuron, owner=self)
        # hxtorch-like init: uniform with the spread of nn.Linear, times a gain suited to 1/45 units
        bound = weight_init / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))

    def _chip_inputs(self):
        return self.in_features

    def _per_chip(self, spikes, per_chip):
        """Whether spikes hold one input per chip ([C, T, B, n]) of this layer's population: the
        argument, or by default whether they are a population layer's output."""
        if per_chip is not None and not isinstance(per_chip, bool):
            raise TypeError(f"per_chip must be True, False or None, got {per_chip!r}")
        if not isinstance(self.chip, Chips):
            if per_chip:
                raise ValueError(f"per_chip=True needs a population of chips (bss2_backend."
                                 f"Chips); layer {self.name!r} is on one Chip")
            return False
        if per_chip is None:
            return per_chip_input(spikes) == self.chip.size
        return per_chip

    def _check(self, spikes, per_chip=False):
        """The inputs and weights, checked once per call (the op trusts them afterwards)."""
        if per_chip:
            C = self.chip.size
            check_tensor("spikes", spikes, ndim=4, finite=False)
            if spikes.shape[0] != C:
                raise ValueError(f"spikes: a per-chip input has the population's {C} chips first "
                                 f"([C={C}, T, B, {self.in_features}]), got shape "
                                 f"{tuple(spikes.shape)}")
        else:
            check_tensor("spikes", spikes, ndim=3, finite=False)
        T, B, n_in = spikes.shape[-3:]
        if n_in != self.in_features:
            raise ValueError(f"spikes must have {self.in_features} features (last dim), got shape "
                             f"{tuple(spikes.shape)}")
        if T == 0 or B == 0:
            raise ValueError(f"spikes must have T, B >= 1 (time-major [T, B, {n_in}]), got shape "
                             f"{tuple(spikes.shape)}")
        check_device(f"{self.name}.weight", self.weight)
        if spikes.device != self.weight.device:
            raise ValueError(f"spikes are on {spikes.device} but layer {self.name!r} on "
                             f"{self.weight.device}; move one of them (layer.to(device))")
        # the input currents and the recorded outputs, before the NaN check reads every element
        item = 8 if spikes.dtype == torch.float64 else 4
        chips = self.chip.size if isinstance(self.chip, Chips) else 1
        check_allocation(f"layer {self.name!r} on [T={T}, B={B}]" +
                         (f" x {chips} chips" if chips > 1 else ""),
                         T * B * chips * (n_in * item + 2 * self.out_features * (2 * item + 1)),
                         spikes.device)
        check_finite("spikes", spikes)
        for name, p in self.named_parameters(recurse=False):
            check_tensor(f"{self.name}.{name}", p, ndim=2)

    def _run(self, spikes, spiking, recurrence=None, per_chip=False):
        chip, placement = self.chip, self.placement
        population = isinstance(chip, Chips)
        extra = {"per_chip": per_chip} if population else {}
        x_exc, x_inh = chip.input_currents(placement, spikes, self.weight,
                                           slice(0, self.in_features), **extra)
        packed = chip.packed(placement, spikes.device, compute_dtype(x_exc.dtype))
        readout = chip.layer_params(placement, "cpu", torch.float64).readout
        z, u = chip.run(placement, packed, readout, chip.synapse_decays(placement), x_exc, x_inh,
                        spiking=spiking, recurrence=recurrence, backend=self.backend)[:2]
        if population:          # [T, B, C * N] -> [C, T, B, N]
            return chip.split(z), chip.split(u)
        return z, u

    def extra_repr(self):
        p = self.placement
        return (f"{self.in_features} -> {self.out_features}, name={self.name!r}, "
                f"circuits_per_neuron={p.circuits_per_neuron}")


class LIFLayer(_ChipLayer):
    """Synapses + leaky integrate-and-fire neurons on the chip. Optional recurrent synapses
    (recurrent=True): the previous step's spikes feed back through the chip's weight path."""
    kind = "lif"

    def __init__(self, chip, in_features, out_features, *, recurrent=False, **kwargs):
        if not isinstance(recurrent, bool):
            raise TypeError(f"recurrent must be True or False, got {recurrent!r}")
        self.recurrent = recurrent
        super().__init__(chip, in_features, out_features, **kwargs)
        if recurrent:
            bound = 1.0 / math.sqrt(out_features)
            self.weight_rec = nn.Parameter(
                torch.empty(out_features, out_features).uniform_(-bound, bound))

    def _chip_inputs(self):
        return self.in_features + (self.out_features if self.recurrent else 0)

    def forward(self, spikes, per_chip=None):
        """spikes [T, B, in_features] -> (spikes, read membrane), each [T, B, out_features].
        On a population of C chips (Chips): outputs [C, T, B, out_features]; the input is shared
        by all chips, or one per chip [C, T, B, in_features] with per_chip=True (default: when
        it is a population layer's output)."""
        per_chip = self._per_chip(spikes, per_chip)
        self._check(spikes, per_chip)
        recurrence = None
        if self.recurrent:
            cols = slice(self.in_features, self.in_features + self.out_features)
            recurrence = self.chip.recurrence(self.placement, self.weight_rec, cols)
        return self._run(spikes, True, recurrence, per_chip)


class LILayer(_ChipLayer):
    """Synapses + leaky integrators (no threshold): the readout of the paper's networks."""
    kind = "li"

    def forward(self, spikes, per_chip=None):
        """spikes [T, B, in_features] -> read membrane [T, B, out_features] (on a population:
        [C, T, B, out_features], inputs as LIFLayer.forward)."""
        per_chip = self._per_chip(spikes, per_chip)
        self._check(spikes, per_chip)
        return self._run(spikes, False, None, per_chip)[1]
