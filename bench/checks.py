"""Correctness checks run in the same benchmark run, on a small version of each workload.

A speedup is printed only for an implementation whose check passes. Tolerances live in one table:
float64 runs (the torch twin) must match exactly up to rounding; float32 runs (Triton kernels,
time-batched GEMMs) may flip a rare spike, which perturbs what follows it.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bss2_backend.weights import chip_weights

from bss2_backend.kernels.chip_lif.naive import chip_lif as naive_lif
from .registry import make_inputs

TOLERANCES = {
    # fraction of differing spikes, relative RMS error of membranes, of weight gradients
    torch.float64: {"spikes": 0.0, "values": 1e-9, "grads": 1e-7},
    torch.float32: {"spikes": 2e-3, "values": 2e-3, "grads": 2e-2},
}


@dataclass(frozen=True)
class Check:
    """status: pass | fail | reference | error; detail: what was compared and the errors."""
    status: str
    detail: str

    @property
    def passed(self):
        return self.status in ("pass", "reference")

    def merge(self, other):
        status = self.status if other.status == "pass" else other.status
        return Check(status, f"{self.detail}; {other.detail}")


def loss_of(spikes, out, labels):
    """The benchmark's training loss: cross-entropy of the readout's max over time, or the spike
    count when there is no readout."""
    if out is None:
        return spikes.sum()
    return F.cross_entropy(out.max(0).values, labels)


def rel_rms(a, ref):
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def _compare(name, got, ref, tol, key, errors, report):
    if got is None or ref is None:
        errors.append(f"{name} missing")
        return
    if got.shape != ref.shape:
        errors.append(f"{name} shape {tuple(got.shape)} != {tuple(ref.shape)}")
        return
    if not bool(torch.isfinite(got).all()):
        errors.append(f"{name} has NaN/inf")
        return
    err = float((got != ref).double().mean()) if key == "spikes" else rel_rms(got, ref)
    report.append(f"{name} {err:.1e}")
    if err > tol[key]:
        errors.append(f"{name} {err:.1e} > {tol[key]:.0e}")


def _set_weights(nets, generator_seed, gain):
    """The same random weights in every net; gain makes the small check nets spike."""
    g = torch.Generator().manual_seed(generator_seed)
    names = nets[0].weights()
    for name, ref in names.items():
        fan_in = ref.shape[1]
        value = (torch.rand(ref.shape, generator=g) * 2 - 1) * gain.get(name, 1.0) / fan_in ** 0.5
        for net in nets:
            weights = net.weights()
            if name not in weights:
                raise KeyError(f"{type(net).__name__} has no weight {name!r}")
            with torch.no_grad():
                weights[name].copy_(value)


# gains chosen so a check net's hidden layer fires on 5-20 % of its steps
CHECK_GAINS = {"w_in": 12.0, "w_rec": 3.0, "w_out": 4.0}


def _run(net, x, labels):
    for p in net.parameters():
        p.grad = None
    z, out = net(x)
    loss_of(z, out, labels).backward()
    return z, out, {k: v.grad for k, v in net.weights().items()}


def _guard(fn):
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a broken implementation is a failed check, not a crashed run
            return Check("error", f"{type(e).__name__}: {e}")
    return wrapped


@_guard
def against_eager(build, build_reference, workload, device, *, exact=True):
    """Ideal semantics: spikes, readout membrane and weight gradients of `build` vs the eager
    reference model on the same weights and inputs."""
    w = workload.check_size()
    dtype = torch.float64 if exact else torch.float32
    net, ref = build(w, device, dtype), build_reference(w, device, dtype)
    _set_weights([ref, net], 1, CHECK_GAINS)
    x, labels = make_inputs(w, device, dtype, seed=1)
    tol, errors, report = TOLERANCES[dtype], [], []
    z, out, grads = _run(net, x, labels)
    z_ref, out_ref, grads_ref = _run(ref, x, labels)
    _compare("spikes", z, z_ref, tol, "spikes", errors, report)
    if out_ref is not None:
        _compare("readout", out, out_ref, tol, "values", errors, report)
    for name, g_ref in grads_ref.items():
        _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    rate = float(z_ref.detach().mean())
    if rate == 0.0:
        errors.append("reference net never spiked: the check would be vacuous")
    detail = f"vs eager ({dtype}, {w.shape}, rate {rate:.2f}): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


@_guard
def chip_forward(build, workload, device, *, exact=True):
    """Calibrated chip (noise off, same mismatch): spikes and read membranes vs the eager loop
    integrating the chip's drawn parameters through its effective (quantised, gained) weights."""
    w = workload.check_size()
    dtype = torch.float64 if exact else torch.float32
    net = build(w, device, dtype)
    _set_weights([net], 1, CHECK_GAINS)
    x, _ = make_inputs(w, device, dtype, seed=1)
    chip = net.chip
    with torch.no_grad():
        z, out = net(x)
        z_ref, out_ref = _chip_reference(net, chip, x)
    tol, errors, report = TOLERANCES[dtype], [], []
    _compare("spikes", z, z_ref, tol, "spikes", errors, report)
    if out_ref is not None:
        _compare("readout", out, out_ref, tol, "values", errors, report)
    if float(z_ref.mean()) == 0.0:
        errors.append("reference net never spiked: the check would be vacuous")
    detail = f"forward vs eager on the chip's parameters, noise off ({dtype}): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


def _effective(chip, layer, weight, columns, device, dtype):
    lp = chip.layer_params(layer.placement, device, dtype)
    exc, inh = chip_weights(weight, lp.gain_exc[:, columns], lp.gain_inh[:, columns],
                            chip.weight_scale, chip.quantise)
    return lp, exc, inh


def _chip_reference(net, chip, x):
    hidden, device, dtype = net.hidden, x.device, x.dtype
    n_in, n = hidden.in_features, hidden.out_features
    lp, exc, inh = _effective(chip, hidden, hidden.weight, slice(0, n_in), device, dtype)
    rec = None
    if hidden.recurrent:
        _, r_exc, r_inh = _effective(chip, hidden, hidden.weight_rec, slice(n_in, n_in + n),
                                     device, dtype)
        rec = (r_exc, r_inh)
    kind, alpha = chip.surrogate.id, chip.surrogate.alpha
    z, _ = naive_lif(x @ exc.t(), x @ inh.t(), lp.params, surrogate=kind, alpha=alpha,
                     readout=lp.readout, recurrence=rec)
    if net.readout is None:
        return z, None
    ro = net.readout
    lp, exc, inh = _effective(chip, ro, ro.weight, slice(0, ro.in_features), device, dtype)
    _, u = naive_lif(z @ exc.t(), z @ inh.t(), lp.params, surrogate=kind, alpha=alpha,
                     readout=lp.readout, spiking=False)
    return z, u


@_guard
def backends_agree(build_chip, workload, device):
    """Fused Triton kernels vs the torch twin: calibrated chip with noise off, values and grads."""
    w = workload.check_size()
    nets = [build_chip(w, device, torch.float32, ideal=False, backend=b, noise=False)
            for b in ("triton", "torch")]
    _set_weights(nets, 2, CHECK_GAINS)
    x, labels = make_inputs(w, device, torch.float32, seed=2)
    tol, errors, report = TOLERANCES[torch.float32], [], []
    (z, out, grads), (z_ref, out_ref, grads_ref) = (_run(n, x, labels) for n in nets)
    _compare("spikes", z, z_ref, tol, "spikes", errors, report)
    if out_ref is not None:
        _compare("readout", out, out_ref, tol, "values", errors, report)
    for name, g_ref in grads_ref.items():
        _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    detail = "triton vs torch twin (chip, noise off): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


@_guard
def forward_pass_matches(build_stock, build_ours, workload, device):
    """Ideal mode of the snntorch integration vs stock snntorch: output spikes, membranes and
    the gradients of every parameter, on the same weights."""
    w = workload.check_size()
    stock, ours = build_stock(w, device), build_ours(w, device)
    ours.net.load_state_dict(stock.net.state_dict())
    x, labels = make_inputs(w, device, seed=3)
    tol, errors, report = TOLERANCES[torch.float32], [], []
    results = []
    for model in (ours, stock):
        model.zero_grad(set_to_none=True)
        spk, mem = model(x)
        loss_of(spk, mem, labels).backward()
        results.append((spk, mem, {n: p.grad for n, p in model.net.named_parameters()}))
    (spk, mem, grads), (spk_ref, mem_ref, grads_ref) = results
    _compare("spikes", spk, spk_ref, tol, "spikes", errors, report)
    _compare("membrane", mem, mem_ref, tol, "values", errors, report)
    for name, g_ref in grads_ref.items():
        if g_ref is not None:
            _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    detail = "forward_pass vs stock snntorch (float32): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


def _grads(model):
    return {name: weight.grad for name, weight in model.weights().items()}


@_guard
def loop_matches(build_stock, build_ours, workload, device):
    """The tutorial-style class after convert() (ideal mode) vs stock snntorch on the same weights,
    at the second call (the first records the fused plan): readout membranes and gradients."""
    w = workload.check_size()
    stock, ours = build_stock(w, device), build_ours(w, device)
    with torch.no_grad():
        for name, weight in stock.weights().items():
            ours.weights()[name].copy_(weight)
    x, labels = make_inputs(w, device, seed=3)
    with torch.no_grad():
        ours(x)
    tol, errors, report = TOLERANCES[torch.float32], [], []
    results = []
    for model in (ours, stock):
        model.zero_grad(set_to_none=True)
        spk, mem = model(x)
        loss_of(spk, mem, labels).backward()
        results.append((mem, _grads(model)))
    (mem, grads), (mem_ref, grads_ref) = results
    _compare("membrane", mem, mem_ref, tol, "values", errors, report)
    for name, g_ref in grads_ref.items():
        if g_ref is not None:
            _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    detail = "the class after convert vs stock snntorch (float32): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


@_guard
def chip_loop_matches(build_fused, build_steps, workload, device):
    """Chip mode, noise on, same chip seed: the fused class vs the same class step by step, at
    the second call: identical spikes and membranes, gradients equal to rounding."""
    w = workload.check_size()
    fused, steps = build_fused(w, device), build_steps(w, device)
    x, labels = make_inputs(w, device, seed=3)
    results = []
    for model in (fused, steps):
        with torch.no_grad():
            model(x)
        model.zero_grad(set_to_none=True)
        spk, mem = model(x)
        loss_of(spk, mem, labels).backward()
        results.append((spk, mem, _grads(model)))
    (spk, mem, grads), (spk_ref, mem_ref, grads_ref) = results
    tol, errors, report = TOLERANCES[torch.float32], [], []
    same = bool(torch.equal(spk, spk_ref) and torch.equal(mem, mem_ref))
    report.append(f"spikes and membranes {'identical' if same else 'DIFFER'}")
    if not same:
        errors.append("spikes or membranes differ")
    for name, g_ref in grads_ref.items():
        if g_ref is not None:
            _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    detail = "chip fused vs chip step by step (noise on): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))


@_guard
def population_matches(build_population, build_sequential, workload, device):
    """One launch for C chips vs the C chips one after another, noise off, same weights: spikes,
    readout and weight gradients (the same sums, possibly in another order)."""
    w = workload.check_size()
    pop, seq = build_population(w, device), build_sequential(w, device)
    with torch.no_grad():
        for name, weight in seq.weights().items():
            pop.weights()[name].copy_(weight)
    x, labels = make_inputs(w, device, seed=5)
    tol, errors, report = TOLERANCES[torch.float32], [], []
    results = []
    for model in (pop, seq):
        model.zero_grad(set_to_none=True)
        z, out = model(x)
        loss_of(z, out, labels).backward()
        results.append((z, out, _grads(model)))
    (z, out, grads), (z_ref, out_ref, grads_ref) = results
    _compare("spikes", z, z_ref, tol, "spikes", errors, report)
    _compare("readout", out, out_ref, tol, "values", errors, report)
    for name, g_ref in grads_ref.items():
        if g_ref is not None:
            _compare(f"d{name}", grads.get(name), g_ref, tol, "grads", errors, report)
    detail = f"{w.chips} chips in one launch vs one after another (noise off): " + ", ".join(report)
    return Check("fail" if errors else "pass", detail + ("; FAILED " + "; ".join(errors) if errors else ""))
