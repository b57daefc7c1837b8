"""Transfer statistics and failure sweeps from the command line: `bss2 eval` on fresh chips
(never the training chip, reproducible seeds, the checked checkpoint loader) and `bss2 failure`
(accuracy as hidden neurons fail, with and without dropout)."""
import json

import pytest

from bss2_backend.cli import main
from bss2_backend.train import transfer

TINY = ["--limit-train", "96", "--limit-test", "32", "--steps", "16", "--batch-size", "32",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", *TINY, "--epochs", "2", "--chip-seed", "5", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def test_fresh_seeds_skip_the_training_chips():
    assert transfer.fresh_seeds(3, exclude={10, 11}, base=9) == [9, 12, 13]


def test_eval_on_fresh_chips(checkpoint, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(checkpoint), "--chips", "6", "--limit-test", "32",
            "--out", str(tmp_path), "--json", "--seed-base", "4"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    r = result["results"][0]
    assert r["seeds"] == [4, 6, 7, 8, 9, 10]             # 5 trained the network
    assert len(r["accuracy_per_chip"]) == 6 and 0 <= r["summary"]["min"] <= r["summary"]["max"] <= 1
    assert r["summary"]["min"] <= r["summary"]["p5"] <= r["summary"]["mean"] <= r["summary"]["max"]
    assert r["chip_figures"]["estimate"].startswith("modelled")
    assert (tmp_path / "transfer.png").stat().st_size > 0
    # reproducible: the same chips give the same accuracies
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    assert again["accuracy_per_chip"] == r["accuracy_per_chip"]


def test_eval_refuses_bad_input(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--out", str(tmp_path)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--chips", "0"]) == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--dead", "0.7", "--firing", "0.6",
                 "--out", str(tmp_path)]) == 2
    assert "must be <= 1" in capsys.readouterr().err


def test_failure_sweep(tmp_path, capsys):
    assert main(["failure", *TINY, "--epochs", "1", "--fractions", "0", "0.5", "--repeats", "2",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    nets = {r["network"] for r in result["rows"]}
    assert nets == {"no dropout", "dropout 0.2"}
    assert len(result["rows"]) == 4 and all(len(r["accuracies"]) == 2 for r in result["rows"])
    assert (tmp_path / "failure.png").stat().st_size > 0 and (tmp_path / "failure.csv").exists()


def test_sweep_over_regularisation(tmp_path, capsys):
    assert main(["sweep", *TINY, "--epochs", "1", "--regs", "0", "0.1", "--out", str(tmp_path),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["reg"] for r in result["rows"]] == [0.0, 0.1]
    assert all(r["spikes_per_sample"] >= 0 for r in result["rows"])
    assert (tmp_path / "sweep.png").exists() and (tmp_path / "sweep.csv").exists()


def test_train_reports_accuracy_over_time(checkpoint):
    result = json.loads((checkpoint.parent / "metrics.json").read_text())
    curve = result["accuracy_over_time"]
    # another run of the chip (new noise): the last point is the accuracy up to noise
    assert len(curve) == 16 and curve[-1] == pytest.approx(result["test_accuracy"], abs=0.2)
    assert 1 <= result["time_to_decision_us"] <= 16
    assert (checkpoint.parent / "decision.png").exists()
