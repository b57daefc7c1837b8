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


# Whole-sequence buffers of the CPU paths, kept across calls: a fresh [T, B, N] buffer of tens of
# MB is mapped by glibc and page-faulted in on every call (the issue measured ~45,700 minor faults
# per step of forward_pass; here the C loop's forward took 60 ms with fresh outputs, 23 ms
# without), which costs more than the arithmetic that fills it. Per thread and name.
SCRATCH_MAX_BYTES = 256 * 2**20
OUTPUTS_PER_NAME = 4
reuse_outputs = True            # tests that NaN-poison fresh outputs turn reuse off
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


def output(name, shape, dtype, device):
    """An output buffer (uninitialised) that may leave the op (returned, saved for backward): on the
    CPU one of up to OUTPUTS_PER_NAME buffers kept for `name`, taken only when nothing else holds
    its memory any more (no tensor, view or autograd record shares its storage); else alloc()."""
    numel = math.prod(shape)
    device = torch.device(device)
    if not reuse_outputs or device.type != "cpu" or \
            numel * torch.empty(0, dtype=dtype).element_size() > SCRATCH_MAX_BYTES:
        return alloc(shape, dtype, device)
    pool = _scratch.__dict__.setdefault("outputs", {}).setdefault(name, [])
    free = [b for b in pool if b.dtype == dtype and b.numel() >= numel and _unshared(b)]
    if free:
        # the smallest that fits; a view: every tensor handed out shares (and so counts on) the
        # buffer's storage. The pool holds at most what was alive at once under this name.
        return min(free, key=torch.Tensor.numel)[:numel].view(shape)
    buf = torch.empty(numel, dtype=dtype)
    if len(pool) < OUTPUTS_PER_NAME:
        pool.append(buf)
    return buf.view(shape)


def _unshared(buf):
    # the storage's users: `buf` itself and the temporary storage object of this call (a torch
    # without this counter never reuses)
    count = getattr(torch._C, "_storage_Use_Count", None)
    return count is not None and count(buf.untyped_storage()._cdata) == 2
