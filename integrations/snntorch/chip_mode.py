"""Chip mode: an snntorch layer (nn.Linear followed by a neuron) run on an emulated BSS-2 chip.

Mapping (dt = chip.dt_us; the chip's per-step decay equals snntorch's, so a = 1 - beta):
    beta      -> tau_mem = dt / (1 - beta)   (Euler; -dt / ln(beta) with integration="exact")
    alpha     -> tau_syn (exc and inh) the same way (Synaptic, RSynaptic); Leaky and RLeaky keep the
                 chip's calibrated tau_syn: the chip's neuron always has a synaptic current
    threshold -> the readout scale: chip model units are membrane / threshold, so the membrane the
                 layer returns is the read membrane times threshold
    weights   -> model weight = weight * weight_gain, weight_gain = 1 / ((1 - beta) threshold)
                 (times a_syn for Leaky), so the chip's steady-state membrane equals snntorch's
                 (membrane / threshold); then the chip's 6-bit weight path
    reset_mechanism="none" -> the chip's LI readout (no threshold; its spikes are all zero)
    other resets -> the chip's hard reset to v_reset with its refractory time

The drawn mismatch of every circuit is kept relative to the layer's targets: each circuit's time
constant is the chip's drawn one times (layer target / chip calibration target).
"""
import dataclasses
import math
import warnings
from typing import NamedTuple

import torch

from bss2_backend.chip import Chip, synapse_decays
from bss2_backend.population import Chips
from bss2_backend.dynamics import compute_dtype, pack
from bss2_backend.weights import are_spikes, mark_spikes
from torch import nn

from .neurons import supported_kind


class ChipMapping(NamedTuple):
    """snntorch parameters of one neuron module mapped to the chip (shown by repr)."""
    readout: bool             # LI readout (reset_mechanism="none"): no spikes
    tau_mem_us: float
    tau_syn_us: float
    threshold: float          # snntorch units per chip model unit
    weight_gain: float        # snntorch weight -> chip model weight
    recurrent: str            # "none" | "all_to_all" | "one_to_one"


class ChipBinding:
    """A neuron module bound to a chip: its placement and mapped parameters."""

    def __init__(self, chip, placement, mapping, n_in):
        self.chip, self.placement, self.mapping, self.n_in = chip, placement, mapping, n_in
        self._cache = {}

    def describe(self):
        m = self.mapping
        kind = "LI readout" if m.readout else "CUBA-LIF, hard reset"
        return (f"chip: {kind}, tau_mem={m.tau_mem_us:.3g} us, tau_syn={m.tau_syn_us:.3g} us, "
                f"threshold={m.threshold:g} (readout scale), weight_gain={m.weight_gain:.4g}, "
                f"placed {self.placement.n_out} neurons x {self.placement.circuits_per_neuron} "
                f"circuits as {self.placement.name!r}")

    def layer_params(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            chip, m = self.chip, self.mapping
            lp = chip.layer_params(self.placement, device, dtype)
            cal = chip.calibration
            scale_mem = m.tau_mem_us / cal.tau_mem_us
            scale_exc = m.tau_syn_us / cal.tau_syn_exc_us
            scale_inh = m.tau_syn_us / cal.tau_syn_inh_us
            retarget = lambda p: p._replace(
                a_mem=_rescale(p.a_mem, scale_mem, chip),
                a_syn_exc=_rescale(p.a_syn_exc, scale_exc, chip),
                a_syn_inh=_rescale(p.a_syn_inh, scale_inh, chip))
            self._cache[key] = lp._replace(params=retarget(lp.params), nominal=retarget(lp.nominal))
        return self._cache[key]

    def packed(self, device, dtype):
        """The retargeted parameters as the op takes them, packed once per device and dtype."""
        key = ("packed", str(device), dtype)
        if key not in self._cache:
            lp = self.layer_params(device, dtype)
            self._cache[key] = pack(lp.params, lp.nominal, lp.readout, dtype, device)
        return self._cache[key]

    def synapse_decays(self):
        """As Chip.synapse_decays, for the retargeted time constants; decided once on the host."""
        if "decays" not in self._cache:
            self._cache["decays"] = synapse_decays(self.layer_params("cpu", torch.float64))
        return self._cache["decays"]


def _rescale(a, factor, chip):
    """Per-step factor of a time constant multiplied by `factor` (the drawn spread is kept)."""
    dt = chip.dt_us
    if chip.integration == "exact":
        tau = -dt / torch.log1p(-a.clamp(max=1 - 1e-7))
        return -torch.expm1(-dt / (tau * factor))
    return (a / factor).clamp(max=1.0)


def _tau_us(decay, dt_us, integration):
    return dt_us / (1.0 - decay) if integration == "euler" else -dt_us / math.log(decay)


def _scalar(module, name, where):
    t = getattr(module, name)
    t = torch.as_tensor(t).detach().float()
    if t.numel() == 0:
        raise ValueError(f"{where}: {name} is empty")
    if t.numel() != 1 and not bool((t == t.flatten()[0]).all()):
        raise ValueError(f"{where}: chip mode needs one {name} per layer (the chip's calibration "
                         f"targets are per layer), got a per-neuron {name} of shape {tuple(t.shape)}")
    value = float(t.flatten()[0])
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name}={value} must be finite in chip mode")
    return value


def map_neuron(module, where, chip):
    """ChipMapping of an snntorch neuron module, or a clear error where the chip cannot do it."""
    kind = supported_kind(module)
    if kind not in ("leaky", "synaptic", "rleaky", "rsynaptic"):
        raise ValueError(f"{where}: {type(module).__name__} cannot run on the chip; chip mode supports "
                         f"Leaky, Synaptic, RLeaky and RSynaptic (the chip's CUBA-LIF neuron)")
    if getattr(module, "inhibition", False):
        raise ValueError(f"{where}: inhibition=True (winner-take-all firing) has no counterpart on the chip")
    if getattr(module, "state_quant", False):
        raise ValueError(f"{where}: state_quant is not supported in chip mode: the chip quantises its "
                         f"own readout (8-bit CADC)")
    beta = _scalar(module, "beta", where)
    threshold = _scalar(module, "threshold", where)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{where}: beta={beta:g} must lie in [0, 1) on the chip (tau_mem = dt/(1 - beta))")
    if threshold <= 0:
        raise ValueError(f"{where}: threshold={threshold:g} must be > 0 in chip mode")
    cal, dt = chip.calibration, chip.dt_us
    tau_mem = _tau_us(max(beta, 1e-12), dt, chip.integration) if beta > 0 else dt
    if kind in ("synaptic", "rsynaptic"):
        alpha = _scalar(module, "alpha", where)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"{where}: alpha={alpha:g} must lie in [0, 1) on the chip")
        tau_syn = _tau_us(alpha, dt, chip.integration) if alpha > 0 else dt
    else:
        tau_syn = cal.tau_syn_exc_us
    try:
        dataclasses.replace(cal, tau_mem_us=tau_mem, tau_syn_exc_us=tau_syn, tau_syn_inh_us=tau_syn)
    except ValueError as e:
        raise ValueError(f"{where}: beta={beta:g}" +
                         (f", alpha={alpha:g}" if kind in ("synaptic", "rsynaptic") else "") +
                         f" gives tau_mem={tau_mem:.3g} us, tau_syn={tau_syn:.3g} us at dt={dt:g} us, "
                         f"which the chip cannot be calibrated to ({e})") from None
    readout = module.reset_mechanism_val.item() == 2
    a_syn = 1.0 - math.exp(-dt / tau_syn) if chip.integration == "exact" else dt / tau_syn
    gain = 1.0 / ((1.0 - beta) * threshold)
    if kind in ("leaky", "rleaky"):
        gain *= a_syn
    recurrent = "none"
    if kind in ("rleaky", "rsynaptic"):
        if module.all_to_all and not isinstance(getattr(module, "recurrent", None), torch.nn.Linear):
            raise ValueError(f"{where}: convolutional recurrence (conv2d_channels) has no counterpart "
                             f"on the chip; use linear_features or all_to_all=False")
        recurrent = "all_to_all" if module.all_to_all else "one_to_one"
        if readout:
            raise ValueError(f"{where}: a recurrent readout (reset_mechanism='none') is not supported "
                             f"on the chip; the chip's LI readout has no recurrent synapses")
    return ChipMapping(readout, tau_mem, tau_syn, threshold, gain, recurrent)


def chip_warnings(bindings, linears):
    """One warning per kind of mismatch between the model and the chip, naming the modules."""
    subtract = [w for w, m in bindings if m.reset_mechanism_val.item() == 0]
    graded = [w for w, m in bindings if float(torch.as_tensor(m.graded_spikes_factor).float().ne(1).any())]
    learn = [w for w, m in bindings
             if any(isinstance(getattr(m, n, None), torch.nn.Parameter)
                    for n in ("beta", "alpha", "threshold", "graded_spikes_factor"))]
    biased = [w for w, lin in linears if lin.bias is not None]
    biased += [f"{w}.recurrent" for w, m in bindings
               if isinstance(getattr(m, "recurrent", None), torch.nn.Linear) and m.recurrent.bias is not None]
    if subtract:
        warnings.warn(f"chip mode: reset_mechanism='subtract' in {', '.join(map(repr, subtract))}: the chip cannot "
                      f"subtract; it resets the membrane to v_reset (hard reset) and holds it there for "
                      f"its refractory time", UserWarning, stacklevel=3)
    if biased:
        warnings.warn(f"chip mode: the chip has no biases; the bias of {', '.join(map(repr, biased))} is ignored "
                      f"(build the Linear with bias=False to silence this)", UserWarning, stacklevel=3)
    if graded:
        warnings.warn(f"chip mode: graded_spikes_factor != 1 in {', '.join(map(repr, graded))}: the chip's spikes "
                      f"are binary (0/1)", UserWarning, stacklevel=3)
    if learn:
        warnings.warn(f"chip mode: learnable beta/alpha/threshold in {', '.join(map(repr, learn))} stay fixed: they "
                      f"are the chip's calibration targets, not trained in the loop", UserWarning,
                      stacklevel=3)


def bind(module, linear, where, chip, network=0):
    """Place the layer (linear -> module) of network number `network` (Chip.network_index) on the
    chip as "snntorch:net<network>:<where>" and return its ChipBinding."""
    if not isinstance(chip, Chip):
        raise TypeError(f"chip must be a bss2_backend.Chip or None, got {type(chip).__name__}")
    mapping = map_neuron(module, where, chip)
    n_in, n_out = linear.in_features, linear.out_features
    chip_inputs = n_in + (n_out if mapping.recurrent != "none" else 0)
    placement = chip.place(f"snntorch:net{network}:{where}", chip_inputs, n_out, owner=module)
    return ChipBinding(chip, placement, mapping, n_in)


def layer_currents(binding, linear, spikes, per_chip=False):
    """(x_exc, x_inh) [T, B, n_out] of the layer's synapse array for presynaptic spikes
    [T, B, n_in]: the linear's weights (snntorch units, times weight_gain) through the chip's
    weight path. On a population of C chips (Chips) the result is [T, B, C * n_out] and spikes
    are shared, or one per chip [C, T, B, n_in] with per_chip=True."""
    n_in = spikes.shape[-1]
    if n_in != binding.n_in:
        raise ValueError(f"layer placed as {binding.placement.name!r} expects {binding.n_in} input "
                         f"features, got {n_in}")
    dtype = compute_dtype(spikes.dtype)
    extra = {"per_chip": per_chip} if isinstance(binding.chip, Chips) else {}
    return binding.chip.input_currents(binding.placement, spikes.to(dtype),
                                       linear.weight.to(dtype) * binding.mapping.weight_gain,
                                       slice(0, n_in), binding.synapse_decays(),
                                       binary=are_spikes(spikes), **extra)


def run_neurons(binding, linear, module, x_exc, x_inh, continuing=None):
    """The layer's neurons on its input currents [T, B, n_out]: a new run, or the next steps of
    `continuing` (a chip.Run). Returns (spikes, membrane in snntorch units, Run)."""
    chip, m, placement = binding.chip, binding.mapping, binding.placement
    dtype, device = x_exc.dtype, x_exc.device
    recurrence = None
    if m.recurrent != "none":
        n_in, n_out = binding.n_in, linear.out_features
        if m.recurrent == "all_to_all":
            w_rec = module.recurrent.weight.to(dtype)
        else:
            w_rec = torch.diag(torch.as_tensor(module.V, dtype=dtype, device=device).expand(n_out))
        recurrence = chip.recurrence(placement, w_rec * m.weight_gain, slice(n_in, n_in + n_out))
    readout = chip.layer_params(placement, "cpu", torch.float64).readout
    z, u, run = chip.run(placement, binding.packed(device, dtype), readout,
                         binding.synapse_decays(), x_exc, x_inh, spiking=not m.readout,
                         recurrence=recurrence, backend=module._bss2_backend, continuing=continuing)
    return z, u * m.threshold, run


def run_layer(binding, linear, module, spikes, per_chip=False):
    """spikes [T, B, n_in] -> (spikes, membrane) [T, B, n_out] in snntorch units: one new run of
    the layer on the chip (its state afterwards is kept, so steps may follow). On a population
    ([C, T, B, n_in] inputs with per_chip): [C, T, B, n_out]."""
    x_exc, x_inh = layer_currents(binding, linear, spikes, per_chip)
    z, mem, run = run_neurons(binding, linear, module, x_exc, x_inh)
    _keep(module, binding, z[-1].clone(), mem[-1].clone(), run)
    if isinstance(binding.chip, Chips):
        return binding.chip.split(z), binding.chip.split(mem)
    return z, mem


# --- step by step --------------------------------------------------------------------------------
class _StepRun(NamedTuple):
    """A chip-mode neuron's run between its steps: the chip's Run and the membrane tensors the
    last step returned and stored (a state passed back, or still stored, that shares memory with
    one of them continues the run; anything else starts a new one)."""
    run: object
    last: tuple


def _keep(module, binding, spk, mem, run, returned=None):
    """Write a step's results where snntorch keeps them, and remember the run. `returned`: the
    membrane the caller got, when it is not `mem` itself (a view of a fused run's result)."""
    module.mem = mem
    if module.__dict__.get("_bss2_kind") in ("rleaky", "rsynaptic"):
        module.spk = spk
    if run.state is not None and hasattr(module, "syn"):
        module.syn = (run.state.i_exc - run.state.i_inh) / binding.mapping.weight_gain
    module.__dict__["_bss2_run"] = _StepRun(run, (mem,) if returned is None else (mem, returned))


def _same_memory(a, b):
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
        and a.numel() > 0 and a.data_ptr() == b.data_ptr()


def _at_rest(name, t):
    """A state that starts a run must be the resting one: empty (init_*() on a fresh neuron) or
    zeros. Reading it is a host read, once per run."""
    if t is None or t.numel() == 0 or not bool((t != 0).any()):
        return
    raise ValueError(f"chip mode: `{name}` is neither the state this neuron returned at its last "
                     f"step (which continues the run) nor a resting state (empty or zeros, which "
                     f"starts a new one); the chip's state cannot be set to other values")


def _continuing(module, passed):
    """The run a call continues (a chip.Run), or None when it starts a new one from rest; raises
    for a state that is neither."""
    mem_in = passed.get("mem", module.mem)
    kept = module.__dict__.get("_bss2_run")
    if kept is not None and any(_same_memory(mem_in, last) for last in kept.last):
        continuing = kept.run
        if not mem_in.requires_grad and continuing.state is not None and \
                continuing.state.v.requires_grad:
            # the state was detached (snntorch's detach_hidden, TBPTT): so is the chip's
            continuing = continuing._replace(state=type(continuing.state)(
                *(t.detach() for t in continuing.state)))
        return continuing
    for name, t in passed.items():
        _at_rest(name, t)
    if not passed:
        _at_rest("mem", module.mem)
    return None


def _passed(module, states):
    passed = {k: v for k, v in states.items() if v is not None}
    if module.init_hidden and passed:
        raise TypeError(f"`{'`, `'.join(passed)}` should not be passed as an argument while "
                        f"`init_hidden=True` ({type(module).__name__} keeps its own state)")
    return passed


def step(module, input_, states):
    """One snntorch forward call of a chip-mode neuron: one step of the chip, from the true chip
    state kept in the module (membrane, currents, refractory counter), returning what snntorch
    would (the membrane as the CADC reads it, times the threshold)."""
    passed = _passed(module, states)
    if isinstance(module.__dict__["_bss2_chip"][0], Chips):
        raise NotImplementedError(
            f"chip mode: {module._bss2_where!r} is on a population of chips, which runs whole "
            f"sequences (forward_pass, or a forward looping over time after convert); step by "
            f"step one Chip at a time")
    linear, x_exc, x_inh = synapses_feeding(module, input_)
    binding = module._bss2_binding
    continuing = _continuing(module, passed)
    z, mem, run = run_neurons(binding, linear, module, x_exc, x_inh, continuing)
    # own tensors, not views of the [1, B, N] results: snntorch's helpers detach_() them in place
    spk, mem = z[0].clone(), mem[0].clone()
    _keep(module, binding, spk, mem, run)
    kind = module.__dict__.get("_bss2_kind")
    if module.init_hidden and not module.output:
        return spk
    if kind in ("synaptic", "rsynaptic"):
        return spk, module.syn, mem
    return spk, mem


# --- all steps of a recorded forward at once (fuse.py) -------------------------------------------
def batched_synapses(linear, xs):
    """The chip currents of a paired ChipSynapses for all steps' inputs xs (T tensors [..., n_in],
    or one [T, ..., n_in]) at once; returns its outputs [T, ..., n_out] and keeps the currents for
    its neuron's batched_steps."""
    binding = linear._bss2_feeds._bss2_binding
    same = not isinstance(xs, torch.Tensor) and all(x is xs[0] for x in xs)
    x = xs if isinstance(xs, torch.Tensor) else xs[0].unsqueeze(0) if same else torch.stack(xs)
    lead = x.shape[1:-1]
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    if are_spikes(x):
        mark_spikes(flat)
    x_exc, x_inh = layer_currents(binding, linear, flat)
    if same:        # the same input every step (a static image): its currents once
        T = len(xs)
        x_exc = x_exc.expand(T, *x_exc.shape[1:])
        x_inh = None if x_inh is None else x_inh.expand(T, *x_inh.shape[1:])
    signed = x_exc if x_inh is None else x_exc - x_inh
    out = (signed / binding.mapping.weight_gain).reshape(len(xs), *lead, signed.shape[-1])
    out = out.to(xs[0].dtype)
    linear.__dict__["_bss2_last"] = None
    linear.__dict__["_bss2_batch"] = (out, x_exc, x_inh)
    return out


def batched_steps(module, x, states):
    """All steps of a chip-mode neuron in one run of the chip: x [T, ..., n_out] must be the
    output batched_synapses just returned for its synapse array; states: the state passed at its
    first step (as step() takes it). Continues the kept run or starts a new one like step().
    Returns (spk, mem) [T, ..., n_out] and writes the final state back."""
    passed = _passed(module, states)
    linear = module.__dict__.get("_bss2_source")
    batch = None if linear is None else linear.__dict__.pop("_bss2_batch", None)
    if batch is None or batch[0] is not x:
        raise ValueError(_not_fed(module, "the output of its synapse array"))
    _, x_exc, x_inh = batch
    binding = module._bss2_binding
    if x_exc.stride(0) == 0:
        x_exc = x_exc.contiguous()
        x_inh = None if x_inh is None else x_inh.contiguous()
    z, mem, run = run_neurons(binding, linear, module, x_exc, x_inh, _continuing(module, passed))
    shape = x.shape
    z, mem = z.reshape(shape), mem.reshape(shape)
    _keep(module, binding, z[-1].clone(), mem[-1].clone(), run, returned=mem[-1])
    return z, mem


# --- which nn.Linear feeds which neuron: the data flow -------------------------------------------
class ChipSynapses(nn.Linear):
    """An nn.Linear of a chip-mode model (same parameters, state_dict and call): until it is known
    to feed a chip neuron it computes what nn.Linear does and remembers its last input and output.
    A chip neuron called with that output is fed by it: the pair is placed on the chip then, and
    from then on it computes the chip's input currents (6-bit weights, exc/inh rows, fixed-pattern
    gains) for its neuron and returns their difference in snntorch units (what the layer's
    synapses deliver)."""
    _bss2_feeds = None      # the neuron it feeds, once known
    _bss2_last = None       # (output, input, x_exc, x_inh) of the last call

    def forward(self, x):
        neuron = self._bss2_feeds
        if neuron is None:
            out = super().forward(x)
            self._bss2_last = (out, x, None, None)
            return out
        x_exc, x_inh, shape = _currents(neuron._bss2_binding, self, x)
        signed = x_exc if x_inh is None else x_exc - x_inh
        out = (signed[0] / neuron._bss2_binding.mapping.weight_gain).reshape(shape).to(x.dtype)
        self._bss2_last = (out, x, x_exc, x_inh)
        return out


def _currents(binding, linear, x):
    """One step's input currents [1, B, n_out] for an input [..., n_in] (leading dims as batch),
    and the output shape [..., n_out]."""
    lead = x.shape[:-1]
    spikes = x.reshape(1, -1, x.shape[-1])
    if are_spikes(x):
        mark_spikes(spikes)
    x_exc, x_inh = layer_currents(binding, linear, spikes)
    return x_exc, x_inh, (*lead, x_exc.shape[-1])


def synapses_feeding(module, input_):
    """(linear, x_exc, x_inh) for a chip-mode neuron's input: the model's ChipSynapses whose last
    output `input_` is. The first time, the pair is placed on the chip."""
    linear = module.__dict__.get("_bss2_source")
    if linear is not None:
        last = linear._bss2_last
        if last is None or last[0] is not input_:
            raise ValueError(_not_fed(module, f"the output of {module._bss2_where!r}'s synapse "
                                              f"array {linear._bss2_where!r}"))
        return linear, last[2], last[3]
    candidates = [ref() for ref in module.__dict__.get("_bss2_candidates", ())]
    found = [s for s in candidates if s is not None and s._bss2_last is not None
             and s._bss2_last[0] is input_]
    if not found:
        raise ValueError(_not_fed(module, "the output of one of the model's nn.Linear layers"))
    linear = found[0]
    if linear._bss2_feeds is not None and linear._bss2_feeds is not module:
        raise ValueError(f"chip mode: nn.Linear {linear._bss2_where!r} feeds two neurons "
                         f"({linear._bss2_feeds._bss2_where!r} and {module._bss2_where!r}); on the "
                         f"chip each synapse array feeds one neuron population")
    chip, network = module.__dict__["_bss2_chip"]
    module._bss2_binding = bind(module, linear, module._bss2_where, chip, network)
    chip_warnings([(module._bss2_where, module)], [(linear._bss2_where, linear)])
    pair(module, linear)
    x_exc, x_inh, _ = _currents(module._bss2_binding, linear, linear._bss2_last[1])
    linear._bss2_last = (*linear._bss2_last[:2], x_exc, x_inh)
    return linear, x_exc, x_inh


def pair(neuron, linear):
    """Record that `linear` feeds `neuron`; in the instances' __dict__, since nn.Module would make
    each a submodule of the other."""
    neuron.__dict__["_bss2_source"] = linear
    linear.__dict__["_bss2_feeds"] = neuron


def _not_fed(module, what):
    return (f"chip mode: {type(module).__name__} {module._bss2_where!r} was called with a tensor "
            f"that is not {what}; on the chip a neuron's input is its synapse array's output, "
            f"so call it as lif(fc(x), ...) with nothing in between (a Conv or an arithmetic "
            f"op between them has no counterpart on the chip)")
