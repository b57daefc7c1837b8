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
import math
from dataclasses import dataclass

import torch

from . import constants as C


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
        return cls(d["name"], d["n_in"], d["n_out"], d["circuits_per_neuron"],
                   tuple(tuple(c) for c in d["circuits"]))


class Allocator:
    """Hands out circuits column by column; a virtual chip follows when strict=False."""

    def __init__(self, strict=True):
        self.strict = strict
        self.used = set()

    def capacity(self):
        return C.NEURON_CIRCUITS if self.strict else None

    def allocate(self, name, n_in, n_out, circuits_per_neuron=None):
        if n_in < 1 or n_out < 1:
            raise ValueError(f"layer {name!r}: n_in={n_in} and n_out={n_out} must be >= 1")
        k = circuits_per_neuron or max(1, min(C.MAX_CIRCUITS_PER_NEURON,
                                               math.ceil(n_in / C.SIGNED_INPUTS_PER_CIRCUIT)))
        if k not in (1, 2):
            raise ValueError(f"layer {name!r}: circuits_per_neuron={k}; allowed 1 or 2 "
                             f"(top and bottom circuit of one column)")
        if self.strict and n_in > C.SIGNED_INPUTS_PER_CIRCUIT * k:
            raise PlacementError(
                f"layer {name!r} has {n_in} inputs, but a BSS-2 neuron of {k} circuit(s) takes at "
                f"most {C.SIGNED_INPUTS_PER_CIRCUIT * k} signed inputs (limit "
                f"{C.MAX_SIGNED_INPUTS_PER_NEURON} with 2 circuits); reduce the inputs or use "
                f"Chip(strict=False) to emulate a larger BSS-2-like substrate")
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

    def _search_limit(self, need):
        if self.strict:
            return C.NEURON_CIRCUITS
        top = max(self.used, default=-1) + 1
        chips = (top + need) // C.NEURON_CIRCUITS + 2
        return chips * C.NEURON_CIRCUITS
