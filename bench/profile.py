"""Where one workload's time goes: torch.profiler over a few iterations of each implementation.

    python -m bss2_backend.bench.profile --workloads A B --impls bss2.ideal[triton] snntorch

Prints, per workload and implementation, the synchronised wall time per iteration, the device's
busy time per iteration (sum of kernel times), their ratio (near 1: the device is the limit; far
below: launches and Python are), the launch count, and the profiler's table of the costliest ops.
A diagnostic for developers; the numbers that count are `bss2 bench`'s.
"""
import argparse
import sys
import time

import torch

from . import impls as impl_registry
from . import registry
from .run import MODES, _callable, resolve_device


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn, device, iters):
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e3


def profile(fn, device, iters, rows):
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, acc_events=True) as prof:
        for _ in range(iters):
            fn()
        _sync(device)
    events = prof.key_averages()
    # kernels and copies are the events that run on the device (ops' device totals repeat them)
    on_device = [e for e in events if e.device_type != DeviceType.CPU]
    device_us = sum(e.self_device_time_total for e in on_device)
    launches = sum(e.count for e in on_device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    return device_us / iters / 1e3, launches / iters, table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bss2_backend.bench.profile", description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--workloads", nargs="+", default=["A"])
    p.add_argument("--impls", nargs="+", default=None, help="default: every implementation")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["fwd+bwd"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    if args.iters < 1:
        print(f"profile: error: --iters must be >= 1, got {args.iters}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    impls = impl_registry.default_impls(device)
    if args.impls is not None:
        impls = [i for i in impls if i.name in args.impls]
    summary = []
    for w in registry.get(args.workloads):
        x, labels = registry.make_inputs(w, device)
        for impl in impls:
            if impl.kind != w.kind or not impl.applies(w) or not impl.timed \
                    or impl.unavailable(device):
                continue
            torch.manual_seed(0)
            net = impl.build(w, device)
            for mode in args.modes:
                fn = _callable(net, x, labels, mode)
                for _ in range(3):
                    fn()
                wall = wall_ms(fn, device, args.iters)
                busy, launches, table = profile(fn, device, args.iters, args.rows)
                print(f"\n=== {w.name} {impl.name} {mode}: wall {wall:.3f} ms/iter, device busy "
                      f"{busy:.3f} ms/iter ({busy / wall:.0%}), {launches:.0f} kernels/iter")
                print(table)
                summary.append((w.name, impl.name, mode, wall, busy, launches))
            del net
    print(f"\n{'workload':8s} {'impl':22s} {'mode':8s} {'wall ms':>9s} {'busy ms':>9s} "
          f"{'busy':>5s} {'kernels':>8s}")
    for name, impl, mode, wall, busy, launches in summary:
        print(f"{name:8s} {impl:22s} {mode:8s} {wall:9.3f} {busy:9.3f} {busy / wall:5.0%} "
              f"{launches:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
