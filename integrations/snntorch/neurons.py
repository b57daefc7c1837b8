"""Drop-in subclasses of snntorch's neurons that run on the backend.

Each class has the constructor, forward signature, returns, parameters, buffers and state handling
of its snntorch parent (it is one: isinstance, utils.reset, SpikingNeuron.instances and state_dict
keys are unchanged). In ideal mode a step runs the fused neuron op (the same arithmetic as
snntorch, in the same order) on CUDA tensors or with backend="torch"/"triton" (with "auto", a single
step on the CPU runs snntorch's own code: nothing to fuse there); what the op does not cover
(inhibition, state_quant, custom spike functions, dtypes other than float32, Alpha) runs
snntorch's own code, with a one-time notice. In chip mode (after convert(model, chip=...)) a step
is one step of the chip (chip_mode.step), and forward_pass runs a whole sequence at once.
"""
import snntorch as snn
import torch

from .notices import notice_once

STOCK = {"Leaky": snn.Leaky, "Synaptic": snn.Synaptic, "RLeaky": snn.RLeaky,
         "RSynaptic": snn.RSynaptic, "Lapicque": snn.Lapicque, "Alpha": snn.Alpha}
NEURON_KINDS = {"Leaky": "leaky", "Synaptic": "synaptic", "RLeaky": "rleaky", "RSynaptic": "rsynaptic",
         "Lapicque": "lapicque", "Alpha": "alpha"}
SUPPORTED = tuple(STOCK)


def supported_kind(module):
    """'leaky' | 'synaptic' | 'rleaky' | 'rsynaptic' | 'lapicque' | 'alpha' for a supported snntorch
    neuron (stock or backend), None for a module that is no snntorch neuron; raises for the others."""
    for name in ("RSynaptic", "RLeaky", "Synaptic", "Lapicque", "Alpha", "Leaky"):
        if isinstance(module, STOCK[name]):
            # the classes patch(chip) builds only add an __init__; any other forward is user code
            if type(module).forward not in (STOCK[name].forward, BACKEND[name].forward):
                raise TypeError(f"{type(module).__name__} subclasses snntorch.{name} with its own code, "
                                f"which the bss2_backend snntorch integration cannot take over; "
                                f"supported neurons: {', '.join(SUPPORTED)}")
            return NEURON_KINDS[name]
    if isinstance(module, snn.SpikingNeuron):
        raise TypeError(f"{type(module).__name__} is not supported by the bss2_backend snntorch "
                        f"integration; supported neurons: {', '.join(SUPPORTED)}")
    return None


class _BackendType(type):
    """The backend classes' metaclass: isinstance(x, backend.Leaky) holds for every snntorch.Leaky,
    also one built before patch(). While a patch is active snntorch.Leaky *is* the backend class,
    and snntorch's own helpers (utils.reset, backprop's BPTT/TBPTT/RTRL, _final_layer_check) test
    isinstance against that name."""

    def __instancecheck__(cls, obj):
        stock = getattr(cls, "_bss2_stock", None)
        return isinstance(obj, stock) if stock is not None else super().__instancecheck__(obj)


# recorders of a forward being fused (fuse.py) that want to see the neurons' state assignments
STATE_WATCHERS = []


class _BackendNeuron:
    """What every backend neuron adds to its snntorch parent."""
    _bss2_binding = None          # ChipBinding in chip mode
    _bss2_backend = "auto"

    def __setattr__(self, name, value):
        if STATE_WATCHERS and name in ("mem", "syn", "spk"):
            STATE_WATCHERS[-1].state_set(self, name, value)
        super().__setattr__(name, value)

    def _bss2_step(self, input_, states):
        if self.__dict__.get("_bss2_chip") is not None:
            from . import chip_mode  # chip_mode imports this module
            return chip_mode.step(self, input_, states)
        for name, state in states.items():
            # snntorch silently zeros a passed state of another shape. Zeros are the tutorials' way
            # to start (init_*() returns empty ones, or zeros of the last batch's shape when the
            # batch size changes); a non-zero one of the wrong shape would be lost, so it raises
            if isinstance(state, torch.Tensor) and state.numel() > 1 and isinstance(input_, torch.Tensor) \
                    and state.shape != input_.shape and bool(state.detach().ne(0).any()):
                raise ValueError(f"{type(self).__name__}: `{name}` has shape {tuple(state.shape)} but "
                                 f"the input has shape {tuple(input_.shape)}; pass a state of the "
                                 f"input's shape, or the empty one init_*() returns")
        if self._bss2_backend == "auto" and isinstance(input_, torch.Tensor) and input_.device.type == "cpu":
            # one step on the CPU has nothing to fuse: snntorch's own code is as fast (forward_pass
            # is where the CPU gains); backend="torch" runs the twin per step instead
            return None
        from . import fused  # fused imports this module
        reason = fused.unfusable_reason(self, input_)
        if reason is not None:
            notice_once(type(self).__name__ + reason,
                        f"{type(self).__name__}: running snntorch's own code ({reason})")
            return None
        return fused.step(self, input_, states)

    def extra_repr(self):
        base = super().extra_repr()
        if self._bss2_binding is not None:
            return (base + ", " if base else "") + self._bss2_binding.describe()
        return base


class Leaky(_BackendNeuron, snn.Leaky, metaclass=_BackendType):
    def forward(self, input_, mem=None):
        out = self._bss2_step(input_, {"mem": mem})
        return super().forward(input_, mem) if out is None else out


class Synaptic(_BackendNeuron, snn.Synaptic, metaclass=_BackendType):
    def forward(self, input_, syn=None, mem=None):
        out = self._bss2_step(input_, {"syn": syn, "mem": mem})
        return super().forward(input_, syn, mem) if out is None else out


class RLeaky(_BackendNeuron, snn.RLeaky, metaclass=_BackendType):
    def forward(self, input_, spk=None, mem=None):
        out = self._bss2_step(input_, {"spk": spk, "mem": mem})
        return super().forward(input_, spk, mem) if out is None else out


class RSynaptic(_BackendNeuron, snn.RSynaptic, metaclass=_BackendType):
    def forward(self, input_, spk=None, syn=None, mem=None):
        out = self._bss2_step(input_, {"spk": spk, "syn": syn, "mem": mem})
        return super().forward(input_, spk, syn, mem) if out is None else out


class Lapicque(_BackendNeuron, snn.Lapicque, metaclass=_BackendType):
    def forward(self, input_, mem=None):
        out = self._bss2_step(input_, {"mem": mem})
        return super().forward(input_, mem) if out is None else out


class Alpha(_BackendNeuron, snn.Alpha, metaclass=_BackendType):
    def forward(self, input_, syn_exc=None, syn_inh=None, mem=None):
        notice_once("Alpha", "Alpha: no fused kernel (its three-state update is not in the kernel "
                             "family); running snntorch's own code")
        return super().forward(input_, syn_exc, syn_inh, mem)


BACKEND = {"Leaky": Leaky, "Synaptic": Synaptic, "RLeaky": RLeaky, "RSynaptic": RSynaptic,
           "Lapicque": Lapicque, "Alpha": Alpha}
for _name, _cls in BACKEND.items():
    _cls._bss2_stock = STOCK[_name]
    _cls.__doc__ = (f"snntorch.{_name} on the bss2_backend (same constructor, forward, state and "
                    f"state_dict as snntorch.{_name}).")


def backend_class(module):
    """The backend class for a (stock or backend) supported snntorch neuron."""
    kind = supported_kind(module)
    if kind is None:
        return None
    return next(BACKEND[n] for n, k in NEURON_KINDS.items() if k == kind)
