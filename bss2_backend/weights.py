"""Weight path software -> chip, and the synapse array as a layer's input current.

    w_hw = round_half_away(clamp(scale * w, -63, 63))          (6-bit magnitude, sign = exc/inh row)
    exc  = max(w_hw, 0) * gain_exc / scale,  inh = max(-w_hw, 0) * gain_inh / scale   (model units)
    x_exc[t] = s[t] @ exc^T,  x_inh[t] = s[t] @ inh^T            (s: presynaptic spikes)

gain_* [N_out, N_in] hold the fixed-pattern gains of the circuit and row each synapse uses
(ones on an ideal chip). An optional saturation maps x -> x_sat * tanh(x / x_sat) per step, since
real synaptic input grows sublinearly (inhibition saturates earlier). The clamp to +-63 is the
chip's: weights beyond it are clipped, and their gradient is zero there, as for any clamp.

Backward (the in-the-loop rule): currents are recomputed from the recorded presynaptic spikes and
the float weights, with a straight-through rounding, so neither quantisation nor gains nor
saturation are visible to the gradient.
"""
from dataclasses import dataclass

import torch

from . import constants as C
from .kernels import events as spike_events
from .validation import check_number, check_tensor, checks_values


def round_half_away(x):
    """Round to nearest, ties away from zero (the hardware's conversion), unlike torch.round."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class _ToHardware(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale):
        scaled = scale * w
        ctx.save_for_backward(scaled)
        ctx.scale = scale
        return round_half_away(torch.clamp(scaled, C.WEIGHT_MIN_SIGNED, C.WEIGHT_MAX))

    @staticmethod
    def backward(ctx, grad):
        (scaled,) = ctx.saved_tensors
        inside = (scaled >= C.WEIGHT_MIN_SIGNED) & (scaled <= C.WEIGHT_MAX)
        return grad * inside * ctx.scale, None


def to_hardware(w, scale=C.DEFAULT_WEIGHT_SCALE):
    """Float weights (model units, a real floating tensor with finite values) -> signed 6-bit
    hardware weights; straight-through gradient. Weights beyond +-63 / scale are clipped, as the
    chip clips them."""
    check_number("scale", scale, low=0.0, low_open=True)
    check_tensor("w", w)
    return _hw(w, scale)


def _hw(w, scale):
    """to_hardware without the checks (the layers check their weights once per call)."""
    return _ToHardware.apply(w, float(scale))


def quantise(w, scale=C.DEFAULT_WEIGHT_SCALE):
    """The weight the chip realises, back in model units: to_hardware(w) / scale."""
    return to_hardware(w, scale) / scale


@dataclass(frozen=True)
class Saturation:
    """Saturating synaptic input, x -> x_sat * tanh(x / x_sat), per step; model units ([U] magnitudes)."""
    exc: float = 4.0
    inh: float = 2.0

    def __post_init__(self):
        check_number("Saturation.exc", self.exc, low=0.0, low_open=True)
        check_number("Saturation.inh", self.inh, low=0.0, low_open=True)


def _saturate(x, x_sat):
    return x_sat * torch.tanh(x / x_sat)


# --- exact products of spikes and weight codes -----------------------------------------------------
# Spikes are 0/1 and weight codes integers in [-63, 63]: their products summed over a fan-in below
# 2^24 / 63 are integers a float32 holds exactly, so s @ codes^T is exact in fp32, in TF32 or bf16
# on tensor cores with fp32 accumulation, and in int8 with int32 accumulation; only the per-neuron
# factor (synapse gain / scale) applied after the product rounds. Where every synapse of a neuron
# has the same gain (no row-gain spread) the chip's forward product takes that form.
_SPIKES = "_bss2_spikes"
INT8_PRODUCTS = {"cuda"}      # devices whose exact products run as int8 GEMMs (torch._int_mm)


def mark_spikes(t):
    """Mark tensor t as holding only 0/1 (the chip's spikes, latency codes): its products with
    weight codes may then run as int8 GEMMs. A mark is a Python attribute of this tensor object."""
    setattr(t, _SPIKES, True)
    return t


def are_spikes(t):
    return getattr(t, _SPIKES, False)


def code_product(flat, codes, binary):
    """flat [M, K] @ codes [N, K]^T for integer-valued codes, exact (module comment above): an
    int8 GEMM with int32 accumulation where flat is marked 0/1 and the device's int8 GEMM takes the
    shape (M > 16, K a multiple of 8; N is padded to one), else in flat's dtype."""
    M, K = flat.shape
    if binary and flat.device.type in INT8_PRODUCTS and M > 16 and K % 8 == 0 \
            and K * C.WEIGHT_MAX < 2**24 and flat.dtype == torch.float32:
        n = codes.shape[0]
        c8 = codes.to(torch.int8)
        if n % 8:
            c8 = torch.cat([c8, c8.new_zeros(8 - n % 8, K)])
        return torch._int_mm(flat.to(torch.int8), c8.t())[:, :n].to(flat.dtype)
    return spike_events.rows_matmul(flat, codes.t().to(flat.dtype))


class _Synapses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spikes, weight, exc, inh, saturation, mirrored, factor=None, binary=False):
        flat = spikes.reshape(-1, spikes.shape[-1])
        shape = (*spikes.shape[:-1], -1)
        # sparse presynaptic spikes on a CPU: both products and the weight gradient from events
        # (decided by a count, so only where the value-check policy lets the host read tensors)
        ctx.events = events = spike_events.choose(flat, checks_values(flat))
        if factor is not None:
            # exc holds integer weight codes: the exact product, then each neuron's factor
            if events is None:
                spike_events.paths.note("product", "dense")
                x = code_product(flat, exc, binary)
            else:
                x = spike_events.product(flat, events, exc)
            x = (x * factor).reshape(shape)
            ctx.save_for_backward(spikes, weight)
            ctx.signed, ctx.mirrored = True, mirrored
            ctx.set_materialize_grads(False)
            return x, None
        x_exc = spike_events.product(flat, events, exc).reshape(shape)
        x_inh = spike_events.product(flat, events, inh).reshape(shape) if inh is not None else None
        if saturation is not None:
            x_exc, x_inh = _saturate(x_exc, saturation.exc), _saturate(x_inh, saturation.inh)
        ctx.save_for_backward(spikes, weight)
        ctx.signed = inh is None
        ctx.mirrored = mirrored
        ctx.set_materialize_grads(False)
        return x_exc, x_inh

    @staticmethod
    def backward(ctx, g_exc, g_inh):
        spikes, weight = ctx.saved_tensors
        s = spikes.reshape(-1, spikes.shape[-1])
        ge = g_exc.reshape(-1, g_exc.shape[-1]) if g_exc is not None else None
        gi = g_inh.reshape(-1, g_inh.shape[-1]) if g_inh is not None else None
        g_spikes = g_weight = None
        w_grad = lambda g: spike_events.weight_grad(g, s, ctx.events)
        if ctx.signed:
            # one signed current x = s @ w^T
            if ctx.needs_input_grad[0] and ge is not None:
                g_spikes = spike_events.rows_matmul(ge, weight).reshape(spikes.shape)
            if ctx.needs_input_grad[1] and ge is not None:
                g_weight = w_grad(ge)
            return g_spikes, g_weight, None, None, None, None, None, None
        # nominal model: x_exc = s @ relu(w)^T, x_inh = s @ relu(-w)^T with the float weights
        pos = weight >= 0
        if ge is not None and gi is not None and (ctx.mirrored or torch.equal(gi, -ge)):
            # equal nominal decays make the inhibitory adjoint mirror the excitatory one: then the
            # signed formulas hold and one GEMM per gradient suffices
            g_spikes = spike_events.rows_matmul(ge, weight).reshape(spikes.shape) if ctx.needs_input_grad[0] else None
            g_weight = w_grad(ge) if ctx.needs_input_grad[1] else None
            return g_spikes, g_weight, None, None, None, None, None, None
        if ctx.needs_input_grad[0]:
            g = torch.zeros_like(s)
            if ge is not None:
                g = g + ge @ torch.where(pos, weight, 0)
            if gi is not None:
                g = g + gi @ torch.where(pos, 0, -weight)
            g_spikes = g.reshape(spikes.shape)
        if ctx.needs_input_grad[1]:
            g_weight = torch.zeros_like(weight)
            if ge is not None:
                g_weight = g_weight + torch.where(pos, w_grad(ge), 0)
            if gi is not None:
                g_weight = g_weight - torch.where(pos, 0, w_grad(gi))
        return g_spikes, g_weight, None, None, None, None, None, None


def synapses(spikes, weight, exc, inh=None, saturation=None, mirrored=False):
    """Input currents of presynaptic spikes [..., N_in] through a synapse array.

    weight: the float weights [N_out, N_in] the gradient sees. exc, inh: the non-negative effective
    weights [N_out, N_in] the chip realises (see chip_weights); returns (x_exc, x_inh). With
    inh=None, exc is one signed effective matrix and the result is (x, None): exact whenever the
    excitatory and inhibitory synapses share their time constants (then only exc - inh matters)
    and cheaper by a GEMM each way. mirrored=True promises that the gradient of x_inh will be minus
    that of x_exc (the nominal neuron's excitatory and inhibitory decays are equal), so the
    backward needs one GEMM per gradient without checking.
    """
    if inh is None and saturation is not None:
        raise ValueError("saturation needs separate exc and inh weights (inh=None was given)")
    inh = inh.to(spikes.dtype) if inh is not None else None
    return _Synapses.apply(spikes, weight, exc.to(spikes.dtype), inh, saturation, mirrored, None,
                           False)


def chip_weights(weight, gain_exc, gain_inh, scale=C.DEFAULT_WEIGHT_SCALE, quantise=True):
    """Effective (exc, inh) weights in model units the chip realises for float `weight`; no grad."""
    with torch.no_grad():
        w = _hw(weight, scale) / scale if quantise else weight
        return torch.clamp(w, min=0) * gain_exc, torch.clamp(-w, min=0) * gain_inh


def signed_chip_weight(weight, gain_exc, gain_inh, scale=C.DEFAULT_WEIGHT_SCALE, quantise=True):
    """exc - inh of chip_weights, bit for bit, in fewer device ops (each w is either exc or inh)."""
    with torch.no_grad():
        w = _hw(weight, scale) / scale if quantise else weight
        return w * torch.where(w >= 0, gain_exc, gain_inh)


def signed_weight_path(weight, gain_exc, gain_inh, scale=C.DEFAULT_WEIGHT_SCALE, quantise=True,
                       unit_gains=False):
    """(nominal, exc - inh): weight_path for a layer whose exc and inh synapses decay alike, where
    only the difference matters. unit_gains promises every gain is exactly 1 (decided once by the
    caller, e.g. Chip.unit_gains): then an unquantised chip realises the weight itself."""
    if unit_gains and not quantise:
        return weight, weight.detach()
    return (nominal_weight(weight, scale, quantise),
            signed_chip_weight(weight, gain_exc, gain_inh, scale, quantise))


def weight_codes(weight, scale=C.DEFAULT_WEIGHT_SCALE):
    """The chip's signed 6-bit codes of float weights (integer-valued, in weight's dtype); no grad."""
    with torch.no_grad():
        return _hw(weight, scale)


def input_currents(spikes, weight, gain_exc, gain_inh, *, scale, quantise, saturation, decays,
                   unit_gains=False, neuron_gain=None, binary=False):
    """(x_exc, x_inh) [T, B, N_out]: the currents a placed layer's synapse array delivers for
    presynaptic spikes [T, B, N_in] and float weights [N_out, N_in] (model units). decays:
    (alike, nominal_alike) of the layer (Chip.synapse_decays). Where the excitatory and
    inhibitory synapses decay alike only exc - inh matters: one signed current (x_inh None), one
    GEMM and the fewest device ops. neuron_gain [N_out]: every synapse of neuron o has gain
    neuron_gain[o] (decided once by the caller, Chip.neuron_gains): then the quantised product
    is the exact product of spikes and codes times gain / scale (code_product; binary: spikes
    marked 0/1, for int8 GEMMs)."""
    alike, nominal_alike = decays
    if alike and saturation is None and quantise and neuron_gain is not None:
        factor = (neuron_gain / scale).to(spikes.dtype)
        return _Synapses.apply(spikes, nominal_weight(weight, scale, quantise),
                               weight_codes(weight, scale).to(spikes.dtype), None, None,
                               nominal_alike, factor, binary)
    if alike and saturation is None:
        w, signed = signed_weight_path(weight, gain_exc, gain_inh, scale, quantise, unit_gains)
        return synapses(spikes, w, signed)
    w, exc, inh = weight_path(weight, gain_exc, gain_inh, scale, quantise)
    return synapses(spikes, w, exc, inh, saturation, nominal_alike)


def weight_path(weight, gain_exc, gain_inh, scale=C.DEFAULT_WEIGHT_SCALE, quantise=True):
    """(nominal, exc, inh) of a placed layer: the float weight the gradient sees, clamped where
    the chip clips (so its gradient is zero there, as the chip's), and the chip's effective
    excitatory and inhibitory weights (chip_weights)."""
    exc, inh = chip_weights(weight, gain_exc, gain_inh, scale, quantise)
    return nominal_weight(weight, scale, quantise), exc, inh


def nominal_weight(weight, scale=C.DEFAULT_WEIGHT_SCALE, quantise=True):
    """The float weight the gradient sees: clamped where the chip clips (zero gradient there)."""
    if quantise:
        limit = C.WEIGHT_MAX / scale
        return weight.clamp(-limit, limit)
    return weight


# --- a population of chips: one synapse array per chip, the weight shared -------------------------
class _PerChipSynapses(torch.autograd.Function):
    """x[c] = s[c] @ w_fwd[c]^T for chips c (w_fwd: each chip's effective weights, or integer
    codes times a per-neuron factor); the in-the-loop backward of `synapses` with the one shared
    float weight, its gradient summed over the chips."""

    @staticmethod
    def forward(ctx, spikes, weight, exc, inh, factor, saturation, mirrored):
        x_exc = torch.bmm(spikes, exc.transpose(1, 2))
        if factor is not None:
            x_exc = x_exc * factor
        x_inh = torch.bmm(spikes, inh.transpose(1, 2)) if inh is not None else None
        if saturation is not None:
            x_exc, x_inh = _saturate(x_exc, saturation.exc), _saturate(x_inh, saturation.inh)
        ctx.save_for_backward(spikes, weight)
        ctx.signed, ctx.mirrored = inh is None, mirrored
        ctx.set_materialize_grads(False)
        return x_exc, x_inh

    @staticmethod
    def backward(ctx, g_exc, g_inh):
        spikes, weight = ctx.saved_tensors
        need_s, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        summed = lambda g: torch.einsum("cmn,cmk->nk", g, spikes)
        g_s = g_w = None
        if ctx.signed or (g_exc is not None and g_inh is not None and
                          (ctx.mirrored or torch.equal(g_inh, -g_exc))):
            if g_exc is not None:
                g_s = g_exc @ weight if need_s else None
                g_w = summed(g_exc) if need_w else None
            return g_s, g_w, None, None, None, None, None
        # exc and inh rows apart: each current's gradient reaches the weights of its sign
        pos = weight >= 0
        parts = [(g, torch.where(pos, weight, 0), 1.0) for g in (g_exc,) if g is not None] + \
                [(g, torch.where(pos, 0, -weight), -1.0) for g in (g_inh,) if g is not None]
        if need_s and parts:
            g_s = sum(g @ w for g, w, _ in parts)
        if need_w and parts:
            g_w = sum(sign * torch.where(pos if sign > 0 else ~pos, summed(g), 0)
                      for g, _, sign in parts)
        return g_s, g_w, None, None, None, None, None


def per_chip_currents(spikes, weight, gain_exc, gain_inh, chips, *, scale, quantise, saturation,
                      decays, neuron_gain=None, binary=False):
    """input_currents for a population: spikes [C, T, B, n] (one input per chip), weight [N, n]
    shared, gains [C * N, n] (the chips' stacked). Returns (x_exc, x_inh) [T, B, C * N], the
    kernels' chip-major neuron axis. binary is accepted for symmetry: the per-chip products are
    batched fp32 GEMMs, exact on codes anyway."""
    C, N, n = chips, weight.shape[0], weight.shape[1]
    T, B = spikes.shape[1], spikes.shape[2]
    s = spikes.reshape(C, T * B, n)
    ge, gi = gain_exc.reshape(C, N, n).to(s.dtype), gain_inh.reshape(C, N, n).to(s.dtype)
    alike, nominal_alike = decays
    w_nom = nominal_weight(weight, scale, quantise)
    if alike and saturation is None:
        if quantise and neuron_gain is not None:
            codes = weight_codes(weight, scale).to(s.dtype).expand(C, N, n)
            factor = (neuron_gain / scale).to(s.dtype).reshape(C, 1, N)
            x, _ = _PerChipSynapses.apply(s, w_nom, codes, None, factor, None, nominal_alike)
        else:
            signed = signed_chip_weight(weight, ge, gi, scale, quantise).to(s.dtype)
            x, _ = _PerChipSynapses.apply(s, w_nom, signed, None, None, None, nominal_alike)
        return _chip_major(x, T, B), None
    exc, inh = chip_weights(weight, ge, gi, scale, quantise)
    x_e, x_i = _PerChipSynapses.apply(s, w_nom, exc.to(s.dtype), inh.to(s.dtype), None,
                                      saturation, nominal_alike)
    return _chip_major(x_e, T, B), _chip_major(x_i, T, B)


def _chip_major(x, T, B):
    """[C, T * B, N] -> [T, B, C * N]."""
    C, _, N = x.shape
    return x.reshape(C, T, B, N).permute(1, 2, 0, 3).reshape(T, B, C * N)
