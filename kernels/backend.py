"""Which implementation runs an op, and the buffers the implementations allocate.

Every op has two implementations: "torch" (the hand-written plain-PyTorch twin, reference.py in the
op's folder) and "triton" (the fused kernels, triton.py). The caller names one; nothing here picks
or upgrades silently. The torch implementation never imports Triton.
"""
import math
import os
import threading

import torch

IMPLEMENTATIONS = ("torch", "triton")


def interpreting():
    """True when Triton runs its numpy interpreter (TRITON_INTERPRET=1) instead of compiling."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_triton_device(device):
    """The Triton kernels need CUDA tensors, or the interpreter on CPU tensors."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return
    raise ValueError(f"backend='triton' needs CUDA tensors (got device {device}), or "
                     f"TRITON_INTERPRET=1 set before the kernels are imported to run the Triton "
                     f"interpreter on the CPU; use backend='torch' or 'auto' for the CPU path")


def alloc(shape, dtype, device):
    """Every output buffer an implementation hands back comes from here, so tests can poison
    them (NaN-fill) and catch an element an implementation forgets to write."""
    return torch.empty(shape, dtype=dtype, device=device)


def next_pow2(n):
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


# Temporaries of the CPU twins, kept across calls: a fresh [T, B, N] buffer of tens of MB is
# mapped by glibc and page-faulted in on every call (measured: ~45,700 minor faults per step of
# forward_pass), which costs more than the arithmetic that fills it. Only buffers that never leave
# the op (not returned, not saved for backward) come from here; one per name and thread.
SCRATCH_MAX_BYTES = 256 * 2**20
_scratch = threading.local()


def scratch(name, shape, dtype, device):
    """A reusable temporary `shape` buffer (uninitialised) named `name`, on the CPU; elsewhere (the
    caching GPU allocator already reuses) or beyond SCRATCH_MAX_BYTES, a fresh one."""
    numel = math.prod(shape)
    device = torch.device(device)
    if device.type != "cpu" or numel * torch.empty(0, dtype=dtype).element_size() > \
            SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    pool = _scratch.__dict__.setdefault("pool", {})
    buf = pool.get(name)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        buf = pool[name] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)
