"""A hostile user's corpus against the `bss2` command line, each case run as its own process:
flags, environment, data files, output places and faults (Ctrl-C, a write that fails half way, a
reader that goes away). Every case must end in exit code 2 with exactly one line on stderr that
names the problem (or the documented code: 130 for Ctrl-C, 141 for a closed pipe), never a
traceback, and no earlier file may be damaged."""
import concurrent.futures
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bss2_backend.train.checkpoint import load_checkpoint

SMALL = ["--limit-train", "32", "--limit-test", "16", "--epochs", "1", "--steps", "10",
         "--no-progress", "--device", "cpu"]


def _mnist(x_train=None, y_train=None, x_test=None, y_test=None):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 12), "x_test": rng.integers(0, 256, (5, 28, 28),
                                                                         dtype=np.uint8),
              "y_test": rng.integers(0, 10, 5)}
    for k, v in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        if v is not None:
            arrays[k] = v(arrays[k])
    return arrays


def _with(value):
    def put(a):
        a = a.astype(np.float64)
        a[0, 0, 0] = value
        return a
    return put


DATA = {
    "strings.npz": _mnist(x_train=lambda a: a.astype(str)),
    "complex.npz": _mnist(x_train=lambda a: a.astype(np.complex64)),
    "nan.npz": _mnist(x_train=_with(np.nan)),
    "inf.npz": _mnist(x_test=_with(np.inf)),
    "negative.npz": _mnist(x_train=_with(-3.0)),
    "too_bright.npz": _mnist(x_train=_with(300.0)),
    "bool.npz": _mnist(x_train=lambda a: a > 128),
    "float_labels.npz": _mnist(y_train=lambda a: a.astype(np.float32)),
    "label_10.npz": _mnist(y_test=lambda a: a + 10),
    "flat_images.npz": _mnist(x_train=lambda a: a.reshape(12, -1)),
    "empty_test.npz": _mnist(x_test=lambda a: a[:0], y_test=lambda a: a[:0]),
}


def _write_shd(path, times, units, labels):
    with h5py.File(path, "w") as f:
        ft, fu = h5py.vlen_dtype(np.float64), h5py.vlen_dtype(np.int64)
        t = f.create_dataset("spikes/times", (len(times),), dtype=ft)
        u = f.create_dataset("spikes/units", (len(units),), dtype=fu)
        for i in range(len(times)):
            t[i], u[i] = np.asarray(times[i], np.float64), np.asarray(units[i], np.int64)
        f.create_dataset("labels", data=np.asarray(labels))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    for name, arrays in DATA.items():
        np.savez(root / name, **arrays)
    np.savez(root / "objects.npz", x_train=np.array([{"a": 1}], dtype=object),
             y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "a_file").write_text("not a folder")
    for name, times, units, labels in (
            ("shd_nan", [[0.1, np.nan]], [[1, 2]], [3]),
            ("shd_negative", [[-0.5, 0.1]], [[1, 2]], [3]),
            ("shd_channels", [[0.1, 0.2]], [[1, 900]], [3]),
            ("shd_labels", [[0.1, 0.2]], [[1, 2]], [25])):
        (root / name).mkdir()
        for split in ("train", "test"):
            _write_shd(root / name / f"shd_{split}.h5", times, units, labels)
    (root / "resume").mkdir()
    (root / "resume" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    return root


def _cases(f):
    """(id, argv, extra environment, expected exit code, text the one stderr line must hold)."""
    T = ["train", "--out", str(f / "out")]
    S = ["selfcal", "--out", str(f / "sc")]
    cases = [
        # train: numbers
        ("lr inf", T + ["--lr", "inf"], {}, 2, "argument --lr: inf is not a finite number"),
        ("lr nan", T + ["--lr", "nan"], {}, 2, "argument --lr: nan is not a finite number"),
        ("lr 0", T + ["--lr", "0"], {}, 2, r"argument --lr: 0 is out of range; allowed (0.0, inf]"),
        ("lr -1", T + ["--lr", "-1"], {}, 2, "argument --lr: -1 is out of range"),
        ("lr word", T + ["--lr", "fast"], {}, 2, "argument --lr: 'fast' is not a number"),
        ("reg nan", T + ["--reg", "nan"], {}, 2, "argument --reg: nan is not a finite number"),
        ("reg inf", T + ["--reg", "inf"], {}, 2, "argument --reg: inf is not a finite number"),
        ("reg -1", T + ["--reg", "-1"], {}, 2, "argument --reg: -1 is out of range"),
        ("steps 1", T + ["--steps", "1"], {}, 2, "argument --steps: 1 is out of range; allowed [3, inf]"),
        ("steps 0", T + ["--steps", "0"], {}, 2, "argument --steps: 0 is out of range"),
        ("steps 2.5", T + ["--steps", "2.5"], {}, 2, "argument --steps: '2.5' is not an integer"),
        ("steps 10^9", T + SMALL + ["--steps", "1000000000"], {}, 2, "would need"),
        ("epochs 0", T + ["--epochs", "0"], {}, 2, "argument --epochs: 0 is out of range"),
        ("epochs -3", T + ["--epochs", "-3"], {}, 2, "argument --epochs"),
        ("batch 0", T + ["--batch-size", "0"], {}, 2, "argument --batch-size: 0 is out of range"),
        ("limit-train 0", T + ["--limit-train", "0"], {}, 2, "argument --limit-train"),
        ("limit-test -1", T + ["--limit-test", "-1"], {}, 2, "argument --limit-test"),
        ("threads 0", T + ["--threads", "0"], {}, 2, "argument --threads: 0 is out of range; allowed [1, 1024]"),
        ("threads 10^5", T + ["--threads", "100000"], {}, 2, "argument --threads"),
        ("seed -1", T + ["--seed", "-1"], {}, 2, "argument --seed: -1 is out of range"),
        ("seed 2^40", T + ["--seed", str(2**40)], {}, 2, "argument --seed"),
        ("chip-seed -1", T + ["--chip-seed", "-1"], {}, 2, "argument --chip-seed: -1 is out of range"),
        ("chip-seed word", T + ["--chip-seed", "abc"], {}, 2, "argument --chip-seed: 'abc' is not an integer"),
        ("chip-seed 2^64", T + ["--chip-seed", str(2**64)], {}, 2, "argument --chip-seed"),
        # train: chip
        ("mismatch banana", T + ["--mismatch", "banana"], {}, 2, "'banana' is neither a preset"),
        ("mismatch 1.5", T + ["--mismatch", "1.5"], {}, 2, "sigma_d=1.5 is out of range"),
        ("mismatch nan", T + ["--mismatch", "nan"], {}, 2, "sigma_d=nan is out of range"),
        ("mismatch -0.1", T + ["--mismatch", "-0.1"], {}, 2, "sigma_d=-0.1 is out of range"),
        ("ideal + banana", T + ["--ideal", "--mismatch", "banana"], {}, 2, "'banana' is neither a preset"),
        ("ideal + mismatch", T + ["--ideal", "--mismatch", "0.2"], {}, 2, "--ideal is the nominal model without mismatch"),
        ("integration rk4", T + ["--integration", "rk4"], {}, 2, "argument --integration: invalid choice"),
        ("task cifar", T + ["--task", "cifar"], {}, 2, "argument --task: invalid choice"),
        ("unknown flag", T + ["--learning-rate", "1"], {}, 2, "unrecognized arguments: --learning-rate"),
        ("device tpu", T + ["--device", "tpu"], {}, 2, "--device 'tpu' is not a device"),
        ("device cuda:x", T + ["--device", "cuda:x"], {}, 2, "is not a device"),
        # train: outputs
        ("out empty", ["train", "--out", ""], {}, 2, "argument --out: an empty path is not a folder"),
        ("out blank", ["train", "--out", "  "], {}, 2, "argument --out: an empty path"),
        ("out is a file", ["train", "--out", str(f / "a_file")] + SMALL, {}, 2, "is a file, not a folder"),
        ("out below a file", ["train", "--out", str(f / "a_file" / "sub")] + SMALL, {}, 2, "cannot write there"),
        ("out in /proc", ["train", "--out", "/proc/self/bss2-out"] + SMALL, {}, 2, "cannot write there"),
        ("resume garbage", ["train", "--out", str(f / "resume"), "--resume"] + SMALL, {}, 2, "cannot be read as a checkpoint"),
        # train: data
        ("data empty", T + ["--data", ""], {}, 2, "argument --data: an empty path"),
        ("data missing", T + SMALL + ["--data", str(f / "absent.npz")], {}, 2, "no such file or folder"),
        ("data strings", T + SMALL + ["--data", str(f / "strings.npz")], {}, 2, "x_train has dtype <U"),
        ("data complex", T + SMALL + ["--data", str(f / "complex.npz")], {}, 2, "x_train has dtype complex64"),
        ("data NaN", T + SMALL + ["--data", str(f / "nan.npz")], {}, 2, "x_train contains NaN or inf pixels"),
        ("data inf", T + SMALL + ["--data", str(f / "inf.npz")], {}, 2, "x_test contains NaN or inf pixels"),
        ("data negative", T + SMALL + ["--data", str(f / "negative.npz")], {}, 2, "x_train has pixels in [-3"),
        ("data too bright", T + SMALL + ["--data", str(f / "too_bright.npz")], {}, 2, "allowed [0, 255]"),
        ("data bool", T + SMALL + ["--data", str(f / "bool.npz")], {}, 2, "x_train has dtype bool"),
        ("data float labels", T + SMALL + ["--data", str(f / "float_labels.npz")], {}, 2, "integer labels 0..9"),
        ("data label 10", T + SMALL + ["--data", str(f / "label_10.npz")], {}, 2, "integer labels 0..9"),
        ("data flat images", T + SMALL + ["--data", str(f / "flat_images.npz")], {}, 2, "must be images [N, H, W]"),
        ("data empty split", T + SMALL + ["--data", str(f / "empty_test.npz")], {}, 2, "N >= 1"),
        ("data objects", T + SMALL + ["--data", str(f / "objects.npz")], {}, 2, "not a readable .npz"),
        ("data garbage", T + SMALL + ["--data", str(f / "garbage.npz")], {}, 2, "not a readable .npz"),
        ("data a folder of nothing", T + SMALL + ["--data", str(f / "resume")], {}, 2, "no train-images-idx3-ubyte"),
        ("shd no data", T + ["--task", "shd"], {}, 2, "--task shd needs --data DIR"),
        ("shd not a folder", T + ["--task", "shd", "--data", str(f / "a_file")], {}, 2, "not a folder"),
        ("shd NaN times", T + SMALL + ["--task", "shd", "--data", str(f / "shd_nan")], {}, 2, "NaN or inf spike times"),
        ("shd negative times", T + SMALL + ["--task", "shd", "--data", str(f / "shd_negative")], {}, 2, "negative spike times"),
        ("shd channels", T + SMALL + ["--task", "shd", "--data", str(f / "shd_channels")], {}, 2, "channels outside 0..699"),
        ("shd labels", T + SMALL + ["--task", "shd", "--data", str(f / "shd_labels")], {}, 2, "labels must be integers 0..19"),
        # train: environment
        ("WORLD_SIZE abc", T + SMALL, {"WORLD_SIZE": "abc"}, 2, "WORLD_SIZE='abc' is not an integer"),
        ("WORLD_SIZE 2 alone", T + SMALL, {"WORLD_SIZE": "2"}, 2, "WORLD_SIZE=2 is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
        ("WORLD_SIZE 0", T + SMALL, {"WORLD_SIZE": "0"}, 2, "WORLD_SIZE=0 must be >= 1"),
        ("RANK beyond", T + SMALL, {"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0",
                                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}, 2,
         "RANK=5 / LOCAL_RANK=0 must lie in [0, WORLD_SIZE=2)"),
        ("LOCAL_RANK word", T + SMALL, {"WORLD_SIZE": "2", "LOCAL_RANK": "x"}, 2, "LOCAL_RANK='x' is not an integer"),
        ("BSS2_CHECK_VALUES yes", T + SMALL, {"BSS2_CHECK_VALUES": "yes"}, 2, "BSS2_CHECK_VALUES='yes': use 1"),
        ("BSS2_MEMORY_LIMIT word", T + SMALL, {"BSS2_MEMORY_LIMIT": "lots"}, 2, "BSS2_MEMORY_LIMIT='lots' is not a size"),
        ("BSS2_MEMORY_LIMIT tiny", T + SMALL, {"BSS2_MEMORY_LIMIT": "1K"}, 2, "more than BSS2_MEMORY_LIMIT (1.0 KiB)"),
        # selfcal
        ("selfcal chip-seed -1", S + ["--chip-seed", "-1"], {}, 2, "argument --chip-seed: -1 is out of range"),
        ("selfcal sigma 1.5", S + ["--sigmas", "1.5"], {}, 2, "sigma_d=1.5 is out of range"),
        ("selfcal sigma nan", S + ["--sigmas", "0.1", "nan"], {}, 2, "sigma_d=nan is out of range"),
        ("selfcal sigma word", S + ["--sigmas", "low"], {}, 2, "'low' is not a number sigma_d"),
        ("selfcal quick + data", S + ["--quick", "--data", "x.npz"], {}, 2, "--quick runs on the bundled digits"),
        ("selfcal out empty", ["selfcal", "--out", ""], {}, 2, "an empty path"),
        ("selfcal lr inf", S + ["--lr", "inf"], {}, 2, "argument --lr"),
        ("selfcal steps 1", S + ["--steps", "1"], {}, 2, "argument --steps"),
        ("selfcal data NaN", S + ["--data", str(f / "nan.npz"), "--limit-train", "8"], {}, 2, "NaN or inf pixels"),
        # info
        ("info banana", ["info", "--mismatch", "banana"], {}, 2, "'banana' is neither a preset"),
        ("info ideal + banana", ["info", "--ideal", "--mismatch", "banana"], {}, 2, "'banana' is neither a preset"),
        ("info ideal + mismatch", ["info", "--ideal", "--mismatch", "0.3"], {}, 2, "--ideal is the nominal model"),
        ("info seed -1", ["info", "--seed", "-1"], {}, 2, "argument --seed: -1 is out of range"),
        ("info seed word", ["info", "--seed", "x"], {}, 2, "'x' is not an integer"),
        ("info plot folder", ["info", "--plot", str(f)], {}, 2, "is a folder; give a file name"),
        ("info plot txt", ["info", "--plot", str(f / "m.txt")], {}, 2, "'.txt' is not supported; use one of .png, .pdf, .svg"),
        ("info plot no folder", ["info", "--plot", str(f / "absent" / "m.png")], {}, 2, "does not exist"),
        ("info plot below a file", ["info", "--plot", str(f / "a_file" / "m.png")], {}, 2, "does not exist"),
        ("info plot /proc", ["info", "--plot", "/proc/self/m.png"], {}, 2, "--plot /proc/self/m.png"),
        ("info plot empty", ["info", "--plot", ""], {}, 2, "an empty path is not a file name"),
        # bench: refused before any workload runs
        ("bench device tpu", ["bench", "--device", "tpu", "--tiny"], {}, 2, "--device 'tpu' is not a device"),
        ("bench device cuda:x", ["bench", "--device", "cuda:x", "--tiny"], {}, 2, "is not a device"),
        ("bench out file", ["bench", "--out", str(f / "a_file"), "--tiny"], {}, 2, "is a file, not a folder"),
        ("bench out /proc", ["bench", "--out", "/proc/self/bench", "--tiny"], {}, 2, "cannot write there"),
        ("bench out empty", ["bench", "--out", "", "--tiny"], {}, 2, "an empty path"),
        ("bench threads 0", ["bench", "--threads", "0"], {}, 2, "argument --threads"),
        ("bench workload", ["bench", "--workloads", "Z", "--tiny"], {}, 2, "unknown workload(s) ['Z']"),
        ("bench impl", ["bench", "--impls", "magic", "--tiny", "--out", str(f / "b")], {}, 2, "unknown implementation(s) ['magic']"),
        ("bench mode", ["bench", "--modes", "bwd"], {}, 2, "argument --modes: invalid choice"),
        # the command itself
        ("no command", [], {}, 2, "the following arguments are required: command"),
        ("unknown command", ["fly"], {}, 2, "invalid choice: 'fly'"),
    ]
    if not torch.cuda.is_available():
        cases.append(("device cuda without one", T + ["--device", "cuda"], {}, 2,
                      "no CUDA device is visible on this machine"))
    return cases


def _run(argv, env, cwd, timeout=300):
    full = {k: v for k, v in os.environ.items()
            if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "bss2_backend", *argv], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def outcomes(files):
    """Every case of the corpus, run as its own process, several at a time."""
    cases = _cases(files)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case[0]: pool.submit(_run, case[1], case[2], files) for case in cases}
        return {name: (future.result(), case) for (name, future), case in zip(futures.items(), cases)}


CASE_IDS = [c[0] for c in _cases(Path("/f"))]


@pytest.mark.parametrize("case", CASE_IDS)
def test_cli_bad_input_is_one_clear_line(outcomes, case):
    proc, (_, argv, _, code, text) = outcomes[case]
    err = proc.stderr
    assert proc.returncode == code, (argv, proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert text in lines[0], (text, lines[0])


def test_the_corpus_is_large_enough():
    assert len(CASE_IDS) >= 90


def test_bench_refuses_a_bad_out_before_running_anything(outcomes):
    for case in ("bench out file", "bench out /proc", "bench device tpu"):
        proc, _ = outcomes[case]
        assert "[A]" not in proc.stdout and "appended" not in proc.stdout, proc.stdout


def test_version_and_help_exit_zero(tmp_path):
    for argv in (["--version"], ["--help"], ["train", "--help"]):
        proc = _run(argv, {}, tmp_path)
        assert proc.returncode == 0 and not proc.stderr and proc.stdout


# --- faults ---------------------------------------------------------------------------------------
def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bss2_backend", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()                                      # `bss2 info | true`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_ctrl_c_is_one_line_exit_130_and_keeps_every_file(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bss2_backend", "train", "--out", str(out),
                             "--limit-train", "64", "--limit-test", "16", "--steps", "10",
                             "--epochs", "10000", "--no-progress", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)                  # inside a later epoch, maybe inside a write
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("bss2 train: interrupted") and "--resume" in lines[0]
    state = load_checkpoint(out / "checkpoint.pt")           # whole, and valid
    assert state["epoch"] >= 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = _run(["train", "--out", str(out), "--resume", "--limit-train", "64", "--limit-test",
                    "16", "--steps", "10", "--epochs", str(state["epoch"] + 1), "--no-progress",
                    "--device", "cpu"], {}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_write_that_fails_half_way_is_one_line_and_keeps_the_earlier_files(tmp_path):
    out = tmp_path / "run"
    args = ["--out", str(out), "--limit-train", "32", "--limit-test", "16", "--steps", "10",
            "--no-progress", "--device", "cpu"]
    assert _run(["train", *args, "--epochs", "1"], {}, tmp_path).returncode == 0
    before = _digests(out)
    # the next checkpoint (~0.8 MB) cannot be written whole: like a disk that fills up
    proc = subprocess.run([sys.executable, "-m", "bss2_backend", "train", *args, "--epochs", "2",
                           "--resume"], capture_output=True, text=True, cwd=tmp_path,
                          preexec_fn=_file_size_limit(100_000), timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write" in lines[0] and "checkpoint.pt" in lines[0]
    assert "inline_container" not in lines[0] and "is unchanged" in lines[0]
    assert _digests(out) == before                            # nothing earlier was touched
