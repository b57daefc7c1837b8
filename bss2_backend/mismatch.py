"""Fixed-pattern device mismatch: drawn once per chip from its seed, per circuit and synapse row.

Each analog parameter p of a circuit becomes p * (1 + spread * xi), xi ~ N(0, 1) (the paper's
decalibration law), except the CADC channel offset, which is absolute (LSB). Draws come from
NumPy's PCG64 seeded with (seed, stream, block), in blocks of 512 circuits / 512 rows, so a chip is
the same on every machine and device, and a larger (strict=False) substrate extends a smaller one.

The chip clips what it physically clips: potentials stay within the CADC rails (0..255 LSB), time
constants within the CapMem ranges of bss2_backend.constants, gains are >= 0.
"""
from dataclasses import dataclass, fields

import numpy as np
import torch

from . import constants as C
from .validation import check_number

# relative spreads: the calibrated and uncalibrated presets are [U] (unverified) defaults, within the
# published ranges (~2-5 % after calibration, ~10-30 % before)
NEURON_FIELDS = ("leak", "reset", "threshold", "tau_mem", "tau_syn_exc", "tau_syn_inh",
                 "refractory", "syn_gain")
PRESETS = ("calibrated", "uncalibrated", "none")
MAX_SPREAD = 1.0
MAX_OFFSET_LSB = 50.0
BLOCK = 512


@dataclass(frozen=True)
class Mismatch:
    """Spread per parameter. Relative (dimensionless, p -> p(1 + spread xi)) except cadc_offset_lsb."""
    leak: float = 0.0
    reset: float = 0.0
    threshold: float = 0.0
    tau_mem: float = 0.0
    tau_syn_exc: float = 0.0
    tau_syn_inh: float = 0.0
    refractory: float = 0.0
    syn_gain: float = 0.0           # synaptic input strength of a circuit
    row_gain: float = 0.0           # synapse driver / row strength
    cadc_offset_lsb: float = 0.0    # absolute std of the readout channel offset

    def __post_init__(self):
        for f in fields(self):
            hi = MAX_OFFSET_LSB if f.name == "cadc_offset_lsb" else MAX_SPREAD
            check_number(f"Mismatch.{f.name}", getattr(self, f.name), low=0.0, high=hi)

    @classmethod
    def preset(cls, name):
        if name == "calibrated":
            return cls(leak=0.02, reset=0.02, threshold=0.02, tau_mem=0.03, tau_syn_exc=0.03,
                       tau_syn_inh=0.03, refractory=0.03, syn_gain=0.03, row_gain=0.02,
                       cadc_offset_lsb=2.0)
        if name == "uncalibrated":
            return cls(leak=0.10, reset=0.10, threshold=0.10, tau_mem=0.25, tau_syn_exc=0.25,
                       tau_syn_inh=0.25, refractory=0.20, syn_gain=0.20, row_gain=0.10,
                       cadc_offset_lsb=8.0)
        if name == "none":
            return cls()
        raise ValueError(f"mismatch preset {name!r} is unknown; choose one of {list(PRESETS)}, "
                         f"a float sigma_d in [0, {MAX_SPREAD}] or a bss2_backend.Mismatch")

    @classmethod
    def decalibrated(cls, sigma_d):
        """The paper's sweep: every neuron parameter detuned by the same relative spread sigma_d."""
        check_number("sigma_d", sigma_d, low=0.0, high=MAX_SPREAD)
        s = float(sigma_d)
        return cls(leak=s, reset=s, threshold=s, tau_mem=s, tau_syn_exc=s, tau_syn_inh=s, syn_gain=s)

    @classmethod
    def from_spec(cls, spec):
        """Accept a preset name, a float sigma_d, a Mismatch or None (no mismatch)."""
        if spec is None:
            return cls()
        if isinstance(spec, Mismatch):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls.decalibrated(float(spec))
        raise TypeError(f"mismatch must be one of {list(PRESETS)}, a float sigma_d or a "
                        f"bss2_backend.Mismatch; got {type(spec).__name__} {spec!r}")

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def is_zero(self):
        return all(v == 0 for v in self.as_dict().values())


def standard_normal(seed, stream, start, count):
    """xi[start:start+count] of a named stream, drawn block-wise so prefixes never change."""
    out = np.empty(count, dtype=np.float64)
    first, last = start // BLOCK, (start + count - 1) // BLOCK if count else -1
    for block in range(first, last + 1):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, block])))
        xi = rng.standard_normal(BLOCK)
        lo, hi = max(start, block * BLOCK), min(start + count, (block + 1) * BLOCK)
        out[lo - start:hi - start] = xi[lo - block * BLOCK:hi - block * BLOCK]
    return torch.from_numpy(out)


# stream ids: fixed forever, so a seed means the same chip in every release
_STREAMS = {name: i for i, name in enumerate(NEURON_FIELDS + ("cadc_offset", "row_gain"))}


def draw_circuits(seed, mismatch, calibration, count, start=0):
    """Per-circuit parameters in hardware units (float64 tensors [count])."""
    c = calibration
    nominal = {"leak": c.leak_lsb, "reset": c.reset_lsb, "threshold": c.threshold_lsb,
               "tau_mem": c.tau_mem_us, "tau_syn_exc": c.tau_syn_exc_us,
               "tau_syn_inh": c.tau_syn_inh_us, "refractory": c.refractory_us, "syn_gain": 1.0}
    limits = {"leak": (C.CADC_MIN, C.CADC_MAX), "reset": (C.CADC_MIN, C.CADC_MAX),
              "threshold": (C.CADC_MIN, C.CADC_MAX), "tau_mem": C.TAU_MEM_RANGE_US,
              "tau_syn_exc": C.TAU_SYN_RANGE_US, "tau_syn_inh": C.TAU_SYN_RANGE_US,
              "refractory": C.REFRACTORY_RANGE_US, "syn_gain": (0.0, None)}
    drawn = {}
    for name in NEURON_FIELDS:
        xi = standard_normal(seed, _STREAMS[name], start, count)
        value = nominal[name] * (1.0 + getattr(mismatch, name) * xi)
        lo, hi = limits[name]
        drawn[name] = value.clamp(min=lo, max=hi)
    drawn["cadc_offset"] = mismatch.cadc_offset_lsb * standard_normal(
        seed, _STREAMS["cadc_offset"], start, count)
    return drawn


def draw_rows(seed, mismatch, count, start=0):
    """Relative strength of each synapse row (driver), float64 [count], >= 0."""
    xi = standard_normal(seed, _STREAMS["row_gain"], start, count)
    return (1.0 + mismatch.row_gain * xi).clamp(min=0.0)
