"""`bss2 train`: a small run end to end, exact resume, user errors, atomic outputs, DDP on gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bss2_backend import Chip
from bss2_backend.cli import main
from bss2_backend.train.data import load_digits
from bss2_backend.files import atomic_path, save_torch
from bss2_backend.train.config import TrainConfig
from bss2_backend.train.loop import evaluate, fit

# tiny but real: digits subset, short window
# these tests are about the CLI (outputs, resume, DDP over gloo), so they run on the CPU also where
# a GPU is present
TINY = ["--limit-train", "96", "--limit-test", "48", "--steps", "20", "--batch-size", "32",
        "--no-progress", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


def _train(tmp_path, name, *extra):
    return main(["train", "--out", str(tmp_path / name), *TINY, *extra])


@pytest.fixture(autouse=True)
def _one_thread():
    # small per-step tensors: extra intra-op threads only spin on a shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model_state(path):
    return torch.load(path, weights_only=False)


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_train_outputs_and_exact_resume(tmp_path, capsys):
    assert _train(tmp_path, "straight", "--epochs", "2", "--json") == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["epochs"] == 2 and result["device"] == "cpu" and result["dataset"] == "digits"
    assert "epoch   2/2" in captured.err and len(result["history"]) == 2
    for name in ("checkpoint.pt", "metrics.json", "curves.png", "activity.png"):
        assert (tmp_path / "straight" / name).stat().st_size > 0
    assert not list((tmp_path / "straight").glob(".*tmp"))

    assert _train(tmp_path, "split", "--epochs", "1") == 0
    ckpt = tmp_path / "split" / "checkpoint.pt"
    before = ckpt.read_bytes()
    capsys.readouterr()
    # a checkpoint of another chip or network is refused, and left as it was
    err = _one_line_error(capsys, _train(tmp_path, "split", "--epochs", "2", "--resume",
                                         "--chip-seed", "5"))
    assert "another chip" in err and "seed" in err
    other = [a if a != "20" else "24" for a in TINY]
    err = _one_line_error(capsys, main(["train", "--out", str(tmp_path / "split"), "--resume",
                                        *other, "--epochs", "2"]))
    assert "another network" in err and "steps" in err
    assert ckpt.read_bytes() == before

    assert _train(tmp_path, "split", "--epochs", "2", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    a, b = _model_state(tmp_path / "straight/checkpoint.pt"), _model_state(ckpt)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["chip"]["runs"] == b["chip"]["runs"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(a["history"]) == strip(b["history"])

    ckpt.write_bytes(b"not a checkpoint")
    err = _one_line_error(capsys, _train(tmp_path, "split", "--epochs", "3", "--resume"))
    assert "cannot be read" in err
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_training_in_the_loop_learns_digits():
    data = load_digits().subset(640, 160)
    cfg = TrainConfig(epochs=2, steps=30, t_last=15, batch_size=32, lr=3e-4)
    model, history = fit(cfg, data, Chip(seed=3), progress=False, log=lambda m: None)
    assert history[-1]["loss"] < history[0]["loss"]
    # chance is 0.1: the chip network must have learnt the digits
    accuracy, spikes = evaluate(cfg, model, data.x_test, data.y_test, "cpu")
    assert accuracy > 0.3
    assert 0.0 < spikes < 5.0


def test_bad_data_out_and_device_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    err = _one_line_error(capsys, _train(tmp_path, "o", "--data", str(tmp_path / "bad.npz")))
    assert "bad.npz" in err
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, main(["train", "--out", str(tmp_path / "afile" / "sub"), *TINY]))
    assert "--out" in err
    if not torch.cuda.is_available():
        err = _one_line_error(capsys, _train(tmp_path, "o", "--device", "cuda"))
        assert "no CUDA device" in err
    err = _one_line_error(capsys, _train(tmp_path, "o", "--mismatch", "sloppy"))
    assert "sloppy" in err
    err = _one_line_error(capsys, _train(tmp_path, "o", "--mismatch", "0.5", "--integration", "euler"))
    assert "--integration exact" in err
    err = _one_line_error(capsys, _train(tmp_path, "o", "--task", "shd"))
    assert "--data" in err


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "checkpoint.pt"
    save_torch({"epoch": 1}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: two gloo ranks on one GPU"))])
def test_ddp_two_gloo_ranks_match_one_process(tmp_path, device):
    tiny = [a if a != "cpu" else device for a in TINY]
    common = ["train", *tiny, "--epochs", "1", "--no-noise", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # a port free now, not a fixed one another process on the CI host may hold
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "bss2_backend", *common,
                          "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    # the launcher's summary hides the rank's own error: show the lines that name it first
    named = [line for line in ddp.stderr.splitlines()
             if any(k in line for k in ("Error", "error:", "terminate", "gloo", "Abort"))]
    assert ddp.returncode == 0, "\n".join(named[:20]) + "\n...\n" + ddp.stderr[-1500:]
    result = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    a = _model_state(tmp_path / "ddp/checkpoint.pt")["model"]
    b = _model_state(tmp_path / "single/checkpoint.pt")["model"]
    # each rank runs half of every batch; DDP's averaged gradient is the full batch's
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
