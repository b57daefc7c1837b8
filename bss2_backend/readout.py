"""CADC membrane readout: model units -> 8-bit code (offset, noise, rounding, rail clipping) -> model units.

    code = clamp(floor(v * unit_lsb + zero_lsb + offset_lsb + noise_lsb * xi + 1/2), 0, 255)
    read = (code - zero_lsb) * (1 / unit_lsb)

with unit_lsb = threshold - leak in LSB (45 at the calix targets) and zero_lsb the leak target (80).
The ADC clips at its rails, so membranes below -zero/unit or above (255 - zero)/unit model units
read as the rail: that clipping is the chip's, and the only one applied here.
"""
from typing import NamedTuple

import torch

from . import constants as C
from .kernels.chip_lif.reference import code_, read, read_
from .noise import MAX_NOISE_LSB
from .validation import check_number, check_tensor


class _ReadoutFields(NamedTuple):
    offset_lsb: torch.Tensor
    noise_lsb: float = 0.0
    quantise: bool = True
    unit_lsb: float = C.MODEL_UNIT_LSB
    zero_lsb: float = C.LEAK_TARGET_LSB


class ReadoutParams(_ReadoutFields):
    """offset_lsb: per-channel offset [N] (LSB); noise_lsb: std of the readout noise (LSB, in
    [0, 50]); quantise: False reads the membrane exactly (the ideal model); unit_lsb (> 0), zero_lsb
    (within the CADC range 0..255): calibration. The scalars are checked here, the offsets (a tensor
    whose length is the layer's) where the readout is used (validate)."""
    __slots__ = ()

    def __new__(cls, offset_lsb, noise_lsb=0.0, quantise=True, unit_lsb=C.MODEL_UNIT_LSB,
                zero_lsb=C.LEAK_TARGET_LSB):
        _check_scalars(noise_lsb, quantise, unit_lsb, zero_lsb)
        return super().__new__(cls, offset_lsb, float(noise_lsb), quantise, float(unit_lsb),
                               float(zero_lsb))

    def validate(self, n, name="readout"):
        """Raise unless this readout fits a layer of n neurons (offsets [n], finite; scalars in
        range: _replace bypasses the constructor's checks)."""
        _check_scalars(self.noise_lsb, self.quantise, self.unit_lsb, self.zero_lsb, name)
        check_tensor(f"{name}.offset_lsb", self.offset_lsb, shape=(n,))
        return self

    @classmethod
    def ideal(cls, n, dtype=torch.float32, device=None):
        return cls(torch.zeros(n, dtype=dtype, device=device), 0.0, False)

    def to(self, device=None, dtype=None):
        return self._replace(offset_lsb=self.offset_lsb.to(device=device, dtype=dtype))

    @property
    def is_ideal(self):
        return not self.quantise and self.noise_lsb == 0 and not bool(self.offset_lsb.any())


def _check_scalars(noise_lsb, quantise, unit_lsb, zero_lsb, name="ReadoutParams"):
    check_number(f"{name}.noise_lsb", noise_lsb, low=0.0, high=MAX_NOISE_LSB)
    if not isinstance(quantise, bool):
        raise TypeError(f"{name}.quantise must be True or False, got {quantise!r}")
    check_number(f"{name}.unit_lsb", unit_lsb, low=0.0, low_open=True)
    check_number(f"{name}.zero_lsb", zero_lsb, low=C.CADC_MIN, high=C.CADC_MAX)


def cadc_code(v, offset_lsb, noise=None, unit_lsb=C.MODEL_UNIT_LSB, zero_lsb=C.LEAK_TARGET_LSB):
    """Membrane (model units) -> CADC code (float tensor of integers 0..255)."""
    return code_(v.clone(), offset_lsb, unit_lsb, zero_lsb, None if noise is None else noise.clone())


def code_to_model(code, unit_lsb=C.MODEL_UNIT_LSB, zero_lsb=C.LEAK_TARGET_LSB):
    return (code - zero_lsb) * (1.0 / unit_lsb)


def read_membrane(v, readout, noise=None):
    """What the host sees of membrane `v` through `readout` (noise: pre-scaled LSB tensor or None)."""
    return read(v, readout.offset_lsb, readout.quantise, readout.unit_lsb, readout.zero_lsb, noise)


def read_membrane_(v, readout, noise=None, out=None):
    """read_membrane without temporaries: the result goes to `out` (default: overwrite `v`); the
    same operations in the same order. `noise` may be overwritten too."""
    return read_(v, readout.offset_lsb, readout.quantise, readout.unit_lsb, readout.zero_lsb, noise,
                 out)
