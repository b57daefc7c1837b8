"""The one registry of benchmark workloads.

Every workload is a network of one hidden population, time-major [T, B, features]:
input spikes -> (recurrent) LIF -> optional LI readout. kind "chip" is timed with the chip layers,
stock snntorch and an eager loop; kind "forward_pass" is a tutorial-style snntorch nn.Sequential
run by stock snntorch and by bss2_backend.integrations.snntorch.forward_pass; kind "loop" is the
network written as a tutorial-style class whose forward loops over the steps, run by stock
snntorch and, unchanged, after convert() (fused in time, and step by step), ideal and on a chip.
"""
from dataclasses import dataclass, replace

import torch

from bss2_backend.weights import mark_spikes

CODINGS = ("latency", "poisson")
WORKLOAD_KINDS = ("chip", "forward_pass", "loop", "population")


@dataclass(frozen=True)
class Workload:
    """name: short id used on the command line and in the CSV; n_out = 0 means no readout."""
    name: str
    title: str
    n_in: int
    n_hidden: int
    n_out: int
    recurrent: bool
    T: int
    B: int
    coding: str = "poisson"
    strict: bool = True
    kind: str = "chip"
    rate: float = 0.05
    chips: int = 1              # kind population: chips run at once, each on the batch

    def __post_init__(self):
        for field in ("n_in", "n_hidden", "T", "B"):
            if getattr(self, field) < 1:
                raise ValueError(f"Workload.{field} must be >= 1, got {getattr(self, field)}")
        if self.n_out < 0:
            raise ValueError(f"Workload.n_out must be >= 0, got {self.n_out}")
        if self.coding not in CODINGS:
            raise ValueError(f"Workload.coding must be one of {CODINGS}, got {self.coding!r}")
        if self.chips < 1:
            raise ValueError(f"Workload.chips must be >= 1, got {self.chips}")
        if self.kind not in WORKLOAD_KINDS:
            raise ValueError(f"Workload.kind must be one of {WORKLOAD_KINDS}, got {self.kind!r}")

    @property
    def shape(self):
        rec = "rec " if self.recurrent else ""
        out = f" -> {self.n_out} LI" if self.n_out else ""
        chips = f", {self.chips} chips" if self.chips > 1 else ""
        return f"{self.n_in} -> {self.n_hidden} {rec}LIF{out}, T={self.T}, B={self.B}{chips}"

    def tiny(self):
        """The same structure at a size the CPU runs in milliseconds (smoke tests only)."""
        return replace(self, n_in=min(self.n_in, 12), n_hidden=min(self.n_hidden, 10),
                       n_out=min(self.n_out, 4), T=min(self.T, 6), B=min(self.B, 3),
                       chips=min(self.chips, 3))

    def check_size(self):
        """A small version for correctness checks: short T, small batch, capped layers, and inputs
        dense enough that the hidden layer spikes."""
        return replace(self, n_in=min(self.n_in, 64), n_hidden=min(self.n_hidden, 48),
                       n_out=min(self.n_out, 10), T=min(self.T, 24), B=min(self.B, 4),
                       rate=max(self.rate, 0.2), chips=min(self.chips, 4))


WORKLOADS = (
    Workload("A", "paper MNIST net (Cramer et al. 2022), latency-coded", 256, 246, 10, False,
             100, 256, coding="latency"),
    Workload("B", "chip-sized SHD net", 70, 186, 20, True, 100, 256),
    Workload("B-large", "SHD net beyond one chip (strict=False)", 700, 1024, 20, True, 100, 256,
             strict=False),
    *(Workload(f"C-{n}", "Open Neuromorphic shape: Linear N->N + LIF", n, n, 0, False, 500, 16,
               strict=False, rate=0.1) for n in (4096, 8192, 16384)),
    Workload("A-fp", "snntorch tutorial net through forward_pass", 256, 246, 10, False,
             100, 64, coding="latency", kind="forward_pass"),
    Workload("A-loop", "paper MNIST net as a tutorial-style class looping over time", 256, 246,
             10, False, 100, 256, coding="latency", kind="loop"),
    Workload("A-loop-64", "A-loop at batch 64", 256, 246, 10, False, 100, 64, coding="latency",
             kind="loop"),
    Workload("A-pop", "A on a population of 64 chips in one launch", 256, 246, 10, False, 100,
             256, coding="latency", kind="population", chips=64),
    Workload("A-pop-8", "A on 8 chips, batch 32 (the CPU's size)", 256, 246, 10, False, 100, 32,
             coding="latency", kind="population", chips=8),
)


def get(names=None):
    """Workloads by name (all when names is None), in registry order."""
    if names is None:
        return list(WORKLOADS)
    known = {w.name: w for w in WORKLOADS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; allowed: {list(known)}")
    return [w for w in WORKLOADS if w.name in set(names)]


def make_inputs(workload, device, dtype=torch.float32, seed=0):
    """(spikes [T, B, n_in], labels [B]) drawn reproducibly on the CPU, then moved.

    latency: each input fires once, earlier for brighter pixels; 60 % of pixels are dark and never
    fire (like downscaled MNIST). poisson: independent Bernoulli spikes at `rate` per step."""
    g = torch.Generator().manual_seed(seed)
    T, B, n = workload.T, workload.B, workload.n_in
    if workload.coding == "latency":
        intensity = torch.rand(B, n, generator=g)
        bright = intensity > 0.6
        step = ((1.0 - intensity) / 0.4 * (T - 1)).long().clamp(0, T - 1)
        spikes = torch.zeros(T, B, n)
        spikes.scatter_(0, step.unsqueeze(0), bright.float().unsqueeze(0))
    else:
        spikes = (torch.rand(T, B, n, generator=g) < workload.rate).float()
    # a population classifies every sample on every chip: one label per (chip, sample)
    labels = torch.randint(0, max(workload.n_out, 1), (B,), generator=g).repeat(workload.chips)
    # marked as 0/1: the chip's exact products may run as int8 GEMMs (weights.code_product)
    return mark_spikes(spikes.to(device=device, dtype=dtype)), labels.to(device)
