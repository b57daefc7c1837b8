"""Ideal mode against the installed snntorch: identical spikes and membranes, matching gradients."""
import copy
import itertools
import warnings

import pytest
import snntorch as snn
import snntorch.functional as SF
import torch
from snntorch import surrogate, utils
from torch import nn

from bss2_backend.integrations import snntorch as backend
from bss2_backend.integrations.snntorch import BackendNotice, convert, forward_pass, patch
from bss2_backend.integrations.snntorch.notices import forget

TESTED_SNNTORCH = ("1.0.0",)
SURROGATES = {"atan": lambda: surrogate.atan(alpha=2.5),
              "fast_sigmoid": lambda: surrogate.fast_sigmoid(slope=10),
              "sigmoid": lambda: surrogate.sigmoid(slope=5),
              "straight_through_estimator": surrogate.straight_through_estimator,
              "triangular": lambda: surrogate.triangular(threshold=0.5)}
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def test_pinned_snntorch_version():
    assert snn.__version__ in TESTED_SNNTORCH, (
        f"the integration is tested against snntorch {TESTED_SNNTORCH}; {snn.__version__} is "
        f"installed (reset, dtype and utils.reset semantics change after 1.0.0)")


def _pair(make):
    torch.manual_seed(1)
    stock = make()
    ours = copy.deepcopy(stock)
    convert(nn.Sequential(ours), backend="torch")   # "auto" runs single CPU steps in snntorch's code
    return stock, ours


def _weighted_loss(outs):
    # a different weight for every output element, so a wrong gradient anywhere shows
    loss = 0
    for out in outs:
        for k, o in enumerate(out if isinstance(out, tuple) else (out,)):
            w = torch.linspace(-1, 2, o.numel()).reshape(o.shape) * (k + 1)
            loss = loss + (o * w).sum() + 0.1 * (o ** 2).sum()
    return loss


def _compare_steps(make, T=6, shape=(3, 5), scale=1.5):
    stock, ours = _pair(make)
    xs = torch.randn(T, *shape) * scale
    xa, xb = xs.clone().requires_grad_(), xs.clone().requires_grad_()
    oa = [stock(xa[t]) for t in range(T)]
    ob = [ours(xb[t]) for t in range(T)]
    for p, q in zip(oa, ob):
        for u, v in zip(p, q):
            assert torch.equal(u, v)
    _weighted_loss(oa).backward()
    _weighted_loss(ob).backward()
    torch.testing.assert_close(xb.grad, xa.grad, **GRAD_TOL)
    for (n, p), (_, q) in zip(stock.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, **GRAD_TOL, msg=f"gradient of {n}")
    for name in ("mem", "syn", "spk", "reset"):
        if hasattr(stock, name):
            assert torch.equal(getattr(stock, name), getattr(ours, name)), name


def _neuron(cls, reset, delay, sg):
    common = dict(reset_mechanism=reset, spike_grad=sg, learn_beta=True, learn_threshold=True)
    if cls == "Leaky":
        return snn.Leaky(0.8, threshold=0.7, reset_delay=delay, graded_spikes_factor=1.5,
                         learn_graded_spikes_factor=True, **common)
    if cls == "Synaptic":
        return snn.Synaptic(0.7, 0.8, reset_delay=delay, learn_alpha=True, **common)
    if cls == "RLeaky":
        return snn.RLeaky(0.8, linear_features=5, reset_delay=delay, **common)
    if cls == "RLeakyV":
        return snn.RLeaky(torch.full((5,), 0.8), all_to_all=False, V=0.5, reset_delay=delay, **common)
    if cls == "RSynaptic":
        return snn.RSynaptic(0.7, 0.8, linear_features=5, learn_alpha=True, **common)
    return snn.Lapicque(beta=0.8, reset_mechanism=reset, spike_grad=sg, learn_threshold=True)


CASES = list(itertools.product(["Leaky", "Synaptic", "RLeaky", "RLeakyV", "RSynaptic", "Lapicque"],
                               ["subtract", "zero", "none"], [True, False]))


@pytest.mark.parametrize("cls,reset,delay", CASES)
def test_step_matches_snntorch(cls, reset, delay):
    names = list(SURROGATES)
    sg_name = names[CASES.index((cls, reset, delay)) % len(names)]
    scale = 0.3 if sg_name == "sigmoid" else 1.5   # snntorch's sigmoid overflows to NaN below -88/slope
    _compare_steps(lambda: _neuron(cls, reset, delay, SURROGATES[sg_name]()), scale=scale)


@pytest.mark.parametrize("sg_name", list(SURROGATES) + ["surrogate_disable"])
def test_every_surrogate_matches(sg_name):
    if sg_name == "surrogate_disable":
        make = lambda: snn.Synaptic(0.6, 0.9, surrogate_disable=True, learn_beta=True)
    else:
        make = lambda: snn.Leaky(0.9, spike_grad=SURROGATES[sg_name](), learn_threshold=True)
    _compare_steps(make, scale=0.3 if sg_name == "sigmoid" else 1.5)


def test_output_and_init_hidden_returns():
    for kwargs, n in ((dict(init_hidden=True), 1), (dict(init_hidden=True, output=True), 3),
                      (dict(), 3)):
        stock, ours = _pair(lambda: snn.Synaptic(0.5, 0.9, **kwargs))
        x = torch.randn(2, 4)
        a, b = stock(x), ours(x)
        assert type(a) is type(b) and (n == 1 or len(b) == n)
        with pytest.raises(TypeError) if kwargs.get("init_hidden") else _nothing():
            ours(x, torch.zeros(2, 4), torch.zeros(2, 4))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_explicit_loop_with_init_leaky_tutorial_pattern():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(10, 8), snn.Leaky(beta=0.9)
            self.fc2, self.lif2 = nn.Linear(8, 3), snn.Leaky(beta=0.9)

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            spk_rec, mem_rec = [], []
            for _ in range(12):
                spk1, mem1 = self.lif1(self.fc1(x), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                spk_rec.append(spk2)
                mem_rec.append(mem2)
            return torch.stack(spk_rec), torch.stack(mem_rec)

    torch.manual_seed(0)
    stock = Net()
    ours = convert(copy.deepcopy(stock), backend="torch")
    assert isinstance(ours.lif1, backend.Leaky)
    x, y = torch.rand(6, 10) * 3, torch.randint(0, 3, (6,))
    (sa, ma), (sb, mb) = stock(x), ours(x)
    assert torch.equal(sa, sb) and torch.equal(ma, mb)
    loss = lambda m: sum(nn.CrossEntropyLoss()(m[t], y) for t in range(m.shape[0]))
    loss(ma).backward()
    loss(mb).backward()
    for p, q in zip(stock.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **GRAD_TOL)


def _stock_forward_pass(net, num_steps, data, time_major):
    utils.reset(net)
    spk_rec, mem_rec = [], []
    for step in range(num_steps):
        out = net(data[step] if time_major else data)
        spk_rec.append(out[0])
        mem_rec.append(out[-1])
    return torch.stack(spk_rec), torch.stack(mem_rec)


NETS = {
    "leaky": lambda: nn.Sequential(nn.Linear(12, 9), snn.Leaky(0.9, init_hidden=True, learn_beta=True),
                                   nn.Linear(9, 4), snn.Leaky(0.8, init_hidden=True, output=True,
                                                              reset_mechanism="zero")),
    "synaptic": lambda: nn.Sequential(nn.Linear(12, 9), snn.Synaptic(0.8, 0.9, init_hidden=True,
                                                                      reset_delay=False),
                                      nn.Linear(9, 4), snn.Synaptic(0.7, 0.8, init_hidden=True,
                                                                    output=True, reset_mechanism="none")),
    "recurrent": lambda: nn.Sequential(nn.Linear(12, 9), snn.RLeaky(0.9, linear_features=9, init_hidden=True),
                                       nn.Linear(9, 4), snn.RSynaptic(0.7, 0.8, all_to_all=False, V=0.3,
                                                                      init_hidden=True, output=True)),
    "rsyn_lapicque": lambda: nn.Sequential(nn.Linear(12, 9), snn.RSynaptic(0.8, 0.9, linear_features=9,
                                                                            init_hidden=True, reset_mechanism="zero"),
                                           nn.Dropout(0.0), nn.Linear(9, 4),
                                           snn.Lapicque(beta=0.8, init_hidden=True, output=True)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("time_major", [True, False])
def test_forward_pass_matches_tutorial_loop(name, time_major):
    torch.manual_seed(0)
    stock = NETS[name]()
    ours = convert(copy.deepcopy(stock))
    data = torch.rand(7, 5, 12) * 2 if time_major else torch.rand(5, 12) * 2
    sa, ma = _stock_forward_pass(stock, 7, data, time_major)
    sb, mb = forward_pass(ours, 7, data)
    # one GEMM over all steps may round differently from T small ones: tolerance, not equality
    assert (sa != sb).float().mean() < 0.01
    torch.testing.assert_close(mb, ma, rtol=1e-4, atol=1e-4)
    (sa.sum() + (ma ** 2).sum()).backward()
    (sb.sum() + (mb ** 2).sum()).backward()
    for (n, p), (_, q) in zip(stock.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=f"gradient of {n}")
    for i in (1, len(ours) - 1):
        torch.testing.assert_close(ours[i].mem, stock[i].mem, rtol=1e-4, atol=1e-4)


def test_forward_pass_conv_net_and_functional_losses():
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), snn.Leaky(0.8, init_hidden=True),
                          nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
                          snn.Leaky(0.8, init_hidden=True, output=True))
    ours = convert(copy.deepcopy(stock))
    data, y = torch.rand(6, 1, 8, 8) * 3, torch.tensor([0, 1, 2, 3, 4, 0])
    sa, ma = _stock_forward_pass(stock, 9, data, False)
    sb, mb = forward_pass(ours, 9, data)
    assert torch.equal(sa, sb)
    torch.testing.assert_close(mb, ma, rtol=1e-5, atol=1e-5)
    for loss_fn in (SF.ce_rate_loss(), SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)):
        la, lb = loss_fn(sa, y), loss_fn(sb, y)
        torch.testing.assert_close(lb, la)
    assert SF.accuracy_rate(sb, y) == SF.accuracy_rate(sa, y)
    SF.ce_rate_loss()(sa, y).backward()
    SF.ce_rate_loss()(sb, y).backward()
    for p, q in zip(stock.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)


def test_bptt_trains_backend_net():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from snntorch import backprop
    torch.manual_seed(0)
    net = convert(nn.Sequential(nn.Linear(6, 5), snn.Leaky(0.9, init_hidden=True),
                                nn.Linear(5, 3), snn.Leaky(0.9, init_hidden=True, output=True)),
                  backend="torch")
    data = torch.rand(4, 8, 6) * 2
    targets = torch.randint(0, 3, (8,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.clone() for p in net.parameters()]
    loss = backprop.BPTT(net, [(data, targets)], opt, SF.ce_rate_loss(), time_var=True,
                         time_first=True)
    assert torch.isfinite(torch.as_tensor(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_state_dict_loads_both_ways():
    make = lambda: nn.Sequential(nn.Linear(4, 3), snn.RSynaptic(0.5, 0.9, linear_features=3,
                                                                 learn_beta=True, init_hidden=True))
    stock, ours = make(), convert(make())
    assert stock.state_dict().keys() == ours.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    stock.load_state_dict(ours.state_dict())
    for k, v in stock.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])


def test_patch_and_undo():
    original = snn.Leaky
    with patch():
        assert snn.Leaky is backend.Leaky
        net = nn.Sequential(nn.Linear(3, 2), snn.Leaky(0.9, init_hidden=True, output=True))
    assert snn.Leaky is original
    assert isinstance(net[1], backend.Leaky) and isinstance(net[1], original)
    undo = patch()
    assert snn.Synaptic is backend.Synaptic
    undo()
    assert snn.Synaptic is not backend.Synaptic
    spk, mem = forward_pass(net, 3, torch.rand(2, 3))
    assert spk.shape == mem.shape == (3, 2, 2)


def test_rsynaptic_reset_delay_false_runs_as_snntorch_computes_it():
    stock, ours = _pair(lambda: snn.RSynaptic(0.7, 0.8, linear_features=5, reset_delay=False))
    ref = copy.deepcopy(stock)
    ref.reset_delay = True
    x = torch.randn(3, 5) * 2
    with pytest.raises(TypeError):          # snntorch 1.0: spk=None reaches `None / g`
        stock(x)
    forget()
    with pytest.warns(BackendNotice, match="reset_delay=False"):
        spk_b, syn_b, mem_b = ours(x)
    spk_a, syn_a, mem_a = ref(x)
    assert torch.equal(spk_a, spk_b) and torch.equal(mem_a, mem_b)
    # with spk passed, snntorch 1.0 runs and discards the branch: the same as reset_delay=True
    s0 = torch.zeros(3, 5)
    out_stock = stock(x, s0, torch.zeros(3, 5), torch.zeros(3, 5))
    out_ours = ours(x, s0, torch.zeros(3, 5), torch.zeros(3, 5))
    assert all(torch.equal(a, b) for a, b in zip(out_stock, out_ours))


@pytest.mark.filterwarnings("ignore:Inhibition is an unstable feature:UserWarning")
def test_fallbacks_say_why_once():
    forget()
    net = convert(nn.Sequential(nn.Linear(3, 4), snn.Leaky(0.9, init_hidden=True, output=True)))
    handle = net[0].register_forward_hook(lambda *a: None)
    with pytest.warns(BackendNotice, match="forward hooks"):
        forward_pass(net, 3, torch.rand(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendNotice)
        forward_pass(net, 3, torch.rand(2, 3))
    handle.remove()

    def my_spike(u):
        return (u > 0).float()
    lif = convert(nn.Sequential(snn.Leaky(0.9, spike_grad=my_spike)), backend="torch")[0]
    with pytest.warns(BackendNotice, match="my_spike"):
        lif(torch.rand(2, 3))
    inhib = convert(nn.Sequential(snn.Leaky(0.9, inhibition=True)), backend="torch")[0]
    with pytest.warns(BackendNotice, match="inhibition"):
        inhib(torch.rand(2, 3))
    net64 = convert(nn.Sequential(nn.Linear(3, 4).double(), snn.Leaky(0.9, init_hidden=True, output=True)))
    with pytest.warns(BackendNotice, match="float64"):
        spk, mem = forward_pass(net64, 3, torch.rand(2, 3, dtype=torch.float64))
    assert mem.dtype == torch.float64


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no snntorch neurons"):
        convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="SLSTM"):
        convert(nn.Sequential(snn.SLSTM(3, 3)))
    net = convert(nn.Sequential(nn.Linear(3, 4), snn.Leaky(0.9, init_hidden=True, output=True)))
    with pytest.raises(ValueError, match="num_steps=5"):
        forward_pass(net, 5, torch.rand(4, 2, 3))
    with pytest.raises(ValueError, match="num_steps"):
        forward_pass(net, 0, torch.rand(2, 3))
    with pytest.raises(ValueError, match="fits neither"):
        forward_pass(net, 4, torch.rand(4, 2, 2, 3))
    lif = convert(nn.Sequential(snn.Leaky(0.9)), backend="torch")[0]
    with pytest.raises(ValueError, match="`mem` has shape"):
        lif(torch.rand(2, 3), torch.ones(3, 2))       # a state that would be lost
    spk, mem = lif(torch.rand(2, 3), torch.zeros(1))   # the tutorials' torch.zeros(1) start
    assert mem.shape == (2, 3)
    # init_leaky() after a batch of another size: zeros of the old shape start, as in snntorch
    spk, mem = lif(torch.rand(5, 3), lif.init_leaky())
    assert mem.shape == (5, 3)


def test_torch_path_never_imports_the_triton_kernels():
    # torch's custom-op dispatch itself imports triton when it is installed; what must stay
    # untouched on the torch path is our kernel module
    import subprocess
    import sys
    code = ("import sys, torch, snntorch as snn\n"
            "from torch import nn\n"
            "from bss2_backend.integrations.snntorch import convert, forward_pass\n"
            "net = convert(nn.Sequential(nn.Linear(3, 2), snn.Leaky(0.9, init_hidden=True, output=True)))\n"
            "forward_pass(net, 3, torch.rand(2, 3))[1].sum().backward()\n"
            "assert 'bss2_backend.kernels.snntorch_neurons' not in sys.modules\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_state_written_back_supports_detach_hidden_and_revert():
    make = lambda: nn.Sequential(nn.Linear(4, 3), snn.Synaptic(0.5, 0.9, init_hidden=True, output=True))
    stock, net = make(), convert(make())   # not deep copies: those miss SpikingNeuron.instances
    spk, mem = forward_pass(net, 5, torch.rand(5, 2, 4))
    assert net[1].mem.grad_fn is not None and torch.equal(net[1].mem, mem[-1])
    snn.Synaptic.detach_hidden()              # TBPTT: the written-back state detaches in place
    assert net[1].mem.grad_fn is None and net[1].syn.grad_fn is None
    backend.revert(net)
    assert type(net[1]) is snn.Synaptic
    assert net.state_dict().keys() == stock.state_dict().keys()


def test_alpha_runs_snntorch_code_with_a_notice():
    forget()
    stock, ours = _pair(lambda: snn.Alpha(0.9, 0.8))
    x = torch.rand(2, 3) * 2
    with pytest.warns(BackendNotice, match="Alpha"):
        out_b = ours(x)
    assert all(torch.equal(a, b) for a, b in zip(stock(x), out_b))


def test_single_neuron_tutorial_pattern():
    """Tutorials 2-3: a scalar current, mem = torch.zeros(1), one step at a time."""
    stock, ours = _pair(lambda: snn.Leaky(beta=0.8))
    cur_in = torch.cat((torch.zeros(10), torch.ones(40) * 0.3), 0)
    mem_a, mem_b = torch.zeros(1), torch.zeros(1)
    rec_a, rec_b = [], []
    for step in range(50):
        spk_a, mem_a = stock(cur_in[step], mem_a)
        spk_b, mem_b = ours(cur_in[step], mem_b)
        rec_a.append(spk_a)
        rec_b.append(spk_b)
    assert torch.equal(torch.stack(rec_a), torch.stack(rec_b)) and torch.equal(mem_a, mem_b)
    assert torch.stack(rec_b).sum() > 0
