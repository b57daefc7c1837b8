"""NIR in and out: networks of other frameworks on the emulated chip, trained networks to others.

    model = bss2_backend.nir.load("model.nir")                   # ideal mode: the graph's equations
    model = bss2_backend.nir.load("model.nir", chip=Chip(seed=1))  # in the loop on an emulated chip
    out = model(x)                                                 # x [T, B, ...], time-major
    bss2_backend.nir.save(model, "copy.nir")                       # also a bss2 train Network

Modules: graph (reading and checking a graph), timebase (what a graph's times count in),
network (ideal-mode modules and the loaded model), chip_chain (chip mode), export (save),
hxtorch (the preconditions of hxtorch's NIR import). Needs the `nir` extra (pip install nir).
"""
from .graph import NIRError, SUPPORTED, chain, read
from .network import RESETS, NIRNetwork
from .timebase import PRESETS, resolve

__all__ = ["load", "save", "check_hxtorch_compatible", "NIRError", "NIRNetwork", "PRESETS",
           "SUPPORTED", "RESETS"]


def load(path_or_graph, chip=None, dt=None, time_base=None, reset=None):
    """A NIR graph as a module that runs on the backend.

    Args:
        path_or_graph: a NIR file (HDF5, as nir.write writes it) or a nir.NIRGraph.
        chip: None (ideal mode: the graph's equations, exact for everything NIR describes), a
            bss2_backend.Chip (in the loop on that emulated chip) or Chips (a population).
        time_base: "nir" (ms; NIR's documents), "snntorch" (s, dt 1e-4: its exporter) or
            "hxtorch" (ms of chip time); default: the one a bss2_backend writer recorded in the
            graph's metadata, else "nir". See bss2_backend.nir.timebase.
        dt: the step in the graph's time unit (> 0); default the time base's (the graph's own
            metadata dt when the time base came from there). One step is one chip step.
        reset: "hard" (NIR: to v_reset at the spike's step) or "subtract" (snntorch's default
            reset, which its exporter writes as v_reset = 0; ideal mode only); default: recorded
            in the metadata by a bss2_backend writer, else "hard".

    Returns a NIRNetwork: forward(x [T, B, *input shape]) -> the Output's input [T, B, ...]
    ([C, T, B, ...] on a population). Raises NIRError (a ValueError) naming the node and field
    for what cannot be loaded, or cannot run on the chip in chip mode.
    """
    graph = read(path_or_graph)
    meta = dict(graph.metadata or {}) if isinstance(graph.metadata, dict) else {}
    meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in meta.items()}
    recorded = time_base is None and meta.get("time_base") in PRESETS
    if time_base is None:
        time_base = meta["time_base"] if recorded else "nir"
    if dt is None and recorded and "dt" in meta:
        dt = float(meta["dt"])
    base, dt = resolve(time_base, dt)
    if reset is None:
        reset = meta.get("reset") if meta.get("reset") in RESETS else "hard"
    if reset not in RESETS:
        raise ValueError(f"reset={reset!r} is not supported; choose one of {list(RESETS)}")
    if chip is not None:
        from ..chip import Chip
        if not isinstance(chip, Chip):
            raise TypeError(f"chip must be None, a bss2_backend.Chip or Chips, got "
                            f"{type(chip).__name__}")
    stages = chain(graph)
    return NIRNetwork(stages, base.name, dt, reset, chip, meta)


def save(model, path, *, time_base="nir", dt=None, per_neuron=False):
    """Write `model` as a NIR graph (HDF5) others read; returns the nir.NIRGraph written.

    model: a NIRNetwork (load's), a bss2 train Network, or an nn.Sequential of nn.Linear,
    nn.Flatten and snntorch Leaky/Synaptic/RLeaky/RSynaptic neurons, in ideal or chip mode.
    A chip-mode network is written as the chip realises it: weights = its 6-bit codes / weight
    scale (model units), the nominal neuron parameters (v_leak 0, v_threshold 1, the calibrated
    v_reset), r = 1 and w_in = tau_syn / dt (a spike moves the synaptic current by the weight).
    time_base, dt: the convention the graph's times are written in (see load); dt is recorded in
    the metadata. per_neuron: hxtorch's and snntorch's readers take one value per layer, so
    per-neuron values are refused unless per_neuron=True, which writes them (in chip mode: the
    chip's drawn parameters of every neuron instead of the nominal ones).
    """
    from .export import save as _save
    return _save(model, path, time_base=time_base, dt=dt, per_neuron=per_neuron)


def check_hxtorch_compatible(graph):
    """Raise NIRError naming the node and field unless hxtorch's from_nir would read `graph` (a
    nir.NIRGraph or a path) as this backend means it; see bss2_backend.nir.hxtorch."""
    from .hxtorch import check
    return check(read(graph))
