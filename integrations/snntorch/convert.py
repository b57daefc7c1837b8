"""convert(model, chip=None) and patch(chip=None): the two ways onto the backend besides forward_pass."""
import weakref

import snntorch
from torch import nn

from bss2_backend.dynamics import BACKENDS
from bss2_backend.validation import check_choice

from . import chip_mode, fused
from . import fuse as time_fusion
from .neurons import BACKEND, NEURON_KINDS, STOCK, backend_class, supported_kind

NAMES = {kind: name for name, kind in NEURON_KINDS.items()}

# what chip mode runs on the host between chip layers (they act on spikes and carry no weights)
CHIP_PASSTHROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


def neurons_of(model):
    """(qualified name, module) of every snntorch neuron in model; raises for unsupported ones."""
    return [(name or type(m).__name__, m) for name, m in model.named_modules()
            if supported_kind(m) is not None]


def sequence_of(model):
    """The modules of an nn.Sequential-style model in execution order (nested Sequentials are
    flattened), with their qualified names."""
    out = []

    def walk(seq, prefix):
        for name, m in seq.named_children():
            full = f"{prefix}{name}"
            if type(m) is nn.Sequential:
                walk(m, full + ".")
            else:
                out.append((full, m))
    walk(model, "")
    return out


def convert(model, chip=None, backend="auto", fuse=True):
    """Swap the snntorch neurons of `model` for the backend's, in place, and return `model`.

    Args:
        model: an nn.Module containing snntorch neurons (Leaky, Synaptic, RLeaky, RSynaptic,
            Lapicque, Alpha), of any structure: an nn.Sequential, a class with the layers as
            attributes, nested modules. Parameters, buffers and state are kept (the modules change
            class), and so is the way the model is called.
        chip: None (ideal mode: snntorch's own semantics on the fused kernels) or a
            bss2_backend.Chip (chip mode, see chip_mode: every nn.Linear that feeds a neuron
            becomes the chip's synapse array and the neuron the chip's; an nn.Sequential is placed
            now, any other model when its data flow shows which Linear feeds which neuron, at its
            first step).
        backend: "auto" | "torch" | "triton" for the neuron ops (auto: Triton on CUDA tensors).
        fuse: a model that is not an nn.Sequential gets its forward fused in time (fuse.py): a
            forward that loops over the steps runs each layer once over all of them, with the
            same results; what cannot be fused runs step by step with a one-time notice saying
            why. False keeps the forward as written. (An nn.Sequential is one step per call;
            forward_pass is its fused form.)

    A convert that fails leaves the model, its earlier placements and the chip as they were; a
    model converted again keeps its circuits; revert() frees them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("backend", backend, BACKENDS)
    if not isinstance(fuse, bool):
        raise TypeError(f"fuse must be True or False, got {fuse!r}")
    if chip is not None:
        from bss2_backend.chip import Chip
        if not isinstance(chip, Chip):
            raise TypeError(f"chip must be a bss2_backend.Chip or None, got {type(chip).__name__}")
    neurons = neurons_of(model)
    if not neurons:
        raise ValueError(f"model ({type(model).__name__}) contains no snntorch neurons; convert "
                         f"swaps {', '.join(STOCK)}")
    # everything that can be refused is refused before anything changes
    layers = []
    if chip is not None:
        for name, m in neurons:
            chip_mode.map_neuron(m, name, chip)
        if isinstance(model, nn.Sequential):
            layers = _chip_layers(model, chip)
    linears = _synapse_candidates(model) if chip is not None else []
    before = [(m, m.__class__, {k: m.__dict__[k] for k in ATTRS if k in m.__dict__})
              for _, m in neurons] + \
        [(m, m.__class__, {k: m.__dict__[k] for k in ATTRS if k in m.__dict__})
         for _, m in _chip_linears(model)]
    released = _release(model)
    placed = []
    try:
        for _, lin in _chip_linears(model):          # a chip-mode model converted back to ideal
            _unsynapse(lin)
        for _, m in neurons:
            m.__class__ = backend_class(m)
            for attr in ATTRS:
                m.__dict__.pop(attr, None)
            m._bss2_backend = backend
            m._bss2_binding = None
            # the fused op's plan is decided here, so torch.compile never traces its deciding
            for multistep in (False, True):
                fused.plan(m, None, multistep)
        if chip is not None:
            index = chip.network_index(model)
            refs = [weakref.ref(lin) for _, lin in linears]
            for name, lin in linears:
                lin.__class__ = chip_mode.ChipSynapses
                lin._bss2_where = name
            for name, m in neurons:
                m._bss2_chip, m._bss2_where = (chip, index), name
                m._bss2_kind, m._bss2_candidates = supported_kind(m), refs
            for name, neuron, _, linear in layers:
                neuron._bss2_binding = chip_mode.bind(neuron, linear, name, chip, index)
                chip_mode.pair(neuron, linear)
                placed.append(neuron._bss2_binding)
            if layers:
                chip_mode.chip_warnings([(n, m) for n, m, _, _ in layers],
                                        [(ln, lin) for _, _, ln, lin in layers])
    except BaseException:
        for binding in placed:
            binding.chip.release(binding.placement.name)
        for m, cls, attrs in before:
            m.__class__ = cls
            for k in ATTRS:
                m.__dict__.pop(k, None)
            m.__dict__.update(attrs)
        for _, lin in linears:
            if type(lin) is chip_mode.ChipSynapses:
                _unsynapse(lin)
        for owner_chip, placement, owner in released:
            owner_chip.restore(placement, owner)
        raise
    time_fusion.uninstall(model)
    if fuse and not isinstance(model, nn.Sequential):
        time_fusion.install(model)
    return model


# what convert sets on a neuron or a Linear (and revert removes)
ATTRS = ("_bss2_binding", "_bss2_backend", "_bss2_pending_chip", "_bss2_chip", "_bss2_where",
         "_bss2_kind", "_bss2_candidates", "_bss2_source", "_bss2_run", "_bss2_feeds",
         "_bss2_last", "_bss2_batch")


def _synapse_candidates(model):
    """(name, module) of every plain nn.Linear of the model outside the snntorch neurons (an
    RLeaky's own recurrent Linear stays the neuron's) and of those a chip-mode convert made."""
    inside = {id(sub) for _, m in neurons_of(model) for sub in m.modules() if sub is not m}
    return [(name, m) for name, m in model.named_modules()
            if type(m) in (nn.Linear, chip_mode.ChipSynapses) and id(m) not in inside]


def _chip_linears(model):
    return [(name, m) for name, m in model.named_modules() if type(m) is chip_mode.ChipSynapses]


def _unsynapse(linear):
    linear.__class__ = nn.Linear
    for attr in ATTRS:
        linear.__dict__.pop(attr, None)


def _release(model):
    """Free the circuits of the model's chip-mode layers; returns what was freed, to restore."""
    freed = []
    for _, m in neurons_of(model):
        binding = m.__dict__.get("_bss2_binding")
        if binding is not None and binding.chip.placements.get(binding.placement.name) is not None:
            binding.chip.release(binding.placement.name)
            freed.append((binding.chip, binding.placement, m))
    return freed


def _chip_layers(model, chip):
    """[(name, neuron, linear name, linear)] of an nn.Sequential in chip mode, checked: every neuron follows
    its nn.Linear (the synapse array that feeds it), maps onto the chip (chip_mode.map_neuron),
    and nothing between layers lacks a counterpart on the chip."""
    seq = sequence_of(model)
    layers = []
    for i, (name, m) in enumerate(seq):
        kind = supported_kind(m)
        if isinstance(m, nn.Linear):
            nxt = seq[i + 1][1] if i + 1 < len(seq) else None
            if nxt is None or supported_kind(nxt) is None:
                raise ValueError(f"chip mode: nn.Linear {name!r} must be followed by an snntorch neuron "
                                 f"(the chip's synapse array feeds its neurons)")
        elif kind is not None:
            prev = seq[i - 1][1] if i > 0 else None
            if not isinstance(prev, nn.Linear):
                raise ValueError(f"chip mode: neuron {name!r} must follow an nn.Linear (its synapse "
                                 f"array on the chip), got {type(prev).__name__ if prev is not None else 'nothing'}")
            chip_mode.map_neuron(m, name, chip)
            layers.append((name, m, seq[i - 1][0], prev))
        elif not isinstance(m, CHIP_PASSTHROUGH):
            raise ValueError(f"chip mode: {type(m).__name__} {name!r} has no counterpart on the chip; "
                             f"supported: nn.Linear -> Leaky/Synaptic/RLeaky/RSynaptic layers with "
                             f"nn.Flatten, nn.Dropout or nn.Identity between them")
    return layers


# the patches in force, oldest first: snntorch's names always show the newest one's classes, and
# the originals once none is left, whatever order they are undone in
_ACTIVE = []


class Patch:
    """Active replacement of snntorch's neuron classes; undo with .undo(), by calling it, or by
    leaving its `with` block. Patches nest and may be undone in any order."""

    def __init__(self, chip=None):
        if chip is not None:
            from bss2_backend.chip import Chip
            if not isinstance(chip, Chip):
                raise TypeError(f"chip must be a bss2_backend.Chip or None, got {type(chip).__name__}")
        self.chip = chip
        self.classes = {name: cls if chip is None else _pending_class(cls, chip)
                        for name, cls in BACKEND.items()}
        _ACTIVE.append(self)
        _apply()
        self.active = True

    def undo(self):
        if self.active:
            _ACTIVE.remove(self)
            _apply()
            self.active = False

    __call__ = undo

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()
        return False


def _apply():
    classes = _ACTIVE[-1].classes if _ACTIVE else STOCK
    for name in STOCK:
        setattr(snntorch, name, classes[name])


def _pending_class(cls, chip):
    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        self._bss2_pending_chip = chip
    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                        "__doc__": cls.__doc__})


def patch(chip=None):
    """Make snntorch.Leaky, Synaptic, RLeaky, RSynaptic, Lapicque and Alpha the backend's classes,
    so unmodified model code builds on the backend. Use as `with patch(): ...` or
    `undo = patch(); ...; undo()`. With a chip, models built meanwhile are placed on it the first
    time forward_pass runs them."""
    return Patch(chip)


def pending_chip(model):
    """The chip a model built under patch(chip) waits for, or None."""
    chips = {id(m._bss2_pending_chip): m._bss2_pending_chip for m in model.modules()
             if getattr(m, "_bss2_pending_chip", None) is not None}
    if len(chips) > 1:
        raise ValueError("the model's neurons were built under patch() with different chips")
    return next(iter(chips.values()), None)


def is_chip_bound(model):
    """Whether the model was converted onto a chip."""
    return any(m.__dict__.get("_bss2_chip") is not None for m in model.modules())


def revert(model):
    """Undo convert: the model's neurons become snntorch's own classes again, its chip-mode
    Linears plain nn.Linear, and the circuits of its chip-mode layers are freed."""
    _release(model)
    time_fusion.uninstall(model)
    for _, lin in _chip_linears(model):
        _unsynapse(lin)
    for _, m in neurons_of(model):
        m.__class__ = STOCK[NAMES[supported_kind(m)]]
        for attr in ATTRS:
            m.__dict__.pop(attr, None)
    return model
