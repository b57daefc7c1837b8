"""`bss2 selfcal`: the sweep's structure, outputs and bad input (its accuracies are measured, not tested)."""
import csv
import json

import torch

from bss2_backend import Chip
from bss2_backend.cli import main
from bss2_backend.train.selfcal import decalibrated_chip


def test_selfcal_json_csv_plot(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        code = main(["selfcal", "--sigmas", "0", "0.5", "--epochs", "1", "--steps", "16",
                     "--limit-train", "64", "--limit-test", "32", "--batch-size", "32",
                     "--chip-seeds", "3", "4", "--out", str(tmp_path), "--json", "--no-progress"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["sigma_d"], r["chip_seed"]) for r in result["rows"]] == \
        [(0.0, 3), (0.5, 3), (0.0, 4), (0.5, 4)]
    for r in result["rows"]:
        assert 0.0 <= r["itl_accuracy"] <= 1.0 and 0.0 <= r["transfer_accuracy"] <= 1.0
    # tonic hidden neurons: none on a calibrated chip, some at sigma_d = 0.5, per chip draw
    assert [r["tonic_hidden"] for r in result["rows"] if r["sigma_d"] == 0.0] == [0, 0]
    assert all(r["tonic_hidden"] > 0 for r in result["rows"] if r["sigma_d"] == 0.5)
    for s in result["summary"]:
        itl = [r["itl_accuracy"] for r in result["rows"] if r["sigma_d"] == s["sigma_d"]]
        assert s["chip_seeds"] == [3, 4]
        assert abs(s["itl_accuracy_mean"] - sum(itl) / 2) < 1e-12
        assert abs(s["itl_accuracy_std"] - abs(itl[0] - itl[1]) / 2 ** 0.5) < 1e-12
    with open(tmp_path / "selfcal.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["sigma_d"]), int(r["chip_seed"])) for r in rows] == \
        [(0.0, 3), (0.5, 3), (0.0, 4), (0.5, 4)]
    assert float(rows[1]["itl_accuracy"]) == result["rows"][1]["itl_accuracy"]
    assert (tmp_path / "selfcal.png").stat().st_size > 0
    assert json.loads((tmp_path / "selfcal.json").read_text())["rows"] == result["rows"]


def test_decalibrated_chip_is_frozen_per_seed_and_sigma():
    a, b = decalibrated_chip(7, 0.3), decalibrated_chip(7, 0.3)
    assert a == b and torch.equal(a.neurons.tau_mem_us, b.neurons.tau_mem_us)
    assert float(a.neurons.tau_mem_us[:512].std()) > 0.1 * float(a.neurons.tau_mem_us[:512].mean())
    assert float(decalibrated_chip(7, 0.0).neurons.tau_mem_us.std()) == 0.0
    assert a != Chip(seed=8, mismatch=0.3)


def test_selfcal_bad_input(tmp_path, capsys):
    assert main(["selfcal", "--sigmas", "1.5", "--out", str(tmp_path)]) == 2
    assert "sigma_d=1.5" in capsys.readouterr().err
    assert main(["selfcal", "--quick", "--data", "x.npz", "--out", str(tmp_path)]) == 2
    assert "--quick" in capsys.readouterr().err
    assert main(["selfcal", "--chip-seed", "1", "--chip-seeds", "2", "3",
                 "--out", str(tmp_path)]) == 2
    assert "either as --chip-seed S or as --chip-seeds" in capsys.readouterr().err
    assert main(["selfcal", "--chip-seeds", "-1", "--out", str(tmp_path)]) == 2
    assert "--chip-seeds: -1 is out of range" in capsys.readouterr().err
