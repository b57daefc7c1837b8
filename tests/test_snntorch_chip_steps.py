"""Chip mode step by step: snntorch code as written in its tutorials (a class with fc/lif attributes
looping over time, explicit state or init_hidden; a Sequential stepped by the user's loop) runs on
the emulated chip one step at a time and equals the same network run whole (forward_pass): the
same chip and seed give the same spikes and membranes, noise on, and the same gradients."""
import copy
import warnings

import pytest
import snntorch as snn
import torch
from snntorch import utils
from torch import nn

from bss2_backend import Chip, Noise
from bss2_backend.integrations.snntorch import convert, forward_pass, revert

T, B, N_IN, N_HID, N_OUT = 12, 4, 10, 9, 3


def _chip():
    # noise on, larger than the defaults, so that equal results are not an accident
    return Chip(seed=7, noise=Noise(readout_lsb=3.0, membrane_lsb=1.5))


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


class Explicit(nn.Module):
    """fc1 -> Synaptic -> fc2 -> Synaptic(readout), explicit state, the tutorials' loop."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID, bias=False)
        self.lif1 = snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="zero")
        self.fc2 = nn.Linear(N_HID, N_OUT, bias=False)
        self.lif2 = snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="none")

    def forward(self, x):
        syn1, mem1 = self.lif1.init_synaptic()
        syn2, mem2 = self.lif2.init_synaptic()
        spk1_rec, mem2_rec = [], []
        for step in range(x.shape[0]):
            cur1 = self.fc1(x[step])
            spk1, syn1, mem1 = self.lif1(cur1, syn1, mem1)
            cur2 = self.fc2(spk1)
            spk2, syn2, mem2 = self.lif2(cur2, syn2, mem2)
            spk1_rec.append(spk1)
            mem2_rec.append(mem2)
        return torch.stack(spk1_rec), torch.stack(mem2_rec)


class Hidden(nn.Module):
    """The same network with init_hidden=True neurons, reset with utils.reset."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID, bias=False)
        self.lif1 = snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="zero", init_hidden=True)
        self.fc2 = nn.Linear(N_HID, N_OUT, bias=False)
        self.lif2 = snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="none", init_hidden=True,
                                 output=True)

    def forward(self, x):
        utils.reset(self)
        spk1_rec, mem2_rec = [], []
        for step in range(x.shape[0]):
            spk1 = self.lif1(self.fc1(x[step]))
            _, _, mem2 = self.lif2(self.fc2(spk1))
            spk1_rec.append(spk1)
            mem2_rec.append(mem2)
        return torch.stack(spk1_rec), torch.stack(mem2_rec)


def _sequential():
    return nn.Sequential(
        nn.Linear(N_IN, N_HID, bias=False),
        snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="zero", init_hidden=True),
        nn.Linear(N_HID, N_OUT, bias=False),
        snn.Synaptic(alpha=0.9, beta=0.9, reset_mechanism="none", init_hidden=True, output=True))


def _copy_weights(src, dst):
    with torch.no_grad():
        for a, b in zip([m for m in src.modules() if isinstance(m, nn.Linear)],
                        [m for m in dst.modules() if isinstance(m, nn.Linear)]):
            b.weight.copy_(a.weight)


def _whole(net, x):
    """The Sequential run whole: forward_pass, recording the hidden spikes too."""
    hidden = nn.Sequential(net[0], net[1])
    spk1, _ = forward_pass(hidden, x.shape[0], x)
    readout = nn.Sequential(net[2], net[3])
    _, mem2 = forward_pass(readout, x.shape[0], spk1)
    return spk1, mem2


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, N_IN, generator=g) < 0.35).float()


def _loss(spk1, mem2):
    g = torch.Generator().manual_seed(5)
    return (mem2 * torch.randn(mem2.shape, generator=g)).sum() + 0.1 * spk1.sum()


def _grads(net):
    return [m.weight.grad.clone() for m in net.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("model", [Explicit, Hidden])
def test_a_tutorial_class_step_by_step_equals_the_network_run_whole(model):
    torch.manual_seed(0)
    seq = _quiet(convert, _sequential(), _chip())
    steps = model()
    _copy_weights(seq, steps)
    _quiet(convert, steps, _chip())
    x = _inputs()
    a = _whole(seq, x)
    b = steps(x)
    assert a[0].sum() > 0, "the hidden layer must fire"
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _loss(*a).backward()
    _loss(*b).backward()
    for ga, gb in zip(_grads(seq), _grads(steps)):
        torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-6)
    # both placed the same circuits, under their own names
    seq_chip = seq[1]._bss2_binding.chip
    step_chip = steps.lif1._bss2_binding.chip
    assert [p.circuits for p in seq_chip.placements.values()] == \
        [p.circuits for p in step_chip.placements.values()]
    assert sorted(step_chip.placements) == ["snntorch:net0:lif1", "snntorch:net0:lif2"]


def test_a_sequential_in_the_tutorials_loop_equals_forward_pass():
    torch.manual_seed(1)
    a_net = _quiet(convert, _sequential(), _chip())
    b_net = copy.deepcopy(_sequential())
    _copy_weights(a_net, b_net)
    _quiet(convert, b_net, _chip())
    x = _inputs(1)
    _, mem_a = forward_pass(a_net, T, x)
    utils.reset(b_net)
    mem_b = torch.stack([b_net(x[t])[-1] for t in range(T)])
    assert torch.equal(mem_a, mem_b)


def test_runs_restart_at_every_reset_with_new_noise():
    torch.manual_seed(2)
    net = _quiet(convert, Explicit(), _chip())
    x = _inputs(2)
    first, second = net(x), net(x)
    assert not torch.equal(first[1], second[1])          # noise is new in every run
    fresh = Explicit()
    _copy_weights(net, fresh)
    fresh = _quiet(convert, fresh, _chip())
    again = (fresh(x), fresh(x))
    assert torch.equal(first[1], again[0][1]) and torch.equal(second[1], again[1][1])


def test_truncated_backprop_detaches_the_chip_state():
    torch.manual_seed(3)
    net = _quiet(convert, Hidden(), _chip())
    x = _inputs(3)
    utils.reset(net)
    outs = []
    for t in range(T):
        if t == T // 2:
            snn.Synaptic.detach_hidden()                 # snntorch's TBPTT helper
        outs.append(net.lif2(net.fc2(net.lif1(net.fc1(x[t]))))[-1])
    loss = torch.stack(outs[T // 2:]).sum()
    loss.backward()                                      # only through the second half
    assert net.fc1.weight.grad is not None


def test_what_the_chip_cannot_do_step_by_step_is_a_clear_error():
    torch.manual_seed(4)
    net = _quiet(convert, Explicit(), _chip())
    x = _inputs(4)
    syn, mem = net.lif1.init_synaptic()
    with pytest.raises(ValueError, match="not the output of one of the model's nn.Linear"):
        net.lif1(net.fc1(x[0]) * 2.0, syn, mem)
    with pytest.raises(ValueError, match="nor a resting state"):
        net.lif1(net.fc1(x[0]), syn, torch.ones(B, N_HID))
    spk1, syn1, mem1 = net.lif1(net.fc1(x[0]), syn, mem)
    with pytest.raises(ValueError, match="feeds two neurons"):
        net.lif2(net.fc1(x[1]), *net.lif2.init_synaptic())


def test_two_class_networks_with_the_same_names_on_one_chip():
    chip = _chip()
    a, b = _quiet(convert, Explicit(), chip), _quiet(convert, Explicit(), chip)
    x = _inputs(5)
    a(x), b(x)
    assert sorted(chip.placements) == ["snntorch:net0:lif1", "snntorch:net0:lif2",
                                       "snntorch:net1:lif1", "snntorch:net1:lif2"]
    used = [c for p in chip.placements.values() for g in p.circuits for c in g]
    assert len(used) == len(set(used))
    revert(b)
    assert sorted(chip.placements) == ["snntorch:net0:lif1", "snntorch:net0:lif2"]
    assert type(b.fc1) is nn.Linear and type(b.lif1) is snn.Synaptic


def test_a_tutorial_class_trains_on_the_chip():
    torch.manual_seed(6)
    net = _quiet(convert, Explicit(), Chip(seed=1))
    with torch.no_grad():
        net.fc1.weight.uniform_(0.0, 0.06)
    x = _inputs(6)
    target = torch.tensor([0, 1, 2, 0])
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        _, mem = net(x)
        loss = torch.nn.functional.cross_entropy(mem.max(0).values * 5, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
