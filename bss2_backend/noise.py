"""Temporal noise: redrawn on every run, reproducible from the chip seed and its run counter.

Two sources, both Gaussian and in CADC LSB:
- readout: added to the membrane before the CADC quantises it (~2 LSB, hagen-mode measurement);
- membrane: added to the membrane every integration step before the threshold test, so it jitters
  spike times ([U] magnitude: trial-to-trial spread of spiking traces is ~1.5-2 LSB in total).
"""
from dataclasses import dataclass

from .validation import check_number

MAX_NOISE_LSB = 50.0


@dataclass(frozen=True)
class Noise:
    readout_lsb: float = 2.0
    membrane_lsb: float = 0.5

    def __post_init__(self):
        check_number("Noise.readout_lsb", self.readout_lsb, low=0.0, high=MAX_NOISE_LSB)
        check_number("Noise.membrane_lsb", self.membrane_lsb, low=0.0, high=MAX_NOISE_LSB)

    @classmethod
    def from_spec(cls, spec):
        if spec is True:
            return cls()
        if spec is False or spec is None:
            return cls(0.0, 0.0)
        if isinstance(spec, Noise):
            return spec
        raise TypeError(f"noise must be True, False or a bss2_backend.Noise; got {spec!r}")

    @property
    def is_zero(self):
        return self.readout_lsb == 0 and self.membrane_lsb == 0


def run_seed(chip_seed, run):
    """A 63-bit seed for one run of one layer, from the chip seed and the chip's run counter."""
    x = (int(chip_seed) * 0x9E3779B97F4A7C15 + int(run) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 31) - 1)


# a layer's run seeds: (key + run * RUN_STRIDE) mod SEED_PRIME, integer arithmetic that never
# overflows int64 (key < 2^61, run < 2^32, RUN_STRIDE < 2^31), so the host (Python ints) and the
# device (an int64 counter advanced by tensor ops, as a captured CUDA graph needs) compute the
# same seeds; distinct for every run of a layer, as SEED_PRIME is prime
SEED_PRIME = (1 << 61) - 1
RUN_STRIDE = 0x5BD1E995
RUN_MASK = (1 << 32) - 1


def layer_key(chip_seed, circuit):
    """The seed of run 0 of the layer whose first circuit is `circuit`: noise belongs to where a
    layer sits on the chip, not to the order layers happen to run in."""
    x = (int(chip_seed) * 0x9E3779B97F4A7C15 + int(circuit) * 0xC2B2AE3D27D4EB4F +
         0x165667B19E3779F9) & ((1 << 64) - 1)
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & ((1 << 64) - 1)
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & ((1 << 64) - 1)
    x ^= x >> 33
    return x % SEED_PRIME


def layer_seed(chip_seed, circuit, run):
    """The seed of run number `run` of a layer (see layer_key); an int in [0, 2^61)."""
    return (layer_key(chip_seed, circuit) + (int(run) & RUN_MASK) * RUN_STRIDE) % SEED_PRIME


def layer_seed_tensor(key, runs):
    """layer_seed on the device: key and runs int64 tensors; no host synchronisation."""
    return (key + (runs & RUN_MASK) * RUN_STRIDE) % SEED_PRIME

