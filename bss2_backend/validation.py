"""Argument checks that fail early with a message naming the argument, its value and what is allowed."""
import math
import numbers
import os

import torch

# Checks that read tensor values (NaN/inf, parameter ranges) need the values on the host: free on
# the CPU, but on a GPU each one waits for the device to drain its queue, which costs more than the
# kernels of a whole forward pass. So on a GPU the per-call value checks are off unless asked for
# (BSS2_CHECK_VALUES=1, or check_values(True)); shapes, dtypes and devices are always checked, and a
# Chip's own parameters are valid by construction.
_value_checks = {"1": True, "0": False}.get(os.environ.get("BSS2_CHECK_VALUES", ""), None)


def check_values(enabled=None):
    """Set when value checks run: True always, False never, None (default) on CPU tensors only.
    Returns the previous setting."""
    global _value_checks
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    previous, _value_checks = _value_checks, enabled
    return previous


def checks_values(x):
    """Whether value checks run for tensor x under the current setting (see check_values)."""
    if _value_checks is None:
        return x.device.type == "cpu"
    return _value_checks


def check_tensor(name, x, *, ndim=None, shape=None, floating=True, finite=True):
    """Raise TypeError/ValueError unless `x` is a tensor of the given rank/shape with finite values
    (the values only where checks_values(x): see check_values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype (float16/bfloat16/float32/float64), "
                        f"got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None:
        want = tuple(shape)
        if len(want) != x.dim() or any(w is not None and w != s for w, s in zip(want, x.shape)):
            pretty = tuple("*" if w is None else w for w in want)
            raise ValueError(f"{name} must have shape {pretty}, got {tuple(x.shape)}")
    # one reduction instead of an elementwise test: NaN/inf always reach the sum; a finite sum
    # that overflowed is re-checked elementwise before anything is refused
    if finite and x.numel() and x.is_floating_point() and checks_values(x) \
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


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(choices)}")
    return value
