"""The results CSV (appended to, one row per workload x implementation x mode) and its plot."""
import csv
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CSV_NAME = "results.csv"
PLOT_NAME = "latest.png"


def default_out_dir():
    """bench/results in a source checkout (the committed record); the current folder when the
    package is installed (never a file inside site-packages)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "bss2_backend").is_dir():
        return RESULTS_DIR
    return Path.cwd()


def prepare(out_dir=None):
    """The output folder, created and proven writable, with a results CSV that can be appended to
    (same columns); OutputError / ValueError before any benchmark runs otherwise."""
    from bss2_backend.files import OutputError, prepare_out
    out_dir = prepare_out(default_out_dir() if out_dir is None else out_dir)
    csv_path = out_dir / CSV_NAME
    if csv_path.exists():
        if not csv_path.is_file():
            raise OutputError(f"--out {out_dir}: {csv_path} is not a file")
        try:
            with csv_path.open(newline="") as f:
                header = tuple(next(csv.reader(f), ()))
            with csv_path.open("a"):
                pass
            if header in LEGACY_HEADERS:
                header = COLUMNS           # gains the newer columns when appended to
        except OSError as e:
            raise OutputError(f"--out {out_dir}: {csv_path} cannot be appended to "
                              f"({e.strerror or e})") from None
        if header and header != COLUMNS:
            raise ValueError(f"{csv_path} has columns {list(header)}, expected {list(COLUMNS)}; "
                             f"move it aside or pass another --out directory")
    return out_dir

COLUMNS = (
    "run_id", "date", "git_commit", "device", "torch", "triton", "snntorch", "bss2_backend",
    "workload", "shape", "size", "impl", "backend", "precision", "mode", "T", "B",
    "median_ms", "q20_ms", "q80_ms", "samples", "samples_per_s",
    "gbytes", "gb_per_s", "floor_gb_per_s", "floor_fraction", "floor_source",
    "gflop", "gflop_per_s", "speedup_vs_snntorch",
    "correctness", "correctness_detail", "status", "host_load", "note",
    "product", "loop", "input_density", "hidden_density",
)
# what ran (synaptic product dense | events, CPU time loop eager | compiled) and the measured
# spike densities: added later, empty in older rows
PATH_COLUMNS = ("product", "loop", "input_density", "hidden_density")


# the columns before "precision" was recorded: such a CSV gains the column (empty for its rows)
PREVIOUS_COLUMNS = tuple(c for c in COLUMNS if c != "precision" and c not in PATH_COLUMNS)
# headers of older CSVs, upgraded to COLUMNS when appended to
LEGACY_HEADERS = (PREVIOUS_COLUMNS, tuple(c for c in COLUMNS if c not in PATH_COLUMNS))


def _upgrade(path):
    """Rewrite a CSV with one of LEGACY_HEADERS to COLUMNS (returns the header it has now)."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header not in LEGACY_HEADERS:
            return header
        rows = [dict(zip(header, r)) for r in reader]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in COLUMNS})
    tmp.replace(path)
    return COLUMNS


def append(path, rows):
    """Append rows (dicts keyed by COLUMNS) to the CSV at `path`, writing the header if new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        header = _upgrade(path)
        if header != COLUMNS:
            raise ValueError(f"{path} has columns {list(header)}, expected {list(COLUMNS)}; "
                             f"move it aside or pass another --out directory")
        new = False
    else:
        new = True
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            unknown = set(row) - set(COLUMNS)
            if unknown:
                raise ValueError(f"result row has unknown columns {sorted(unknown)}")
            writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read(path):
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def plot_latest(csv_path, png_path):
    """Median time per workload and implementation of the CSV's last run, log scale, one panel per
    mode; q20-q80 as error bars. Returns the path written, or None when nothing was timed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read(csv_path)
    if not rows:
        return None
    latest = rows[-1]["run_id"]
    rows = [r for r in rows if r["run_id"] == latest and r["status"] == "ok"]
    if not rows:
        return None
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in rows)]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    width = 0.8 / len(impls)
    for ax, mode in zip(axes[0], modes):
        for k, impl in enumerate(impls):
            xs, ys, lo, hi = [], [], [], []
            for i, wl in enumerate(workloads):
                match = [r for r in rows if r["mode"] == mode and r["impl"] == impl
                         and r["workload"] == wl]
                if match:
                    r = match[-1]
                    med = float(r["median_ms"])
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(med)
                    lo.append(med - float(r["q20_ms"]))
                    hi.append(float(r["q80_ms"]) - med)
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], label=impl, capsize=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel("median time per call (ms, log)")
        ax.set_title(f"{mode}")
        ax.grid(axis="y", which="both", alpha=0.3)
    # one legend under the panels, where it hides no bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(impls), 7), fontsize=8)
    first = rows[0]
    tiny = " [TINY smoke-test shapes]" if first["size"] == "tiny" else ""
    fig.suptitle(f"bss2 bench {latest}{tiny}: {first['device']}, torch {first['torch']}, "
                 f"commit {first['git_commit']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
