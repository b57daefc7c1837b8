"""A population of chips: C independent emulated chips with one configuration, run in one launch.

A real BSS-2 user has one chip or a few, and a network that works on chip 0 may not on chip 7;
an emulator can run many. `Chips(seeds=range(64))` is C chips (chip c is `Chip(seed=seeds[c])`
with the population's configuration). It is a `Chip` whose every layer is placed on all C chips at
the same circuits, and whose layer parameters are the C chips' stacked along the neuron axis: a
layer of N neurons is C x N independent neurons of the kernels (per-chip parameters, CADC offsets
and synapse gains), so one launch runs the whole population, on the fused kernels and the torch
twin alike. Temporal noise is drawn per neuron of that launch (seeded by the population's own run
counters): every chip has its own stream, statistically like a single chip's, not the same draws.

Shapes: a layer on a population returns [C, T, B, N]. Its input is shared by all chips
([T, B, n]) or one per chip ([C, T, B, n]); which, is said by the layer's `per_chip` argument
(default: per chip exactly when the input is a population layer's output, whose tensors are
marked so, see `per_chip_input`), never guessed from the rank. Weights are shared by all chips
(one [N, n] parameter, its in-the-loop gradient summed over the chips).

Chip c of a population equals Chip(seed=seeds[c]) alone: bit for bit with noise off where the
synapse products are exact (every synapse of a neuron with one gain), otherwise to float rounding
(the same sums, possibly in another order).
"""
import torch

from .chip import Chip, LayerParams
from .readout import ReadoutParams
from .validation import check_number

_POPULATION = "_bss2_population"
MAX_CHIPS = 1 << 16


def _check_seeds(seeds):
    try:
        seeds = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be an iterable of ints (one per chip), got "
                        f"{type(seeds).__name__}") from None
    if not seeds:
        raise ValueError("seeds is empty: a population needs at least one chip")
    if len(seeds) > MAX_CHIPS:
        raise ValueError(f"seeds has {len(seeds)} chips; at most {MAX_CHIPS} in one population")
    for s in seeds:
        check_number("seeds[...]", s, low=0, high=2**63 - 1, integer=True)
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})[:5]
        raise ValueError(f"seeds must be distinct (two equal seeds are the same chip), got "
                         f"repeated {dup}")
    return [int(s) for s in seeds]


def mark_population(t, size):
    """Mark tensor t [C, ...] as one result per chip of a population of `size` chips."""
    setattr(t, _POPULATION, size)
    return t


def per_chip_input(t):
    """The population size t came out of (a population layer's output), else None."""
    return getattr(t, _POPULATION, None)


class Chips(Chip):
    """C independent chips with one configuration (see the module docstring).

    Args:
        seeds: one distinct seed per chip (an iterable of ints in [0, 2^63-1]).
        the rest: as Chip (mismatch, noise, strict, quantise, calibration, ...).
    """

    def __init__(self, seeds, mismatch="calibrated", noise=True, strict=True, **kwargs):
        seeds = _check_seeds(seeds)
        # the population's own placement, run counters and configuration are its first chip's
        super().__init__(seeds[0], mismatch, noise, strict, **kwargs)
        self.seeds = tuple(seeds)
        self._kwargs = kwargs
        self.members = [Chip(s, mismatch, noise, strict, **kwargs) for s in seeds]

    @property
    def size(self):
        return len(self.members)

    def __len__(self):
        return len(self.members)

    def chip(self, c):
        """Chip number c of the population, as a single Chip."""
        return self.members[c]

    def __repr__(self):
        return f"Chips({len(self.members)} chips, seeds {self.seeds[0]}..{self.seeds[-1]})"

    # placement: the same circuits on every chip
    def place(self, name, n_in, n_out, circuits_per_neuron=None, *, owner=None):
        p = super().place(name, n_in, n_out, circuits_per_neuron, owner=owner)
        for m in self.members:
            q = m.place(name, n_in, n_out, p.circuits_per_neuron)
            if q.circuits != p.circuits:          # the allocator is deterministic: never here
                raise RuntimeError(f"chip seed {m.seed} placed {name!r} elsewhere")
        return p

    def release(self, name):
        super().release(name)
        for m in self.members:
            m.release(name)

    def restore(self, placement, owner=None):
        super().restore(placement, owner)
        for m in self.members:
            m.restore(placement)

    def _layer_params(self, p):
        """Every chip's LayerParams of the placement, stacked along the neuron axis [C * N]."""
        layers = [m._layer_params(p) for m in self.members]
        cat = lambda name, parts: type(parts[0])(*(torch.cat([getattr(x, f) for x in parts])
                                                   for f in parts[0]._fields))
        params = cat("params", [lp.params for lp in layers])
        nominal = cat("nominal", [lp.nominal for lp in layers])
        r = layers[0].readout
        readout = ReadoutParams(torch.cat([lp.readout.offset_lsb for lp in layers]), r.noise_lsb,
                                r.quantise, r.unit_lsb, r.zero_lsb)
        return LayerParams(params, nominal, readout,
                           torch.cat([lp.gain_exc for lp in layers]),
                           torch.cat([lp.gain_inh for lp in layers]))

    # synapse currents, [T, B, C * N]
    def input_currents(self, placement, spikes, weight, columns, decays=None, binary=None,
                       per_chip=False):
        """Chip.input_currents for every chip at once: spikes [T, B, n] shared by all chips, or
        [C, T, B, n] (per_chip=True) one per chip; weight [N, n] shared. Returns (x_exc, x_inh)
        [T, B, C * N], chip-major along the last axis."""
        C = len(self.members)
        if not per_chip:
            return super().input_currents(placement, spikes, weight.repeat(C, 1), columns,
                                          decays, binary)
        if spikes.dim() < 2 or spikes.shape[0] != C:
            raise ValueError(f"spikes: a per-chip input has the population's {C} chips first "
                             f"([C, T, B, n]), got shape {tuple(spikes.shape)}")
        from .weights import are_spikes, per_chip_currents
        lp = self.layer_params(placement, weight.device, weight.dtype)
        return per_chip_currents(
            spikes, weight, lp.gain_exc[:, columns], lp.gain_inh[:, columns], C,
            scale=self.weight_scale, quantise=self.quantise, saturation=self.saturation,
            decays=self.synapse_decays(placement) if decays is None else decays,
            neuron_gain=self.neuron_gains(placement, weight.device, spikes.dtype),
            binary=are_spikes(spikes) if binary is None else binary)

    def set_failures(self, dead=0.0, firing=0.0, seed=0):
        """Chip.set_failures on every chip: each draws its own failed neurons."""
        super().set_failures(dead, firing, seed)
        for m in self.members:
            m.set_failures(dead, firing, seed)

    def disable_tonic(self, disabled=True):
        super().disable_tonic(disabled)
        for m in self.members:
            m.disable_tonic(disabled)

    def failure_masks(self, placement):
        masks = [m.failure_masks(placement) for m in self.members]
        return torch.cat([d for d, _ in masks]), torch.cat([f for _, f in masks])

    def recurrence(self, placement, weight, columns):
        raise NotImplementedError(
            "recurrent layers on a population of chips are not supported yet (their recurrent "
            "synapses are one N x N array per chip); run each chip alone (Chips.chip(c))")

    def split(self, t):
        """[T, B, C * N] (the kernels' layout) -> [C, T, B, N], marked as a population output."""
        T, B, CN = t.shape
        C = len(self.members)
        out = t.reshape(T, B, C, CN // C).permute(2, 0, 1, 3)
        return mark_population(out, C)
