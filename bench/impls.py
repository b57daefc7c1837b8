"""Implementations compared on every workload, each built as an nn.Module with one interface:

    net(spikes [T, B, n_in]) -> (spikes [T, B, N], readout membrane [T, B, n_out] or None)
    net.weights() -> {"w_in", "w_rec", "w_out"}: the parameters shared by all implementations

- bss2.ideal[<backend>]: bss2_backend.LIFLayer/LILayer on Chip.ideal() (backend auto: the torch
  twin on CPU, the fused Triton kernels on CUDA);
- bss2.chip[<backend>]: the same layers on a calibrated Chip (mismatch, noise, 6-bit weights, CADC);
- snntorch: the equivalent stock snntorch model (Synaptic / RSynaptic / Leaky, Linear per step)
  with the tutorials' per-step Python loop;
- eager: bss2.bench.eager, the chip's nominal model through the op's naive form (a per-step loop
  with autograd);
- gemm-only (workloads without readout, the ON shape): the Linear layer alone, one GEMM over all
  steps, no neurons: what the neuron kernels add on top of the GEMMs is the difference;
- bss2.forward_pass / snntorch (kind forward_pass): a tutorial nn.Sequential run through
  bss2_backend.integrations.snntorch.forward_pass after convert(), or stock;
- kind loop: the tutorial-style class (TutorialLoopNet) as stock snntorch, and unchanged after one
  line: bss2.loop[ideal|chip] = convert(net[, chip]) (its forward fused in time),
  bss2.steps[ideal|chip] = convert(net[, chip], fuse=False) (the per-step path), and
  bss2.forward_pass[ideal]: the same network as an nn.Sequential through forward_pass, the speed
  the fused loop is to match.

Triton is optional: without it (or a GPU / the interpreter) the Triton implementations are
recorded as not available, never faked.
"""
import importlib.util
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from bss2_backend import Calibration, Chip, CircuitParams, LIFLayer, LILayer
from bss2_backend.constants import DT_US
from bss2_backend.dynamics import resolve_backend

from . import checks
from .eager import EagerNet

# time constants of the nominal chip (tau_mem = tau_syn = 10 us at dt = 1 us) as snntorch decays
SNN_BETA = SNN_ALPHA = 0.9


class ChipNet(nn.Module):
    def __init__(self, chip, w, backend):
        super().__init__()
        self.chip = chip
        self.hidden = LIFLayer(chip, w.n_in, w.n_hidden, recurrent=w.recurrent, backend=backend)
        self.readout = LILayer(chip, w.n_hidden, w.n_out, backend=backend) if w.n_out else None

    def weights(self):
        named = {"w_in": self.hidden.weight, "w_rec": getattr(self.hidden, "weight_rec", None),
                 "w_out": None if self.readout is None else self.readout.weight}
        return {k: v for k, v in named.items() if v is not None}

    def forward(self, spikes):
        z, _ = self.hidden(spikes)
        return z, None if self.readout is None else self.readout(z)


class SnnTorchNet(nn.Module):
    """Stock snntorch: Linear + Synaptic (RSynaptic when recurrent, Leaky for the ON shape) and a
    Linear + Synaptic(reset none) readout, stepped in Python as in the snntorch tutorials."""

    def __init__(self, w):
        super().__init__()
        import snntorch as snn
        from snntorch import surrogate
        grad = surrogate.fast_sigmoid(slope=50)       # the SuperSpike surrogate of the chip
        self.fc_in = nn.Linear(w.n_in, w.n_hidden, bias=False)
        if w.recurrent:
            self.lif = snn.RSynaptic(SNN_ALPHA, SNN_BETA, linear_features=w.n_hidden,
                                     reset_mechanism="zero", spike_grad=grad)
        elif w.n_out == 0:
            self.lif = snn.Leaky(SNN_BETA, reset_mechanism="zero", spike_grad=grad)
        else:
            self.lif = snn.Synaptic(SNN_ALPHA, SNN_BETA, reset_mechanism="zero", spike_grad=grad)
        self.fc_out = nn.Linear(w.n_hidden, w.n_out, bias=False) if w.n_out else None
        self.li = snn.Synaptic(SNN_ALPHA, SNN_BETA, reset_mechanism="none") if w.n_out else None
        self.recurrent = w.recurrent

    def weights(self):
        named = {"w_in": self.fc_in.weight,
                 "w_rec": self.lif.recurrent.weight if self.recurrent else None,
                 "w_out": None if self.fc_out is None else self.fc_out.weight}
        return {k: v for k, v in named.items() if v is not None}

    def forward(self, spikes):
        if self.recurrent:
            state = self.lif.init_rsynaptic()
        elif self.li is None:
            state = (self.lif.init_leaky(),)
        else:
            state = self.lif.init_synaptic()
        out_state = self.li.init_synaptic() if self.li is not None else None
        zs, outs = [], []
        for x in spikes:
            if self.recurrent:
                state = self.lif(self.fc_in(x), *state)
                z = state[0]
            else:
                z, *state = self.lif(self.fc_in(x), *state)
            zs.append(z)
            if self.li is not None:
                _, *out_state = self.li(self.fc_out(z), *out_state)
                outs.append(out_state[1])
        return torch.stack(zs), torch.stack(outs) if outs else None


class GemmOnly(nn.Module):
    """The synapse GEMM of the hidden layer over all steps, nothing else."""

    def __init__(self, w):
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(w.n_hidden, w.n_in).uniform_(-1, 1) / w.n_in ** 0.5)

    def weights(self):
        return {"w_in": self.w_in}

    def forward(self, spikes):
        return spikes @ self.w_in.t(), None


class TutorialLoopNet(nn.Module):
    """The paper's MNIST net as the snntorch tutorials write a class: fc1/lif1/fc2/lif2
    attributes and a forward that loops over the steps with explicit state, recording and
    stacking (no biases: the chip has none)."""

    def __init__(self, w):
        super().__init__()
        import snntorch as snn
        self.fc1 = nn.Linear(w.n_in, w.n_hidden, bias=False)
        self.lif1 = snn.Leaky(SNN_BETA, reset_mechanism="zero")
        self.fc2 = nn.Linear(w.n_hidden, w.n_out, bias=False)
        self.lif2 = snn.Leaky(SNN_BETA, reset_mechanism="none")

    def weights(self):
        return {"w_in": self.fc1.weight, "w_out": self.fc2.weight}

    def forward(self, spikes):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk1_rec, mem2_rec = [], []
        for step in range(spikes.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(spikes[step]), mem1)
            _, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk1_rec.append(spk1)
            mem2_rec.append(mem2)
        return torch.stack(spk1_rec), torch.stack(mem2_rec)


def loop_sequential(w):
    """TutorialLoopNet as an nn.Sequential (its forward_pass form)."""
    import snntorch as snn
    return nn.Sequential(nn.Linear(w.n_in, w.n_hidden, bias=False),
                         snn.Leaky(SNN_BETA, reset_mechanism="zero", init_hidden=True),
                         nn.Linear(w.n_hidden, w.n_out, bias=False),
                         snn.Leaky(SNN_BETA, reset_mechanism="none", init_hidden=True,
                                   output=True))


def tutorial_net(w):
    """The MNIST net written as the snntorch tutorials do (init_hidden, output=True)."""
    import snntorch as snn
    return nn.Sequential(nn.Linear(w.n_in, w.n_hidden), snn.Leaky(SNN_BETA, init_hidden=True),
                         nn.Linear(w.n_hidden, w.n_out),
                         snn.Leaky(SNN_BETA, init_hidden=True, output=True, reset_mechanism="none"))


def stock_forward_pass(net, num_steps, data):
    """The snntorch tutorials' forward_pass helper, stepping the net in Python."""
    from snntorch import utils
    spk_rec, mem_rec = [], []
    utils.reset(net)
    for step in range(num_steps):
        spk, mem = net(data[step])
        spk_rec.append(spk)
        mem_rec.append(mem)
    return torch.stack(spk_rec), torch.stack(mem_rec)


class ForwardPassNet(nn.Module):
    """A tutorial nn.Sequential run over all steps by `run(net, T, data)`."""

    def __init__(self, net, run):
        super().__init__()
        self.net, self.run = net, run

    def weights(self):
        return {"w_in": self.net[0].weight, "w_out": self.net[2].weight}

    def forward(self, spikes):
        return self.run(self.net, spikes.shape[0], spikes)


def nominal_params(n, device=None, dtype=torch.float32):
    """The ideal chip's neuron model (calix targets, dt = 1 us) as LIFParams."""
    cal = Calibration()
    return CircuitParams.nominal(n, cal).discretize(cal, DT_US, "euler").to(device, dtype)


def build_eager(w, device, dtype=torch.float32):
    from bss2_backend.surrogates import Surrogate
    hidden = nominal_params(w.n_hidden, device, dtype)
    out = nominal_params(w.n_out, device, dtype) if w.n_out else None
    net = EagerNet(w.n_in, w.n_hidden, w.n_out, w.recurrent, hidden, out, Surrogate())
    _init_like_linear(net)
    return net.to(device=device, dtype=dtype)


# snntorch weights are model-unit weights / (1 / (1 - beta)): stock's nn.Linear init, uniform in
# +-1/sqrt(fan_in) snntorch units, is this gain times that in model units. With it our networks
# start with the activity stock snntorch's has, so event paths are timed at a fair density.
STOCK_GAIN = 1.0 / (1.0 - SNN_BETA)


def _init_like_linear(net):
    with torch.no_grad():
        for weight in net.weights().values():
            bound = STOCK_GAIN / weight.shape[1] ** 0.5
            weight.uniform_(-bound, bound)


def build_chip(w, device, dtype=torch.float32, *, ideal, backend="auto", noise=True):
    chip = Chip.ideal(strict=w.strict) if ideal else Chip(seed=0, noise=noise, strict=w.strict)
    net = ChipNet(chip, w, backend)
    _init_like_linear(net)
    return net.to(device=device, dtype=dtype)


def triton_unavailable(device):
    """None when the fused kernels can run on `device`, else the reason."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    try:
        resolve_backend("triton", device)
    except ValueError as e:
        return str(e).split(";")[0]
    return None


@dataclass(frozen=True)
class Impl:
    """name: as in the CSV; kind: the workload kind it runs; build(workload, device, dtype) -> net;
    check(workload, device) -> checks.Check; unavailable(device) -> None or the reason;
    baseline: the reference of the speedup column (stock snntorch): speedup = its median time
    over this implementation's, same workload and mode;
    timed=False: checked only (the Triton interpreter on CPU says nothing about speed);
    applies(workload): whether it runs on that workload (default: every one of its kind)."""
    name: str
    kind: str
    build: Callable
    check: Callable
    unavailable: Callable = field(default=lambda device: None)
    backend: str = ""
    baseline: bool = False
    timed: bool = True
    applies: Callable = field(default=lambda workload: True)
    graph: bool = False          # timed as one replayed CUDA graph per call (bss2_backend.graphs)


class StrategyNet(nn.Module):
    """A chip net whose recurrent layers run with a given dynamics.recurrent_strategy."""

    def __init__(self, net, strategy):
        super().__init__()
        self.net, self.strategy = net, strategy

    def weights(self):
        return self.net.weights()

    def forward(self, spikes):
        from bss2_backend.dynamics import recurrent_strategy
        with recurrent_strategy(self.strategy):
            return self.net(spikes)


def _chip_impl(label, ideal, backend, timed=True, strategy=None):
    def build(w, device, dtype=torch.float32):
        net = build_chip(w, device, dtype, ideal=ideal, backend=backend)
        return net if strategy is None else StrategyNet(net, strategy)

    def check(w, device):
        if ideal:
            result = checks.against_eager(build, build_eager, w, device, exact=backend == "torch")
        else:
            result = checks.chip_forward(
                lambda w_, d, dt: build_chip(w_, d, dt, ideal=False, backend=backend, noise=False),
                w, device, exact=backend == "torch")
        if backend == "triton" and result.status == "pass":
            result = result.merge(checks.backends_agree(build_chip, w, device))
        return result

    unavailable = triton_unavailable if backend == "triton" else (lambda device: None)
    name = f"bss2.{label}[{backend}]" if strategy is None else f"bss2.{label}[{backend},{strategy}]"
    return Impl(name, "chip", build, check, unavailable, backend, timed=timed,
                applies=(lambda w: True) if strategy is None else (lambda w: w.recurrent))


def _forward_pass_build(w, device, dtype=torch.float32):
    from bss2_backend.integrations.snntorch import convert, forward_pass
    torch.manual_seed(0)
    net = convert(tutorial_net(w).to(device=device, dtype=dtype))
    return ForwardPassNet(net, forward_pass)


def _stock_forward_pass_build(w, device, dtype=torch.float32):
    torch.manual_seed(0)
    return ForwardPassNet(tutorial_net(w).to(device=device, dtype=dtype), stock_forward_pass)


class PopulationNet(nn.Module):
    """A's network on a population of C chips (one launch per layer); the chips' outputs are
    returned side by side in the batch: spikes [T, C * B, N], readout [T, C * B, n_out]."""

    def __init__(self, chips, w, backend):
        super().__init__()
        self.net = ChipNet(chips, w, backend)

    def weights(self):
        return self.net.weights()

    def forward(self, spikes):
        z, out = self.net(spikes)
        side = lambda t: t.permute(1, 0, 2, 3).reshape(t.shape[1], -1, t.shape[-1])
        return side(z), side(out)


class SequentialChipsNet(nn.Module):
    """The same C chips run one after another, each as a single Chip (the baseline)."""

    def __init__(self, seeds, w, backend, noise=True):
        super().__init__()
        self.nets = nn.ModuleList(ChipNet(Chip(seed=s, noise=noise), w, backend) for s in seeds)
        first = self.nets[0]
        for net in self.nets[1:]:        # one weight shared by all chips, as in the population
            net.hidden.weight = first.hidden.weight
            if net.readout is not None:
                net.readout.weight = first.readout.weight
        self.shared = first

    def weights(self):
        return self.shared.weights()

    def forward(self, spikes):
        outs = [net(spikes) for net in self.nets]
        return torch.cat([z for z, _ in outs], 1), torch.cat([o for _, o in outs], 1)


def _population_impls(auto):
    from bss2_backend import Chips

    def population(w, device, dtype=torch.float32, noise=True):
        return PopulationNet(Chips(range(w.chips), noise=noise), w, auto).to(device, dtype)

    def sequential(w, device, dtype=torch.float32, noise=True):
        return SequentialChipsNet(range(w.chips), w, auto, noise).to(device, dtype)

    check = lambda w, device: checks.population_matches(
        lambda w_, d: population(w_, d, noise=False), lambda w_, d: sequential(w_, d, noise=False),
        w, device)
    return [
        Impl("bss2.chips[sequential]", "population", sequential,
             lambda w, device: checks.Check("reference", "the chips one after another: the "
                                                         "baseline of the population"),
             backend=auto, baseline=True),
        Impl("bss2.chips[population]", "population", population, check, backend=auto),
    ]


def _loop_build(chip, fuse):
    def build(w, device, dtype=torch.float32):
        import warnings
        from bss2_backend.integrations.snntorch import convert
        torch.manual_seed(0)
        net = TutorialLoopNet(w).to(device=device, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # chip mode's note on reset_mechanism
            return convert(net, Chip(seed=0) if chip else None, fuse=fuse)
    return build


def _loop_stock_build(w, device, dtype=torch.float32):
    torch.manual_seed(0)
    return TutorialLoopNet(w).to(device=device, dtype=dtype)


def _loop_forward_pass_build(w, device, dtype=torch.float32):
    from bss2_backend.integrations.snntorch import convert, forward_pass
    torch.manual_seed(0)
    net = convert(loop_sequential(w).to(device=device, dtype=dtype))
    return ForwardPassNet(net, lambda net, steps, x: forward_pass(net, steps, x))


def _loop_impls(auto):
    reference = lambda w, device: checks.Check("reference", "baseline, not checked")
    ideal_check = lambda build: (lambda w, device: checks.loop_matches(
        _loop_stock_build, build, w, device))
    fused_chip, steps_chip = _loop_build(True, True), _loop_build(True, False)
    return [
        Impl("snntorch", "loop", _loop_stock_build, reference, baseline=True),
        Impl("bss2.loop[ideal]", "loop", _loop_build(False, True),
             ideal_check(_loop_build(False, True)), backend=auto),
        Impl("bss2.steps[ideal]", "loop", _loop_build(False, False),
             ideal_check(_loop_build(False, False)), backend=auto),
        Impl("bss2.forward_pass[ideal]", "loop", _loop_forward_pass_build,
             ideal_check(_loop_forward_pass_build), backend=auto),
        Impl("bss2.loop[chip]", "loop", fused_chip,
             lambda w, device: checks.chip_loop_matches(fused_chip, steps_chip, w, device),
             backend=auto),
        Impl("bss2.steps[chip]", "loop", steps_chip,
             lambda w, device: checks.Check("reference", "the chip step by step: the reference "
                                                         "of bss2.loop[chip]"),
             backend=auto),
    ]


def default_impls(device):
    """Every implementation for `device`, in the order the table prints them."""
    auto = resolve_backend("auto", device)
    impls = [_chip_impl("ideal", True, auto), _chip_impl("chip", False, auto)]
    if auto != "torch":
        impls.append(_chip_impl("ideal", True, "torch"))
        # recurrent layers both ways on the kernels: one launch, and per step (auto picks by N)
        impls += [_chip_impl("ideal", True, auto, strategy=s) for s in ("fused", "per_step")]
    else:
        # on CPU the kernels run only in the interpreter: checked against the twin, not timed
        impls.append(_chip_impl("chip", False, "triton", timed=False))
    reference = lambda w, device: checks.Check("reference", "baseline, not checked")
    impls += [
        Impl("snntorch", "chip", lambda w, d, dt=torch.float32: SnnTorchNet(w).to(d, dt),
             reference, baseline=True),
        Impl("eager", "chip", build_eager,
             lambda w, device: checks.Check("reference", "the checks' reference model")),
        Impl("gemm-only", "chip", lambda w, d, dt=torch.float32: GemmOnly(w).to(d, dt),
             lambda w, device: checks.Check("reference", "GEMM alone, no neurons"),
             applies=lambda w: w.n_out == 0),
        Impl("snntorch", "forward_pass", _stock_forward_pass_build, reference, baseline=True),
        Impl("bss2.forward_pass", "forward_pass", _forward_pass_build,
             lambda w, device: checks.forward_pass_matches(
                 _stock_forward_pass_build, _forward_pass_build, w, device),
             backend=auto),
    ]
    impls += _loop_impls(auto)
    impls += _population_impls(auto)
    from .peers import peer_impls
    impls += peer_impls(Impl, lambda w, d, dt=torch.float32: SnnTorchNet(w).to(d, dt))
    if torch.device(device).type == "cuda":
        # each of ours also as one captured CUDA graph per call: what the host costs is the
        # difference (same check as the eager form)
        impls += [replace(i, name=f"{i.name}+graph", graph=True) for i in impls
                  if i.name.startswith("bss2.") and i.timed and i.name != "bss2.steps[chip]"]
    return impls
