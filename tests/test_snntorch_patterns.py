"""snntorch code as people write it (patterns of its tutorials, written here from scratch): their
helpers under patch(), torch.compile on the per-step path, tutorial-style thresholds, and the
chip's bookkeeping when models are converted, fail to convert, and are reverted."""
import copy
import subprocess
import sys
import warnings

import pytest
import snntorch as snn
import torch
from snntorch import functional as SF
from snntorch import utils
from torch import nn

from bss2_backend import Chip, PlacementError
from bss2_backend.integrations.snntorch import BackendNotice, convert, forward_pass, patch, revert
from bss2_backend.integrations.snntorch import neurons as backend


class TutorialNet(nn.Module):
    """The explicit-state class pattern: init the state, loop over steps, record, stack."""

    def __init__(self, n_in=6, n_hidden=5, n_out=3, steps=4, threshold=1.0):
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.lif1 = snn.Leaky(beta=0.9, threshold=threshold)
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.lif2 = snn.Synaptic(alpha=0.8, beta=0.9)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        syn2, mem2 = self.lif2.init_synaptic()
        spk_rec, mem_rec = [], []
        for step in range(self.steps):
            spk1, mem1 = self.lif1(self.fc1(x[step]), mem1)
            spk2, syn2, mem2 = self.lif2(self.fc2(spk1), syn2, mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


def _hidden_net():
    return nn.Sequential(nn.Linear(4, 3), snn.Leaky(0.9, init_hidden=True, output=True))


# --- snntorch's helpers under patch() --------------------------------------------------------------
def test_utils_reset_under_patch_resets_neurons_built_before_and_after():
    before = _hidden_net()
    with patch():
        after = _hidden_net()
        for net in (before, after):
            net(torch.rand(2, 4) * 5)
            assert float(net[1].mem.abs().sum()) > 0
            utils.reset(net)
            assert float(net[1].mem.abs().sum()) == 0.0
            assert utils._final_layer_check(net) == 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_backprop_bptt_under_patch_for_neurons_built_before_and_after():
    from snntorch import backprop
    torch.manual_seed(0)
    before = _hidden_net()
    with patch():
        after = _hidden_net()
        for net in (before, after):
            data = [(torch.rand(5, 2, 4), torch.randint(0, 3, (2,)))]
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            loss = backprop.BPTT(net, data, opt, SF.ce_rate_loss(), time_var=True)
            assert torch.isfinite(torch.as_tensor(loss))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["BPTT", "TBPTT", "RTRL"])
def test_backprop_helpers_under_patch_equal_stock(method):
    """snntorch's backprop helpers (static data, num_steps) give stock's loss under patch() for
    neurons built before and after it."""
    from snntorch import backprop
    data = [(torch.rand(2, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2]))]
    kw = {"K": 2} if method == "TBPTT" else {}

    def loss(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        return float(getattr(backprop, method)(net, data, opt, SF.ce_rate_loss(), num_steps=5,
                                               time_var=False, **kw))
    torch.manual_seed(0)
    ref = loss(_hidden_net())
    torch.manual_seed(0)
    before = _hidden_net()
    with patch():
        torch.manual_seed(0)
        after = _hidden_net()
        assert type(after[1]) is not backend.STOCK["Leaky"]
        assert loss(before) == pytest.approx(ref, rel=1e-6)
        assert loss(after) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (0, 2, 1)])
def test_nested_patches_restore_stock_in_any_undo_order(order):
    stock = {name: getattr(snn, name) for name in backend.STOCK}
    patches = [patch(), patch(Chip(seed=1)), patch()]
    for i in order:
        assert snn.Leaky is not stock["Leaky"]
        patches[i].undo()
        live = [p for p in patches if p.active]
        if live:       # the newest patch still in force is the one snntorch's names show
            assert snn.Leaky is live[-1].classes["Leaky"]
    assert {name: getattr(snn, name) for name in backend.STOCK} == stock


def test_forward_pass_on_flatten_first_nets_and_unconverted_nets():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), snn.Leaky(0.9, init_hidden=True, output=True))
    ref = copy.deepcopy(net)
    with pytest.warns(BackendNotice, match="convert"):      # stock neurons: step by step
        forward_pass(ref, 4, torch.rand(3, 1, 4, 4))
    convert(net)
    img = torch.rand(3, 1, 4, 4)                       # one image batch, repeated every step
    spk, mem = forward_pass(net, 4, img)
    assert spk.shape == mem.shape == (4, 3, 5)
    seq = torch.rand(4, 3, 1, 4, 4)                    # time-major image sequence
    spk, mem = forward_pass(net, 4, seq)
    assert mem.shape == (4, 3, 5)
    # equal to stock snntorch stepping the same net
    ref[2].reset_mem()                  # a deep copy: utils.reset does not see it
    stock = [ref(seq[t])[1] for t in range(4)]
    torch.testing.assert_close(mem, torch.stack(stock))


def test_isinstance_of_the_patched_names():
    stock = snn.Leaky(0.9)
    with patch():
        assert isinstance(stock, snn.Leaky) and isinstance(snn.Leaky(0.9), snn.Leaky)
        assert not isinstance(snn.Synaptic(0.8, 0.9), snn.Leaky)
    assert isinstance(backend.Leaky(0.9), snn.Leaky)
    assert not isinstance(stock, backend._BackendNeuron)


# --- the per-step path ----------------------------------------------------------------------------
def _pair(**kwargs):
    torch.manual_seed(0)
    stock = TutorialNet(**kwargs)
    return stock, convert(copy.deepcopy(stock), backend="torch")


def test_per_step_class_compiles_with_fullgraph():
    stock, ours = _pair()
    x = torch.rand(4, 3, 6) * 2
    want = stock(x)
    got = torch.compile(ours, fullgraph=True, backend="aot_eager")(x)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    want[1].sum().backward()
    got[1].sum().backward()
    for p, q in zip(stock.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


def test_an_integer_threshold_runs_fused_and_equals_stock():
    stock, ours = _pair(threshold=1)
    assert ours.lif1.threshold.dtype == torch.int64       # what snntorch makes of threshold=1
    x = torch.rand(4, 3, 6) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendNotice)     # no fallback to snntorch's own code
        got = ours(x)
    want = stock(x)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


# --- chip bookkeeping -----------------------------------------------------------------------------
def _chip_net(hidden=8, n_in=4):
    return nn.Sequential(nn.Linear(n_in, hidden, bias=False),
                         snn.Leaky(0.9, init_hidden=True, reset_mechanism="zero"),
                         nn.Linear(hidden, 2, bias=False),
                         snn.Leaky(0.9, init_hidden=True, output=True, reset_mechanism="none"))


def test_a_failed_convert_changes_nothing():
    chip = Chip(seed=0)
    convert(_chip_net(100), chip)                          # 102 circuits in use
    taken = dict(chip.placements)
    # the hidden layer fits (300 more circuits), its readout does not (300 inputs > 256): the
    # hidden layer's placement must go again
    net = _chip_net(hidden=300)
    classes = [type(m) for m in net.modules()]
    with pytest.raises(PlacementError):
        convert(net, chip)
    assert [type(m) for m in net.modules()] == classes
    assert chip.placements == taken
    assert not any(hasattr(m, "_bss2_backend") for m in net.modules())
    convert(_chip_net(50), chip)                           # the freed room is usable


def test_networks_get_their_own_circuits_and_revert_frees_them():
    chip = Chip(seed=0)
    a, b = convert(_chip_net(), chip), convert(_chip_net(), chip)
    names = sorted(chip.placements)
    assert names == ["snntorch:net0:1", "snntorch:net0:3", "snntorch:net1:1", "snntorch:net1:3"]
    used = [c for p in chip.placements.values() for g in p.circuits for c in g]
    assert len(used) == len(set(used))
    x = (torch.rand(6, 2, 4) < 0.5).float()
    assert forward_pass(a, 6, x)[1].shape == forward_pass(b, 6, x)[1].shape == (6, 2, 2)
    convert(a, chip)                                       # again: the same circuits
    assert sorted(chip.placements) == names
    revert(b)
    assert sorted(chip.placements) == names[:2]
    assert type(b[1]) is snn.Leaky


def test_placement_names_are_the_same_in_every_process():
    code = """
import snntorch as snn
from torch import nn
from bss2_backend import Chip
from bss2_backend.integrations.snntorch import convert
chip = Chip(seed=3)
for hidden in (5, 7):
    convert(nn.Sequential(nn.Linear(4, hidden, bias=False), snn.Leaky(0.9, init_hidden=True,
            output=True)), chip)
print(sorted((n, p.circuits[0]) for n, p in chip.placements.items()))
"""
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and "snntorch:net1:1" in runs[0]
