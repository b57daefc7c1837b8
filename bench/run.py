"""Run the registry: every workload x implementation x mode on one device, in one process.

For each workload the implementations are checked (bss2_backend.bench.checks) and timed
(bss2_backend.bench.timing) on the same inputs; a speedup over stock snntorch is reported only
for implementations whose check passed. Rows are appended to the results CSV and the last run is
plotted.
"""
import datetime
import gc
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import bss2_backend
from bss2_backend.dynamics import resolve_backend
from bss2_backend.kernels import paths
from bss2_backend.validation import resolve_device

from . import impls as impl_registry
from . import metrics, registry, results, timing
from .checks import Check, loss_of

MODES = ("fwd", "fwd+bwd")
# the CPU runs only workloads whose fwd+bwd costs at most this many GFLOP (see --all)
CPU_GFLOP_LIMIT = 30.0


MATMUL_PRECISIONS = ("highest", "high", "medium")


@dataclass
class Options:
    """workloads / impls: names to run (None: all); quick: shorter timing loops; tiny: every
    workload shrunk to a smoke-test size; run_all: no CPU size limit."""
    device: str = "auto"
    workloads: Optional[list] = None
    impls: Optional[list] = None
    modes: tuple = MODES
    quick: bool = False
    tiny: bool = False
    run_all: bool = False
    out_dir: Optional[Path] = None      # None: results.default_out_dir()
    plot: bool = True
    # torch.set_float32_matmul_precision for the run: "highest" (strict fp32), "high" (TF32)
    matmul_precision: str = "highest"


def environment():
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    # a copy of the tree on a lent GPU machine names its commit in BSS2_GIT_COMMIT, which wins:
    # such a copy may carry a stale .git (seen: the session's first HEAD, not the tree's commit)
    commit = os.environ.get("BSS2_GIT_COMMIT", "") or commit
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    try:
        import snntorch
        snn_version = snntorch.__version__
    except ImportError:
        snn_version = "absent"
    now = datetime.datetime.now(datetime.timezone.utc)
    # BSS2_RUN_ID groups several processes (one per workload) into one run for the plot
    return {"run_id": os.environ.get("BSS2_RUN_ID") or now.strftime("%Y%m%dT%H%M%SZ"), "date": now.isoformat(timespec="seconds"),
            "git_commit": commit or "unknown", "torch": torch.__version__,
            "triton": triton_version, "snntorch": snn_version,
            "bss2_backend": bss2_backend.__version__}


def _skip_reason(w, device, run_all):
    if device.type != "cpu" or run_all:
        return None
    gflop = metrics.flops(w, "fwd+bwd") / 1e9
    if gflop > CPU_GFLOP_LIMIT:
        return (f"too slow for the CPU: {gflop:.0f} GFLOP per fwd+bwd > {CPU_GFLOP_LIMIT:.0f} "
                f"(run on a GPU, or pass --all)")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = metrics.host_bytes(w)
    if need > ram / 2:
        return f"too big for this host: ~{need / 2**30:.0f} GiB to place the chip layers"
    return None


def _callable(net, x, labels, mode, graph=False, device=None):
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                net(x)
    else:
        params = [p for p in net.parameters() if p.requires_grad]

        def fn():
            for p in params:
                p.grad = None
            z, out = net(x)
            loss_of(z, out, labels).backward()
    if not graph:
        return fn
    from bss2_backend.graphs import GraphedStep
    step = GraphedStep(fn, device=device)
    if step.reason is not None:
        raise RuntimeError(f"CUDA graph: {step.reason}")
    return step


def _budget(options, device):
    if options.tiny:
        return {"warmup_s": 0.0, "rep_s": 0.0, "min_samples": 2}
    if device.type == "cuda":
        return {"warmup_s": 0.1, "rep_s": 0.3 if options.quick else 1.0}
    if options.quick:
        return {"warmup_s": 0.0, "rep_s": 0.5, "min_samples": 2}
    return {"warmup_s": 0.3, "rep_s": 2.0, "min_samples": 3}


def _row(env, dev, w, size, impl, mode, **values):
    row = dict(env, device=dev.name, workload=w.name, shape=w.shape, size=size, impl=impl.name,
               backend=impl.backend, mode=mode, T=w.T, B=w.B, floor_source=dev.floor_source,
               precision=f"fp32 matmul {torch.get_float32_matmul_precision()}"
                         + (", CUDA graph" if impl.graph else ""))
    row.update(values)
    return row


def run_workload(w, impls, device, dev, env, options, say):
    size = "tiny" if options.tiny else "full"
    wl = w.tiny() if options.tiny else w
    mine = [i for i in impls if i.kind == wl.kind and i.applies(wl)]
    reason = _skip_reason(wl, device, options.run_all)
    if reason:
        say(f"  skipped: {reason}")
        return [_row(env, dev, wl, size, i, m, status="skipped", note=reason)
                for i in mine for m in options.modes]
    x, labels = registry.make_inputs(wl, device)
    if wl.kind in ("chip", "population"):
        from bss2_backend.constants import DT_US
        from bss2_backend.energy import figures
        say(f"  {figures(wl.T, DT_US).line()}")
    rows, ready = [], []
    for impl in mine:
        missing = impl.unavailable(device)
        if missing:
            say(f"  {impl.name:22s} not available: {missing}")
            rows += [_row(env, dev, wl, size, impl, m, status="not available", note=missing)
                     for m in options.modes]
            continue
        check = impl.check(wl, device)
        say(f"  {impl.name:22s} check {check.status}: {check.detail}")
        verdict = dict(correctness=check.status, correctness_detail=check.detail)
        if not impl.timed:
            note = "checked only: the Triton interpreter on CPU is not a performance path"
            rows += [_row(env, dev, wl, size, impl, m, status="not timed", note=note, **verdict)
                     for m in options.modes]
            continue
        try:
            torch.manual_seed(0)
            ready.append((impl, verdict, impl.build(wl, device)))
        except Exception as e:  # recorded, never a crash of the whole run
            note = f"build failed: {type(e).__name__}: {e}"
            say(f"  {impl.name:22s} {note}")
            rows += [_row(env, dev, wl, size, impl, m, status="error", note=note, **verdict)
                     for m in options.modes]
    fns = {(impl.name, mode): _callable(net, x, labels, mode, impl.graph, device)
           for impl, _, net in ready for mode in options.modes}
    ran = {key: _paths_of(fn, net, x) for (impl, _, net) in ready for key, fn in fns.items()
           if key[0] == impl.name}
    timings = timing.bench(fns, device, **_budget(options, device))
    load = timing.host_load()
    for impl, verdict, _ in ready:
        for mode in options.modes:
            t = timings[(impl.name, mode)]
            if isinstance(t, Exception):
                rows.append(_row(env, dev, wl, size, impl, mode, status="error", host_load=load,
                                 note=f"timing failed: {type(t).__name__}: {t}", **verdict))
            else:
                rows.append(_timed_row(t, wl, size, impl, mode, dev, env, host_load=load,
                                       **verdict, **ran[(impl.name, mode)]))
    del ready, fns
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _speedups(rows, {i.name for i in mine if i.baseline})
    return rows


def _density(t):
    return float(t.count_nonzero()) / max(t.numel(), 1)


def _paths_of(fn, net, x):
    """One untimed call of fn (it also warms up: a first use builds the C loop): which product
    path and CPU loop our ops noted (empty for implementations that are not ours), and the
    measured spike densities of the input and of the net's first spiking output."""
    if isinstance(fn, Exception):
        return {}
    try:
        with paths.collect() as seen:
            fn()
        with torch.no_grad():
            out = net(x)
        z = out[0] if isinstance(out, tuple) else out
        hidden = _density(z) if isinstance(z, torch.Tensor) else ""
    except Exception:  # noqa: BLE001  the timing records the failure
        return {}
    return {"product": paths.describe(seen, "product", ""), "loop": paths.describe(seen, "loop", ""),
            "input_density": _density(x), "hidden_density": hidden}


def _timed_row(t, w, size, impl, mode, dev, env, **extra):
    seconds = t.median_ms / 1e3
    nbytes, nflop = metrics.traffic(w, mode), metrics.flops(w, mode)
    gbps = nbytes / seconds / 1e9
    floor = dev.floor_bytes_per_s
    return _row(env, dev, w, size, impl, mode, status="ok", median_ms=t.median_ms,
                q20_ms=t.q20_ms, q80_ms=t.q80_ms, samples=t.samples,
                samples_per_s=w.B * w.chips / seconds, gbytes=nbytes / 1e9, gb_per_s=gbps,
                floor_gb_per_s=floor / 1e9, floor_fraction=gbps * 1e9 / floor,
                gflop=nflop / 1e9, gflop_per_s=nflop / seconds / 1e9, **extra)


def _speedups(rows, baselines):
    """speedup_vs_snntorch = baseline median / this median, same workload and mode; refused (left
    empty, with a note) when this implementation's correctness check did not pass."""
    for row in rows:
        if row["status"] != "ok":
            continue
        base = [r for r in rows if r["impl"] in baselines and r["mode"] == row["mode"]
                and r["status"] == "ok"]
        if not base:
            continue
        if not Check(row["correctness"], "").passed:
            row["speedup_vs_snntorch"] = ""
            row["note"] = f"speedup refused: correctness {row['correctness']}"
            continue
        row["speedup_vs_snntorch"] = base[0]["median_ms"] / row["median_ms"]


def header(device, dev, env, options):
    lines = [f"bss2 bench  run {env['run_id']}  commit {env['git_commit']}",
             f"device: {dev.name}; torch {env['torch']}, triton {env['triton']}, "
             f"snntorch {env['snntorch']}",
             f"bandwidth floor: {dev.floor_source}"]
    load = timing.host_load()
    if device.type == "cpu" and load != "":
        lines.append(f"host load: {load:.2f} per core (other processes share these cores; "
                     f"implementations are timed in interleaved rounds so they share it alike)")
    if device.type == "cpu":
        lines.append("CPU run: the chip layers run the torch path (backend auto -> torch, the "
                     "plain-PyTorch twin); the fused Triton kernels need CUDA and are not timed here")
    else:
        lines.append(f"CUDA run: the chip layers run backend auto -> "
                     f"{resolve_backend('auto', device)}")
    if options.tiny:
        lines.append("TINY mode: shrunk shapes for a smoke test; the numbers mean nothing")
    return lines


def format_table(rows):
    head = (f"{'workload':8s} {'impl':22s} {'mode':7s} {'median ms':>10s} {'q20-q80 ms':>17s} "
            f"{'samples/s':>10s} {'GB/s':>7s} {'floor':>6s} {'GFLOP/s':>8s} {'vs snntorch':>12s}  "
            f"{'product/loop':15s} {'density in/hidden':17s}  check")
    out = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            if r["mode"] == MODES[0] or len({x["mode"] for x in rows}) == 1:
                out.append(f"{r['workload']:8s} {r['impl']:22s} {'-':7s} {r['status']}: {r.get('note', '')}")
            continue
        if r.get("speedup_vs_snntorch", "") == "":
            speed = "refused" if "refused" in r.get("note", "") else "-"
        else:
            speed = f"{r['speedup_vs_snntorch']:.2f}x"
        out.append(f"{r['workload']:8s} {r['impl']:22s} {r['mode']:7s} {r['median_ms']:10.3f} "
                   f"{r['q20_ms']:8.3f}-{r['q80_ms']:<8.3f} {r['samples_per_s']:10.0f} "
                   f"{r['gb_per_s']:7.2f} {100 * r['floor_fraction']:5.1f}% "
                   f"{r['gflop_per_s']:8.1f} {speed:>12s}  {_ran(r):15s} {_densities(r):17s}  "
                   f"{r['correctness']}")
    return "\n".join(out)


def _ran(row):
    return f"{row.get('product') or '-'}/{row.get('loop') or '-'}"


def _densities(row):
    d = [row.get("input_density", ""), row.get("hidden_density", "")]
    return "/".join(f"{100 * v:.2f}%" if isinstance(v, float) else "-" for v in d)


def run(options=None, impls=None, say=print):
    """Run the benchmark; returns (rows, csv_path, png_path or None)."""
    options = options or Options()
    device = resolve_device(options.device)
    impls = impl_registry.default_impls(device) if impls is None else list(impls)
    if options.impls is not None:
        known = {i.name for i in impls}
        unknown = [n for n in options.impls if n not in known]
        if unknown:
            raise ValueError(f"unknown implementation(s) {unknown}; allowed: {sorted(known)}")
        impls = [i for i in impls if i.name in options.impls or i.baseline]
    for mode in options.modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    workloads = registry.get(options.workloads)
    if options.matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got "
                         f"{options.matmul_precision!r}")
    # an output that cannot be written is refused now, not after the whole benchmark
    out_dir = results.prepare(options.out_dir)
    env = environment()
    dev = timing.describe(device)
    for line in header(device, dev, env, options):
        say(line)
    rows = []
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(options.matmul_precision)
    try:
        for w in workloads:
            wl = w.tiny() if options.tiny else w
            say(f"[{w.name}] {w.title}: {wl.shape}")
            rows += run_workload(w, impls, device, dev, env, options, say)
    finally:
        torch.set_float32_matmul_precision(previous)
    csv_path = out_dir / results.CSV_NAME
    results.append(csv_path, rows)
    png = results.plot_latest(csv_path, out_dir / results.PLOT_NAME) \
        if options.plot else None
    say("")
    say(format_table(rows))
    say(f"\nappended {len(rows)} rows to {csv_path}" + (f"; plot {png}" if png else ""))
    return rows, csv_path, png
