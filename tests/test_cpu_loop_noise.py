"""Temporal noise of the compiled CPU loop (its counter-based generator, cpu_loop.c): law,
independence of the membrane and readout streams, reproducibility, a run in pieces equal to the
run whole, and its effect vs the twin (same law, another generator)."""
import pytest
import torch
from scipy import stats

from bss2_backend import LIFParams, ReadoutParams, cuba_lif, li
from bss2_backend.kernels import native

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
T, B, N = 8, 64, 64
UNIT = 45.0


def pure_noise(membrane_lsb=0.0, readout_lsb=0.0, seed=7, quantise=False, steps=T):
    """LI with a_mem = 1 and no input: v is exactly 0 before the noise, so the read membrane is
    the noise itself. Returns it in LSB."""
    p = LIFParams.uniform(N, a_mem=1.0)
    ro = ReadoutParams(torch.zeros(N), readout_lsb, quantise)
    x = torch.zeros(steps, B, N)
    with native.cpu_loop("compiled"):
        u = li(x, params=p, readout=ro, membrane_noise_lsb=membrane_lsb, seed=seed,
               backend="torch")
    return (u * UNIT).flatten().double()


def assert_standard_normal(xi):
    assert abs(float(xi.mean())) < 0.03
    assert abs(float(xi.std()) - 1.0) < 0.03
    assert stats.kstest(xi.numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("which", ["membrane", "readout"])
def test_noise_is_gaussian_with_the_requested_std(which):
    lsb = 2.5
    assert_standard_normal(pure_noise(**{f"{which}_lsb": lsb}) / lsb)


def test_tails_and_moments_of_many_draws():
    xi = pure_noise(membrane_lsb=1.0, steps=64)             # 262,144 draws
    assert abs(float(stats.kurtosis(xi.numpy()))) < 0.05    # Gaussian: excess kurtosis 0
    assert abs(float(stats.skew(xi.numpy()))) < 0.02
    assert abs(float((xi.abs() > 3).double().mean()) - 2 * stats.norm.sf(3)) < 6e-4
    assert stats.kstest(xi.numpy(), "norm").pvalue > 1e-3


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


def test_neighbouring_elements_and_steps_are_uncorrelated():
    xi = pure_noise(membrane_lsb=1.0).reshape(T, B, N)
    for a, b in ((xi[:, :, :-1], xi[:, :, 1:]), (xi[:, :-1], xi[:, 1:]), (xi[:-1], xi[1:])):
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < 0.03


def test_same_seed_same_noise_other_seed_other_noise():
    a, b, c = pure_noise(1.0, 1.0, seed=3), pure_noise(1.0, 1.0, seed=3), pure_noise(1.0, 1.0, seed=4)
    assert torch.equal(a, b)
    assert abs(float(torch.corrcoef(torch.stack([a, c]))[0, 1])) < 0.03


def test_a_run_in_pieces_equals_the_run_whole():
    import bss2_backend.kernels.chip_lif as op
    from bss2_backend.dynamics import config as op_config, pack
    from bss2_backend.surrogates import Surrogate
    p = LIFParams.uniform(N, a_mem=0.2, a_syn_exc=0.5, ref_steps=2)
    ro = ReadoutParams(torch.randn(N), 1.5, True)
    packed = pack(p, p, ro, torch.float32)
    cfg = op_config(ro, 2.0, Surrogate(), True, True)
    x = torch.rand(12, 4, N) * 0.6
    with native.cpu_loop("compiled"):
        z, u, _ = op.chip_lif(x, None, *packed, cfg, 5)
        z1, u1, state = op.chip_lif(x[:5], None, *packed, cfg, 5)
        z2, u2, _ = op.chip_lif(x[5:], None, *packed, cfg, 5, state=state, step=5)
    assert torch.equal(z, torch.cat([z1, z2])) and torch.equal(u, torch.cat([u1, u2]))


def test_noisy_firing_rate_matches_twin():
    """Same law, different generators: the firing rates near threshold agree statistically."""
    n, batch, steps = 32, 64, 20
    p = LIFParams.uniform(n, a_mem=0.2, a_syn_exc=0.5, ref_steps=1)
    ro = ReadoutParams(torch.zeros(n), 1.0, True)
    x = torch.full((steps, batch, n), 0.5)
    rates = {}
    for mode in ("eager", "compiled"):
        with native.cpu_loop(mode):
            z, _ = cuba_lif(x, params=p, readout=ro, membrane_noise_lsb=4.0, seed=11,
                            backend="torch")
        rates[mode] = float(z[5:].mean())
    with native.cpu_loop("compiled"):
        z_quiet, _ = cuba_lif(x, params=p, readout=ro, backend="torch")
    assert 0.05 < rates["eager"] < 0.6
    assert abs(rates["eager"] - rates["compiled"]) < 0.03
    assert abs(float(z_quiet[5:].mean()) - rates["compiled"]) > 0.03
