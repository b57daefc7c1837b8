"""Fused in time without rewriting the model: a forward that loops over time step by step runs as
one call per layer over all steps.

The first call with a given input signature (shapes, dtypes, devices, training mode) runs the
model's own forward step by step while recording it: every call of a layer (a leaf module: Linear,
Conv, pooling, Flatten, Dropout, an snntorch neuron) with the values it took and returned, every
other torch operation between them (slicing x[step], stacking the records, arithmetic) and every
assignment of a neuron's state (utils.reset, reset_mem, init_*). From the recording it builds a
plan in which each layer runs once on all its steps: stateless layers on [T*B, ...], a neuron as
the fused multi-step op starting from the state it had at its first step, a chip-mode layer as one
run of the chip. Later calls with the same signature replay the plan: the operations between
layers run as recorded (demand-driven, on the new values), the layers batched.

What the plan cannot hold makes the model run step by step, with a one-time notice saying why:
Python that reads tensor values (`if spk.sum() > 0`, `.item()`), a layer whose input depends on
its own output at an earlier step through other layers (a recurrence written in user code), a
neuron whose state is changed between its steps, a neuron the fused op cannot run.

Results equal the step-by-step run: in ideal mode the neurons' arithmetic is snntorch's (time-
batched GEMMs may round differently, as in forward_pass), in chip mode the same chip run (same
seed, same noise per step and neuron).
"""
import inspect

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import chip_mode, fused
from .neurons import STATE_WATCHERS, _BackendNeuron, supported_kind
from .notices import notice_once

# layers that compute each sample of a step alone: batched over time as one call on [T*B, ...]
STATELESS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Flatten, nn.Dropout, nn.Dropout2d,
             nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU, nn.Sigmoid, nn.Tanh)
# of those, the ones whose output for an input repeated every step is the same every step
DETERMINISTIC = tuple(c for c in STATELESS if c not in (nn.Dropout, nn.Dropout2d))
# Python that reads tensor values: the recording would freeze one branch of it
VALUE_READS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy",
               "__complex__", "__array__", "__format__"}
IN_PLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
                    "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
                    "__ilshift__", "__irshift__", "__imatmul__"}


class Fallback(Exception):
    """The recorded forward cannot be planned: it runs step by step."""


class NothingToFuse(Fallback):
    """No layer is called more than once: the forward is one step (the loop is outside)."""


def _in_place(func):
    name = getattr(func, "__name__", "")
    return name in IN_PLACE_DUNDERS or (name.endswith("_") and not name.startswith("_"))


# --- recording -------------------------------------------------------------------------------------
class Value:
    """A tensor of the recording: output slot `slot` of entry `entry` (index -1: a forward
    argument)."""
    __slots__ = ("entry", "slot")

    def __init__(self, entry, slot):
        self.entry, self.slot = entry, slot


class StateRead:
    """A neuron's state as it was when the forward began: read from the module when replayed."""
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name


class Entry:
    """One recorded step: kind "op" (a torch function), "call" (a layer), "set" (a neuron's state
    assigned), "input" (the forward's arguments), with its arguments as specs (Values in place of
    recorded tensors)."""
    __slots__ = ("kind", "target", "args", "kwargs", "outputs", "index")

    def __init__(self, kind, target, args, kwargs, index):
        self.kind, self.target, self.args, self.kwargs, self.index = kind, target, args, kwargs, index
        self.outputs = None


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class Recorder(TorchFunctionMode):
    def __init__(self, model):
        super().__init__()
        self.entries, self.values, self.keep, self.inner = [], {}, [], {}
        self.depth = 0              # > 0 inside a layer call: its inner operations are its own
        self.unsafe = None
        for m in model.modules():
            if isinstance(m, _BackendNeuron) and supported_kind(m) in fused.STATES:
                for name in fused.STATES[supported_kind(m)]:
                    t = getattr(m, name, None)
                    if isinstance(t, torch.Tensor):
                        self.values[id(t)] = StateRead(m, name)
                        self.keep.append(t)

    def spec(self, obj):
        """obj with each recorded tensor replaced by its latest Value."""
        if isinstance(obj, torch.Tensor):
            return self.values.get(id(obj), obj)
        if isinstance(obj, (list, tuple)):
            items = [self.spec(o) for o in obj]
            return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
        if isinstance(obj, dict):
            return {k: self.spec(v) for k, v in obj.items()}
        return obj

    def produced(self, entry, out):
        """Register the tensors of `out` (Nones keep their slot) as Values of `entry`."""
        count = [0]

        def walk(o):
            if o is None or isinstance(o, torch.Tensor):
                value = Value(entry, count[0])
                count[0] += 1
                if o is None:
                    return None
                self.values[id(o)] = value
                self.keep.append(o)     # ids stay unique while the recording lives
                return value
            if isinstance(o, (list, tuple)):
                items = [walk(i) for i in o]
                return type(o)(*items) if hasattr(o, "_fields") else type(o)(items)
            return o
        entry.outputs = walk(out)
        return entry.outputs

    def add(self, kind, target, args, kwargs):
        entry = Entry(kind, target, self.spec(args), self.spec(kwargs or {}), len(self.entries))
        self.entries.append(entry)
        return entry

    def _recorded(self, args):
        return any(id(t) in self.values for t in _tensors(args))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth:
            out = func(*args, **kwargs)
            for t in _tensors(out):
                self.inner[id(t)] = t
            return out
        name = getattr(func, "__name__", "")
        if name in VALUE_READS and self._recorded(args):
            self.unsafe = f"the forward reads tensor values in Python ({name})"
        if name == "__get__":             # attribute access: only a tensor-valued one is an op
            out = func(*args, **kwargs)
            if not isinstance(out, torch.Tensor) or not self._recorded(args):
                return out
            self.produced(self.add("op", func, args, kwargs), out)
            return out
        if name == "__iter__" and args and isinstance(args[0], torch.Tensor):
            # `for x_t in x`: the steps are x.unbind(0), recorded as such
            out = self.__torch_function__(torch.Tensor.unbind, types, (args[0], 0))
            return iter(out)
        entry = self.add("op", func, args, kwargs)
        out = func(*args, **kwargs)
        self.produced(entry, out)
        return out

    # layer calls, through module hooks
    def before(self, module, args, kwargs):
        if self.depth == 0:
            module.__dict__["_bss2_entry"] = self.add("call", module, args, kwargs)
        self.depth += 1

    def after(self, module, args, kwargs, out):
        self.depth -= 1
        entry = module.__dict__.pop("_bss2_entry", None) if self.depth == 0 else None
        if entry is None:
            return
        kind = supported_kind(module)
        if kind in fused.STATES and isinstance(module, _BackendNeuron):
            # a neuron's state after the call is readable as module.mem etc.
            out = (out, tuple(getattr(module, n) for n in fused.STATES[kind]))
        self.produced(entry, out)

    def state_set(self, module, name, value):
        if self.depth == 0 and isinstance(value, torch.Tensor):
            self.add("set", (module, name), (value,), {})


def _layers(model):
    """The modules whose calls the recording keeps whole: snntorch neurons and leaf modules."""
    return [m for m in model.modules() if m is not model and
            (supported_kind(m) is not None or not list(m.children()))]


def record(model, forward, args, kwargs):
    """Run forward(*args, **kwargs) step by step, recording it. Returns (output, Recorder)."""
    rec = Recorder(model)
    inputs = Entry("input", None, (), {}, -1)
    rec.input_spec = rec.produced(inputs, (args, kwargs))
    handles = []
    try:
        for m in _layers(model):
            handles.append(m.register_forward_pre_hook(rec.before, with_kwargs=True))
            handles.append(m.register_forward_hook(rec.after, with_kwargs=True))
        STATE_WATCHERS.append(rec)
        with rec:
            out = forward(*args, **kwargs)
    finally:
        if rec in STATE_WATCHERS:
            STATE_WATCHERS.remove(rec)
        for h in handles:
            h.remove()
    rec.output_spec = rec.spec(out)
    return out, rec


# --- planning --------------------------------------------------------------------------------------
class Group:
    """All calls of one layer, run as one batched call. For a stateless layer, `source`: how its
    inputs over the steps arrive ("same": one value every step; ("slices", v): v[0], v[1], ...;
    None: anything else, stacked)."""

    def __init__(self, module, calls):
        self.module, self.calls = module, calls
        self.kind = supported_kind(module)
        self.source = None
        # a neuron's arguments by name, per call (bound once: binding is slow)
        self.arguments = [_arguments(module, c) for c in calls] if self.kind is not None else None


def _arguments(module, entry):
    """A neuron call's arguments by name (input_, mem, syn, spk)."""
    sig = inspect.signature(type(module).forward)
    bound = sig.bind(module, *entry.args, **entry.kwargs)
    return {k: v for k, v in bound.arguments.items() if k != "self"}


def _returned(module, kind):
    """The names of what a neuron call returns, in order."""
    if module.init_hidden and not module.output:
        return ("spk",)
    if kind in ("synaptic", "rsynaptic"):
        return ("spk", "syn", "mem")
    return ("spk", "mem")


def _slots(module, kind):
    """{state name: flat output slots of a call that hold it} (returned, then the state after)."""
    returned = _returned(module, kind)
    out = {}
    for i, name in enumerate(returned):
        out.setdefault(name, set()).add(i)
    for j, name in enumerate(fused.STATES[kind]):
        out.setdefault(name, set()).add(len(returned) + j)
    return out


def _flat_specs(spec):
    if isinstance(spec, (Value, StateRead)) or isinstance(spec, torch.Tensor):
        yield spec
    elif isinstance(spec, (list, tuple)):
        for s in spec:
            yield from _flat_specs(s)
    elif isinstance(spec, dict):
        for s in spec.values():
            yield from _flat_specs(s)


def _flat_values(spec):
    return (s for s in _flat_specs(spec) if isinstance(s, Value))


def _name(module):
    return module.__dict__.get("_bss2_where") or type(module).__name__


class Plan:
    def __init__(self, model, rec):
        if rec.unsafe:
            raise Fallback(rec.unsafe)
        self.entries, self.input_spec, self.output_spec = rec.entries, rec.input_spec, \
            rec.output_spec
        calls = {}
        for e in self.entries:
            if e.kind == "call":
                calls.setdefault(id(e.target), []).append(e)
        self.groups = {}
        for key, es in calls.items():
            module = es[0].target
            if supported_kind(module) is not None:
                self._check_neuron(module, es)
            elif not isinstance(module, STATELESS) or any(len(c.args) != 1 or c.kwargs for c in es):
                continue                       # replayed call by call
            self.groups[key] = Group(module, es)
        if not any(len(g.calls) > 1 for g in self.groups.values()):
            raise NothingToFuse("no layer runs more than one step per call")
        self.owner = {id(c): g for g in self.groups.values() for c in g.calls}
        self._check_escapes(rec)
        self._check_sets()
        self._check_dependencies()
        self._check_chip_currents()
        for g in self.groups.values():
            if g.kind is None:
                g.source = self._source(g)
        # replayed in the recorded order: what has effects (assignments, in-place operations,
        # unbatched layers) and each batched layer at its first step (after what came before it)
        firsts = {id(g.calls[0]) for g in self.groups.values()}
        self.order = [e for e in self.entries if e.kind == "set" or id(e) in firsts or
                      (e.kind == "op" and _in_place(e.target)) or
                      (e.kind == "call" and id(e.target) not in self.groups)]

    def _check_neuron(self, module, calls):
        kind = supported_kind(module)
        if not isinstance(module, _BackendNeuron):
            raise Fallback(f"{type(module).__name__} is snntorch's own (convert the model)")
        if module.__dict__.get("_bss2_chip") is None:
            why = fused.unfusable_reason(module, None, multistep=True)
            if why:
                raise Fallback(f"{_name(module)}: {why}")
        slots = _slots(module, kind)
        for prev, call in zip(calls, calls[1:]):
            for name, spec in _arguments(module, call).items():
                if name == "input_" or spec is None:
                    continue
                # a state passed back must be what the previous step returned
                if not (isinstance(spec, Value) and spec.entry is prev and
                        spec.slot in slots.get(name, ())):
                    raise Fallback(f"the state `{name}` of {_name(module)} is changed between "
                                   f"its steps")

    def _check_escapes(self, rec):
        """A tensor computed inside a layer and read outside it other than through the layer's
        result (or a neuron's state) would be replayed as the recorded constant."""
        for e in self.entries:
            for s in _flat_specs((e.args, e.kwargs)):
                if isinstance(s, torch.Tensor) and id(s) in rec.inner:
                    raise Fallback("the forward reads a tensor computed inside a layer other than "
                                   "through its result")
        for s in _flat_specs(self.output_spec):
            if isinstance(s, torch.Tensor) and id(s) in rec.inner:
                raise Fallback("the forward returns a tensor computed inside a layer other than "
                               "through its result")

    def _check_sets(self):
        for group in self.groups.values():
            first, last = group.calls[0].index, group.calls[-1].index
            for e in self.entries[first:last]:
                if e.kind == "set" and e.target[0] is group.module:
                    raise Fallback(f"the state of {_name(group.module)} is reset between its "
                                   f"steps")

    def _check_dependencies(self):
        """A layer batched over time must not depend, at any step, on its own output through
        other layers (its own state chain is not such a dependency), nor on a tensor changed in
        place; nothing that depends on a batched layer may be changed in place."""
        MUTATED = -1
        mutated = {id(e.args[0]) for e in self.entries
                   if e.kind == "op" and _in_place(e.target) and e.args and
                   isinstance(e.args[0], Value)}
        deps = {}                     # entry index -> groups it depends on (values come from
                                      # earlier entries, so one pass in order is a closure)

        def of(value):
            found = deps.get(value.entry.index, frozenset())
            return found | {MUTATED} if id(value) in mutated else found

        for e in self.entries:
            found = set()
            for v in _flat_values((e.args, e.kwargs)):
                found |= of(v)
            g = self.owner.get(id(e))
            if g is not None:
                found.add(id(g))
            deps[e.index] = frozenset(found)
            if e.kind == "op" and _in_place(e.target) and e.args and isinstance(e.args[0], Value) \
                    and of(e.args[0]) - {MUTATED}:
                raise Fallback(f"the forward changes a layer's result in place "
                               f"({getattr(e.target, '__name__', e.target)})")
        for g in self.groups.values():
            for call in g.calls:
                for v in _flat_values((call.args, call.kwargs)):
                    if self.owner.get(id(v.entry)) is g:
                        continue              # the state chain
                    found = of(v)
                    if id(g) in found:
                        raise Fallback(f"the input of {_name(g.module)} depends on its own output "
                                       f"at an earlier step (a recurrence in user code)")
                    if MUTATED in found:
                        raise Fallback(f"the input of {_name(g.module)} goes through a tensor "
                                       f"changed in place")

    def _check_chip_currents(self):
        """A fused chip run reports its synaptic current at the last step only."""
        for g in self.groups.values():
            if g.kind not in ("synaptic", "rsynaptic") or \
                    g.module.__dict__.get("_bss2_chip") is None:
                continue
            syn = _slots(g.module, g.kind)["syn"]
            inner = {id(c) for c in g.calls}
            early = {id(c) for c in g.calls[:-1]}
            for e in self.entries:
                if id(e) in inner:
                    continue
                for v in _flat_values((e.args, e.kwargs)):
                    if id(v.entry) in early and v.slot in syn:
                        raise Fallback(f"the forward reads the synaptic current of chip-mode "
                                       f"{_name(g.module)} between steps")
            for v in _flat_values(self.output_spec):
                if id(v.entry) in early and v.slot in syn:
                    raise Fallback(f"the forward returns the synaptic current of chip-mode "
                                   f"{_name(g.module)} between steps")

    def _source(self, g):
        specs = [c.args[0] for c in g.calls]
        if all(s is specs[0] for s in specs) and isinstance(g.module, DETERMINISTIC):
            return "same"
        base = None
        for t, s in enumerate(specs):
            e = s.entry if isinstance(s, Value) else None
            if e is None or e.kind != "op" or getattr(e.target, "__name__", "") != "__getitem__" \
                    or s.slot != 0 or len(e.args) != 2 or e.kwargs or type(e.args[1]) is not int \
                    or e.args[1] != t or not isinstance(e.args[0], Value):
                return None
            if base is None:
                base = e.args[0]
            elif e.args[0] is not base:
                return None
        return ("slices", base)


# --- replay ----------------------------------------------------------------------------------------
class Replay:
    """One call of a planned forward on new inputs: operations demand-driven, layers batched,
    state assignments, in-place operations and unbatched layer calls in their recorded order."""

    def __init__(self, plan, args, kwargs):
        self.plan = plan
        self.done = {}                   # id(entry) -> its flat outputs
        self.ran = set()
        self.inputs = _flatten_out((args, kwargs))

    def value(self, spec):
        if isinstance(spec, Value):
            if spec.entry.index < 0:
                return self.inputs[spec.slot]
            if id(spec.entry) not in self.done:
                self.run(spec.entry)
            return self.done[id(spec.entry)][spec.slot]
        if isinstance(spec, StateRead):
            return getattr(spec.module, spec.name)
        if isinstance(spec, (list, tuple)):
            if hasattr(spec, "_fields"):
                return type(spec)(*(self.value(s) for s in spec))
            return type(spec)(self.value(s) for s in spec)
        if isinstance(spec, dict):
            return {k: self.value(v) for k, v in spec.items()}
        return spec

    def run(self, entry):
        if id(entry) in self.done:
            return
        group = self.plan.groups.get(id(entry.target)) if entry.kind == "call" else None
        if group is not None:
            self.run_group(group)
            return
        args, kwargs = self.value(entry.args), self.value(entry.kwargs)
        if entry.kind == "op":
            out = self._stacked(entry, args, kwargs)
            if out is None:
                out = entry.target(*args, **kwargs)
        elif entry.kind == "call":
            out = entry.target(*args, **kwargs)
            kind = supported_kind(entry.target)
            if kind in fused.STATES and isinstance(entry.target, _BackendNeuron):
                out = (out, tuple(getattr(entry.target, n) for n in fused.STATES[kind]))
        else:
            module, name = entry.target
            setattr(module, name, args[0])
            out = None
        self.done[id(entry)] = _flatten_out(out)

    def _stacked(self, entry, args, kwargs):
        """torch.stack of a layer's per-step outputs in step order is its batched output."""
        if getattr(entry.target, "__name__", "") != "stack" or kwargs.get("dim", 0) != 0 \
                or len(args) != 1 or not isinstance(args[0], (list, tuple)) or not args[0]:
            return None
        first = getattr(args[0][0], "_bss2_batched", None)
        if first is None or len(args[0]) != first[0].shape[0]:
            return None
        return _whole(args[0], stack=False)

    def run_group(self, group):
        if id(group) in self.ran:
            return
        self.ran.add(id(group))
        outs = self._stateless(group) if group.kind is None else self._neuron(group)
        for call, out in zip(group.calls, outs):
            self.done[id(call)] = out

    def _stateless(self, group):
        module, T = group.module, len(group.calls)
        if group.source == "same":
            x = self.value(group.calls[0].args[0])
            xs = [x] * T
        elif group.source is not None:
            whole = self.value(group.source[1])
            xs = None
        else:
            xs = [self.value(c.args[0]) for c in group.calls]
            whole = _whole(xs, stack=False)
            if whole is not None:
                xs = None
        if isinstance(module, chip_mode.ChipSynapses) and module._bss2_feeds is not None:
            y = chip_mode.batched_synapses(module, xs if xs is not None else whole[:T])
            return [[s] for s in _per_step(y)]
        if group.source == "same":
            y1 = module(x)
            y = y1.unsqueeze(0).expand(T, *y1.shape)
        else:
            x = whole[:T] if xs is None else torch.stack(xs)
            y = module(x.reshape(T * x.shape[1], *x.shape[2:]))
            y = y.reshape(T, x.shape[1], *y.shape[1:])
        return [[s] for s in _per_step(y)]

    def _neuron(self, group):
        module, kind, args = group.module, group.kind, group.arguments
        xs = [self.value(a["input_"]) for a in args]
        state = {n: self.value(s) for n, s in args[0].items() if n != "input_" and s is not None}
        T = len(xs)
        x = _whole(xs)
        if module.__dict__.get("_bss2_chip") is not None:
            spk, mem = chip_mode.batched_steps(module, x, state)
            syn = [None] * (T - 1) + [module.syn] if kind in ("synaptic", "rsynaptic") else None
            series = {"spk": _per_step(spk), "mem": _per_step(mem), "syn": syn}
        else:
            for name, value in state.items():      # snntorch: a passed state replaces the stored
                setattr(module, name, value)
            spk, syn, mem = fused.multistep_states(module, x)
            series = {"spk": _per_step(spk), "mem": _per_step(mem),
                      "syn": _per_step(syn) if syn is not None else None}
        returned, states = _returned(module, kind), fused.STATES[kind]
        return [[series[n][t] for n in returned] + [series[n][t] for n in states]
                for t in range(T)]

    def result(self):
        for e in self.plan.order:
            self.run(e)
        return self.value(self.plan.output_spec)


def _whole(xs, stack=True):
    """The [T, ...] tensor whose steps xs are (a batched layer's result, as _per_step made them),
    else torch.stack(xs) (None with stack=False)."""
    info = getattr(xs[0], "_bss2_batched", None)
    if info is not None and info[0].shape[0] == len(xs) and all(
            _step_of(x, info[0], t) for t, x in enumerate(xs)):
        return info[0]
    return torch.stack(xs) if stack else None


def _step_of(x, whole, t):
    info = getattr(x, "_bss2_batched", None)
    return info is not None and info[0] is whole and info[1] == t


def _per_step(y):
    """A batched [T, ...] result as its T steps, each remembering where it came from (so that
    stacking them again gives y itself)."""
    steps = list(y.unbind(0))
    for t, s in enumerate(steps):
        s._bss2_batched = (y, t)
    return steps


def _flatten_out(out):
    """The tensors of a (nested) result, Nones keeping their slot."""
    flat = []

    def walk(o):
        if o is None or isinstance(o, torch.Tensor):
            flat.append(o)
        elif isinstance(o, (list, tuple)):
            for i in o:
                walk(i)
    walk(out)
    return flat


# --- the model's forward -------------------------------------------------------------------------
def _signature(args, kwargs, training):
    def sig(o):
        if isinstance(o, torch.Tensor):
            return ("T", tuple(o.shape), o.dtype, o.device, o.requires_grad)
        if isinstance(o, (list, tuple)):
            return tuple(sig(i) for i in o)
        if isinstance(o, dict):
            return tuple(sorted((k, sig(v)) for k, v in o.items()))
        return ("C", repr(o))
    return (sig(args), sig(kwargs), training)


def fused_forward(model, forward, args, kwargs):
    """The model's forward, fused in time once planned (see the module docstring)."""
    if torch.compiler.is_compiling() or STATE_WATCHERS:
        return forward(*args, **kwargs)
    plans = model.__dict__.setdefault("_bss2_plans", {})
    # the model's own plain settings (a num_steps attribute) shape the loop as much as the input
    settings = tuple(sorted((k, v) for k, v in model.__dict__.items()
                            if not k.startswith("_") and type(v) in (int, float, bool, str)))
    key = (_signature(args, kwargs, model.training), settings)
    plan = plans.get(key)
    if plan is None:
        out, rec = record(model, forward, args, kwargs)
        try:
            plans[key] = Plan(model, rec)
        except NothingToFuse:
            plans[key] = ""
        except Fallback as why:
            plans[key] = str(why)
            notice_once("fuse" + str(why), f"{type(model).__name__}.forward runs step by step: "
                                          f"{why}")
        return out
    if isinstance(plan, str):
        return forward(*args, **kwargs)
    return Replay(plan, args, kwargs).result()


def install(model):
    """Make `model`'s forward fused in time (its class becomes a subclass that routes forward
    through fused_forward); uninstall() undoes it."""
    cls = type(model)
    if getattr(cls, "_bss2_fused_from", None) is not None:
        return model
    original = cls.forward

    def forward(self, *args, **kwargs):
        return fused_forward(self, original.__get__(self, cls), args, kwargs)

    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "_bss2_fused_from": cls,
                                                   "__module__": cls.__module__,
                                                   "__doc__": cls.__doc__})
    return model


def uninstall(model):
    cls = getattr(type(model), "_bss2_fused_from", None)
    if cls is not None:
        model.__class__ = cls
    model.__dict__.pop("_bss2_plans", None)
    return model


def forget(model):
    """Drop the recorded plans (the model's structure or parameters' identity changed)."""
    model.__dict__.pop("_bss2_plans", None)
