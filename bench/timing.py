"""Timing and the device's bandwidth floor.

CUDA: triton.testing.do_bench (synchronised, L2 flushed between calls), median and 20/80 %
quantiles. CPU: a wall-clock loop after warm-up reporting the same statistics (the CPU has nothing
to synchronise; each call returns when its work is done).
"""
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)

# HBM bandwidth in bytes/s: (datasheet, measured device-to-device copy or None); matched against
# torch.cuda.get_device_name by substring, most specific first
GPU_BANDWIDTH = (
    ("H200", 4.8e12, None),
    ("H100 PCIe", 2.0e12, None),
    ("H100", 3.35e12, 3.0e12),
    ("A100-SXM4-80GB", 2.039e12, None),
    ("A100 80GB", 1.935e12, None),
    ("A100", 1.555e12, None),
    ("L40S", 0.864e12, None),
    ("RTX 4090", 1.008e12, None),
)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float
    samples: int


@dataclass(frozen=True)
class Device:
    name: str
    torch_device: torch.device
    floor_bytes_per_s: float    # nan when unknown
    floor_source: str


def describe(device):
    """Device name and bandwidth floor; on CPU the floor is a measured memcpy."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, datasheet, measured in GPU_BANDWIDTH:
            if key in name:
                if measured is not None:
                    return Device(name, device, measured,
                                  f"measured copy {measured / 1e12:.2f} TB/s "
                                  f"(datasheet {datasheet / 1e12:.2f})")
                return Device(name, device, datasheet, f"datasheet {datasheet / 1e12:.2f} TB/s")
        return Device(name, device, float("nan"), "unknown GPU: bandwidth floor unknown")
    cpu = platform.processor() or platform.machine()
    name = f"cpu {cpu} (torch threads {torch.get_num_threads()} of {os.cpu_count()} cores)"
    bw = cpu_copy_bandwidth()
    return Device(name, device, bw, f"measured memcpy {bw / 1e9:.1f} GB/s (read + write)")


def cpu_copy_bandwidth(n_bytes=256 * 2**20, repeats=5):
    """Best of `repeats` copies of an n_bytes float32 tensor, counting bytes read + written."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best


def bench(fns, device, *, warmup_s=0.5, rep_s=2.0, min_samples=3, max_samples=100):
    """Time every callable of the dict `fns` on `device`; returns {key: Timing} in milliseconds,
    or {key: Exception} for a callable that raised.

    CUDA: do_bench, one callable after the other. CPU: interleaved rounds (each round calls every
    callable once) so that load from other processes on the host hits all of them alike; rounds
    continue until every callable has min_samples and rep_s of samples, or max_samples."""
    if torch.device(device).type == "cuda":
        return {key: _do_bench(fn, warmup_s, rep_s) for key, fn in fns.items()}
    out, times, spent = {}, {key: [] for key in fns}, dict.fromkeys(fns, 0.0)
    live = dict(fns)
    for key, fn in list(live.items()):
        start = time.perf_counter()
        try:
            fn()
            while time.perf_counter() - start < warmup_s:
                fn()
        except Exception as e:  # recorded for this callable; the others go on
            out[key] = e
            del live[key]
    while live:
        for key, fn in list(live.items()):
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:
                out[key] = e
                del live[key]
                continue
            dt = time.perf_counter() - t
            times[key].append(dt * 1e3)
            spent[key] += dt
            n = len(times[key])
            if n >= max_samples or (n >= min_samples and spent[key] >= rep_s):
                del live[key]
    for key, samples in times.items():
        if key not in out:
            med, q20, q80 = np.quantile(samples, QUANTILES)
            out[key] = Timing(float(med), float(q20), float(q80), len(samples))
    return out


def _do_bench(fn, warmup_s, rep_s):
    from triton.testing import do_bench
    try:
        # do_bench's warmup and rep are time budgets in ms
        med, q20, q80 = do_bench(fn, warmup=int(warmup_s * 1000), rep=int(rep_s * 1000),
                                 quantiles=list(QUANTILES))
    except Exception as e:
        return e
    return Timing(med, q20, q80, max(1, int(rep_s * 1000 / max(med, 1e-3))))


def host_load():
    """1-minute load average per core ('' where the OS does not say)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return ""
