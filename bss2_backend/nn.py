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

from .dynamics import BACKENDS, Recurrence, cuba_lif, li
from .validation import check_allocation, check_choice, check_device, check_finite, check_number, \
    check_tensor
from .weights import signed_weight_path, synapses, weight_path


class _ChipLayer(nn.Module):
    """Common to the chip layers. Args: chip; in_features, out_features; name (placement name,
    default kind + index); circuits_per_neuron (1 or 2, default: as many as the inputs need);
    weight_init: gain g >= 0 of the uniform init in +-g/sqrt(in_features), model units
    (threshold 1; default 1); backend: "auto" | "torch" | "triton"."""
    kind = "layer"

    def __init__(self, chip, in_features, out_features, *, name=None, circuits_per_neuron=None,
                 weight_init=None, backend="auto"):
        super().__init__()
        from .chip import Chip
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

    def _weights(self, weight, columns, signed=False, name="weight"):
        """(nominal weight the gradient sees, the chip's effective exc and inh weights, or their
        difference exc - inh when signed, LayerParams)."""
        check_tensor(f"{self.name}.{name}", weight, ndim=2)
        chip = self.chip
        lp = chip.layer_params(self.placement, weight.device, weight.dtype)
        gains = (lp.gain_exc[:, columns], lp.gain_inh[:, columns], chip.weight_scale, chip.quantise)
        if signed:
            return (*signed_weight_path(weight, *gains, chip.unit_gains(self.placement)), lp)
        return (*weight_path(weight, *gains), lp)

    def _input_currents(self, spikes):
        check_tensor("spikes", spikes, ndim=3, finite=False)
        T, B, n_in = spikes.shape
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
        check_allocation(f"layer {self.name!r} on [T={T}, B={B}]",
                         T * B * (n_in * item + 2 * self.out_features * (2 * item + 1)),
                         spikes.device)
        check_finite("spikes", spikes)
        alike, nominal_alike = self.chip.synapse_decays(self.placement)
        if alike and self.chip.saturation is None:
            # one signed current, since only exc - inh matters: one GEMM and the fewest device ops
            w, signed, lp = self._weights(self.weight, slice(0, self.in_features), signed=True)
            x, _ = synapses(spikes, w, signed)
            return x, None, lp
        w, exc, inh, lp = self._weights(self.weight, slice(0, self.in_features))
        x_exc, x_inh = synapses(spikes, w, exc, inh, self.chip.saturation, nominal_alike)
        return x_exc, x_inh, lp

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

    def forward(self, spikes):
        """spikes [T, B, in_features] -> (spikes, read membrane), each [T, B, out_features]."""
        x_exc, x_inh, lp = self._input_currents(spikes)
        recurrence = None
        if self.recurrent:
            cols = slice(self.in_features, self.in_features + self.out_features)
            w, exc, inh, _ = self._weights(self.weight_rec, cols, name="weight_rec")
            recurrence = Recurrence(w, exc, inh)
        return cuba_lif(x_exc, x_inh, params=lp.params, nominal=lp.nominal, readout=lp.readout,
                        recurrence=recurrence, membrane_noise_lsb=self.chip.noise.membrane_lsb,
                        seed=self.chip.next_seed(), surrogate=self.chip.surrogate,
                        backend=self.backend)


class LILayer(_ChipLayer):
    """Synapses + leaky integrators (no threshold): the readout of the paper's networks."""
    kind = "li"

    def forward(self, spikes):
        """spikes [T, B, in_features] -> read membrane [T, B, out_features]."""
        x_exc, x_inh, lp = self._input_currents(spikes)
        return li(x_exc, x_inh, params=lp.params, nominal=lp.nominal, readout=lp.readout,
                  membrane_noise_lsb=self.chip.noise.membrane_lsb, seed=self.chip.next_seed(),
                  backend=self.backend)
