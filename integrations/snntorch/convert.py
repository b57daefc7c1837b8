"""convert(model, chip=None) and patch(chip=None): the two ways onto the backend besides forward_pass."""
import snntorch
from torch import nn

from bss2_backend.dynamics import BACKENDS
from bss2_backend.validation import check_choice

from . import chip_mode, fused
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


def convert(model, chip=None, backend="auto"):
    """Swap the snntorch neurons of `model` for the backend's, in place, and return `model`.

    Args:
        model: an nn.Module containing snntorch neurons (Leaky, Synaptic, RLeaky, RSynaptic,
            Lapicque, Alpha); parameters, buffers and state are kept (the modules change class).
        chip: None (ideal mode: snntorch's own semantics on the fused kernels) or a
            bss2_backend.Chip (chip mode: every nn.Linear -> neuron pair is placed on the chip and
            runs its dynamics through forward_pass; see chip_mode for the parameter mapping).
        backend: "auto" | "torch" | "triton" for the neuron ops (auto: Triton on CUDA tensors).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("backend", backend, BACKENDS)
    if chip is not None:
        from bss2_backend.chip import Chip
        if not isinstance(chip, Chip):
            raise TypeError(f"chip must be a bss2_backend.Chip or None, got {type(chip).__name__}")
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"chip mode needs an nn.Sequential model (Linear -> neuron layers, run "
                            f"by forward_pass); got {type(model).__name__}")
    neurons = neurons_of(model)
    if not neurons:
        raise ValueError(f"model ({type(model).__name__}) contains no snntorch neurons; convert "
                         f"swaps {', '.join(STOCK)}")
    # everything that can be refused is refused before anything changes: a failed convert leaves
    # the model, its earlier placements and the chip as they were
    layers = _chip_layers(model, chip) if chip is not None else []
    before = [(m, m.__class__, {k: m.__dict__[k] for k in ATTRS if k in m.__dict__})
              for _, m in neurons]
    released = _release(model)
    placed = []
    try:
        for _, m in neurons:
            m.__class__ = backend_class(m)
            m._bss2_backend = backend
            m._bss2_binding = None
            m.__dict__.pop("_bss2_pending_chip", None)
            # the fused op's plan is decided here, so torch.compile never traces its deciding
            for multistep in (False, True):
                fused.plan(m, None, multistep)
        if chip is not None:
            index = chip.network_index(model)
            for name, neuron, _, linear in layers:
                neuron._bss2_binding = chip_mode.bind(neuron, linear, name, chip, index)
                placed.append(neuron._bss2_binding)
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
        for owner_chip, placement, owner in released:
            owner_chip.restore(placement, owner)
        raise
    return model


# what convert sets on a neuron (and revert removes)
ATTRS = ("_bss2_binding", "_bss2_backend", "_bss2_pending_chip")


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
    return any(getattr(m, "_bss2_binding", None) is not None for m in model.modules())


def revert(model):
    """Undo convert: the model's neurons become snntorch's own classes again, and the circuits of
    its chip-mode layers are freed."""
    _release(model)
    for _, m in neurons_of(model):
        m.__class__ = STOCK[NAMES[supported_kind(m)]]
        for attr in ATTRS:
            m.__dict__.pop(attr, None)
    return model
