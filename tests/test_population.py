"""A population of chips (bss2_backend.Chips): C chips in one launch, chip c equal to
Chip(seed=seeds[c]) alone, on the torch twin and the fused kernels (interpreter), with clear errors
for what does not fit."""
import pytest
import torch

from bss2_backend import Chip, Chips, LIFLayer, LILayer, Mismatch, Noise

SEEDS = [3, 8, 11, 40]
# spread per circuit only: every synapse of a neuron has one gain, so the products are exact and
# chip c equals the single chip bit for bit
PER_CIRCUIT = Mismatch(leak=0.05, threshold=0.05, tau_mem=0.1, tau_syn_exc=0.1,
                       tau_syn_inh=0.1, syn_gain=0.1, cadc_offset_lsb=2.0)


def _net(chip, backend="torch"):
    torch.manual_seed(0)
    hidden = LIFLayer(chip, 16, 12, backend=backend)
    readout = LILayer(chip, 12, 4, backend=backend)
    with torch.no_grad():
        hidden.weight.mul_(4.0)
    return hidden, readout


def _x(T=12, B=3, n=16, seed=1):
    return (torch.rand(T, B, n, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def _loss(out):
    g = torch.Generator().manual_seed(2)
    return (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chip_c_of_a_population_is_the_single_chip(backend):
    pop = Chips(SEEDS, mismatch=PER_CIRCUIT, noise=False)
    hidden, readout = _net(pop, backend)
    x = _x()
    z, u = hidden(x)
    out = readout(z)
    assert z.shape == u.shape == (len(SEEDS), 12, 3, 12) and out.shape == (len(SEEDS), 12, 3, 4)
    grads = []
    for c, seed in enumerate(SEEDS):
        h1, r1 = _net(Chip(seed, mismatch=PER_CIRCUIT, noise=False), backend)
        z1, u1 = h1(x)
        o1 = r1(z1)
        assert torch.equal(z1, z[c]) and torch.equal(u1, u[c]) and torch.equal(o1, out[c])
        _loss(o1).backward()
        grads.append((h1.weight.grad, r1.weight.grad))
    assert float(z.sum()) > 0
    # the population's loss is the chips' summed: its weight gradients are theirs summed
    sum(_loss(out[c]) for c in range(len(SEEDS))).backward()
    torch.testing.assert_close(hidden.weight.grad, sum(g[0] for g in grads), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(readout.weight.grad, sum(g[1] for g in grads), rtol=1e-5, atol=1e-6)


def test_calibrated_chips_equal_single_chips_to_rounding():
    """Row-gain spread (calibrated mismatch): the same sums in another order; float64."""
    pop = Chips(SEEDS[:2], noise=False)
    hidden, readout = _net(pop)
    hidden.double(), readout.double()
    x = _x().double()
    out = readout(hidden(x)[0])
    for c, seed in enumerate(SEEDS[:2]):
        h1, r1 = _net(Chip(seed, noise=False))
        h1.double(), r1.double()
        torch.testing.assert_close(r1(h1(x)[0]), out[c], rtol=1e-9, atol=1e-9)


def test_fused_and_torch_populations_agree_with_noise_on():
    """Readout noise only: the spikes are deterministic and equal; the read membranes scatter
    around the noise-free ones with the requested std (2 LSB) on both paths (other draws)."""
    spread = []
    for backend in ("torch", "triton"):
        runs = []
        for noise in (Noise(readout_lsb=2.0, membrane_lsb=0.0), False):
            pop = Chips(SEEDS, noise=noise)
            hidden, _ = _net(pop, backend)
            runs.append(hidden(_x(B=16)))
        (z, u), (z_ref, u_ref) = runs
        assert torch.equal(z, z_ref)
        spread.append(float(((u - u_ref) * pop.calibration.unit_lsb).std()))
    assert all(1.7 < s < 2.4 for s in spread), spread
    assert abs(spread[0] - spread[1]) < 0.15 * spread[0]


def test_chips_have_their_own_noise_streams():
    pop = Chips(SEEDS, mismatch="none", noise=Noise(readout_lsb=3.0, membrane_lsb=0.0))
    torch.manual_seed(0)
    layer = LILayer(pop, 8, 64)
    with torch.no_grad():
        layer.weight.zero_()
    u = layer(torch.zeros(20, 4, 8))
    per_chip = u.reshape(len(SEEDS), -1)
    # the same chip (mismatch none): the readouts differ by the noise alone, chip to chip
    assert not torch.equal(per_chip[0], per_chip[1])
    assert abs(float(torch.corrcoef(per_chip[:2])[0, 1])) < 0.2


def test_per_chip_inputs_and_the_explicit_argument():
    pop = Chips(SEEDS, mismatch=PER_CIRCUIT, noise=False)
    hidden, readout = _net(pop)
    per_chip = torch.stack([_x(seed=c) for c in range(len(SEEDS))])
    z, _ = hidden(per_chip, per_chip=True)
    for c, seed in enumerate(SEEDS):
        h1, _ = _net(Chip(seed, mismatch=PER_CIRCUIT, noise=False))
        assert torch.equal(h1(per_chip[c])[0], z[c])
    # a population output is per chip by default; saying otherwise is checked against its shape
    readout(z)
    with pytest.raises(ValueError, match="ndim|dimensions|rank|3"):
        readout(z, per_chip=False)


@pytest.mark.parametrize("make, error, match", [
    (lambda: Chips([]), ValueError, "seeds is empty"),
    (lambda: Chips([1, 2, 1]), ValueError, "distinct"),
    (lambda: Chips(5), TypeError, "iterable"),
    (lambda: Chips([1, -2]), ValueError, "seeds"),
    (lambda: LIFLayer(Chips([1, 2]), 4, 3, recurrent=True)(torch.zeros(2, 1, 4)),
     NotImplementedError, "recurrent layers on a population"),
    (lambda: LIFLayer(Chips([1, 2]), 4, 3)(torch.zeros(3, 2, 1, 4), per_chip=True),
     ValueError, "2 chips first"),
    (lambda: LIFLayer(Chip(1), 4, 3)(torch.zeros(2, 1, 4), per_chip=True),
     ValueError, "needs a population"),
])
def test_bad_populations_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_snntorch_forward_pass_on_a_population_is_each_chip():
    import warnings

    import snntorch as snn
    from torch import nn

    from bss2_backend.integrations.snntorch import convert, forward_pass

    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(16, 12, bias=False),
            snn.Leaky(0.9, init_hidden=True, reset_mechanism="zero"),
            nn.Linear(12, 4, bias=False),
            snn.Leaky(0.9, init_hidden=True, output=True, reset_mechanism="none"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pop = convert(net(), Chips(SEEDS[:3], mismatch=PER_CIRCUIT, noise=False))
        singles = [convert(net(), Chip(s, mismatch=PER_CIRCUIT, noise=False)) for s in SEEDS[:3]]
    x = _x()
    spk, mem = forward_pass(pop, 12, x)
    assert spk.shape == mem.shape == (3, 12, 3, 4)
    for c, single in enumerate(singles):
        s1, m1 = forward_pass(single, 12, x)
        assert torch.equal(s1, spk[c]) and torch.equal(m1, mem[c])
    with pytest.raises(ValueError, match="3 chips first"):
        forward_pass(pop, 12, x[:, :2], per_chip=True)
    with pytest.raises(ValueError, match="needs a net converted onto a population"):
        forward_pass(singles[0], 12, x, per_chip=True)
