"""Ideal mode: a backend neuron's step, or all its steps, on the fused snntorch neuron op.

Reads the module exactly as snntorch does: the update from state_function (bound at construction),
the same-step reset from reset_mechanism_val, clamped beta/alpha, the surrogate from the
spike_grad closure. Writes back the state buffers and `reset` as snntorch's forward does.

snntorch 1.0 bug kept compatible: RSynaptic's reset_delay=False branch discards its result (and
raises when no spk is passed), so RSynaptic always runs as reset_delay=True here, with a notice.
"""
import snntorch.surrogate
import torch
from snntorch._neurons.neurons import SpikingNeuron
from torch import nn

from bss2_backend.dynamics import resolve_backend
from bss2_backend.kernels import surrogate as sg
from bss2_backend.kernels.snn_neuron import REC_DENSE, REC_EXTERNAL, REC_NONE, REC_ONE_TO_ONE, \
    RESET_NONE, RESET_SUB, RESET_ZERO, SURROGATE_IDS, NeuronSpec, snn_neuron
from bss2_backend.validation import check_tensor

from .neurons import supported_kind
from .notices import notice_once

STATES = {"leaky": ("mem",), "lapicque": ("mem",), "synaptic": ("syn", "mem"),
          "rleaky": ("spk", "mem"), "rsynaptic": ("spk", "syn", "mem")}
UPDATES = {"_base_sub": RESET_SUB, "_base_zero": RESET_ZERO, "_base_int": RESET_NONE}
# dense recurrence keeps [N, N] weights in one tile; wider layers run the recurrent GEMM per step
DENSE_MAX_FEATURES = 128
SURROGATE_PARAM = {"atan": "alpha", "fast_sigmoid": "slope", "sigmoid": "slope",
                   "triangular": "threshold"}


def surrogate_of(fn):
    """(SURROGATE_* id, parameter) of an snntorch surrogate closure, None for any other callable."""
    if fn is SpikingNeuron._surrogate_bypass:
        return sg.ZERO, 0.0
    qual = getattr(fn, "__qualname__", "")
    if getattr(fn, "__module__", None) != snntorch.surrogate.__name__ or \
            not qual.endswith(".<locals>.inner"):
        return None
    factory = qual.split(".", 1)[0]
    if factory not in SURROGATE_IDS:
        return None
    cells = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
    name = SURROGATE_PARAM.get(factory)
    return SURROGATE_IDS[factory], float(cells[name]) if name else 0.0


def _param_tensors(module):
    names = ["beta", "threshold", "graded_spikes_factor"]
    if hasattr(module, "alpha"):
        names.append("alpha")
    return [(n, getattr(module, n)) for n in names]


def plan(module, input_, multistep=False):
    """(reason, spec): why the fused op cannot run this module (None when it can) and its
    NeuronSpec. Cached on the module while what they depend on stays: the surrogate closure, the
    update function, reset_mechanism_val (the tensor and its in-place version), reset_delay,
    inhibition, state_quant and the parameters (objects and dtypes). While torch.compile traces,
    the cache is read without the checks (the plan is fixed at convert time and dynamo guards the
    module's attributes), so the per-step path has no graph break."""
    cache = module.__dict__.setdefault("_bss2_plans", {})
    if torch.compiler.is_compiling() and multistep in cache:
        reason, spec = cache[multistep][1]
    else:
        rv = module.reset_mechanism_val
        key = (module.spike_grad, module.state_function, rv, rv._version,
               getattr(module, "reset_delay", True), module.inhibition, module.state_quant,
               *(x for _, p in _param_tensors(module) for x in (p, p.dtype)))
        hit = cache.get(multistep)
        if hit is not None and len(hit[0]) == len(key) and all(
                a is b or (type(a) in (int, bool) and a == b) for a, b in zip(hit[0], key)):
            reason, spec = hit[1]
        else:
            reason = _reason(module, multistep)
            spec = spec_of(module, multistep) if reason is None else None
            cache[multistep] = (key, (reason, spec))
    if reason is None and input_ is not None and \
            (not isinstance(input_, torch.Tensor) or input_.dtype != torch.float32):
        got = input_.dtype if isinstance(input_, torch.Tensor) else type(input_).__name__
        reason = f"the input is {got} (the fused op runs float32, as snntorch's spikes are)"
    return reason, spec


def unfusable_reason(module, input_, multistep=False):
    """Why the fused op cannot run this module (None when it can)."""
    return plan(module, input_, multistep)[0]


def _reason(module, multistep):
    kind = supported_kind(module)
    if kind == "alpha":
        return "Alpha has no fused kernel (its three-state update is not in the kernel family)"
    if module.inhibition:
        return "inhibition=True (winner-take-all firing)"
    if module.state_quant:
        return "state_quant is set"
    if surrogate_of(module.spike_grad) is None:
        fn = module.spike_grad
        return (f"spike_grad {getattr(fn, '__qualname__', type(fn).__name__)} is not one of the fused "
                f"surrogates ({', '.join(SURROGATE_IDS)})")
    for name, p in _param_tensors(module):
        # integer constants (threshold=1 makes an int64 buffer) compute exactly as float32 does
        if p.dtype != torch.float32 and (p.is_floating_point() or p.is_complex()):
            return f"{name} is {p.dtype} (the fused op runs float32)"
    if multistep and kind in ("rleaky", "rsynaptic") and module.all_to_all and \
            not isinstance(module.recurrent, nn.Linear):
        return "convolutional recurrence (conv2d_channels) runs per step"
    return None


def spec_of(module, multistep):
    kind = supported_kind(module)
    delay = bool(getattr(module, "reset_delay", True))
    if kind == "rsynaptic" and not delay:
        # snntorch 1.0 discards that branch's result: reset_delay=True is what it computes
        delay = True
    rec = REC_NONE
    if kind in ("rleaky", "rsynaptic"):
        if not multistep:
            rec = REC_EXTERNAL
        elif not module.all_to_all:
            rec = REC_ONE_TO_ONE
        else:
            rec = REC_DENSE
    surrogate, param = surrogate_of(module.spike_grad)
    return NeuronSpec(synaptic=kind in ("synaptic", "rsynaptic"), rec=rec,
                      reset=UPDATES[module.state_function.__name__],
                      zero_before_decay=kind == "leaky", delay=delay,
                      late_reset=int(module.reset_mechanism_val), surrogate=surrogate,
                      surrogate_param=param)


def _say_rsynaptic_delay(module, kind):
    if kind == "rsynaptic" and not getattr(module, "reset_delay", True):
        notice_once("rsynaptic_delay",
                    "RSynaptic(reset_delay=False): snntorch 1.0 discards that branch's result (or "
                    "raises when no spk is passed), so the backend runs it as reset_delay=True, which "
                    "is what snntorch 1.0 computes")


def _inputs(module, kind, x):
    """(x, beta) as the update sees them: Lapicque scales its input and decays by 1 - T/(RC)."""
    if kind == "lapicque":
        R, C, dt = module.R, module.C, module.time_step
        return x * R * (1 / (R * C)) * dt, 1 - (dt / (R * C))
    return x, module.beta.clamp(0, 1)


def _run(module, kind, spec, x, states, backend):
    x, beta = _inputs(module, kind, x)
    alpha = module.alpha.clamp(0, 1) if spec.synaptic else None
    rec = {}
    if spec.rec == REC_ONE_TO_ONE:
        rec["v"] = module.V
    elif spec.rec == REC_DENSE:
        rec["w"], rec["bias"] = module.recurrent.weight, module.recurrent.bias
    elif spec.rec == REC_EXTERNAL:
        rec["r"] = module.recurrent(states["spk"]).unsqueeze(0)
    s0 = states.get("spk") if spec.rec in (REC_ONE_TO_ONE, REC_DENSE) else None
    return snn_neuron(spec, x, states["mem"], states.get("syn"), s0, beta=beta, alpha=alpha,
                      theta=module.threshold, g=module.graded_spikes_factor,
                      impl=resolve_backend(backend, x.device), **rec)


def _dense_by_steps(module, kind, x, current):
    """Recurrence too wide for one tile: the recurrent GEMM per step, the neuron op per step."""
    spec = plan(module, None, multistep=False)[1]
    outs, states = [], dict(current)
    for t in range(x.shape[0]):
        spk, syn, mem = _run(module, kind, spec, x[t:t + 1], states, "triton")
        states = {"spk": spk[0], "mem": mem[0], **({"syn": syn[0]} if syn is not None else {})}
        outs.append((spk, syn, mem))
    cat = lambda i: None if outs[0][i] is None else torch.cat([o[i] for o in outs])
    return cat(0), cat(1), cat(2)


def _prologue(module, kind, step_shape, like):
    for name in STATES[kind]:
        state = getattr(module, name)
        if state.shape != step_shape:
            setattr(module, name, torch.zeros(step_shape, dtype=like.dtype, device=state.device))
    return {name: getattr(module, name) for name in STATES[kind]}


def step(module, input_, states):
    """One snntorch forward call on the fused op; None when snntorch's own code must run."""
    check_tensor(f"{type(module).__name__} input", input_, floating=False)
    kind = supported_kind(module)
    passed = [k for k, v in states.items() if v is not None]
    for k in passed:
        setattr(module, k, states[k])
    if module.init_hidden and passed:
        raise TypeError(f"`{'`, `'.join(passed)}` should not be passed as an argument while "
                        f"`init_hidden=True` ({type(module).__name__} keeps its own state)")
    current = _prologue(module, kind, input_.shape, input_)
    if any(s.dtype != torch.float32 for s in current.values()):
        return None
    spec = plan(module, input_, multistep=False)[1]
    _say_rsynaptic_delay(module, kind)
    module.reset = (current["mem"] > module.threshold).float()
    spk, syn, mem = _run(module, kind, spec, input_.unsqueeze(0), current, module._bss2_backend)
    spk, mem = spk[0].clone(), mem[0].clone()
    module.mem = mem
    if syn is not None:
        module.syn = syn = syn[0].clone()
    if kind in ("rleaky", "rsynaptic"):
        module.spk = spk
    if module.init_hidden and not module.output:
        return spk
    return (spk, syn, mem) if syn is not None else (spk, mem)


def multistep(module, x):
    """All steps of x [T, *S] at once; writes the final state back. Returns (spk, mem) [T, *S]."""
    spk, _, mem = multistep_states(module, x)
    return spk, mem


def multistep_states(module, x):
    """multistep with the synaptic current too: (spk, syn or None, mem) [T, *S]."""
    kind = supported_kind(module)
    current = _prologue(module, kind, x.shape[1:], x)
    if x.dtype != torch.float32 or any(s.dtype != torch.float32 for s in current.values()):
        raise TypeError(f"{type(module).__name__}: the fused forward_pass runs float32 inputs and "
                        f"state; got input {x.dtype}")
    spec = plan(module, x, multistep=True)[1]
    _say_rsynaptic_delay(module, kind)
    backend = resolve_backend(module._bss2_backend, x.device)
    if spec.rec == REC_DENSE and backend == "triton" and x.shape[-1] > DENSE_MAX_FEATURES:
        spk, syn, mem = _dense_by_steps(module, kind, x, current)
    else:
        spk, syn, mem = _run(module, kind, spec, x, current, backend)
    before_last = mem[-2] if x.shape[0] > 1 else current["mem"]
    module.reset = (before_last > module.threshold).float().detach()
    module.mem = mem[-1].clone()
    if syn is not None:
        module.syn = syn[-1].clone()
    if kind in ("rleaky", "rsynaptic"):
        module.spk = spk[-1].clone()
    return spk, syn, mem
