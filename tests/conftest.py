"""Test configuration. Without a GPU, Triton kernels run in the interpreter (numpy, sequential
programs): TRITON_INTERPRET must be set before any @triton.jit function is defined, so here, before
bss2_backend.kernels is imported by any test. With a GPU the same tests run the compiled kernels."""
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture
def shared_data():
    """../shared/data, or skip (CI and fresh machines may not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def poisoned(monkeypatch):
    """NaN-fill (0xFF for integers) every output buffer the op implementations allocate through
    kernels.backend.alloc, so an element a kernel forgets to write fails loudly."""
    from bss2_backend.kernels import backend

    def alloc(shape, dtype, device):
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(255)
    monkeypatch.setattr(backend, "alloc", alloc)
    monkeypatch.setattr(backend, "reuse_outputs", False)     # every output fresh, so poisoned


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
