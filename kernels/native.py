"""C time loops for the CPU path: built once with the system's C compiler, cached, loaded by ctypes.

Why C and not torch.compile: measured on this project's 2-core CPU (1 thread, shared), for a LIF
step at T = 100, B = 256, N = 246: Inductor's code for one step, called from the Python loop, ran
slower than the eager loop (84 vs 58 ms: the compiled call's own overhead per step exceeds the
fused work); compiling the whole loop unrolled T (58 s to compile, forward only, again for every
T) and then ran at 1108 ms per call. A plain C loop over T needs no torch headers: it compiled in
2.8 s wall (1.2 s CPU) on the loaded machine and runs at the speed of the arithmetic.

Which loop runs is explicit (`cpu_loop`): "auto" (compiled when a C compiler works, else the
eager twin, with a one-time notice), "compiled" (refused with a clear error when it cannot be
built), "eager" (the twin). BSS2_CPU_LOOP sets the default; BSS2_CC names the compiler (default:
$CC, then cc, gcc, clang); BSS2_CACHE_DIR the cache (default ~/.cache/bss2_backend).
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from .scoped import ScopedChoice

CPU_LOOPS = ("auto", "compiled", "eager")
# no FMA contraction (bit-equality with the twin); the host's vector units (the cache key holds it)
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
          "-shared", "-fPIC")
_mode = [os.environ.get("BSS2_CPU_LOOP", "auto")]
_libraries = {}
_noticed = set()


class NativeNotice(UserWarning):
    """The compiled CPU loop is unavailable: the eager twin runs instead."""


class cpu_loop(ScopedChoice):
    """Set (or, as a context manager, scope) which CPU time loop runs: CPU_LOOPS."""
    choices, label, current = CPU_LOOPS, "cpu_loop", _mode


def current_mode():
    mode = _mode[0]
    if mode not in CPU_LOOPS:
        raise ValueError(f"BSS2_CPU_LOOP must be one of {CPU_LOOPS}, got {mode!r}")
    return mode


def compiler():
    """Path of the C compiler, or None."""
    for name in (os.environ.get("BSS2_CC"), os.environ.get("CC"), "cc", "gcc", "clang"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def cache_dir():
    root = os.environ.get("BSS2_CACHE_DIR") or Path.home() / ".cache" / "bss2_backend"
    return Path(root) / "native"


def _host():
    """The machine and its CPU's feature flags: -march=native code runs only where they match."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build(source, cc):
    """The shared library of `source`, compiled once per (source, compiler, flags, host)."""
    text = Path(source).read_bytes()
    key = hashlib.sha256(text + cc.encode() + " ".join(CFLAGS).encode() +
                         _host().encode()).hexdigest()[:16]
    out = cache_dir() / f"{Path(source).stem}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target, then rename: concurrent first uses never load a partial file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            subprocess.run([cc, *CFLAGS, "-o", tmp, str(source), "-lm"], check=True,
                           capture_output=True, text=True, timeout=120)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(out))


def library(source):
    """The loaded library of C file `source`, or None when the eager twin should run instead
    (cpu_loop "eager", or "auto" without a working compiler: said once). Raises under
    "compiled" when it cannot be built."""
    mode = current_mode()
    if mode == "eager":
        return None
    source = Path(source)
    if source not in _libraries:
        _libraries[source] = _load(source)
    lib, reason = _libraries[source]
    if lib is not None:
        return lib
    if mode == "compiled":
        raise RuntimeError(f"cpu_loop='compiled': {reason}; use cpu_loop('auto') or 'eager'")
    if reason not in _noticed:
        _noticed.add(reason)
        warnings.warn(f"the compiled CPU time loop is unavailable ({reason}): the eager "
                      f"PyTorch loop runs instead (slower, same results)", NativeNotice,
                      stacklevel=3)
    return None


def _load(source):
    """(library, None) or (None, why not); tried once per process."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler found (set BSS2_CC or CC, or install cc/gcc/clang)"
    try:
        return _build(source, cc), None
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return None, f"building {source.name} with {cc} failed: {detail.strip()[:300]}"


def forget():
    """Drop loaded libraries and said notices (tests)."""
    _libraries.clear()
    _noticed.clear()
