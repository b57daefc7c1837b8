"""Every bad input raises a ValueError/TypeError whose message names the argument and what is allowed."""
import pytest
import torch

import bss2_backend as bb
from bss2_backend.parameters import CircuitParams

P = bb.LIFParams.uniform(4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: bb.cuba_lif(torch.rand(3, 4), params=P), ValueError, "x_exc must have 3 dimensions"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), torch.rand(3, 2, 5), params=P), ValueError,
     r"x_inh must have shape \(3, 2, 4\)"),
    (lambda: bb.cuba_lif(torch.ones(3, 2, 4, dtype=torch.int32), params=P), TypeError,
     "x_exc must have a floating-point dtype"),
    (lambda: bb.cuba_lif(torch.full((3, 2, 4), float("nan")), params=P), ValueError,
     "x_exc contains NaN or inf"),
    (lambda: bb.cuba_lif(torch.full((3, 2, 4), float("inf")), params=P), ValueError, "x_exc contains NaN"),
    (lambda: bb.cuba_lif(torch.rand(0, 2, 4), params=P), ValueError, "T, B, N >= 1"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 5), params=P), ValueError, r"params.v_leak must be a tensor of shape \(5,\)"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), params=P._replace(a_mem=torch.zeros(4))), ValueError,
     r"params.a_mem \(dt/tau\) must lie in \(0, 1\]"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), params=P._replace(a_syn_exc=-torch.ones(4))), ValueError,
     "time constants must be positive"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), params=P, membrane_noise_lsb=-1.0), ValueError,
     r"membrane_noise_lsb=-1.0 is out of range; allowed \[0.0"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), params=P, backend="cuda"), ValueError,
     "backend='cuda' is not supported; choose one of"),
    (lambda: bb.cuba_lif(torch.rand(3, 2, 4), params="p"), TypeError, "params must be a bss2_backend.LIFParams"),
    (lambda: bb.Calibration(tau_mem_us=0.0), ValueError, r"Calibration.tau_mem_us=0.0 is out of range; allowed \[0.5, 60.0\]"),
    (lambda: bb.Calibration(tau_syn_exc_us=-2.0), ValueError, "tau_syn_exc_us=-2.0 is out of range"),
    (lambda: bb.Calibration(threshold_lsb=70.0), ValueError, "must lie above leak_lsb"),
    (lambda: CircuitParams.nominal(3)._replace(tau_mem_us=torch.tensor([10.0, -1.0, 5.0])).discretize(),
     ValueError, "tau_mem_us must be > 0 us"),
    (lambda: CircuitParams.nominal(3)._replace(tau_syn_exc_us=torch.full((3,), 0.5)).discretize(),
     ValueError, "forward-Euler integration unstable.*integration='exact'"),
    (lambda: bb.Mismatch(leak=-0.1), ValueError, r"Mismatch.leak=-0.1 is out of range; allowed \[0.0, 1.0\]"),
    (lambda: bb.Mismatch(cadc_offset_lsb=80.0), ValueError, "cadc_offset_lsb=80.0 is out of range"),
    (lambda: bb.Chip(mismatch=1.5), ValueError, r"sigma_d=1.5 is out of range; allowed \[0.0, 1.0\]"),
    (lambda: bb.Chip(mismatch="weird"), ValueError, "mismatch preset 'weird' is unknown"),
    (lambda: bb.Chip(mismatch=[0.1]), TypeError, "mismatch must be one of"),
    (lambda: bb.Chip(seed=-1), ValueError, "seed=-1 is out of range"),
    (lambda: bb.Chip(seed=1.5), TypeError, "seed must be an integer"),
    (lambda: bb.Chip(noise="loud"), TypeError, "noise must be True, False or a bss2_backend.Noise"),
    (lambda: bb.Noise(readout_lsb=-2.0), ValueError, "Noise.readout_lsb=-2.0 is out of range"),
    (lambda: bb.Chip(weight_scale=0.0), ValueError, "weight_scale=0.0 is out of range"),
    (lambda: bb.Chip(integration="rk4"), ValueError, "integration='rk4' is not supported"),
    (lambda: bb.Surrogate("relu"), ValueError, "surrogate kind='relu' is not supported; choose one of"),
    (lambda: bb.Surrogate("superspike", 0.0), ValueError, "surrogate alpha=0.0 is out of range"),
    (lambda: bb.to_hardware(torch.ones(2), scale=-1.0), ValueError, "scale=-1.0 is out of range"),
    (lambda: bb.LIFLayer("chip", 3, 4), TypeError, "chip must be a bss2_backend.Chip"),
    (lambda: bb.Chip().place("a", 0, 4), ValueError, "n_in=0 and n_out=4 must be >= 1"),
    (lambda: bb.Chip().place("a", 4, 4, circuits_per_neuron=3), ValueError, "circuits_per_neuron=3; allowed 1 or 2"),
])
def test_bad_input_raises_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_layer_rejects_wrong_features_and_nan_weights():
    layer = bb.LIFLayer(bb.Chip(), 8, 3)
    with pytest.raises(ValueError, match="spikes must have 8 features"):
        layer(torch.zeros(2, 1, 9))
    with pytest.raises(ValueError, match="spikes must have 3 dimensions"):
        layer(torch.zeros(1, 8))
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="lif0.weight contains NaN or inf"):
        layer(torch.zeros(2, 1, 8))


def test_replacing_a_layer_with_another_shape_is_refused():
    chip = bb.Chip()
    chip.place("h", 10, 4)
    with pytest.raises(ValueError, match="already placed with n_in=10, n_out=4"):
        chip.place("h", 10, 5)


def test_value_checks_policy_and_a_hot_path_without_host_reads():
    """Value checks (NaN, ranges) run on CPU tensors by default; on a GPU they would stall the
    device on every call, so the chip layers' hot path must read nothing back when they are off."""
    from torch.profiler import ProfilerActivity, profile

    from bss2_backend import Chip, LIFLayer, LILayer
    from bss2_backend.validation import check_tensor, check_values, checks_values
    assert checks_values(torch.zeros(1)) and not checks_values(torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_tensor("x", torch.tensor([float("nan")]))
    previous = check_values(False)
    try:
        check_tensor("x", torch.tensor([float("nan")]))         # off: not looked at
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for chip in (Chip.ideal(), Chip(seed=0)):
            # backend "triton": the path a GPU runs (without one, in the interpreter)
            hidden = LIFLayer(chip, 12, 8, recurrent=True, backend="triton").to(device)
            out = LILayer(chip, 8, 3, backend="triton").to(device)
            x = (torch.rand(6, 2, 12, device=device) < 0.3).float()
            out(hidden(x)[0]).sum().backward()      # the first call decides per-layer facts
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out(hidden(x)[0]).sum().backward()
            reads = [e.key for e in prof.key_averages()
                     if e.key in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero",
                                  "aten::equal")]
            assert not reads, reads
    finally:
        check_values(previous)
    with pytest.raises(TypeError, match="enabled"):
        check_values("yes")


def test_signed_chip_weight_is_exc_minus_inh_bit_for_bit():
    from bss2_backend.weights import chip_weights, signed_chip_weight
    w = torch.randn(7, 9) * 0.3
    w[0, :3] = torch.tensor([0.5, -0.5, 1.5]) / 48.0        # ties of the 6-bit rounding
    ge, gi = 1 + 0.1 * torch.randn(7, 9), 1 + 0.1 * torch.randn(7, 9)
    for quantise in (True, False):
        exc, inh = chip_weights(w, ge, gi, 48.0, quantise)
        assert torch.equal(signed_chip_weight(w, ge, gi, 48.0, quantise), exc - inh)
