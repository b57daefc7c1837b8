"""The chip model: drawn mismatch, noise law, quantisation, weight path, placement, save/load."""
import io
import math

import pytest
import torch
from scipy import stats

import bss2_backend as bb
from bss2_backend import constants as C
from bss2_backend.readout import cadc_code, read_membrane
from bss2_backend.weights import round_half_away, synapses

PARAMS = ("leak_lsb", "reset_lsb", "threshold_lsb", "tau_mem_us", "tau_syn_exc_us",
          "tau_syn_inh_us", "refractory_us", "syn_gain")
NOMINAL = {"leak_lsb": 80, "reset_lsb": 70, "threshold_lsb": 125, "tau_mem_us": 10,
           "tau_syn_exc_us": 10, "tau_syn_inh_us": 10, "refractory_us": 2, "syn_gain": 1}


@pytest.mark.parametrize("spread", [0.02, 0.1, 0.2])
def test_mismatch_has_requested_spread(spread):
    chip = bb.Chip(seed=7, mismatch=spread, noise=False, strict=False)
    chip.place("big", 100, 4096, circuits_per_neuron=1)        # 4096 circuits drawn
    n = len(chip.neurons.leak_lsb)
    for name in PARAMS[:6] + ("syn_gain",):
        rel = getattr(chip.neurons, name) / NOMINAL[name] - 1
        # std of a normal sample: relative standard error 1/sqrt(2n); 5 sigma
        assert abs(float(rel.std()) / spread - 1) < 5 / math.sqrt(2 * n), name
        assert abs(float(rel.mean())) < 5 * spread / math.sqrt(n), name
        assert stats.kstest(rel.numpy() / spread, "norm").pvalue > 1e-4, name
    assert torch.all(chip.neurons.refractory_us == 2.0)        # sigma_d leaves refractory alone


def test_mismatch_preset_spreads_and_offsets():
    chip = bb.Chip(seed=1, mismatch="uncalibrated", strict=False)
    chip.place("big", 10, 4096, circuits_per_neuron=1)
    m = bb.Mismatch.preset("uncalibrated")
    n = len(chip.neurons.leak_lsb)
    assert abs(float(chip.neurons.cadc_offset_lsb.std()) / m.cadc_offset_lsb - 1) < 5 / math.sqrt(2 * n)
    rows = chip.synapse_rows
    assert abs(float(rows.std()) / m.row_gain - 1) < 5 / math.sqrt(2 * len(rows))


def test_mismatch_frozen_per_seed_and_seeds_differ():
    a, b, c = bb.Chip(seed=5), bb.Chip(seed=5), bb.Chip(seed=6)
    for name in bb.CircuitNeurons._fields:
        assert torch.equal(getattr(a.neurons, name), getattr(b.neurons, name))
        assert not torch.equal(getattr(a.neurons, name), getattr(c.neurons, name))
    assert torch.equal(a.synapse_rows, b.synapse_rows)
    assert a == b and a != c


def test_larger_substrate_extends_the_chip():
    small, large = bb.Chip(seed=2), bb.Chip(seed=2, strict=False)
    large.place("h", 700, 1024)
    assert len(large.neurons.leak_lsb) >= 2048
    for name in bb.CircuitNeurons._fields:
        assert torch.equal(getattr(small.neurons, name), getattr(large.neurons, name)[:512])


def test_drawn_parameters_stay_in_physical_ranges():
    chip = bb.Chip(seed=0, mismatch=1.0, strict=False)
    chip.place("x", 10, 2048, circuits_per_neuron=1)
    nrn = chip.neurons
    assert nrn.tau_mem_us.min() >= C.TAU_MEM_RANGE_US[0] and nrn.tau_mem_us.max() <= C.TAU_MEM_RANGE_US[1]
    assert nrn.tau_syn_exc_us.min() >= C.TAU_SYN_RANGE_US[0]
    assert nrn.leak_lsb.min() >= 0 and nrn.leak_lsb.max() <= 255
    assert nrn.syn_gain.min() >= 0
    assert chip.summary()["tonic_circuits"] > 0      # leak above threshold: a real failure state


def test_ideal_chip_has_nominal_parameters():
    chip = bb.Chip.ideal()
    lp = chip.layer_params(chip.place("l", 200, 30))
    for a, b in zip(lp.params, lp.nominal):
        assert torch.equal(a, b)
    assert torch.all(lp.gain_exc == 1) and torch.all(lp.gain_inh == 1)
    assert lp.readout.is_ideal and not chip.quantise
    assert torch.allclose(lp.nominal.v_th, torch.ones(30)) and torch.all(lp.nominal.v_leak == 0)
    assert torch.allclose(lp.nominal.v_reset, torch.full((30,), -10 / 45))


def test_two_circuit_neuron_combines_its_circuits():
    chip = bb.Chip(seed=4, mismatch=0.2, strict=True)
    p = chip.place("h", 256, 3)
    assert p.circuits_per_neuron == 2 and p.circuits[0] == (0, 256)
    lp = chip.layer_params(p, dtype=torch.float64)
    n = chip.neurons
    leak = (n.leak_lsb[0] + n.leak_lsb[256]) / 2
    assert torch.isclose(lp.params.v_leak[0], (leak - 80) / 45)
    tau = 2 / (1 / n.tau_mem_us[0] + 1 / n.tau_mem_us[256])
    assert torch.isclose(lp.params.a_mem[0], 1 / tau)
    assert torch.isclose(lp.params.v_th[0], (n.threshold_lsb[0] - 80) / 45)
    # inputs 0..127 sit on the top circuit, 128..255 on the bottom one
    assert lp.gain_exc[0, 0] / chip.synapse_rows[0] == pytest.approx(float(n.syn_gain[0]))
    assert lp.gain_exc[0, 200] / chip.synapse_rows[256 + 2 * 72] == pytest.approx(float(n.syn_gain[256]))
    assert lp.gain_inh[0, 5] / chip.synapse_rows[11] == pytest.approx(float(n.syn_gain[0]))


def test_paper_network_fills_the_chip_exactly():
    chip = bb.Chip(seed=0)
    bb.LIFLayer(chip, 256, 246)
    bb.LILayer(chip, 246, 10)
    used = {c for p in chip.placements.values() for g in p.circuits for c in g}
    assert len(used) == C.NEURON_CIRCUITS
    with pytest.raises(bb.PlacementError, match="512"):
        bb.LIFLayer(chip, 10, 1)


def test_strict_limits_raise_and_loose_mode_allows():
    with pytest.raises(bb.PlacementError, match="247 neurons x 2 circuits = 494.*512"):
        chip = bb.Chip()
        bb.LIFLayer(chip, 256, 10)
        bb.LIFLayer(chip, 200, 247)
    with pytest.raises(bb.PlacementError, match="at most 256 signed inputs"):
        bb.LIFLayer(bb.Chip(), 700, 10)
    layer = bb.LIFLayer(bb.Chip(strict=False), 700, 1024, recurrent=True)
    z, u = layer((torch.rand(3, 2, 700) < 0.1).float())
    assert z.shape == (3, 2, 1024)


# --- temporal noise ----------------------------------------------------------------------------

def _silent_run(readout, membrane_lsb, seed, T=400, B=16, N=64, li=True):
    p = bb.LIFParams.uniform(N, v_th=100.0, a_mem=0.1)
    x = torch.zeros(T, B, N)
    fn = bb.li if li else bb.cuba_lif
    out = fn(x, params=p, readout=readout, membrane_noise_lsb=membrane_lsb, seed=seed, backend="torch")
    return out if li else out[1]


def test_readout_noise_follows_configured_law():
    ro = bb.ReadoutParams(torch.zeros(64), noise_lsb=2.0, quantise=False)
    u = _silent_run(ro, 0.0, seed=3) * 45.0
    assert abs(float(u.mean())) < 0.02
    assert abs(float(u.std()) / 2.0 - 1) < 0.02
    assert stats.kstest(u.flatten().numpy()[:20000] / 2.0, "norm").pvalue > 1e-3


def test_quantised_readout_noise_std_and_offsets():
    offset = torch.linspace(-3, 3, 64)
    ro = bb.ReadoutParams(offset, noise_lsb=2.0, quantise=True)
    u = _silent_run(ro, 0.0, seed=4) * 45.0
    assert torch.allclose(u, torch.round(u), atol=1e-4)               # integer codes
    # uniform quantisation adds 1/12 LSB^2 of variance
    assert abs(float((u - offset).std()) / math.sqrt(4 + 1 / 12) - 1) < 0.03
    assert torch.allclose(u.mean((0, 1)), offset, atol=0.2)


def test_membrane_noise_is_an_ar1_process_of_configured_std():
    ro = bb.ReadoutParams.ideal(64)
    u = _silent_run(ro, 1.0, seed=5, T=600)[100:] * 45.0               # stationary part
    a = 0.1
    expected = 1.0 / math.sqrt(1 - (1 - a) ** 2)
    assert abs(float(u.std()) / expected - 1) < 0.05
    lag1 = float((u[1:] * u[:-1]).mean() / (u * u).mean())
    assert abs(lag1 - (1 - a)) < 0.02


def test_noise_reproducible_per_seed_and_redrawn_per_run():
    ro = bb.ReadoutParams(torch.zeros(64), noise_lsb=2.0, quantise=True)
    assert torch.equal(_silent_run(ro, 1.0, seed=9, T=20), _silent_run(ro, 1.0, seed=9, T=20))
    assert not torch.equal(_silent_run(ro, 1.0, seed=9, T=20), _silent_run(ro, 1.0, seed=10, T=20))
    chip_a, chip_b = bb.Chip(seed=1), bb.Chip(seed=1)
    la, lb = bb.LILayer(chip_a, 10, 5), bb.LILayer(chip_b, 10, 5)
    lb.load_state_dict(la.state_dict())
    x = torch.zeros(30, 2, 10)
    first, second = la(x), la(x)
    assert not torch.equal(first, second)                               # redrawn every run
    assert torch.equal(first, lb(x)) and torch.equal(second, lb(x))      # same seed, same runs
    assert chip_a.runs == 2


# --- 8-bit readout and 6-bit weights: exact ---------------------------------------------------

def test_cadc_quantisation_is_exact():
    v = torch.tensor([0.0, 1.0, 0.5 / 45, 0.49 / 45, -80 / 45, -81 / 45, 175 / 45, 176 / 45, 2.0])
    code = cadc_code(v, torch.zeros(9))
    assert code.tolist() == [80, 125, 81, 80, 0, 0, 255, 255, 170]
    ro = bb.ReadoutParams(torch.zeros(9), 0.0, True)
    assert torch.allclose(read_membrane(v, ro) * 45, code - 80)
    all_codes = read_membrane(torch.linspace(-3, 5, 2001), bb.ReadoutParams(torch.zeros(2001))) * 45 + 80
    assert set(torch.round(all_codes).tolist()) == set(range(256))
    assert torch.allclose(all_codes, torch.round(all_codes), atol=1e-4)


def test_weight_path_is_exact_6bit_with_half_away_rounding():
    w = torch.tensor([0.5, -0.5, 1.5, -2.5, 2.49, 62.5, 63.4, 100.0, -100.0, 0.0]) / 64
    hw = bb.to_hardware(w, 64)
    assert hw.tolist() == [1, -1, 2, -3, 2, 63, 63, 63, -63, 0]
    assert torch.equal(round_half_away(torch.tensor([0.5, -0.5, 2.5])), torch.tensor([1.0, -1.0, 3.0]))
    assert torch.equal(bb.quantise(w, 64), hw / 64)


def test_weight_path_straight_through_gradient():
    w = torch.tensor([0.1, -0.4, 0.98, -0.99, 1.2, -3.0], requires_grad=True)
    bb.to_hardware(w, 64).sum().backward()
    inside = (w.detach() * 64).abs() <= 63
    assert torch.equal(w.grad, 64.0 * inside)


def test_synapses_backward_is_the_nominal_gradient():
    s = (torch.rand(5, 3, 8, dtype=torch.float64) < 0.5).double().requires_grad_()
    w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    f = lambda s_, w_: synapses(s_, w_, w_.detach().clamp(min=0), (-w_.detach()).clamp(min=0))
    assert torch.autograd.gradcheck(f, (s, w))
    # the chip's gains and quantisation change the forward, never the gradient
    ge = 1 + 0.3 * torch.rand(4, 8, dtype=torch.float64)
    xe, xi = synapses(s, w, bb.quantise(w.detach()).clamp(min=0) * ge, (-w.detach()).clamp(min=0))
    g1 = torch.autograd.grad((xe - 2 * xi).sum(), (s, w))
    xe, xi = f(s, w)
    g2 = torch.autograd.grad((xe - 2 * xi).sum(), (s, w))
    assert all(torch.allclose(a, b) for a, b in zip(g1, g2))


def test_saturation_is_sublinear_and_inhibition_saturates_earlier():
    sat = bb.Saturation(exc=2.0, inh=1.0)
    s = torch.ones(1, 1, 50)
    w = torch.full((1, 50), 0.2)
    xe, _ = synapses(s, w, w, torch.zeros_like(w), sat)
    assert float(xe) < 10.0 and float(xe) == pytest.approx(2 * math.tanh(5))
    _, xi = synapses(s, -w, torch.zeros_like(w), w, sat)
    assert float(xi) == pytest.approx(math.tanh(10))


# --- save / load -------------------------------------------------------------------------------

def test_chip_round_trips_through_torch_save():
    chip = bb.Chip(seed=12, mismatch="uncalibrated", noise=bb.Noise(1.5, 0.2), strict=False,
                   saturation=bb.Saturation())
    bb.LIFLayer(chip, 300, 40)
    chip.next_seed(); chip.next_seed()
    buf = io.BytesIO()
    torch.save(chip.state_dict(), buf)
    buf.seek(0)
    back = bb.Chip.from_state_dict(torch.load(buf))
    assert back == chip and back.runs == 2 and back.placements == chip.placements
    for a, b in zip(back.neurons, chip.neurons):
        assert torch.equal(a, b)
    assert back.next_seed() == chip.next_seed()
    p = chip.placements["lif0"]
    flat = lambda lp: [x for part in lp for x in (part if isinstance(part, tuple) else (part,))]
    for a, b in zip(flat(back.layer_params(p)), flat(chip.layer_params(p))):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    buf = io.BytesIO()
    torch.save(chip, buf)                                             # whole object pickles too
    buf.seek(0)
    assert torch.load(buf, weights_only=False) == chip


def test_tampered_state_is_refused():
    state = bb.Chip(seed=1).state_dict()
    state["neurons"]["leak_lsb"] = state["neurons"]["leak_lsb"] + 1
    with pytest.raises(ValueError, match="leak_lsb differs"):
        bb.Chip.from_state_dict(state)
    with pytest.raises(ValueError, match="not a bss2_backend chip state"):
        bb.Chip.from_state_dict({"weights": 1})


def test_in_place_readout_equals_readout():
    from bss2_backend.readout import read_membrane_
    v = torch.linspace(-3, 5, 1001)
    noise = torch.randn(1001)
    for quantise in (True, False):
        ro = bb.ReadoutParams(torch.randn(1001), 2.0, quantise)
        assert torch.equal(read_membrane_(v.clone(), ro, noise.clone()), read_membrane(v, ro, noise))
