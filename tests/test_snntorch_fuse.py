"""Fused in time without rewriting the model (integrations/snntorch/fuse.py): a tutorial-style
forward that loops over the steps, after convert(model), runs each layer once over all steps, with
the results of the step-by-step run: in ideal mode stock snntorch's, in chip mode the same chip
run's (same seed, noise on). What the plan cannot hold runs step by step with a notice saying why.
The models are written here in the tutorials' styles."""
import warnings

import pytest
import snntorch as snn
import torch
from snntorch import utils
from torch import nn

from bss2_backend import Chip, Noise
from bss2_backend.integrations.snntorch import BackendNotice, convert, revert
from bss2_backend.integrations.snntorch import fuse, fused, notices

T, B, N_IN, N_HID, N_OUT = 10, 3, 8, 7, 4
pytestmark = pytest.mark.filterwarnings("ignore:chip mode")


class Explicit(nn.Module):
    """Leaky -> Leaky with explicit state, the tutorials' record-and-stack loop."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID)
        self.lif1 = snn.Leaky(beta=0.85, threshold=0.6)
        self.fc2 = nn.Linear(N_HID, N_OUT)
        self.lif2 = snn.Leaky(beta=0.9, threshold=1)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(x.shape[0]):
            cur1 = self.fc1(x[step])
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


class Hidden(nn.Module):
    """Synaptic layers with init_hidden, utils.reset at the start, `for x_t in x`, the readout's
    membrane read from the module's state."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID, bias=False)
        self.lif1 = snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True, reset_mechanism="zero")
        self.fc2 = nn.Linear(N_HID, N_OUT, bias=False)
        self.lif2 = snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True, reset_mechanism="none")

    def forward(self, x):
        utils.reset(self)
        out = []
        for x_t in x:
            spk1 = self.lif1(self.fc1(x_t))
            self.lif2(self.fc2(spk1))
            out.append(self.lif2.mem)
        return torch.stack(out)


class Recurrent(nn.Module):
    """RLeaky with explicit spk/mem, the output summed over time."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID)
        self.lif1 = snn.RLeaky(beta=0.9, linear_features=N_HID)
        self.fc2 = nn.Linear(N_HID, N_OUT)
        self.lif2 = snn.Leaky(beta=0.9, reset_mechanism="none")

    def forward(self, x):
        spk1, mem1 = self.lif1.init_rleaky()
        mem2 = self.lif2.init_leaky()
        total = 0
        for step in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[step]), spk1, mem1)
            _, mem2 = self.lif2(self.fc2(spk1), mem2)
            total = total + mem2
        return total


class ConvStatic(nn.Module):
    """A convolutional net on one static image repeated at every step (the MNIST tutorials):
    Conv -> pool -> Leaky -> Flatten -> Linear -> Leaky."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.lif1 = snn.Leaky(beta=0.8)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 3 * 3, N_OUT)
        self.lif2 = snn.Leaky(beta=0.8)
        self.steps = T

    def forward(self, img):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec = []
        for _ in range(self.steps):
            cur = self.pool(self.conv(img))
            spk1, mem1 = self.lif1(cur, mem1)
            spk2, mem2 = self.lif2(self.fc(self.flat(spk1)), mem2)
            spk_rec.append(spk2)
        return torch.stack(spk_rec)


MODELS = {"explicit": Explicit, "hidden": Hidden, "recurrent": Recurrent, "conv": ConvStatic}


def _input(model, seed):
    g = torch.Generator().manual_seed(seed)
    if model is ConvStatic:
        return torch.rand(B, 1, 8, 8, generator=g) * 3
    return torch.rand(T, B, N_IN, generator=g) * 2


def _pair(model):
    torch.manual_seed(0)
    stock = model()
    ours = model()
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _loss(out):
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(1)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)


def _run(net, x):
    net.zero_grad(set_to_none=True)
    out = net(x)
    _loss(out).backward()
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in net.named_parameters()
                                         if p.grad is not None}


def _plan(net):
    plans = list(net.__dict__.get("_bss2_plans", {}).values())
    assert len(plans) == 1
    return plans[0]


class Counts:
    """How often each Linear/Conv ran and how many fused neuron launches there were."""

    def __init__(self, net, monkeypatch):
        self.layer_calls = {}
        self.neuron_runs = 0
        for name, m in net.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.register_forward_hook(lambda mod, i, o, name=name: self._count(name))
        original = fused.multistep_states

        def counted(module, x):
            self.neuron_runs += 1
            return original(module, x)
        monkeypatch.setattr(fused, "multistep_states", counted)

    def _count(self, name):
        self.layer_calls[name] = self.layer_calls.get(name, 0) + 1

    def reset(self):
        self.layer_calls, self.neuron_runs = {}, 0


@pytest.mark.parametrize("name", list(MODELS))
def test_ideal_mode_fused_equals_stock_snntorch(name, monkeypatch):
    model = MODELS[name]
    stock, ours = _pair(model)
    convert(ours)
    counts = Counts(ours, monkeypatch)
    for call in range(3):          # the first call records, the later ones replay the plan
        counts.reset()
        x = _input(model, seed=call)
        (outs, grads), (outs_ref, grads_ref) = _run(ours, x), _run(stock, x)
        for o, r in zip(outs, outs_ref):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
        assert grads.keys() == grads_ref.keys()
        for k in grads_ref:
            torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-5, msg=k)
        if call > 0:
            assert isinstance(_plan(ours), fuse.Plan)
            # one call per layer over all steps, one fused launch per neuron layer
            assert set(counts.layer_calls.values()) == {1}
            assert counts.neuron_runs == 2


def _noisy_chip():
    return Chip(seed=3, noise=Noise(readout_lsb=3.0, membrane_lsb=1.5))


@pytest.mark.parametrize("name", ["explicit", "hidden", "recurrent"])
def test_chip_mode_fused_equals_the_chip_step_by_step(name):
    """Same chip (seed), noise on: the fused run and the step-by-step run of the same forward give
    the same spikes and membranes, and gradients equal to rounding."""
    model = MODELS[name]
    steps, ours = _pair(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(steps, _noisy_chip(), fuse=False)
        convert(ours, _noisy_chip())
    for call in range(3):
        x = (_input(model, seed=call) > 1.0).float()
        (outs, grads), (outs_ref, grads_ref) = _run(ours, x), _run(steps, x)
        for o, r in zip(outs, outs_ref):
            assert torch.equal(o, r)
        for k in grads_ref:
            torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-5, msg=k)
    assert isinstance(_plan(ours), fuse.Plan)
    # each layer's noise came from one run per call: the same seeds on both chips
    chip_a = next(m for m in ours.modules() if m.__dict__.get("_bss2_chip"))._bss2_chip[0]
    chip_b = next(m for m in steps.modules() if m.__dict__.get("_bss2_chip"))._bss2_chip[0]
    assert chip_a.state_dict()["layer_runs"] == chip_b.state_dict()["layer_runs"]


def test_chip_mode_fused_continues_across_calls_like_steps():
    """A forward that does not reset (init_hidden, no reset) continues the chip's run across calls,
    fused as step by step."""
    class Continuing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(N_IN, N_HID, bias=False)
            self.lif = snn.Leaky(beta=0.9, init_hidden=True, output=True)

        def forward(self, x):
            return torch.stack([self.lif(self.fc(x_t))[1] for x_t in x])

    steps, ours = _pair(Continuing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(steps, _noisy_chip(), fuse=False)
        convert(ours, _noisy_chip())
    with torch.no_grad():
        for call in range(3):
            x = (_input(Continuing, seed=call) > 1.0).float()
            assert torch.equal(ours(x), steps(x))


# --- what the plan cannot hold ---------------------------------------------------------------------
class ReadsValues(Explicit):
    def forward(self, x):
        spk, mem = super().forward(x)
        if spk.sum() > 0:           # Python branching on a tensor value
            mem = mem * 2
        return spk, mem


class UserRecurrence(nn.Module):
    """The hidden layer's input includes its own spikes of the step before, through another
    Linear: a recurrence in user code."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(N_IN, N_HID)
        self.fc_rec = nn.Linear(N_HID, N_HID, bias=False)
        self.lif1 = snn.Leaky(beta=0.9)

    def forward(self, x):
        mem = self.lif1.init_leaky()
        spk = torch.zeros(x.shape[1], N_HID)
        rec = []
        for step in range(x.shape[0]):
            spk, mem = self.lif1(self.fc1(x[step]) + self.fc_rec(spk), mem)
            rec.append(spk)
        return torch.stack(rec)


class ChangesState(Explicit):
    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        rec = []
        for step in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[step]), mem1)
            mem1 = mem1 * 0.5          # the state changed between steps
            rec.append(spk1)
        return torch.stack(rec)


class ResetsMidway(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_IN, N_HID)
        self.lif = snn.Leaky(beta=0.9, init_hidden=True)

    def forward(self, x):
        self.lif.reset_mem()
        rec = []
        for step in range(x.shape[0]):
            if step == x.shape[0] // 2:
                self.lif.reset_mem()
            rec.append(self.lif(self.fc(x[step])))
        return torch.stack(rec)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(N_IN, N_HID)
        self.lif = snn.Leaky(beta=0.9)

    def forward(self, x):
        mem = self.lif.init_leaky()
        rec = []
        for step in range(x.shape[0]):
            cur = self.fc(x[step])
            cur.mul_(2.0)               # in place on a layer's result
            spk, mem = self.lif(cur, mem)
            rec.append(spk)
        return torch.stack(rec)


FALLBACKS = {
    "reads values": (ReadsValues, "reads tensor values"),
    "user recurrence": (UserRecurrence, "depends on its own output"),
    "state changed": (ChangesState, "changed between its steps"),
    "reset midway": (ResetsMidway, "reset between its steps"),
    "in place": (InPlace, "in place"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_what_cannot_be_fused_runs_step_by_step_with_a_notice(case):
    model, why = FALLBACKS[case]
    notices.forget()
    stock, ours = _pair(model)
    convert(ours)
    x = _input(model, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in range(3):
            (outs, grads), (outs_ref, grads_ref) = _run(ours, x), _run(stock, x)
            for o, r in zip(outs, outs_ref):
                torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
            for k in grads_ref:
                torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-5)
    said = [str(w.message) for w in caught if issubclass(w.category, BackendNotice)
            and "step by step" in str(w.message)]
    assert len(said) == 1, said           # once, not per call
    assert why in said[0] and type(ours).__name__ in said[0]
    assert isinstance(_plan(ours), str)


def test_a_forward_of_one_step_is_left_as_it_is():
    """A class called once per step by the user's loop: nothing to fuse, no notice, stock
    results."""
    class OneStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(N_IN, N_HID)
            self.lif = snn.Leaky(beta=0.9)

        def forward(self, x, mem):
            return self.lif(self.fc(x), mem)

    notices.forget()
    stock, ours = _pair(OneStep)
    convert(ours)
    x = _input(Explicit, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendNotice)
        m_ours = m_stock = ours.lif.init_leaky()
        for step in range(T):
            s_ours, m_ours = ours(x[step], m_ours)
            s_stock, m_stock = stock(x[step], m_stock)
            torch.testing.assert_close(m_ours, m_stock)
    assert set(ours._bss2_plans.values()) == {""}


def test_a_new_input_shape_or_mode_records_a_new_plan_and_revert_undoes_fusion():
    stock, ours = _pair(Explicit)
    convert(ours)
    assert isinstance(ours, Explicit) and type(ours).__name__ == "Explicit"
    for shape in ((T, B, N_IN), (T + 3, B, N_IN), (T, B + 2, N_IN)):
        x = torch.rand(shape) * 2
        for _ in range(2):
            torch.testing.assert_close(ours(x), stock(x))
    ours.eval()
    ours(x)
    assert len(ours._bss2_plans) == 4
    conv_stock, conv = _pair(ConvStatic)
    convert(conv)
    img = _input(ConvStatic, 0)
    for steps in (T, 4, 4):           # a num_steps attribute changed: a new plan
        conv.steps = conv_stock.steps = steps
        assert conv(img).shape[0] == steps
        torch.testing.assert_close(conv(img), conv_stock(img))
    assert ours.state_dict().keys() == stock.state_dict().keys()
    revert(ours)
    assert type(ours) is Explicit and "_bss2_plans" not in ours.__dict__
    convert(ours, fuse=False)
    assert type(ours) is Explicit
    with pytest.raises(TypeError, match="fuse must be True or False"):
        convert(ours, fuse="yes")


def test_sequential_is_not_wrapped():
    net = nn.Sequential(nn.Linear(N_IN, N_HID), snn.Leaky(beta=0.9, init_hidden=True))
    convert(net)
    assert type(net) is nn.Sequential
