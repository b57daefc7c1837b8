"""Neuron parameters of the discrete current-based LIF model the chip integrates.

Continuous model of one neuron circuit (as hxtorch's functional model writes it):

    tau_mem dv/dt = (v_leak - v) + i_exc - i_inh
    tau_syn_exc di_exc/dt = -i_exc + sum_j w_ij^+ sum_k delta(t - t_j^k)     (same for inh)
    v > v_th  ->  spike; v := v_reset for the refractory time (hard reset, not subtract)

Discrete step t with a_mem = dt/tau_mem, a_syn = dt/tau_syn (forward Euler, hxtorch's choice) or
a = 1 - exp(-dt/tau) (integration="exact"), v0 = v_leak, i0 = 0:

    v' = v + a_mem * ((v_leak - v) + i_exc - i_inh)     (previous i: one step of synaptic delay)
    i  = (1 - a_syn) * i + x[t]
    v' = v_reset while refractory;  z = (v' > v_th) and not refractory;  v = v_reset where z else v'

The derivation and the in-the-loop gradient live in bss2_backend/DYNAMICS.md.
"""
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from . import constants as C
from .validation import check_choice, check_device, check_number, checks_values

INTEGRATIONS = ("euler", "exact")
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
MAX_REFRACTORY_STEPS = 2**31 - 1          # the kernels count refractory steps in int32


@dataclass(frozen=True)
class Calibration:
    """Calibration targets of the neuron circuits (calix defaults); potentials in CADC LSB, times in us."""
    leak_lsb: float = C.LEAK_TARGET_LSB
    reset_lsb: float = C.RESET_TARGET_LSB
    threshold_lsb: float = C.THRESHOLD_TARGET_LSB
    tau_mem_us: float = C.TAU_MEM_TARGET_US
    tau_syn_exc_us: float = C.TAU_SYN_TARGET_US
    tau_syn_inh_us: float = C.TAU_SYN_TARGET_US
    refractory_us: float = C.REFRACTORY_TARGET_US

    def __post_init__(self):
        ranges = {"leak_lsb": C.LEAK_RANGE_LSB, "reset_lsb": C.RESET_RANGE_LSB,
                  "threshold_lsb": C.THRESHOLD_RANGE_LSB, "tau_mem_us": C.TAU_MEM_RANGE_US,
                  "tau_syn_exc_us": C.TAU_SYN_RANGE_US, "tau_syn_inh_us": C.TAU_SYN_RANGE_US,
                  "refractory_us": C.REFRACTORY_RANGE_US}
        for name, (lo, hi) in ranges.items():
            check_number(f"Calibration.{name}", getattr(self, name), low=lo, high=hi)
        if self.threshold_lsb <= self.leak_lsb:
            raise ValueError(f"Calibration.threshold_lsb={self.threshold_lsb} must lie above "
                             f"leak_lsb={self.leak_lsb}: model units are defined by leak 0, threshold 1")

    @property
    def unit_lsb(self):
        """CADC LSB per model unit (threshold - leak)."""
        return self.threshold_lsb - self.leak_lsb

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CircuitParams(NamedTuple):
    """Per-circuit (or per logical neuron) analog parameters in hardware units; each a tensor [N]."""
    leak_lsb: torch.Tensor
    reset_lsb: torch.Tensor
    threshold_lsb: torch.Tensor
    tau_mem_us: torch.Tensor
    tau_syn_exc_us: torch.Tensor
    tau_syn_inh_us: torch.Tensor
    refractory_us: torch.Tensor

    @classmethod
    def nominal(cls, n, calibration=Calibration(), dtype=torch.float64):
        check_number("n", n, low=1, integer=True)
        if not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a bss2_backend.Calibration, got {calibration!r}")
        c = calibration
        vals = (c.leak_lsb, c.reset_lsb, c.threshold_lsb, c.tau_mem_us, c.tau_syn_exc_us,
                c.tau_syn_inh_us, c.refractory_us)
        return cls(*(torch.full((n,), float(v), dtype=dtype) for v in vals))

    def discretize(self, calibration=Calibration(), dt_us=C.DT_US, integration="euler"):
        """Model-unit LIFParams for a step of dt_us. Model units: nominal leak 0, threshold 1."""
        check_number("dt_us", dt_us, low=0.0, low_open=True)
        check_choice("integration", integration, INTEGRATIONS)
        unit, leak0 = calibration.unit_lsb, calibration.leak_lsb

        def factor(name, tau):
            if not bool((tau > 0).all()):
                raise ValueError(f"{name} must be > 0 us everywhere; got min {float(tau.min())}")
            if integration == "exact":
                return -torch.expm1(-dt_us / tau)
            a = dt_us / tau
            if bool((a > 1).any()):
                raise ValueError(f"dt_us/{name} = {float(a.max()):.3g} > 1 makes forward-Euler "
                                 f"integration unstable; allowed dt_us <= {name} "
                                 f"(min {float(tau.min()):.3g} us), or use integration='exact'")
            return a

        return LIFParams(
            v_leak=(self.leak_lsb - leak0) / unit,
            v_reset=(self.reset_lsb - leak0) / unit,
            v_th=(self.threshold_lsb - leak0) / unit,
            a_mem=factor("tau_mem_us", self.tau_mem_us),
            a_syn_exc=factor("tau_syn_exc_us", self.tau_syn_exc_us),
            a_syn_inh=factor("tau_syn_inh_us", self.tau_syn_inh_us),
            ref_steps=torch.round(self.refractory_us / dt_us).to(torch.int32),
        )


class LIFParams(NamedTuple):
    """What one integration step needs, per neuron [N], in model units.

    v_leak, v_reset, v_th: potentials (nominal leak 0, threshold 1);
    a_mem, a_syn_exc, a_syn_inh: per-step factors dt/tau (or 1 - exp(-dt/tau)), in (0, 1];
    ref_steps: refractory period in whole steps (int32).
    """
    v_leak: torch.Tensor
    v_reset: torch.Tensor
    v_th: torch.Tensor
    a_mem: torch.Tensor
    a_syn_exc: torch.Tensor
    a_syn_inh: torch.Tensor
    ref_steps: torch.Tensor

    @classmethod
    def uniform(cls, n, *, v_leak=0.0, v_reset=0.0, v_th=1.0, a_mem=0.1, a_syn_exc=0.1,
                a_syn_inh=None, ref_steps=0, dtype=torch.float32, device=None):
        """Identical parameters for all n neurons (handy for tests and the ideal model)."""
        check_number("n", n, low=1, integer=True)
        a_syn_inh = a_syn_exc if a_syn_inh is None else a_syn_inh
        for name, value in (("v_leak", v_leak), ("v_reset", v_reset), ("v_th", v_th)):
            check_number(name, value)
        for name, value in (("a_mem", a_mem), ("a_syn_exc", a_syn_exc), ("a_syn_inh", a_syn_inh)):
            check_number(name, value, low=0.0, high=1.0, low_open=True)
        check_number("ref_steps", ref_steps, low=0, high=MAX_REFRACTORY_STEPS, integer=True)
        f = lambda v: torch.full((n,), float(v), dtype=dtype, device=device)
        return cls(f(v_leak), f(v_reset), f(v_th), f(a_mem), f(a_syn_exc), f(a_syn_inh),
                   torch.full((n,), int(ref_steps), dtype=torch.int32, device=device))

    def to(self, device=None, dtype=None):
        moved = [t.to(device=device, dtype=dtype) for t in self[:-1]]
        return LIFParams(*moved, self.ref_steps.to(device=device))

    def validate(self, n, name="params", device=None):
        """Raise unless every field is a tensor [n] with data (on `device` when given), the floats
        finite, the factors a_* in (0, 1] and ref_steps non-negative integers; returns the params
        with ref_steps as int32 (what the kernels count in)."""
        if not isinstance(self, LIFParams):
            raise TypeError(f"{name} must be a bss2_backend.LIFParams, got {type(self).__name__}")
        for field, t in zip(self._fields, self):
            where = f"{name}.{field}"
            if not isinstance(t, torch.Tensor) or t.shape != (n,):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where} must be a tensor of shape ({n},), got {got}")
            check_device(where, t)
            if device is not None and t.device != torch.device(device):
                raise ValueError(f"{where} is on {t.device} but the inputs are on {device}; move "
                                 f"the parameters with params.to(device)")
            if field == "ref_steps":
                if t.dtype not in INTEGER_DTYPES:
                    raise TypeError(f"{where} must have an integer dtype (steps), got {t.dtype}")
                if checks_values(t) and t.numel() and \
                        bool((t < 0).any() | (t.to(torch.int64) > MAX_REFRACTORY_STEPS).any()):
                    raise ValueError(f"{where} must be whole steps in [0, {MAX_REFRACTORY_STEPS}]")
                continue
            if not t.is_floating_point():
                raise TypeError(f"{where} must have a real floating-point dtype, got {t.dtype}")
            if not checks_values(t):
                continue
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{where} contains NaN or inf")
            if field.startswith("a_") and not bool(((t > 0) & (t <= 1)).all()):
                raise ValueError(f"{where} (dt/tau) must lie in (0, 1]; got range "
                                 f"[{float(t.min()):.4g}, {float(t.max()):.4g}]: time constants "
                                 f"must be positive and at least dt")
        if self.ref_steps.dtype != torch.int32:
            return self._replace(ref_steps=self.ref_steps.to(torch.int32))
        return self
