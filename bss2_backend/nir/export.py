"""save(): a model as a NIR graph (see bss2_backend.nir.save for what is written and why).

Times are written so that the per-step factors dt / tau stay what the model runs: a model that
ran in steps of dt_model with time constant tau is written with tau * dt / dt_model in the target
time base with step dt. Every node's parameters are arrays of the layer's shape (hxtorch indexes
them per neuron and needs the same value everywhere; snntorch's importer needs one value too).
"""
import numpy as np
import torch
from torch import nn

from .. import __version__
from ..files import atomic_path
from .chip_chain import chip_reset
from .graph import NIRError
from .network import NIRNetwork, NeuronLayer, Scale
from .timebase import resolve

US = 1e-6


def _array(values, shape):
    return np.broadcast_to(np.asarray(values, dtype=np.float64), shape).copy()


def _uniform(where, params, per_neuron):
    """Refuse per-neuron values unless asked for (the readers take one per layer)."""
    if per_neuron:
        return
    for field, arr in params.items():
        if np.unique(arr).size > 1:
            raise NIRError(f"{where}: {field} differs between neurons; hxtorch's and snntorch's "
                           f"NIR readers take one value per layer: pass per_neuron=True to write "
                           f"them anyway")


def neuron_node(kind, params, shape):
    """A nir neuron node of `kind` from {field: values}, broadcast to the layer's shape."""
    import nir
    p = {k: _array(v, shape) for k, v in params.items()}
    if kind == "CubaLIF":
        return nir.CubaLIF(tau_syn=p["tau_syn"], tau_mem=p["tau_mem"], r=p["r"], v_leak=p["v_leak"],
                           v_threshold=p["v_threshold"], v_reset=p["v_reset"], w_in=p["w_in"])
    if kind == "CubaLI":
        return nir.CubaLI(tau_syn=p["tau_syn"], tau_mem=p["tau_mem"], r=p["r"], v_leak=p["v_leak"],
                          w_in=p["w_in"])
    if kind == "LIF":
        return nir.LIF(tau=p["tau"], r=p["r"], v_leak=p["v_leak"], v_threshold=p["v_threshold"],
                       v_reset=p["v_reset"])
    if kind == "LI":
        return nir.LI(tau=p["tau"], r=p["r"], v_leak=p["v_leak"])
    return nir.IF(r=p["r"], v_threshold=p["v_threshold"], v_reset=p["v_reset"])


def _dense(weight, bias=None):
    import nir
    w = np.asarray(weight, dtype=np.float32)
    if bias is None:
        return nir.Linear(weight=w)
    return nir.Affine(weight=w, bias=np.asarray(bias, dtype=np.float32))


def _linear(m):
    b = None if m.bias is None else m.bias.detach().cpu().numpy()
    return _dense(m.weight.detach().cpu().numpy(), b)


def _flatten(m, shape):
    import nir
    start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim
    end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=start, end_dim=end)


def _out_shape(module, shape):
    with torch.no_grad():
        return tuple(module(torch.zeros((1, *shape))).shape[1:])


# --- a loaded (ideal-mode) NIRNetwork ---------------------------------------------------------
def _ideal_network(model, dt, per_neuron):
    import nir
    items, shape = [], tuple(model.input_shape)
    for key, m in model.layers.items():
        if isinstance(m, NeuronLayer):
            scale = dt / m.dt
            p = dict(m.nir_params)
            for field in ("tau", "tau_mem", "tau_syn"):
                if field in p:
                    p[field] = p[field] * scale
            if m.kind == "IF":
                p["r"] = p["r"] / scale        # dt * r is the IF's per-step gain
            _uniform(f"layer {m.node_name!r}", p, per_neuron)
            rec = None
            if m.recurrent is not None:
                rec = _linear(m.recurrent)
            items.append((m.node_name, neuron_node(m.kind, p, shape), rec))
            continue
        if isinstance(m, nn.Linear):
            node = _linear(m)
        elif isinstance(m, Scale):
            node = nir.Scale(scale=m.scale.cpu().numpy())
        elif isinstance(m, nn.Flatten):
            node = _flatten(m, shape)
        elif isinstance(m, nn.Conv2d):
            node = nir.Conv2d(input_shape=shape[1:], weight=m.weight.detach().cpu().numpy(),
                              stride=m.stride, padding=m.padding, dilation=m.dilation,
                              groups=m.groups, bias=m.bias.detach().cpu().numpy())
        elif isinstance(m, nn.AvgPool2d):
            cls = nir.SumPool2d if m.divisor_override == 1 else nir.AvgPool2d
            pair = lambda v: np.broadcast_to(np.asarray(v), (2,)).copy()
            node = cls(kernel_size=pair(m.kernel_size), stride=pair(m.stride),
                       padding=pair(m.padding))
        else:
            raise NIRError(f"layer {key!r}: {type(m).__name__} has no NIR counterpart")
        items.append((key, node, None))
        shape = _out_shape(m, shape)
    return items, tuple(model.input_shape), {"mode": "ideal", "reset": model.reset_mode}


# --- snntorch chains (ideal or chip mode) ---------------------------------------------------------
def _sequence(model):
    """(name, module) of a bss2 train Network or an nn.Sequential, in execution order."""
    from ..integrations.snntorch.convert import sequence_of
    if isinstance(model, NIRNetwork):
        return sequence_of(model.seq)
    if isinstance(getattr(model, "hidden", None), nn.Sequential) and \
            isinstance(getattr(model, "readout", None), nn.Sequential):
        return [(f"hidden.{n}", m) for n, m in sequence_of(model.hidden)] + \
               [(f"readout.{n}", m) for n, m in sequence_of(model.readout)]
    if isinstance(model, nn.Sequential):
        return sequence_of(model)
    raise TypeError(f"save takes a model from bss2_backend.nir.load, a bss2 train Network or an "
                    f"nn.Sequential of Linear/Flatten/snntorch neurons, got {type(model).__name__}")


def _scalar_array(t, n):
    return np.broadcast_to(torch.as_tensor(t).detach().double().cpu().numpy(), (n,)).copy()


def _snntorch_neuron(name, m, kind, n, dt, per_neuron):
    """The NIR node of an ideal-mode snntorch neuron, as snntorch's own exporter means it."""
    reset = int(m.reset_mechanism_val)
    if reset == 0:
        raise NIRError(f"{name}: reset_mechanism='subtract' has no NIR counterpart (NIR resets "
                       f"to v_reset); build it with reset_mechanism='zero' to export")
    if reset == 1 and m.reset_delay:
        raise NIRError(f"{name}: reset_delay=True resets one step after the spike, which NIR "
                       f"cannot express; build it with reset_delay=False (snntorch's importer "
                       f"does) to export")
    beta = _scalar_array(m.beta.clamp(0, 1), n)
    tau_mem = dt / (1 - beta)
    p = {"tau_mem": tau_mem, "r": tau_mem / dt, "v_leak": np.zeros(n)}
    if kind in ("synaptic", "rsynaptic"):
        tau_syn = dt / (1 - _scalar_array(m.alpha.clamp(0, 1), n))
        p.update(tau_syn=tau_syn, w_in=tau_syn / dt)
        nir_kind = "CubaLI" if reset == 2 else "CubaLIF"
    else:
        p["tau"] = p.pop("tau_mem")
        nir_kind = "LI" if reset == 2 else "LIF"
    if reset != 2:
        p.update(v_threshold=_scalar_array(m.threshold, n), v_reset=np.zeros(n))
    _uniform(name, p, per_neuron)
    return nir_kind, p


def _chip_neuron(name, binding, dt, per_neuron):
    """The NIR node of a chip-mode neuron: nominal chip parameters (or its drawn ones)."""
    chip, mp = binding.chip, binding.mapping
    n = binding.placement.n_out
    to_graph = dt / chip.dt_us
    tau_syn = mp.tau_syn_us * to_graph
    p = {"tau_mem": np.full(n, mp.tau_mem_us * to_graph), "tau_syn": np.full(n, tau_syn),
         "r": np.ones(n), "v_leak": np.zeros(n), "w_in": np.full(n, tau_syn / dt)}
    if per_neuron:
        from ..population import Chips
        if isinstance(chip, Chips):
            raise NIRError(f"{name}: per_neuron=True writes one chip's drawn parameters; this "
                           f"layer is on a population of {chip.size} chips")
        lp = binding.layer_params("cpu", torch.float64).params
        steps = lambda a: (dt / a if chip.integration == "euler"
                           else -dt / torch.log1p(-a.clamp(max=1 - 1e-12))).numpy()
        p.update(tau_mem=steps(lp.a_mem), tau_syn=steps(lp.a_syn_exc), v_leak=lp.v_leak.numpy(),
                 w_in=steps(lp.a_syn_exc) / dt)
        if not mp.readout:
            p.update(v_threshold=lp.v_th.numpy(), v_reset=lp.v_reset.numpy())
    elif not mp.readout:
        p.update(v_threshold=np.ones(n), v_reset=np.full(n, chip_reset(chip)))
    return ("CubaLI" if mp.readout else "CubaLIF"), p


def _chip_weight(weight, binding):
    """What the chip realises of an snntorch-unit weight: codes / scale, model units."""
    from ..weights import weight_codes
    chip = binding.chip
    w = weight.detach().float().cpu() * binding.mapping.weight_gain
    if not chip.quantise:
        return w.numpy()
    return (weight_codes(w, chip.weight_scale) / chip.weight_scale).numpy()


def _snntorch_chain(model, dt, per_neuron):
    from ..integrations.snntorch.neurons import supported_kind
    seq = _sequence(model)
    first = next((m for _, m in seq if isinstance(m, (nn.Linear, nn.Flatten))), None)
    if not isinstance(first, nn.Linear):
        raise NIRError("save: the chain must start with an nn.Linear (its in_features give the "
                       "graph's input shape)")
    shape = (first.in_features,)
    items, pending, chips = [], None, set()
    for name, m in seq:
        kind = supported_kind(m)
        if kind is not None:
            binding = m.__dict__.get("_bss2_binding")
            n = shape[0]
            if binding is not None:
                chips.add(binding.chip)
                nir_kind, p = _chip_neuron(name, binding, dt, per_neuron)
                if pending is not None:
                    pending = (pending[0], _dense(_chip_weight(pending[1].weight, binding)))
            else:
                if kind not in ("leaky", "synaptic", "rleaky", "rsynaptic"):
                    raise NIRError(f"{name}: snntorch.{type(m).__name__} has no NIR counterpart")
                nir_kind, p = _snntorch_neuron(name, m, kind, n, dt, per_neuron)
            if pending is not None:
                items.append((*pending, None))
                pending = None
            rec = None
            if kind in ("rleaky", "rsynaptic"):
                if isinstance(m.recurrent, nn.Linear):
                    w, b = m.recurrent.weight, m.recurrent.bias
                else:
                    w, b = torch.diag(torch.as_tensor(m.recurrent.V).expand(n)), None
                if binding is not None:
                    rec = _dense(_chip_weight(w, binding))
                else:
                    rec = _dense(w.detach().cpu().numpy(),
                                 None if b is None else b.detach().cpu().numpy())
            items.append((name, neuron_node(nir_kind, p, shape), rec))
        elif isinstance(m, nn.Linear):
            if pending is not None:
                items.append((*pending, None))
            pending = (name, m)
            shape = (m.out_features,)
        elif isinstance(m, nn.Flatten):
            items.append((name, _flatten(m, shape), None))
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            continue            # identities at inference
        else:
            raise NIRError(f"{name}: {type(m).__name__} has no NIR counterpart here (save takes "
                           f"Linear, Flatten, Dropout and snntorch Leaky/Synaptic/RLeaky/RSynaptic)")
    if pending is not None:
        items.append((*pending, None))
    items = [(n, _linear(x) if isinstance(x, nn.Linear) else x, r) for n, x, r in items]
    meta = {"mode": "chip" if chips else "ideal", "reset": "hard"}
    if chips:
        meta.update(_chip_metadata(next(iter(chips))))
    return items, (first.in_features,), meta


def _chip_metadata(chip):
    """How the graph meets the chip, and hxtorch's ConversionConfig that reads it as meant."""
    cal = chip.calibration
    return {"chip_weight_scale": chip.weight_scale, "chip_dt_us": chip.dt_us,
            "leak_lsb": cal.leak_lsb, "reset_lsb": cal.reset_lsb,
            "threshold_lsb": cal.threshold_lsb, "model_unit_lsb": cal.unit_lsb,
            "hxtorch_weight_scale": chip.weight_scale, "hxtorch_trace_scale": 1.0 / cal.unit_lsb,
            "hxtorch_dt": chip.dt_us * US}


def assemble(items, input_shape, metadata):
    """A nir.NIRGraph of the chain `items` [(name, node, recurrent kernel or None)]: a recurrent
    neuron becomes a subgraph Input -> neuron -> Output with neuron -> w_rec -> neuron."""
    import nir
    nodes = {"input": nir.Input(input_type=np.array(input_shape))}
    for name, node, rec in items:
        name = str(name).replace(".", "_")
        if rec is not None:
            n = np.array(node.input_type["input"])
            node = nir.NIRGraph(
                nodes={"input": nir.Input(input_type=n), "lif": node, "w_rec": rec,
                       "output": nir.Output(output_type=n)},
                edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
                type_check=False)
        nodes[name] = node
    last = items[-1][1]
    out = last.output_type.get("output") if isinstance(last.output_type, dict) else None
    nodes["output"] = nir.Output(output_type=np.array(out if out is not None else [1]))
    names = list(nodes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])),
                         metadata=metadata, type_check=False)
    try:
        graph.infer_types()
    except Exception as e:         # nir's inference is a check here; its messages vary
        raise NIRError(f"save: the written graph's types do not chain ({e})") from None
    return graph


def save(model, path, *, time_base="nir", dt=None, per_neuron=False):
    """bss2_backend.nir.save."""
    import nir
    base, dt = resolve(time_base, dt)
    if not isinstance(per_neuron, bool):
        raise TypeError(f"per_neuron must be True or False, got {per_neuron!r}")
    if isinstance(model, NIRNetwork) and model.seq is None:
        items, shape, meta = _ideal_network(model, dt, per_neuron)
    else:
        items, shape, meta = _snntorch_chain(model, dt, per_neuron)
    meta.update({"dt": dt, "time_base": base.name, "time_unit_seconds": base.unit_seconds,
                 "writer": f"bss2_backend {__version__}"})
    graph = assemble(items, shape, meta)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return graph
