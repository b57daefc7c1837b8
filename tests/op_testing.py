"""What the op tests share: the device, the tolerance table and one comparison helper.

Relative RMS error ||ref - other|| / ||ref|| for continuous values and gradients, plus "no NaN"
(outputs are NaN-poisoned, see conftest.poisoned); exact equality for spikes (noise off, FMA
contraction off, inputs not placed on the threshold)."""
import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="chip-sized shapes run compiled on a GPU only; the "
                                      "interpreter covers the same code paths on small shapes")

TOL = {
    "membrane": 1e-6,
    "grad": 1e-5,
    "grad_recurrent": 1e-4,
    "grad_half": 1e-2,
    "float64": 1e-12,
}


def rel_rms(ref, other):
    assert torch.isfinite(other).all(), "output holds NaN/inf (an unwritten poisoned element?)"
    ref, other = ref.detach().double(), other.detach().double()
    return float((ref - other).norm() / ref.norm().clamp_min(1e-30))


def compare(ref, other, *, values=TOL["membrane"], grads=TOL["grad"], exact=()):
    """Compare two runs given as dicts name -> tensor (or None): names in `exact` must be equal
    bit for bit, names starting with "g" (gradients) within `grads`, the rest within `values`."""
    assert ref.keys() == other.keys()
    for name in ref:
        a, b = ref[name], other[name]
        if a is None:
            assert b is None, name
            continue
        if name in exact:
            assert torch.equal(a, b), f"{name}: {int((a != b).sum())} elements differ"
        else:
            tol = grads if name.startswith("g") else values
            err = rel_rms(a, b)
            assert err <= tol, f"{name}: relative RMS error {err:.3g} > {tol:.0e}"
