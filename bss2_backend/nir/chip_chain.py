"""A NIR chain in chip mode: its snntorch form placed on a chip (network.py's docstring).

What the chip cannot realise is an error naming the node and field, never an approximation:
biases, subtractive reset, Conv2d/pooling/Scale, IF neurons (no leak), a neuron not fed by a
Linear node, per-neuron time constants or thresholds (the chip is calibrated per layer), a reset
potential other than v_leak or the chip's calibrated one, recurrence on a population of chips;
too many neurons for a strict chip is the chip's PlacementError. All of these run in ideal mode.
"""
from collections import OrderedDict

import numpy as np
import snntorch as snn
import torch
from torch import nn

from ..population import Chips
from .graph import NIRError
from .network import SPIKING, _key, step_factors

IDEAL_ONLY = ("Conv2d", "AvgPool2d", "SumPool2d")


def _one(name, kind, p, field):
    """The single value of a per-layer parameter, or NIRError for per-neuron values."""
    values = np.unique(p[field])
    if values.size != 1:
        raise NIRError(f"node {name!r} ({kind}): chip mode needs one {field} per layer (the chip is "
                       f"calibrated per layer), got {values.size} different values; per-neuron "
                       f"values run in ideal mode (chip=None)")
    return float(values[0])


def chip_reset(chip):
    """The chip's calibrated reset relative to leak and threshold: (reset - leak) / (thr - leak)."""
    cal = chip.calibration
    return (cal.reset_lsb - cal.leak_lsb) / cal.unit_lsb


def _neuron(st, dt, reset, chip, linear):
    name, kind, p = st.name, st.kind, st.params
    if kind == "IF":
        raise NIRError(f"node {name!r} (IF): a neuron without leak has no counterpart on the chip "
                       f"(its membranes always leak); it runs in ideal mode (chip=None)")
    if reset == "subtract" and kind in SPIKING:
        raise NIRError(f"node {name!r}: reset='subtract' is not what the chip does (it resets the "
                       f"membrane to v_reset); load with reset='hard', or in ideal mode")
    if linear is None:
        raise NIRError(f"node {name!r} ({kind}): on the chip a neuron's input is a synapse array, "
                       f"so it must follow a Linear node (chip mode)")
    alpha, beta, gain = step_factors(kind, p, dt, name)
    for field in ("tau", "tau_mem", "tau_syn", "v_leak", "v_threshold", "v_reset"):
        if field in p:
            _one(name, kind, p, field)
    beta = float(np.unique(beta)[0])
    alpha = None if alpha is None else float(np.unique(alpha)[0])
    leak = float(p["v_leak"].flat[0])
    threshold = 1.0
    if kind in SPIKING:
        threshold = float(p["v_threshold"].flat[0]) - leak
        if threshold <= 0:
            raise NIRError(f"node {name!r}: v_threshold must lie above v_leak on the chip, got "
                           f"v_threshold - v_leak = {threshold:g}")
        rel = (float(p["v_reset"].flat[0]) - leak) / threshold
        if not (abs(rel) < 1e-9 or abs(rel - chip_reset(chip)) < 1e-6):
            raise NIRError(f"node {name!r}: v_reset is {rel:.4g} of the way from v_leak to "
                           f"v_threshold; the chip resets to v_leak's level (snntorch's 'zero') "
                           f"or to its calibrated reset ({chip_reset(chip):.4g}); other values "
                           f"run in ideal mode")
    # the node's input gain per neuron goes into the synapse array's rows (the chip's weights)
    g = torch.as_tensor(gain.reshape(-1), dtype=torch.float32)
    with torch.no_grad():
        linear.weight.mul_(g[:, None])
    reset_mechanism = "zero" if kind in SPIKING else "none"
    common = dict(threshold=threshold, init_hidden=True, output=True,
                  reset_mechanism=reset_mechanism)
    if st.recurrent is None:
        if alpha is None:
            return snn.Leaky(beta=beta, **common), leak
        return snn.Synaptic(alpha=alpha, beta=beta, **common), leak
    rec_name, w, bias = st.recurrent
    if bias is not None and np.any(bias != 0):
        raise NIRError(f"node {rec_name!r} (Affine): the chip has no biases; a recurrent kernel "
                       f"with a bias runs in ideal mode (chip=None)")
    if isinstance(chip, Chips):
        raise NIRError(f"node {name!r}: recurrent layers on a population of chips are not "
                       f"supported yet; load onto one Chip")
    n = w.shape[0]
    kw = dict(linear_features=n, all_to_all=True, **common)
    module = snn.RLeaky(beta=beta, **kw) if alpha is None else \
        snn.RSynaptic(alpha=alpha, beta=beta, **kw)
    module.recurrent.register_parameter("bias", None)
    with torch.no_grad():
        module.recurrent.weight.copy_(torch.as_tensor(w, dtype=torch.float32) * g[:, None])
    return module, leak


def build_chip_chain(stages, dt, reset, chip):
    """(nn.Sequential placed on `chip`, membrane offset v_leak of the last node)."""
    from ..integrations.snntorch import convert
    modules, linear, offset = OrderedDict(), None, 0.0
    for st in stages:
        name, kind = st.name, st.kind
        if kind in IDEAL_ONLY:
            raise NIRError(f"node {name!r} ({kind}) has no counterpart on the chip; it runs in "
                           f"ideal mode (chip=None)")
        if kind == "Scale":
            if not np.all(np.asarray(st.node.scale) == 1):
                raise NIRError(f"node {name!r} (Scale): the chip cannot scale signals between "
                               f"layers; it runs in ideal mode (chip=None)")
            continue
        if kind in ("Linear", "Affine"):
            if kind == "Affine" and np.any(np.asarray(st.node.bias) != 0):
                raise NIRError(f"node {name!r} (Affine): the chip has no biases (bias is non-zero); "
                               f"it runs exactly in ideal mode (chip=None)")
            w = np.asarray(st.node.weight, dtype=np.float32)
            linear = nn.Linear(w.shape[1], w.shape[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(w))
            modules[_key(name)] = linear
            continue
        if kind == "Flatten":
            start, end = int(st.node.start_dim), int(st.node.end_dim)
            modules[_key(name)] = nn.Flatten(start + 1 if start >= 0 else start,
                                             end + 1 if end >= 0 else end)
            linear = None
            continue
        prev = next(reversed(modules.values()), None)
        neuron, offset = _neuron(st, dt, reset, chip, prev if prev is linear else None)
        modules[_key(name)] = neuron
        linear = None
    if not modules or not isinstance(next(reversed(modules.values())), snn.SpikingNeuron):
        raise NIRError("chip mode: the graph must end with a neuron node (the chip records "
                       "neurons)")
    seq = nn.Sequential(modules)
    convert(seq, chip=chip)
    return seq, offset
