"""Argument checks that fail early with a message naming the argument, its value and what is allowed.

Three kinds of check, in the order every entry point runs them:
1. static ones (types, ranks, shapes, dtypes, devices): always, they cost no device time;
2. sizes: a request whose tensors would not fit the device's memory (or BSS2_MEMORY_LIMIT) is
   refused before anything is allocated or read, naming the size;
3. values (NaN/inf, parameter ranges): they read the tensor, see below.
"""
import math
import numbers
import os
import re

import torch

# Checks that read tensor values (NaN/inf, parameter ranges) need the values on the host: free on
# the CPU, but on a GPU each one waits for the device to drain its queue, which costs more than the
# kernels of a whole forward pass. So on a GPU the per-call value checks are off unless asked for
# (BSS2_CHECK_VALUES=1, or check_values(True)); shapes, dtypes and devices are always checked, and a
# Chip's own parameters are valid by construction.
_UNSET = object()
_value_checks = _UNSET       # read from BSS2_CHECK_VALUES on first use (a bad value is an error then)


def _policy():
    global _value_checks
    if _value_checks is _UNSET:
        text = os.environ.get("BSS2_CHECK_VALUES", "")
        if text not in ("", "0", "1"):
            raise ValueError(f"BSS2_CHECK_VALUES={text!r}: use 1 (value checks on every device), 0 "
                             f"(off) or leave it unset (on CPU tensors only)")
        _value_checks = {"1": True, "0": False}.get(text)
    return _value_checks


class TooLargeError(ValueError, MemoryError):
    """A request whose tensors would exceed the device's memory (or BSS2_MEMORY_LIMIT)."""


def check_values(enabled=None):
    """Set when value checks run: True always, False never, None (default) on CPU tensors only.
    Returns the previous setting."""
    global _value_checks
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    previous, _value_checks = _policy(), enabled
    return previous


def checks_values(x):
    """Whether value checks run for tensor x under the current setting (see check_values).

    Never while torch.compile traces (there are no values to read). Under CUDA-graph capture a
    value check cannot run (it reads the device): asking for one there is an error, not a skip."""
    if torch.compiler.is_compiling() or x.device.type == "meta":
        return False
    policy = _policy()
    on = x.device.type == "cpu" if policy is None else policy
    if on and x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("value checks (BSS2_CHECK_VALUES=1 or check_values(True)) read tensors "
                           "on the host and cannot run under CUDA-graph capture; turn them off "
                           "while capturing")
    return on


def check_device(name, x):
    """Refuse tensors without data (the meta device): nothing can be computed from them."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without data); move it to "
                         f"'cpu' or 'cuda' first")
    return x


def check_tensor(name, x, *, ndim=None, shape=None, floating=True, finite=True):
    """Raise TypeError/ValueError unless `x` is a tensor with data, of the given rank/shape, with
    finite values (the values only where checks_values(x): see check_values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float16/bfloat16/float32/"
                        f"float64, real), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None:
        want = tuple(shape)
        if len(want) != x.dim() or any(w is not None and w != s for w, s in zip(want, x.shape)):
            pretty = tuple("*" if w is None else w for w in want)
            raise ValueError(f"{name} must have shape {pretty}, got {tuple(x.shape)}")
    check_device(name, x)
    if finite:
        check_finite(name, x)
    return x


def check_finite(name, x):
    """Raise ValueError if floating tensor x holds NaN or inf (only where checks_values(x))."""
    # one reduction instead of an elementwise test: NaN/inf always reach the sum; a finite sum
    # that overflowed is re-checked elementwise before anything is refused
    if x.numel() and x.is_floating_point() and checks_values(x) \
            and not bool(torch.isfinite(x.sum())):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf; all values must be finite")
    return x


def check_number(name, value, *, low=None, high=None, low_open=False, integer=False):
    """Raise unless `value` is a real number in [low, high] (or (low, high] with low_open)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, "
                        f"got {type(value).__name__} {value!r}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value} is out of range; allowed {bracket}{lo}, {hi}]")
    return value


def resolve_device(text, flag="--device"):
    """A device string -> torch.device: "auto" (CUDA when present, else the CPU), "cpu", "cuda" or
    "cuda:N" of a visible GPU; ValueError naming `flag` otherwise."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{flag} {text}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"{flag} {text}: no CUDA device is visible on this machine; use {flag} cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device


def check_choice(name, value, choices):
    try:
        known = value in choices
    except TypeError:                      # unhashable values are no choice either
        known = False
    if not known:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(choices)}")
    return value


# --- sizes ----------------------------------------------------------------------------------------
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def _parse_bytes(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"BSS2_MEMORY_LIMIT={text!r} is not a size; use bytes or e.g. 8G, 512M")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def memory_limit(device):
    """Bytes a single request may take on `device`: BSS2_MEMORY_LIMIT when set, else the device's
    total memory (host RAM for the CPU); None where unknown."""
    env = os.environ.get("BSS2_MEMORY_LIMIT")
    if env:
        return _parse_bytes(env)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_environment():
    """Read BSS2_CHECK_VALUES and BSS2_MEMORY_LIMIT now (ValueError naming a bad one), so a
    command fails at its start rather than deep inside the work."""
    _policy()
    env = os.environ.get("BSS2_MEMORY_LIMIT")
    if env:
        _parse_bytes(env)


def format_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_allocation(what, nbytes, device):
    """Raise TooLargeError when `what` would need more than memory_limit(device) bytes (not while
    torch.compile traces: the host's memory is no part of the graph)."""
    if torch.compiler.is_compiling():
        return nbytes
    limit = memory_limit(device)
    if limit is not None and nbytes > limit:
        source = "BSS2_MEMORY_LIMIT" if os.environ.get("BSS2_MEMORY_LIMIT") else \
            f"the memory of {torch.device(device)}"
        raise TooLargeError(f"{what} would need {format_bytes(nbytes)}, more than {source} "
                            f"({format_bytes(limit)}); use fewer steps, a smaller batch or fewer "
                            f"neurons")
    return nbytes


def nbytes(shape, dtype=torch.float32):
    """Bytes of a tensor of `shape` and `dtype` (Python ints: no overflow)."""
    return math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()
