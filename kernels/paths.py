"""Which path a call took (product: dense | events; loop: eager | compiled), for the benchmark.

The ops note what they ran; `collect()` gathers the notes of the calls made inside it, so a
caller (bench/) can say per implementation which paths ran. Costs one dict lookup per note.
"""
from contextlib import contextmanager

_active = []


def note(kind, value):
    """Record that `kind` ("product", "loop") ran as `value` in every collect() now open."""
    for seen in _active:
        seen.setdefault(kind, set()).add(value)


@contextmanager
def collect():
    """with collect() as seen: ... -> seen: {kind: set of values noted inside}."""
    seen = {}
    _active.append(seen)
    try:
        yield seen
    finally:
        _active.remove(seen)


def describe(seen, kind, default):
    """'a' or 'a+b' (sorted) of what ran for `kind`, or `default` when nothing was noted."""
    return "+".join(sorted(seen.get(kind, ()))) or default
