"""The chip's forward synapse product on tensor cores: spikes (0/1) times 6-bit weight codes summed
in fp32 or int32 is exact, so where each neuron's synapses share one gain the product runs on the
codes (int8 GEMMs on a GPU) and only the per-neuron factor rounds: bit-identical to the fp32 path.
Where gains vary per synapse the product follows torch's fp32 matmul precision; TF32's error is
bounded here by emulation (the GPU run measures spike agreement)."""
import pytest
import torch

from bss2_backend import Chip, LIFLayer, LILayer, Mismatch
from bss2_backend import weights as W
from bss2_backend.train.coding import latency_code

GEN = torch.Generator().manual_seed(0)


def _spikes(*shape, p=0.3):
    return (torch.rand(*shape, generator=GEN) < p).float()


@pytest.fixture
def int8_on_cpu(monkeypatch):
    """Run the int8 GEMM route on the CPU too (torch._int_mm has a CPU kernel)."""
    monkeypatch.setattr(W, "INT8_PRODUCTS", {"cpu", "cuda"})


def test_int8_code_product_is_bit_identical_to_fp32(int8_on_cpu):
    for M, K, N in ((64, 256, 246), (17, 8, 3), (400, 128, 128)):
        s = _spikes(M, K)
        codes = torch.randint(-63, 64, (N, K), generator=GEN).float()
        fp32 = W.code_product(s, codes, binary=False)
        int8 = W.code_product(s, codes, binary=True)
        assert torch.equal(fp32, int8)
        assert torch.equal(fp32, (s.double() @ codes.double().t()).float())   # exact sums
    # shapes the int8 GEMM does not take fall back to fp32, still exact
    s, codes = _spikes(10, 12), torch.randint(-63, 64, (5, 12), generator=GEN).float()
    assert torch.equal(W.code_product(s, codes, True), s @ codes.t())


def _layer(chip, n_in=32, n_out=20, readout=False):
    torch.manual_seed(1)
    layer = (LILayer if readout else LIFLayer)(chip, n_in, n_out)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    return layer


@pytest.mark.parametrize("mismatch", ["none", Mismatch(syn_gain=0.1)])
def test_uniform_gains_take_the_exact_code_product(mismatch, int8_on_cpu):
    """mismatch='none' (gain 1) and a chip whose spread is per circuit only (one gain per
    neuron): the int8 route (marked 0/1 input) equals the fp32 route bit for bit, values and
    gradients."""
    chip = Chip(seed=2, mismatch=mismatch, noise=False)
    layer = _layer(chip)
    assert chip.neuron_gains(layer.placement, "cpu", torch.float32) is not None
    x = _spikes(16, 4, 32)
    results = []
    for marked in (False, True):
        layer.zero_grad(set_to_none=True)
        inp = W.mark_spikes(x.clone()) if marked else x.clone()
        z, u = layer(inp)
        (u * torch.linspace(-1, 1, u.numel()).reshape(u.shape)).sum().backward()
        results.append((z, u, layer.weight.grad.clone()))
    (z0, u0, g0), (z1, u1, g1) = results
    assert torch.equal(z0, z1) and torch.equal(u0, u1) and torch.equal(g0, g1)
    assert float(z0.detach().sum()) > 0


def test_the_code_product_equals_the_effective_weight_product_to_rounding():
    chip = Chip(seed=2, mismatch=Mismatch(syn_gain=0.1), noise=False)
    layer = _layer(chip)
    lp = chip.layer_params(layer.placement, "cpu", torch.float32)
    x = _spikes(8, 4, 32)
    decays = chip.synapse_decays(layer.placement)
    common = dict(scale=chip.weight_scale, quantise=True, saturation=None, decays=decays)
    exact, _ = W.input_currents(x, layer.weight, lp.gain_exc, lp.gain_inh, **common,
                                neuron_gain=lp.gain_exc[:, 0])
    effective, _ = W.input_currents(x, layer.weight, lp.gain_exc, lp.gain_inh, **common)
    torch.testing.assert_close(exact, effective, rtol=1e-6, atol=1e-6)


def test_row_gain_spread_keeps_the_fp32_product():
    chip = Chip(seed=2)                              # calibrated: rows spread too
    layer = _layer(chip)
    assert chip.neuron_gains(layer.placement, "cpu", torch.float32) is None


def test_readout_fed_by_chip_spikes_gets_the_marked_route():
    chip = Chip(seed=3, mismatch="none", noise=False)
    hidden, readout = _layer(chip), _layer(chip, 20, 5, readout=True)
    z, _ = hidden(_spikes(10, 2, 32))
    assert W.are_spikes(z)                          # the chip's spikes come marked
    assert W.are_spikes(latency_code(torch.rand(3, 4, 4), 8))
    readout(z)


def _tf32(x):
    """Round float32 to TF32 (10 mantissa bits), nearest-even, as tensor cores read inputs."""
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32)


def test_tf32_error_on_spread_gains_stays_within_its_bound():
    """Where gains vary per synapse the forward product follows torch's fp32 matmul precision.
    Under TF32 (set_float32_matmul_precision('high')) each weight is rounded to 10 mantissa bits:
    |x_tf32 - x_fp32| <= 2^-11 sum_i s_i |w_i| (+ fp32 accumulation), the bound documented."""
    chip = Chip(seed=4)
    layer = _layer(chip, 256, 246)
    lp = chip.layer_params(layer.placement, "cpu", torch.float32)
    _, exc, inh = W.weight_path(layer.weight, lp.gain_exc, lp.gain_inh, chip.weight_scale)
    w = (exc - inh).detach()
    s = _spikes(2000, 256, p=0.1)
    exact = s.double() @ w.double().t()
    tf32 = s @ _tf32(w).t()
    bound = 2.0 ** -11 * (s.double() @ w.abs().double().t()) + 1e-6
    assert bool(((tf32.double() - exact).abs() <= bound).all())
    assert float((tf32.double() - exact).abs().max()) > 0      # the emulation rounds something
