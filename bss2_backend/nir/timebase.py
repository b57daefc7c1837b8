"""Time bases: what a NIR graph's time constants count in, and which step runs them.

NIR writes continuous-time ODEs; its documents give time constants in ms. Writers differ:

    preset     graph unit                       dt (one step)   one step on the chip
    "nir"      ms of model (biological) time    1.0             1 us (the chip's 1000x speed-up)
    "snntorch" s, as snntorch's exporter writes 1e-4            1 us (snntorch's betas are per step)
    "hxtorch"  ms of chip time (from_nir: x1e-3  1e-3            1 us (hxtorch's dt = 1e-6 s)
               to s, dt = 1e-6 s)

A graph runs in steps of `dt` graph units; every per-step factor is dt / tau (forward Euler, the
discretisation snntorch's exporter and importer assume). On the chip one step is chip.dt_us of
chip time (DT_US = 1 us), so a time constant tau of the graph becomes tau / dt * chip.dt_us us of
chip time: with "nir", 10 ms of model time are 10 us on the chip, the 1000x acceleration.
"""
import math
from typing import NamedTuple

from .. import constants as C
from ..validation import check_number


class TimeBase(NamedTuple):
    """A convention for a graph's times: name; seconds per graph time unit; the step dt in graph
    units that one chip step (DT_US) stands for; chip_time: whether graph times are chip time."""
    name: str
    unit_seconds: float
    dt: float
    chip_time: bool


US = 1e-6
PRESETS = {
    "nir": TimeBase("nir", 1e-3, C.DT_US * US * C.ACCELERATION / 1e-3, False),
    "snntorch": TimeBase("snntorch", 1.0, 1e-4, False),
    "hxtorch": TimeBase("hxtorch", 1e-3, C.DT_US * US / 1e-3, True),
}


def resolve(time_base="nir", dt=None):
    """(TimeBase, dt): a preset by name, dt its default unless given (> 0, graph units)."""
    if not isinstance(time_base, str) or time_base not in PRESETS:
        raise ValueError(f"time_base={time_base!r} is not supported; choose one of "
                         f"{sorted(PRESETS)} (see bss2_backend.nir.timebase)")
    base = PRESETS[time_base]
    if dt is None:
        return base, base.dt
    check_number("dt", dt, low=0.0, low_open=True)
    return base, float(dt)


def chip_us(tau, dt, chip_dt_us=C.DT_US):
    """A graph time constant `tau` run in steps of `dt`, in us of chip time."""
    return tau / dt * chip_dt_us


def graph_tau(tau_us, dt, chip_dt_us=C.DT_US):
    """Inverse of chip_us: us of chip time -> graph units with steps of `dt`."""
    return tau_us / chip_dt_us * dt


def close(a, b, rel=1e-6):
    return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)
