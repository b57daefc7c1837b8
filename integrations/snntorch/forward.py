"""forward_pass(net, num_steps, data): snntorch's tutorial helper, run over all time steps at once."""
import math
import numbers

import torch
from torch import nn

from bss2_backend.kernels.events import spike_linear
from bss2_backend.validation import check_allocation, check_finite, check_tensor, checks_values
from bss2_backend.population import Chips, mark_population, per_chip_input
from bss2_backend.weights import are_spikes, mark_spikes

from . import chip_mode, fused
from .convert import CHIP_PASSTHROUGH, convert, is_chip_bound, pending_chip, sequence_of
from .neurons import _BackendNeuron, supported_kind
from .notices import notice_once

# stateless layers applied to all steps at once ([T*B, ...])
TIME_BATCHED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Flatten, nn.Dropout, nn.Dropout2d,
                nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU, nn.Sigmoid, nn.Tanh)
# rank of one step's input for layers that fix it (static [B, ...]; time-major adds one dim)
STEP_RANK = {nn.Linear: 2, nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


def forward_pass(net, num_steps, data, per_chip=None):
    """Run `net` for num_steps steps and record its last layer, as snntorch's tutorial helper does.

    Args:
        net: an nn.Sequential-style snntorch model (the last module a neuron, usually with
            init_hidden=True, output=True). The state of every neuron in it (nested ones too) is
            reset first and its final state is written back to the neuron modules. Unlike the
            tutorial's snntorch.utils.reset(net) in snntorch 1.0 (which resets every instance of
            the net's neuron classes, in every net), no other net's neurons are reset, and
            deep-copied nets are reset too (they are missing from SpikingNeuron.instances).
        num_steps: number of time steps (int >= 1).
        data: static input fed at every step, [B, ...] (the tutorial's `net(data)`), or time-major
            input [num_steps, B, ...] (the tutorial's `net(data[step])`).
        per_chip: for a net converted onto a population of C chips (bss2_backend.Chips): True
            when data holds one input per chip ([C, ...] before the above); default: when data is
            a population layer's output. Never decided from the rank.

    Returns:
        (spk_rec, mem_rec): the last neuron's spikes and membrane, time-major [num_steps, B, ...]
        ([C, num_steps, B, ...] on a population).

    Ideal-mode Sequential nets of Linear, Conv, Flatten, Dropout, pooling and Leaky/Synaptic/
    RLeaky/RSynaptic/Lapicque run fused: one GEMM over all steps per layer and one neuron launch per
    layer. Anything else runs step by step, with a one-time notice saying why. Chip-mode nets run
    every Linear -> neuron layer on the chip.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
    num_steps = int(num_steps)
    chip = pending_chip(net)
    if chip is not None:
        convert(net, chip)
    on_chip = is_chip_bound(net)
    _check_inputs(net, data, on_chip)
    if per_chip is not None and not isinstance(per_chip, bool):
        raise TypeError(f"per_chip must be True, False or None, got {per_chip!r}")
    if on_chip:
        return _chip_pass(net, num_steps, data, per_chip)
    if per_chip:
        raise ValueError("per_chip=True needs a net converted onto a population of chips "
                         "(bss2_backend.Chips)")
    reason, seq = _fusable(net, data)
    if reason is None:
        x, static = split_time(seq, data, num_steps)
        _check_features_and_size(seq, x, static, num_steps)
        return _fused_pass(net, seq, num_steps, x, static)
    notice_once("forward_pass" + reason, f"forward_pass runs step by step: {reason}")
    return _stepwise_pass(net, num_steps, data)


# snntorch's state buffers: reset by forward_pass, so their values are not the caller's input
STATE_BUFFERS = ("mem", "syn", "spk", "reset", "syn_exc", "syn_inh")


def _check_inputs(net, data, on_chip):
    """data: a real floating tensor with data and at least one sample, on the net's device, of
    the net's dtype (ideal mode: its GEMMs take no other; chip mode runs float32 or float64);
    data, parameters and neuron constants finite where value checks run (NaN must never become
    plausible spikes)."""
    check_tensor("data", data, floating=False, finite=False)
    if not data.is_floating_point():
        raise TypeError(f"data must be a real floating-point tensor (spikes or currents, float32 "
                        f"like the net's parameters), got {data.dtype}; convert with data.float()")
    if data.dim() == 0 or data.numel() == 0:
        raise ValueError(f"data must hold at least one sample ([B, ...] or [num_steps, B, ...] "
                         f"with B >= 1), got shape {tuple(data.shape)}")
    for name, p in net.named_parameters():
        check_tensor(f"parameter {name}", p, floating=False, finite=False)
    ref = next((p for p in net.parameters() if p.is_floating_point()), None)
    if ref is not None:
        if data.device != ref.device:
            raise ValueError(f"data is on {data.device} but the net on {ref.device}; move one of "
                             f"them (net.to(device) or data.to(device))")
        if not on_chip and data.dtype != ref.dtype:
            raise TypeError(f"data is {data.dtype} but the net's parameters are {ref.dtype}; "
                            f"convert with data.to({ref.dtype})")
    # an expanded view may describe more elements than memory holds: its size comes before a
    # check that reads every element
    check_allocation(f"data of shape {tuple(data.shape)}", data.numel() * data.element_size(),
                     data.device)
    check_finite("data", data)
    for name, p in net.named_parameters():
        check_finite(f"parameter {name}", p.detach())
    for name, b in net.named_buffers():
        if b.is_floating_point() and name.rsplit(".", 1)[-1] not in STATE_BUFFERS:
            check_tensor(f"buffer {name}", b, floating=False)


def _check_features_and_size(seq, x, static, num_steps):
    """The first layer's input features against data's, and the size of the whole pass against
    the device's memory, before anything is expanded over time or allocated."""
    sample = tuple(x.shape[1:] if static else x.shape[2:])
    batch = x.shape[0] if static else x.shape[1]
    if batch == 0:
        raise ValueError(f"data has a batch of 0 samples (shape {tuple(x.shape)}); pass B >= 1")
    first = seq[0][1]
    lin = first if isinstance(first, nn.Linear) else None
    if isinstance(first, nn.Flatten) and len(seq) > 1 and isinstance(seq[1][1], nn.Linear):
        lin = seq[1][1]
        features, what = math.prod(sample), f"{math.prod(sample)} features per sample (shape {sample}, flattened)"
    elif lin is not None:
        features, what = (sample[-1] if sample else 1), f"{sample[-1] if sample else 1} features (last dimension of {tuple(x.shape)})"
    if lin is not None and features != lin.in_features:
        raise ValueError(f"data has {what}, but the first nn.Linear takes in_features="
                         f"{lin.in_features}")
    widths = sum(m.out_features for _, m in seq if isinstance(m, nn.Linear))
    item = 8 if x.dtype == torch.float64 else 4
    check_allocation(f"forward_pass(num_steps={num_steps}) on a batch of {batch}",
                     num_steps * batch * (math.prod(sample) + 3 * widths) * item, x.device)


def _step_rank(module):
    """The rank of one step's input for a layer that fixes it (subclasses included), else None."""
    return next((rank for cls, rank in STEP_RANK.items() if isinstance(module, cls)), None)


def split_time(seq, data, num_steps):
    """(x, static): data as static [B, ...] (static=True) or time-major [T, B, ...]."""
    first = next((m for _, m in seq if _step_rank(m) or supported_kind(m) is not None), None)
    # a leading Flatten takes any sample shape: the rank comes from the data, not the Linear
    rank = None if isinstance(seq[0][1], nn.Flatten) else _step_rank(first)
    if rank is None and isinstance(seq[0][1], nn.Flatten):
        lin = next((m for _, m in seq if isinstance(m, nn.Linear)), None)
        if lin is not None:
            flat = lambda s: int(torch.Size(s).numel())
            fits_static = flat(data.shape[1:]) == lin.in_features
            fits_time = data.dim() >= 3 and flat(data.shape[2:]) == lin.in_features
            if fits_time and (not fits_static or data.shape[0] == num_steps):
                rank = data.dim() - 1
            elif fits_static:
                rank = data.dim()
    if rank is None:
        rank = data.dim() - 1 if data.dim() >= 2 and data.shape[0] == num_steps else data.dim()
    if data.dim() == rank:
        return data, True
    if data.dim() == rank + 1:
        if data.shape[0] != num_steps:
            raise ValueError(f"data has a time axis of {data.shape[0]} steps (data.shape[0], "
                             f"time-major [num_steps, B, ...]) but num_steps={num_steps}")
        return data, False
    raise ValueError(f"data of shape {tuple(data.shape)} fits neither a static input of rank {rank} "
                     f"([B, ...], fed every step) nor a time-major one of rank {rank + 1} "
                     f"([num_steps, B, ...]) for the first layer {type(first).__name__}")


def _hooked(net):
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return "global forward hooks are registered"
    for name, m in net.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"forward hooks are registered on {name or type(m).__name__} (they see every step)"
    return None


def _fusable(net, data):
    """(None, sequence) when the net can run fused, else (reason, None)."""
    if data.dtype != torch.float32:
        return f"data is {data.dtype} (the fused path runs float32, as snntorch's spikes are)", None
    if not isinstance(net, nn.Sequential):
        return f"{type(net).__name__} is not an nn.Sequential (its forward is user code)", None
    hooked = _hooked(net)
    if hooked:
        return hooked, None
    seq = sequence_of(net)
    if not seq:
        return "the net is empty", None
    for name, m in seq:
        if supported_kind(m) is not None and not isinstance(m, _BackendNeuron):
            return (f"{name} is snntorch's own {type(m).__name__} (convert(net) first to run it "
                    f"fused)"), None
        if supported_kind(m) is not None:
            why = fused.unfusable_reason(m, None, multistep=True)
            if why:
                return f"{name}: {why}", None
        elif not isinstance(m, TIME_BATCHED):
            return f"{name} is a {type(m).__name__}, which forward_pass does not batch over time", None
    if supported_kind(seq[-1][1]) is None:
        return f"the last module ({seq[-1][0]}) is no snntorch neuron", None
    return None, seq


def reset_net(net):
    """Zero the state of every snntorch neuron in net (and only in net), detached."""
    for m in net.modules():
        if supported_kind(m) is not None:
            m.reset_mem()


def _merge(m, x, lead=2):
    """Apply a stateless layer to [T, B, ...] (or [C, T, B, ...] with lead=3) as one batch."""
    dims = x.shape[:lead]
    y = m(x.reshape(-1, *x.shape[lead:]))
    return y.reshape(*dims, *y.shape[1:])


def _fused_pass(net, seq, num_steps, x, static):
    reset_net(net)
    out = None
    for name, m in seq:
        if supported_kind(m) is not None:
            if static:
                x = x.expand(num_steps, *x.shape)
            out = fused.multistep(m, x)
            x, static = out[0], False
        elif static and not (isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.training):
            x = m(x)
        else:
            if static:
                x, static = x.expand(num_steps, *x.shape), False
            # a plain Linear over all steps: from the spike events where they are sparse (CPU)
            x = spike_linear(x, m.weight, m.bias, checks_values(x)) if type(m) is nn.Linear \
                else _merge(m, x)
    return out


def _stepwise_pass(net, num_steps, data):
    """The tutorial's loop, for what cannot be fused."""
    seq = sequence_of(net) if isinstance(net, nn.Sequential) and len(net) else None
    if seq is not None:
        x, static = split_time(seq, data, num_steps)
    else:
        static = not (data.dim() >= 2 and data.shape[0] == num_steps)
        x = data
    reset_net(net)
    spk_rec, mem_rec = [], []
    for step in range(num_steps):
        out = net(x if static else x[step])
        if not isinstance(out, tuple) or len(out) < 2:
            raise ValueError("the net returned a single tensor: give its last neuron output=True so "
                             "that it returns (spk, mem), as snntorch's forward_pass expects")
        if step == 0:
            # the first step tells the size of a recorded one: refuse what cannot be recorded
            check_allocation(f"forward_pass(num_steps={num_steps})", num_steps * (
                out[0].numel() * out[0].element_size() + out[-1].numel() * out[-1].element_size()),
                out[-1].device)
        spk_rec.append(out[0])
        mem_rec.append(out[-1])
    return torch.stack(spk_rec), torch.stack(mem_rec)


def _chip_pass(net, num_steps, data, per_chip=None):
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"forward_pass runs nn.Sequential nets on the chip; a {type(net).__name__} "
                        f"runs through its own forward, step by step on the chip")
    seq = sequence_of(net)
    chip = next((m._bss2_binding.chip for _, m in seq
                 if getattr(m, "_bss2_binding", None) is not None), None)
    population = chip.size if isinstance(chip, Chips) else None
    if per_chip is None:
        per_chip = population is not None and per_chip_input(data) == population
    elif per_chip and population is None:
        raise ValueError("per_chip=True needs a net converted onto a population of chips "
                         "(bss2_backend.Chips)")
    if per_chip:
        if data.dim() < 2 or data.shape[0] != population:
            raise ValueError(f"data: a per-chip input has the population's {population} chips "
                             f"first ([C, ...]), got shape {tuple(data.shape)}")
        x, static = split_time(seq, data[0], num_steps)
        _check_features_and_size(seq, x, static, num_steps)
        x = data if not static else data.unsqueeze(1).expand(population, num_steps,
                                                             *data.shape[1:])
    else:
        x, static = split_time(seq, data, num_steps)
        _check_features_and_size(seq, x, static, num_steps)
        if static:
            x = x.expand(num_steps, *x.shape)
    if are_spikes(data):
        mark_spikes(x)
    reset_net(net)
    out, linear = None, None
    for name, m in seq:
        if isinstance(m, nn.Linear):
            linear = m
        elif supported_kind(m) is not None:
            if m._bss2_binding is None:
                raise ValueError(f"{name} is not placed on the chip; convert(net, chip) the whole net")
            lead = x.shape[:3] if per_chip else x.shape[:2]
            flat = x.reshape(*lead, -1)
            if are_spikes(x):
                mark_spikes(flat)
            spk, mem = chip_mode.run_layer(m._bss2_binding, linear, m, flat, per_chip)
            out, x = (spk, mem), spk
            per_chip = population is not None
        elif isinstance(m, CHIP_PASSTHROUGH):
            spikes = are_spikes(x) and isinstance(m, (nn.Flatten, nn.Identity))
            x = _merge(m, x, 3 if per_chip else 2)
            if spikes:                  # reshaping keeps 0/1; dropout's scaling does not
                mark_spikes(x)
            if per_chip:
                mark_population(x, population)
    if out is None:
        raise ValueError("the net has no neuron placed on the chip")
    return out