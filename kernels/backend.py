"""Which implementation runs an op, and the buffers the implementations allocate.

Every op has two implementations: "torch" (the hand-written plain-PyTorch twin, reference.py in the
op's folder) and "triton" (the fused kernels, triton.py). The caller names one; nothing here picks
or upgrades silently. The torch implementation never imports Triton.
"""
import os

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
