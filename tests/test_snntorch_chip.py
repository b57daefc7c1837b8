"""Chip mode: snntorch models placed on an emulated chip, trained in the loop."""
import warnings

import pytest
import snntorch as snn
import torch
from torch import nn

import bss2_backend
from bss2_backend import Chip, PlacementError
from bss2_backend.integrations.snntorch import convert, forward_pass, patch


def _net(hidden=20, n_in=16, n_out=3, reset="zero", bias=False, alpha=0.8, beta=0.9, cls=snn.Synaptic):
    neuron = (lambda **kw: cls(alpha, beta, **kw)) if cls in (snn.Synaptic, snn.RSynaptic) else \
        (lambda **kw: cls(beta, **kw))
    return nn.Sequential(nn.Linear(n_in, hidden, bias=bias), neuron(init_hidden=True, reset_mechanism=reset),
                         nn.Linear(hidden, n_out, bias=bias),
                         snn.Synaptic(alpha, beta, init_hidden=True, output=True, reset_mechanism="none"))


def _quiet_convert(net, chip):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return convert(net, chip)


def test_mapping_shown_and_ideal_chip_equals_the_chip_layers():
    chip = Chip.ideal(seed=0)
    net = _quiet_convert(_net(), chip)
    text = repr(net)
    assert "tau_mem=10 us" in text and "tau_syn=5 us" in text and "LI readout" in text
    assert "weight_gain=" in text
    torch.manual_seed(0)
    x = (torch.rand(12, 4, 16) < 0.3).float()
    spk, mem = forward_pass(net, 12, x)
    assert spk.shape == mem.shape == (12, 4, 3)
    assert torch.count_nonzero(spk) == 0            # the LI readout never spikes
    # the same layers through the foundation's dynamics directly
    lp1 = net[1]._bss2_binding.layer_params(torch.device("cpu"), torch.float32)
    assert torch.allclose(lp1.nominal.a_mem, torch.full((20,), 0.1))
    assert torch.allclose(lp1.nominal.a_syn_exc, torch.full((20,), 0.2))
    w1 = net[0].weight * net[1]._bss2_binding.mapping.weight_gain
    z, _ = bss2_backend.cuba_lif(x @ w1.clamp(min=0).t(), x @ (-w1).clamp(min=0).t(), params=lp1.params)
    hidden_mem = net[1].mem   # written back: the read membrane of the last step, snntorch units
    assert hidden_mem.shape == (4, 20)
    w2 = net[2].weight * net[3]._bss2_binding.mapping.weight_gain
    lp2 = net[3]._bss2_binding.layer_params(torch.device("cpu"), torch.float32)
    u = bss2_backend.li(z @ w2.clamp(min=0).t(), z @ (-w2).clamp(min=0).t(), params=lp2.params)
    torch.testing.assert_close(mem, u * 1.0, rtol=1e-5, atol=1e-5)


def test_chip_mode_trains_in_the_loop():
    torch.manual_seed(0)
    chip = Chip(seed=3)
    net = _quiet_convert(_net(hidden=24, reset="zero"), chip)
    x = (torch.rand(20, 16, 16) < 0.25).float()
    y = torch.randint(0, 3, (16,))
    # a learnable pattern: each class gets its own bank of strongly firing inputs
    for c in range(3):
        x[:, y == c, c * 5:(c + 1) * 5] = (torch.rand(20, int((y == c).sum()), 5) < 0.7).float()
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    losses = []
    for _ in range(25):
        _, mem = forward_pass(net, 20, x)
        loss = nn.functional.cross_entropy(mem.max(0).values, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_recurrent_layer_runs_with_chip_recurrence():
    chip = Chip(seed=1, noise=False)
    net = nn.Sequential(nn.Linear(8, 6, bias=False),
                        snn.RSynaptic(0.8, 0.9, linear_features=6, init_hidden=True, reset_mechanism="zero"),
                        nn.Linear(6, 2, bias=False),
                        snn.Leaky(0.9, init_hidden=True, output=True, reset_mechanism="none"))
    with pytest.warns(UserWarning, match="no biases"):
        convert(net, chip)
    assert chip.placements["snntorch:net0:1"].n_in == 8 + 6
    _, mem = forward_pass(net, 10, (torch.rand(10, 3, 8) < 0.4).float())
    mem.sum().backward()
    assert net[1].recurrent.weight.grad is not None and net[1].recurrent.weight.grad.abs().sum() > 0


def test_warnings_say_what_the_chip_does_instead():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        convert(_net(reset="subtract", bias=True), Chip(seed=0))
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert "resets the membrane to v_reset" in messages[0] and "'1'" in messages[0]
    assert "no biases" in messages[1] and "'0', '2'" in messages[1]


def test_errors_for_what_the_chip_cannot_do():
    with pytest.raises(PlacementError):
        _quiet_convert(_net(hidden=600), Chip(seed=0))
    with pytest.raises(PlacementError):
        _quiet_convert(_net(n_in=300), Chip(seed=0))
    _quiet_convert(_net(hidden=600), Chip(seed=0, strict=False))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), snn.Leaky(0.9, init_hidden=True, output=True))
    with pytest.raises(ValueError, match="Conv2d"):
        convert(conv, Chip(seed=0))
    lap = nn.Sequential(nn.Linear(3, 2), snn.Lapicque(beta=0.9, init_hidden=True, output=True))
    with pytest.raises(ValueError, match="Lapicque cannot run on the chip"):
        convert(lap, Chip(seed=0))
    slow = nn.Sequential(nn.Linear(3, 2), snn.Leaky(0.995, init_hidden=True, output=True))
    with pytest.raises(ValueError, match="beta=0.995"):
        convert(slow, Chip(seed=0))
    net = _quiet_convert(_net(), Chip(seed=0))
    out = net(torch.rand(2, 16))                      # one step on the chip (step-by-step mode)
    assert out[0].shape == out[-1].shape == (2, net[-1]._bss2_binding.placement.n_out)
    with pytest.raises(ValueError, match="num_steps=4"):
        forward_pass(net, 4, torch.rand(5, 2, 16))


def test_patch_with_a_chip_places_on_first_forward_pass():
    chip = Chip.ideal(seed=0)
    with patch(chip):
        net = nn.Sequential(nn.Linear(5, 4, bias=False), snn.Leaky(0.9, init_hidden=True, reset_mechanism="zero"),
                            nn.Linear(4, 2, bias=False),
                            snn.Leaky(0.9, init_hidden=True, output=True, reset_mechanism="none"))
    assert not chip.placements
    spk, mem = forward_pass(net, 6, torch.rand(2, 5))
    assert set(chip.placements) == {"snntorch:net0:1", "snntorch:net0:3"}
    assert mem.shape == (6, 2, 2)
