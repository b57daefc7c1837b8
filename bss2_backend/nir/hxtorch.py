"""What hxtorch's NIR import (hxtorch.spiking.utils.from_nir, snapshot 2026-03) needs of a graph.

Read from its code: it maps Input, Linear (a Synapse: weights x ConversionConfig.weight_scale,
default 64, clamped to the 6-bit range), CubaLIF and CubaLI only (no Affine: no biases), one
Input and one Output; it requires every neuron parameter to be the same for all neurons of a layer
(tau_mem, tau_syn, v_leak, v_reset, v_threshold, r for CubaLIF; tau_mem, tau_syn, v_leak for
CubaLI) and reads it at index 0 with the layer size from input_type["input"][0]; it multiplies
times by 1e-3 (ms -> s) and runs steps of dt = 1e-6 s of chip time, so the graph's times are ms of
chip time (time_base "hxtorch"); it runs the edges in their listed order, feeding each node the
output of the edge's source, so edges must follow the chain and nothing may recur. It ignores
w_in (a spike moves the synaptic current by the weight, as bss2_backend writes it with
w_in = tau_syn / dt) and sets the membrane capacitance from r (r = 1: the chip's, as written).

hxtorch reads traces in units of 1/trace_scale LSB (default 1/50); bss2_backend's model unit is
MODEL_UNIT_LSB (45) LSB, so ConversionConfig(trace_scale=1/45, weight_scale=<the chip's
weight_scale, 64 by default>) reads an exported graph as this backend ran it; the graph's
metadata records both. Its hardware leak/threshold targets are its own (leak 80, threshold 150
LSB); a real chip calibrated to bss2_backend's targets (leak 80, reset 70, threshold 125) matches
the emulated one.
"""
import numpy as np

from .. import constants as C
from .graph import NIRError

HXTORCH_NODES = ("Input", "Output", "Linear", "CubaLIF", "CubaLI")
HOMOGENEOUS = {"CubaLIF": ("tau_mem", "tau_syn", "v_leak", "v_reset", "v_threshold", "r"),
               "CubaLI": ("tau_mem", "tau_syn", "v_leak")}
MS = 1e-3                     # hxtorch: graph times are ms
HXTORCH_DT_S = C.DT_US * 1e-6


def check(graph):
    """Raise NIRError naming the node and field unless hxtorch's from_nir reads `graph` as meant
    (module docstring); returns a dict of the ConversionConfig fields to use."""
    nodes = graph.nodes
    for name, node in nodes.items():
        kind = type(node).__name__
        if kind == "NIRGraph":
            raise NIRError(f"node {name!r} is a recurrent subgraph; hxtorch's from_nir reads no "
                           f"recurrence (nor subgraphs)")
        if kind not in HXTORCH_NODES:
            raise NIRError(f"node {name!r} is a {kind}; hxtorch's from_nir reads only "
                           f"{', '.join(HXTORCH_NODES)}")
    kinds = [type(n).__name__ for n in nodes.values()]
    if kinds.count("Input") != 1 or kinds.count("Output") != 1:
        raise NIRError("hxtorch's from_nir needs exactly one Input and one Output node")
    done = {next(k for k, n in nodes.items() if type(n).__name__ == "Input")}
    for a, b in graph.edges:
        if a not in done:
            raise NIRError(f"edge ({a!r}, {b!r}) comes before {a!r} is computed: hxtorch runs the "
                           f"edges in their listed order (recurrence is not read)")
        if b in done:
            raise NIRError(f"edge ({a!r}, {b!r}) feeds {b!r} a second time: hxtorch reads chains")
        done.add(b)
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    scale = float(meta.get("hxtorch_weight_scale", C.DEFAULT_WEIGHT_SCALE))
    for name, node in nodes.items():
        kind = type(node).__name__
        if kind == "Linear":
            peak = float(np.abs(np.asarray(node.weight, dtype=np.float64)).max(initial=0.0))
            if peak * scale > C.WEIGHT_MAX + 1e-6:
                raise NIRError(f"node {name!r}: weight up to {peak:.4g} x weight_scale {scale:g} "
                               f"exceeds the chip's +-{C.WEIGHT_MAX}: hxtorch would clip it")
        if kind not in HOMOGENEOUS:
            continue
        size = np.asarray(node.input_type.get("input")).reshape(-1)
        if size.size != 1 or size[0] < 1:
            raise NIRError(f"node {name!r}: input_type['input'] must be the layer size [N] "
                           f"(hxtorch reads it at index 0), got {node.input_type.get('input')}")
        for field in HOMOGENEOUS[kind]:
            value = np.asarray(getattr(node, field), dtype=np.float64)
            if value.ndim != 1 or value.size != size[0]:
                raise NIRError(f"node {name!r}: {field} must be an array of the layer's {size[0]} "
                               f"neurons (hxtorch indexes it), got shape {value.shape}")
            if np.unique(value).size != 1:
                raise NIRError(f"node {name!r}: {field} differs between neurons; hxtorch requires "
                               f"one value per layer")
        for field, (lo, hi) in (("tau_mem", C.TAU_MEM_RANGE_US), ("tau_syn", C.TAU_SYN_RANGE_US)):
            us = float(np.asarray(getattr(node, field)).reshape(-1)[0]) * MS / 1e-6
            if not lo <= us <= hi:
                raise NIRError(f"node {name!r}: {field} reads as {us:.4g} us of chip time in "
                               f"hxtorch (graph ms x 1e-3 s), outside the chip's calibratable "
                               f"{lo:g}..{hi:g} us: write the graph with time_base='hxtorch'")
    return {"dt": HXTORCH_DT_S, "weight_scale": scale,
            "trace_scale": float(meta.get("hxtorch_trace_scale", 1.0 / C.MODEL_UNIT_LSB))}
