"""Temporal noise of the chip LIF op's fused kernels (counter-based tl.randn): law, independence of the membrane
and readout streams, reproducibility, independence of the tiling, and its effect vs the twin."""
import pytest
import torch
from scipy import stats

from bss2_backend import LIFParams, ReadoutParams, cuba_lif, li
from bss2_backend.kernels.chip_lif import triton as fused

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
T, B, N = 8, 64, 64
UNIT = 45.0


def pure_noise(membrane_lsb=0.0, readout_lsb=0.0, seed=7, quantise=False):
    """LI with a_mem = 1 and no input: v is exactly 0 before the noise, so the read membrane is
    the noise itself. Returns it in LSB."""
    p = LIFParams.uniform(N, a_mem=1.0, device=DEVICE)
    ro = ReadoutParams(torch.zeros(N, device=DEVICE), readout_lsb, quantise)
    x = torch.zeros(T, B, N, device=DEVICE)
    u = li(x, params=p, readout=ro, membrane_noise_lsb=membrane_lsb, seed=seed, backend="triton")
    return (u * UNIT).flatten().double().cpu()


def assert_standard_normal(xi):
    assert abs(float(xi.mean())) < 0.03
    assert abs(float(xi.std()) - 1.0) < 0.03
    assert stats.kstest(xi.numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("which", ["membrane", "readout"])
def test_noise_is_gaussian_with_the_requested_std(which):
    lsb = 2.5
    u = pure_noise(**{f"{which}_lsb": lsb})
    assert_standard_normal(u / lsb)


def test_quantised_readout_noise_rounds_a_gaussian():
    code = pure_noise(readout_lsb=2.0, quantise=True) + 80.0
    assert float((code - code.round()).abs().max()) < 1e-3
    code = code.round()
    assert abs(float(code.mean()) - 80.0) < 0.05
    assert abs(float(code.var()) - (4.0 + 1.0 / 12)) < 0.15


def test_membrane_and_readout_streams_are_independent():
    mem = pure_noise(membrane_lsb=1.0)
    read = pure_noise(readout_lsb=1.0)
    both = pure_noise(membrane_lsb=1.0, readout_lsb=1.0)
    assert abs(float(torch.corrcoef(torch.stack([mem, read]))[0, 1])) < 0.03
    assert abs(float(both.var()) - 2.0) < 0.1


def test_same_seed_same_noise_other_seed_other_noise():
    a, b, c = pure_noise(1.0, 1.0, seed=3), pure_noise(1.0, 1.0, seed=3), pure_noise(1.0, 1.0, seed=4)
    assert torch.equal(a, b)
    assert abs(float(torch.corrcoef(torch.stack([a, c]))[0, 1])) < 0.03


def test_noise_does_not_depend_on_the_tiling(monkeypatch):
    a = pure_noise(1.0, 1.0)
    monkeypatch.setattr(fused, "_blocks", lambda *_: (16, 32, 16, 4))
    assert torch.equal(a, pure_noise(1.0, 1.0))


def test_noisy_firing_rate_matches_twin():
    """Same law, different generators: the firing rates near threshold agree statistically."""
    n, batch, steps = 32, 64, 20
    p = LIFParams.uniform(n, a_mem=0.2, a_syn_exc=0.5, ref_steps=1, device=DEVICE)
    ro = ReadoutParams(torch.zeros(n, device=DEVICE), 1.0, True)
    x = torch.full((steps, batch, n), 0.5, device=DEVICE)
    rates = {}
    for backend in ("torch", "triton"):
        z, _ = cuba_lif(x, params=p, readout=ro, membrane_noise_lsb=4.0, seed=11, backend=backend)
        rates[backend] = float(z[5:].mean())
    z_quiet, _ = cuba_lif(x, params=p, readout=ro, backend="triton")
    assert 0.05 < rates["torch"] < 0.6
    assert abs(rates["torch"] - rates["triton"]) < 0.03
    assert abs(float(z_quiet[5:].mean()) - rates["triton"]) > 0.03
