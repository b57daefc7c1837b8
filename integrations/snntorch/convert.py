"""convert(model, chip=None) and patch(chip=None): the two ways onto the backend besides forward_pass."""
import snntorch
from torch import nn

from bss2_backend.dynamics import BACKENDS
from bss2_backend.validation import check_choice

from . import chip_mode
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
        # refused before anything changes: the model is never left half converted by these
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
    for _, m in neurons:
        m.__class__ = backend_class(m)
        m._bss2_backend = backend
        m._bss2_binding = None
        m.__dict__.pop("_bss2_pending_chip", None)
    if chip is not None:
        _bind(model, chip)
    return model


def _bind(model, chip):
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"chip mode needs an nn.Sequential model (Linear -> neuron layers, run by "
                        f"forward_pass); got {type(model).__name__}")
    seq = sequence_of(model)
    bindings, linears = [], []
    for i, (name, m) in enumerate(seq):
        kind = supported_kind(m)
        if isinstance(m, nn.Linear):
            nxt = seq[i + 1][1] if i + 1 < len(seq) else None
            if nxt is None or supported_kind(nxt) is None:
                raise ValueError(f"chip mode: nn.Linear {name!r} must be followed by an snntorch neuron "
                                 f"(the chip's synapse array feeds its neurons)")
            linears.append((name, m))
        elif kind is not None:
            prev = seq[i - 1][1] if i > 0 else None
            if not isinstance(prev, nn.Linear):
                raise ValueError(f"chip mode: neuron {name!r} must follow an nn.Linear (its synapse "
                                 f"array on the chip), got {type(prev).__name__ if prev is not None else 'nothing'}")
            m._bss2_binding = chip_mode.bind(m, prev, name, chip)
            bindings.append((name, m))
        elif not isinstance(m, CHIP_PASSTHROUGH):
            raise ValueError(f"chip mode: {type(m).__name__} {name!r} has no counterpart on the chip; "
                             f"supported: nn.Linear -> Leaky/Synaptic/RLeaky/RSynaptic layers with "
                             f"nn.Flatten, nn.Dropout or nn.Identity between them")
    chip_mode.chip_warnings(bindings, linears)


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
    """Undo convert: the model's neurons become snntorch's own classes again (chip bindings are dropped;
    placements stay on the chip)."""
    for _, m in neurons_of(model):
        m.__class__ = STOCK[NAMES[supported_kind(m)]]
        for attr in ("_bss2_binding", "_bss2_backend", "_bss2_pending_chip"):
            m.__dict__.pop(attr, None)
    return model

