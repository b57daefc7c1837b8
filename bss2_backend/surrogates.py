"""Surrogate derivatives for the spike nonlinearity z = H(u), u = v - theta.

Forward is always the Heaviside step with strict `>`; only the backward differs. Each surrogate has
`grad(u)` (the pseudo-derivative) and `primitive(u)`, a smooth function whose true derivative is
`grad(u)`; tests gradcheck the primitive so the surrogate formula is validated against its own
integral. `kind` and `alpha` are what a fused kernel needs (a compile-time flag and one float).
"""
import math
from dataclasses import dataclass

import torch

from .kernels import surrogate as sg
from .validation import check_choice, check_number

# the chip's surrogates by name -> the kernels' shared surrogate table
KIND_IDS = {"superspike": sg.SUPERSPIKE, "atan": sg.ATAN, "sigmoid": sg.SIGMOID,
            "triangular": sg.TRIANGULAR, "straight_through": sg.STRAIGHT_THROUGH}


@dataclass(frozen=True)
class Surrogate:
    """A surrogate gradient. kind: one of KIND_IDS; alpha: steepness (1/model units).

    superspike:       1 / (alpha |u| + 1)^2          (Zenke & Ganguli; the paper's choice, alpha 50)
    atan:             1 / (1 + (pi/2 alpha u)^2) * alpha/2
    sigmoid:          alpha * s(alpha u) * (1 - s(alpha u))
    triangular:       max(0, 1 - alpha |u|) * alpha  (a window of half-width 1/alpha)
    straight_through: 1
    """
    kind: str = "superspike"
    alpha: float = 50.0

    def __post_init__(self):
        check_choice("surrogate kind", self.kind, KIND_IDS)
        check_number("surrogate alpha", self.alpha, low=0.0, low_open=True)

    def grad(self, u):
        return self.grad_(u.clone())

    def grad_(self, u):
        """grad(u) written into u where the formula allows (the CPU reverse sweep reuses one
        buffer per step); use the returned tensor."""
        return sg.grad_(self.id, self.alpha, u)

    @property
    def id(self):
        """This surrogate's id in the kernels' table (kernels.surrogate)."""
        return KIND_IDS[self.kind]

    def primitive(self, u):
        a = self.alpha
        if self.kind == "superspike":
            return torch.sign(u) * (1.0 - 1.0 / (a * u.abs() + 1.0)) / a
        if self.kind == "atan":
            return torch.atan(math.pi / 2 * a * u) / math.pi
        if self.kind == "sigmoid":
            return torch.sigmoid(a * u)
        if self.kind == "triangular":
            w = torch.clamp(a * u, -1.0, 1.0)
            return w - torch.sign(w) * w * w / 2
        return u.clone()


def as_surrogate(spec):
    """Accept a Surrogate, a kind name, or (kind, alpha)."""
    if isinstance(spec, Surrogate):
        return spec
    if isinstance(spec, str):
        return Surrogate(spec)
    if isinstance(spec, tuple) and len(spec) == 2:
        return Surrogate(*spec)
    raise TypeError(f"surrogate must be a Surrogate, a name from {sorted(KIND_IDS)} or (name, alpha); "
                    f"got {spec!r}")
