"""Placement of a network's logical neurons onto physical neuron circuits and synapse rows.

A logical neuron is built from 1 or 2 circuits at the same column (top and bottom hemisphere,
membranes connected): each circuit brings one synapse array's 128 signed inputs (exc/inh row pairs),
so a neuron takes at most 256 signed inputs. The paper's MNIST net uses 2 circuits for each of its
246 + 10 neurons: all 512 circuits.

A logical neuron made of several circuits takes, as the connected circuits would:
- leak and time constants from the circuits together (mean leak; tau = k / sum(1/tau_c), equal
  capacitances in parallel), threshold, reset, refractory time and CADC channel from its first
  circuit (whose comparator fires);
- the synaptic gain of the circuit serving each input (input j -> circuit j // 128).
Input j of a layer uses synapse rows 2*(j % 128) (exc) and 2*(j % 128) + 1 (inh) of that
circuit's array; rows beyond one chip (strict=False) continue on virtual arrays.

strict=True enforces the chip: 512 circuits, 256 signed inputs per neuron. Routing limits of the
synapse drivers (how many sources share a row) are not modelled.
"""
import collections
import math
import numbers
from dataclasses import dataclass

import torch

from . import constants as C
from .validation import check_allocation, check_number

# An emulator limit, not a chip fact: a strict=False substrate holds at most this many circuits
# (8192 chips' worth); beyond it the per-circuit bookkeeping alone would fill a host.
MAX_VIRTUAL_CIRCUITS = 2**22
# host bytes per synapse of a placed layer: row indices, serving circuits and fixed-pattern gains
# ([n_out, n_in] int64 / float64 tensors), counted before anything is allocated
BYTES_PER_SYNAPSE = 48


class PlacementError(ValueError):
    """A network does not fit the chip (strict mode)."""


@dataclass(frozen=True)
class Placement:
    name: str
    n_in: int
    n_out: int
    circuits_per_neuron: int
    circuits: tuple        # circuits[n] = tuple of circuit indices of logical neuron n

    def circuit_matrix(self):
        return torch.tensor(self.circuits, dtype=torch.long)  # [n_out, k]

    def serving_circuit(self):
        """[n_out, n_in]: the circuit each (neuron, input) synapse sits on."""
        k = self.circuits_per_neuron
        which = (torch.arange(self.n_in) // C.SIGNED_INPUTS_PER_CIRCUIT) % k
        return self.circuit_matrix()[:, which]

    def rows(self):
        """([n_out, n_in], [n_out, n_in]) global indices of the exc and inh row of each synapse."""
        circ = self.serving_circuit()
        array = circ // C.NEURONS_PER_ROW
        j = torch.arange(self.n_in)
        # beyond 128 inputs per circuit (strict=False only) rows continue on virtual arrays
        virtual = j // (C.SIGNED_INPUTS_PER_CIRCUIT * self.circuits_per_neuron)
        base = (array + 2 * virtual) * C.SYNAPSE_ROWS + 2 * (j % C.SIGNED_INPUTS_PER_CIRCUIT)
        return base, base + 1

    def as_dict(self):
        return {"name": self.name, "n_in": self.n_in, "n_out": self.n_out,
                "circuits_per_neuron": self.circuits_per_neuron,
                "circuits": [list(c) for c in self.circuits]}

    @classmethod
    def from_dict(cls, d):
        """A Placement from as_dict() output; ValueError/TypeError naming the field when damaged."""
        if not isinstance(d, dict):
            raise TypeError(f"a placement must be a dict (Placement.as_dict()), got {type(d).__name__}")
        missing = [k for k in ("name", "n_in", "n_out", "circuits_per_neuron", "circuits") if k not in d]
        if missing:
            raise ValueError(f"placement {d.get('name', '?')!r} is missing {missing}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise TypeError(f"placement name must be a non-empty str, got {name!r}")
        check_number(f"placement {name!r}: n_in", d["n_in"], low=1, integer=True)
        check_number(f"placement {name!r}: n_out", d["n_out"], low=1, high=MAX_VIRTUAL_CIRCUITS,
                     integer=True)
        k = d["circuits_per_neuron"]
        if isinstance(k, bool) or k not in (1, 2):
            raise ValueError(f"placement {name!r}: circuits_per_neuron={k!r}; allowed 1 or 2")
        circuits = d["circuits"]
        if not isinstance(circuits, (list, tuple)) or len(circuits) != d["n_out"]:
            raise ValueError(f"placement {name!r}: circuits must list {d['n_out']} neurons, got "
                             f"{len(circuits) if isinstance(circuits, (list, tuple)) else type(circuits).__name__}")
        groups = []
        for n, group in enumerate(circuits):
            if not isinstance(group, (list, tuple)) or len(group) != k:
                raise ValueError(f"placement {name!r}: neuron {n} must have {k} circuit(s), got {group!r}")
            for c in group:
                check_number(f"placement {name!r}: circuit index", c, low=0,
                             high=MAX_VIRTUAL_CIRCUITS - 1, integer=True)
            if k == 2 and not (group[0] % C.NEURON_CIRCUITS < C.NEURONS_PER_ROW
                               and group[1] == group[0] + C.NEURONS_PER_ROW):
                raise ValueError(f"placement {name!r}: neuron {n} joins circuits {tuple(group)}, but "
                                 f"a two-circuit neuron is a top circuit c and the bottom one c + "
                                 f"{C.NEURONS_PER_ROW} of the same column")
            groups.append(tuple(int(c) for c in group))
        return cls(name, int(d["n_in"]), int(d["n_out"]), k, tuple(groups))


class Allocator:
    """Hands out circuits column by column; a virtual chip follows when strict=False."""

    def __init__(self, strict=True):
        self.strict = strict
        self.used = set()

    def allocate(self, name, n_in, n_out, circuits_per_neuron=None):
        for what, v in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"layer {name!r}: {what} must be an integer, got {v!r}")
        n_in, n_out = int(n_in), int(n_out)
        if n_in < 1 or n_out < 1:
            raise ValueError(f"layer {name!r}: n_in={n_in} and n_out={n_out} must be >= 1")
        k = circuits_per_neuron or max(1, min(C.MAX_CIRCUITS_PER_NEURON,
                                               math.ceil(n_in / C.SIGNED_INPUTS_PER_CIRCUIT)))
        if isinstance(k, bool) or k not in (1, 2):
            raise ValueError(f"layer {name!r}: circuits_per_neuron={k}; allowed 1 or 2 "
                             f"(top and bottom circuit of one column)")
        k = int(k)
        self._check_fits(name, n_in, n_out, k)
        free = [c for c in range(self._search_limit(n_out * k)) if c not in self.used]
        chosen = []
        if k == 2:
            tops = [c for c in free if (c % C.NEURON_CIRCUITS) < C.NEURONS_PER_ROW
                    and c + C.NEURONS_PER_ROW not in self.used]
            chosen = [(c, c + C.NEURONS_PER_ROW) for c in tops[:n_out]]
        else:
            chosen = [(c,) for c in free[:n_out]]
        if len(chosen) < n_out:
            left = C.NEURON_CIRCUITS - len(self.used)
            raise PlacementError(
                f"layer {name!r} needs {n_out} neurons x {k} circuits = {n_out * k} neuron circuits, "
                f"but only {left} of the chip's {C.NEURON_CIRCUITS} are free (strict=True); shrink "
                f"the network or use Chip(strict=False) to emulate a larger BSS-2-like substrate")
        for group in chosen:
            self.used.update(group)
        return Placement(name, n_in, n_out, k, tuple(chosen))

    def _check_fits(self, name, n_in, n_out, k):
        """PlacementError where the chip's limits refuse the layer, before any search or draw."""
        if self.strict and n_in > C.SIGNED_INPUTS_PER_CIRCUIT * k:
            raise PlacementError(
                f"layer {name!r} has {n_in} inputs, but a BSS-2 neuron of {k} circuit(s) takes at "
                f"most {C.SIGNED_INPUTS_PER_CIRCUIT * k} signed inputs (limit "
                f"{C.MAX_SIGNED_INPUTS_PER_NEURON} with 2 circuits); reduce the inputs or use "
                f"Chip(strict=False) to emulate a larger BSS-2-like substrate")
        if self.strict and n_out * k > C.NEURON_CIRCUITS - len(self.used):
            left = C.NEURON_CIRCUITS - len(self.used)
            raise PlacementError(
                f"layer {name!r} needs {n_out} neurons x {k} circuits = {n_out * k} neuron circuits, "
                f"but only {left} of the chip's {C.NEURON_CIRCUITS} are free (strict=True); shrink "
                f"the network or use Chip(strict=False) to emulate a larger BSS-2-like substrate")
        if not self.strict and n_out * k + len(self.used) > MAX_VIRTUAL_CIRCUITS:
            raise PlacementError(
                f"layer {name!r} needs {n_out * k} neuron circuits; a strict=False substrate holds "
                f"at most {MAX_VIRTUAL_CIRCUITS} ({len(self.used)} in use)")
        check_allocation(f"placing layer {name!r} ({n_out} neurons x {n_in} inputs)",
                         BYTES_PER_SYNAPSE * n_out * n_in, "cpu")

    def release(self, placement):
        """Give a placement's circuits back."""
        self.used.difference_update(c for group in placement.circuits for c in group)

    def claim(self, placement):
        """Mark a saved placement's circuits used (Chip.from_state_dict); refuses overlaps and, on
        a strict chip, what the chip could not hold."""
        p = placement
        self._check_fits(p.name, p.n_in, 0, p.circuits_per_neuron)
        flat = [c for group in p.circuits for c in group]
        taken = self.used.intersection(flat)
        if not taken and len(set(flat)) != len(flat):
            taken = {c for c, n in collections.Counter(flat).items() if n > 1}
        if taken:
            raise PlacementError(f"placement {p.name!r} uses circuit(s) {sorted(taken)[:5]} that "
                                 f"another neuron already uses; placements never share circuits")
        if self.strict and max(flat) >= C.NEURON_CIRCUITS:
            raise PlacementError(f"placement {p.name!r} uses circuit {max(flat)}, beyond the "
                                 f"{C.NEURON_CIRCUITS} of a strict chip")
        if self.strict and len(self.used) + len(flat) > C.NEURON_CIRCUITS:
            raise PlacementError(f"placement {p.name!r} does not fit: a strict chip has "
                                 f"{C.NEURON_CIRCUITS} circuits")
        self.used.update(flat)

    def _search_limit(self, need):
        if self.strict:
            return C.NEURON_CIRCUITS
        top = max(self.used, default=-1) + 1
        chips = (top + need) // C.NEURON_CIRCUITS + 2
        return chips * C.NEURON_CIRCUITS
