"""Host helpers shared by the kernel launchers."""
import os

import torch
import triton


def interpreting():
    """True when Triton runs its numpy interpreter (TRITON_INTERPRET=1) instead of compiling."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def alloc(shape, dtype, device):
    """Every output buffer a launcher hands to a kernel comes from here, so tests can poison them."""
    return torch.empty(shape, dtype=dtype, device=device)


def next_pow2(n):
    return triton.next_power_of_2(max(int(n), 1))
