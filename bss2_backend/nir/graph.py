"""Reading a NIR graph into a checked chain of stages (what load builds its modules from).

A loadable graph is a chain Input -> ... -> Output. The one cycle allowed is recurrence: a neuron
with a Linear/Affine node whose only input and only output is that neuron (written flat, or as a
subgraph Input -> neuron -> Output with the neuron -> w_rec -> neuron loop, snntorch's form), which
becomes the neuron's recurrent kernel. Everything else (unknown node types, branches, other cycles,
shapes that do not chain, NaN/inf parameters, a file that is not NIR) is a NIRError naming the
node and the field.
"""
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

NEURONS = ("LIF", "CubaLIF", "LI", "CubaLI", "IF")
STATELESS = ("Linear", "Affine", "Scale", "Flatten", "Conv2d", "AvgPool2d", "SumPool2d")
SUPPORTED = ("Input", "Output") + STATELESS + NEURONS
# the fields of each neuron type (NIR 1.0.8) and the value a missing optional one takes
NEURON_FIELDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "IF": ("r", "v_threshold", "v_reset"),
}


class NIRError(ValueError):
    """A graph or file bss2_backend.nir cannot load; the message names the node and field."""


class Stage(NamedTuple):
    """One node of the chain: its name and NIR type, the node, the sample shapes it takes and
    gives (without batch and time), for neurons their parameters as float64 arrays of the layer's
    shape, and for a recurrent neuron its kernel (name, weight [N, N], bias [N] or None)."""
    name: str
    kind: str
    node: object
    shape_in: tuple
    shape_out: tuple
    params: dict
    recurrent: object


def read(source):
    """A nir.NIRGraph from a path (a NIR HDF5 file) or a graph; NIRError for anything else."""
    import nir
    if isinstance(source, nir.NIRGraph):
        return source
    if not isinstance(source, (str, Path)):
        raise TypeError(f"path_or_graph must be a path to a .nir file or a nir.NIRGraph, got "
                        f"{type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise NIRError(f"{path} is not a file")
    try:
        # the graph is checked here, node by node, with messages naming them: nir's own type
        # check also refuses graphs snntorch's exporter writes (neurons with 0-d parameters)
        graph = nir.read(path, type_check=False)
    except Exception as e:           # h5py/nir raise anything for a foreign file
        text = " ".join(str(e).split())[:160]
        raise NIRError(f"{path} is not a NIR file ({type(e).__name__}: {text})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"{path} holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


def _finite(name, node):
    """Every numeric field of a node finite (NaN parameters would become plausible spikes)."""
    for field, value in vars(node).items():
        if field in ("input_type", "output_type", "metadata") or isinstance(value, str):
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.size and not np.isfinite(arr).all():
            raise NIRError(f"node {name!r} ({type(node).__name__}): field {field!r} contains NaN "
                           f"or inf")


def _recurrent_subgraph(name, sub):
    """(neuron name, neuron, kernel name, kernel) of a recurrent subgraph, or NIRError."""
    import nir
    kinds = {k: type(n).__name__ for k, n in sub.nodes.items()}
    neurons = [k for k, t in kinds.items() if t in NEURONS]
    kernels = [k for k, t in kinds.items() if t in ("Linear", "Affine")]
    ins = [k for k, n in sub.nodes.items() if isinstance(n, nir.Input)]
    outs = [k for k, n in sub.nodes.items() if isinstance(n, nir.Output)]
    shape = f"Input -> neuron -> Output with neuron -> Linear/Affine -> neuron; got {kinds}"
    if len(sub.nodes) != 4 or len(neurons) != 1 or len(kernels) != 1 or len(ins) != 1 \
            or len(outs) != 1:
        raise NIRError(f"subgraph {name!r}: only recurrent subgraphs load ({shape})")
    n, w = neurons[0], kernels[0]
    want = {(ins[0], n), (n, w), (w, n), (n, outs[0])}
    if set(map(tuple, sub.edges)) != want:
        raise NIRError(f"subgraph {name!r}: edges {sorted(map(tuple, sub.edges))} are not a "
                       f"recurrent neuron ({shape})")
    for k in (n, w):
        _finite(f"{name}.{k}", sub.nodes[k])
    return n, sub.nodes[n], w, sub.nodes[w]


def _shape_of(name, value, what):
    try:
        shape = tuple(int(s) for s in np.asarray(value).reshape(-1))
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise NIRError(f"node {name!r}: {what} {value!r} must give the sample shape (positive "
                       f"sizes, without batch and time)")
    return shape


def _layer_params(name, node, kind, shape):
    """The neuron's fields as float64 arrays of the layer's shape (0-d values broadcast: snntorch's
    exporter writes scalars)."""
    out = {}
    for field in NEURON_FIELDS[kind]:
        value = getattr(node, field, None)
        if value is None and field == "v_reset":
            value = 0.0          # NIR's default for an omitted v_reset (some snntorch versions)
        if value is None and field == "w_in":
            value = 1.0
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 1:
            arr = np.full(shape, float(arr.reshape(-1)[0]))
        elif arr.size == math.prod(shape):
            arr = arr.reshape(shape)
        else:
            raise NIRError(f"node {name!r} ({kind}): {field} has shape {tuple(arr.shape)} but "
                           f"its input has shape {shape}: the shapes do not chain")
        out[field] = arr
    for field in ("tau", "tau_mem", "tau_syn"):
        if field in out and not (out[field] > 0).all():
            raise NIRError(f"node {name!r} ({kind}): {field} must be > 0, got min "
                           f"{out[field].min():g}")
    return out


def _pair(value, name, field):
    arr = np.asarray(value).reshape(-1)
    if arr.size == 1:
        return (int(arr[0]),) * 2
    if arr.size != 2:
        raise NIRError(f"node {name!r}: {field}={value!r} must be one or two integers")
    return tuple(int(v) for v in arr)


def _stateless_shape(name, kind, node, shape):
    """The sample shape a stateless node gives for input `shape`, or NIRError."""
    meta = torch.empty((1, *shape), device="meta")
    try:
        if kind in ("Linear", "Affine"):
            w = np.asarray(node.weight)
            if w.ndim != 2:
                raise NIRError(f"node {name!r} ({kind}): weight must be 2-D [out, in], got shape "
                               f"{w.shape}")
            if shape != (w.shape[1],):
                raise NIRError(f"node {name!r} ({kind}) takes {w.shape[1]} inputs but gets shape "
                               f"{shape}: the shapes do not chain (a Flatten before it?)")
            if kind == "Affine" and np.asarray(node.bias).shape != (w.shape[0],):
                raise NIRError(f"node {name!r} (Affine): bias has shape "
                               f"{np.asarray(node.bias).shape}, weight {w.shape}")
            return (w.shape[0],)
        if kind == "Scale":
            s = np.asarray(node.scale)
            if s.size not in (1, math.prod(shape)):
                raise NIRError(f"node {name!r} (Scale): scale has {s.size} values, its input shape "
                               f"{shape}")
            return shape
        if kind == "Flatten":
            return tuple(meta.flatten(int(node.start_dim) + 1 if int(node.start_dim) >= 0
                                      else int(node.start_dim),
                                      int(node.end_dim) + 1 if int(node.end_dim) >= 0
                                      else int(node.end_dim)).shape[1:])
        if kind == "Conv2d":
            w = torch.empty(tuple(np.asarray(node.weight).shape), device="meta")
            pad = node.padding if isinstance(node.padding, str) else _pair(node.padding, name, "padding")
            return tuple(F.conv2d(meta, w, None, _pair(node.stride, name, "stride"), pad,
                                  _pair(node.dilation, name, "dilation"), int(node.groups)).shape[1:])
        if kind in ("AvgPool2d", "SumPool2d"):
            return tuple(F.avg_pool2d(meta, _pair(node.kernel_size, name, "kernel_size"),
                                      _pair(node.stride, name, "stride"),
                                      _pair(node.padding, name, "padding")).shape[1:])
    except (RuntimeError, IndexError) as e:
        text = " ".join(str(e).split())[:160]
        raise NIRError(f"node {name!r} ({kind}) cannot take input of shape {shape}: the shapes do "
                       f"not chain ({text})") from None
    raise NIRError(f"node {name!r}: {kind} is not a stateless node")


def _acyclic(nodes, succ, pred):
    """NIRError naming the nodes of any cycle left once recurrent kernels are taken out."""
    indegree = {k: len(pred[k]) for k in nodes}
    ready = [k for k, d in indegree.items() if d == 0]
    while ready:
        for b in succ[ready.pop()]:
            indegree[b] -= 1
            if indegree[b] == 0:
                ready.append(b)
    stuck = [k for k, d in indegree.items() if d > 0]
    if stuck:
        raise NIRError(f"cycle through nodes {stuck}: the only cycle allowed is a neuron's "
                       f"recurrent Linear/Affine edge back to itself (neuron -> Linear -> neuron)")


def chain(graph):
    """The graph as a list of Stages from its Input to its Output (module docstring)."""
    import nir
    nodes = dict(graph.nodes)
    edges = [(str(a), str(b)) for a, b in graph.edges]
    recurrent = {}
    for name, node in list(nodes.items()):
        kind = type(node).__name__
        if isinstance(node, nir.NIRGraph):
            n, neuron, w, kernel = _recurrent_subgraph(name, node)
            nodes[name] = neuron
            recurrent[name] = (f"{name}.{w}", kernel)
        elif kind not in SUPPORTED:
            raise NIRError(f"node {name!r} is a {kind}, which bss2_backend.nir cannot load; "
                           f"supported: {', '.join(SUPPORTED)} and recurrent subgraphs")
        else:
            _finite(name, node)
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise NIRError(f"edge ({a!r}, {b!r}) names node {end!r}, which the graph does "
                               f"not have")
        if a == b:
            raise NIRError(f"node {a!r} has an edge to itself; recurrence must go through a "
                           f"Linear/Affine node (neuron -> Linear -> neuron)")
    succ = {k: [] for k in nodes}
    pred = {k: [] for k in nodes}
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
    # a Linear/Affine whose only input and output is one neuron: that neuron's recurrent kernel
    for name, node in list(nodes.items()):
        if type(node).__name__ in ("Linear", "Affine") and len(pred[name]) == 1 \
                and pred[name] == succ[name] and type(nodes[pred[name][0]]).__name__ in NEURONS:
            owner = pred[name][0]
            if owner in recurrent:
                raise NIRError(f"node {owner!r} has two recurrent kernels ({recurrent[owner][0]!r}"
                               f" and {name!r})")
            recurrent[owner] = (name, node)
            del nodes[name]
            succ[owner].remove(name)
            pred[owner].remove(name)
            del succ[name], pred[name]
    _acyclic(nodes, succ, pred)
    ins = [k for k, n in nodes.items() if isinstance(n, nir.Input)]
    outs = [k for k, n in nodes.items() if isinstance(n, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise NIRError(f"the graph must have one Input and one Output node, got inputs {ins} and "
                       f"outputs {outs}")
    order, cur = [ins[0]], ins[0]
    while cur != outs[0]:
        nxt = succ[cur]
        if len(nxt) != 1:
            raise NIRError(f"node {cur!r} feeds {nxt or 'nothing'}: bss2_backend.nir loads chains "
                           f"Input -> ... -> Output without branches")
        cur = nxt[0]
        if cur in order:
            loop = order[order.index(cur):] + [cur]
            raise NIRError(f"cycle {' -> '.join(loop)}: the only cycle allowed is a neuron's "
                           f"recurrent Linear/Affine edge back to itself")
        if len(pred[cur]) != 1:
            raise NIRError(f"node {cur!r} has {len(pred[cur])} inputs {pred[cur]}: bss2_backend.nir "
                           f"loads chains without merges")
        order.append(cur)
    stray = sorted(set(nodes) - set(order))
    if stray:
        raise NIRError(f"nodes {stray} are not on the path from Input {ins[0]!r} to Output "
                       f"{outs[0]!r}")
    shape = _shape_of(ins[0], nodes[ins[0]].input_type.get("input"), "Input input_type")
    stages = []
    for name in order[1:-1]:
        node = nodes[name]
        kind = type(node).__name__
        if kind in NEURONS:
            params = _layer_params(name, node, kind, shape)
            rec = None
            if name in recurrent:
                rec_name, kernel = recurrent[name]
                w = np.asarray(kernel.weight, dtype=np.float64)
                n = math.prod(shape)
                if len(shape) != 1 or w.shape != (n, n):
                    raise NIRError(f"node {rec_name!r}: a recurrent kernel of {name!r} (shape "
                                   f"{shape}) must be [{n}, {n}], got {w.shape}")
                bias = np.asarray(kernel.bias, dtype=np.float64).reshape(-1) \
                    if type(kernel).__name__ == "Affine" else None
                if bias is not None and bias.shape != (n,):
                    raise NIRError(f"node {rec_name!r}: bias has shape {bias.shape}, want ({n},)")
                rec = (rec_name, w, bias)
            stages.append(Stage(name, kind, node, shape, shape, params, rec))
        else:
            out = _stateless_shape(name, kind, node, shape)
            stages.append(Stage(name, kind, node, shape, out, {}, None))
            shape = out
    if not stages:
        raise NIRError("the graph has no node between its Input and Output")
    return stages
