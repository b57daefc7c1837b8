"""Checkpoints: loading never runs code, and a damaged or tampered checkpoint is a one-line error
naming the file and what is wrong, checked before anything in it is used."""
import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bss2_backend.chip import Chip
from bss2_backend.train import checkpoint as ck
from bss2_backend.train.checkpoint import CheckpointError, load_checkpoint
from bss2_backend.train.config import TrainConfig
from bss2_backend.train.data import load_digits
from bss2_backend.train.loop import build_network, fit

REPO = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=1, batch_size=32, steps=10, t_last=4)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A checkpoint written by `fit` after one epoch: (folder, state)."""
    out = tmp_path_factory.mktemp("ck")
    data = load_digits().subset(64, 32)
    torch.set_num_threads(1)
    fit(CFG, data, Chip(seed=0), out=out, log=lambda m: None, progress=False)
    return out, torch.load(out / "checkpoint.pt", weights_only=True)


# --- code execution -------------------------------------------------------------------------------
class _RunsCode:
    """Pickles into a call of `func(*args)` at load time (what a crafted checkpoint does)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious_files(folder, marker):
    """Files that run code (create `marker`) when unpickled without weights_only."""
    touch = _RunsCode(Path.touch, Path(marker))
    system = _RunsCode(os.system, f"touch {marker}")
    files = {}
    files["zip"] = folder / "zip.pt"
    torch.save({"format": ck.FORMAT, "version": 1, "payload": touch}, files["zip"])
    files["legacy"] = folder / "legacy.pt"                   # not a zip: the legacy pickle path
    torch.save({"payload": system}, files["legacy"], _use_new_zipfile_serialization=False)
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        files[f"pickle{protocol}"] = folder / f"p{protocol}.pt"
        files[f"pickle{protocol}"].write_bytes(pickle.dumps(system, protocol=protocol))
    files["exec"] = folder / "exec.pt"
    files["exec"].write_bytes(pickle.dumps(_RunsCode(exec, f"open({str(marker)!r}, 'w')")))
    return files


def test_sanity_the_malicious_files_do_run_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "ran"
    files = _malicious_files(tmp_path, marker)
    torch.load(files["zip"], weights_only=False)
    assert marker.exists()


def test_a_malicious_checkpoint_cannot_run_code_in_the_loader(tmp_path):
    marker = tmp_path / "ran"
    for name, path in _malicious_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
        assert not marker.exists(), name


def test_a_malicious_checkpoint_cannot_run_code_through_bss2_train_resume(tmp_path):
    marker = tmp_path / "ran"
    for name, path in _malicious_files(tmp_path, marker).items():
        out = tmp_path / f"out-{name}"
        out.mkdir()
        path.rename(out / "checkpoint.pt")
    outs = sorted(tmp_path.glob("out-*"))
    procs = [subprocess.Popen([sys.executable, "-m", "bss2_backend", "train", "--resume", "--out",
                               str(o), "--epochs", "1", "--limit-train", "8", "--limit-test", "8",
                               "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path) for o in outs]
    for p, o in zip(procs, outs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (o, err)
        assert "Traceback" not in err and err.strip().count("\n") == 0, err
        assert "cannot be read as a checkpoint" in err and "could run code" in err
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    offenders = []
    for path in list(REPO.glob("bss2_backend/**/*.py")) + list(REPO.glob("kernels/*.py")) + \
            list(REPO.glob("integrations/**/*.py")) + list(REPO.glob("bench/*.py")):
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            call = line.split("#")[0]
            if "torch.load(" in call and "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(REPO)}:{i}")
            if "pickle.load" in call or "allow_pickle=True" in call:
                offenders.append(f"{path.relative_to(REPO)}:{i}")
    assert not offenders, offenders


# --- schema ---------------------------------------------------------------------------------------
def _put(path, value):
    def edit(s):
        d = s
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _drop(*path):
    def edit(s):
        d = s
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


def _first_param_state(s):
    return next(iter(s["optimizer"]["state"].values()))


TAMPERED = [
    ("not a dict", lambda s: [1, 2, 3], "not a bss2 train checkpoint"),
    ("format", _put(["format"], "other"), "not a bss2 train checkpoint"),
    ("version 2", _put(["version"], 2), "checkpoint version 2"),
    ("version str", _put(["version"], "1"), "checkpoint version '1'"),
    *[(f"missing {k}", _drop(k), rf"is missing \['{k}'\]")
      for k in ("config", "network", "model", "optimizer", "chip", "epoch", "history", "rng")],
    ("epoch str", _put(["epoch"], "one"), "epoch must be int, got str"),
    ("epoch float", _put(["epoch"], 1.0), "epoch must be int"),
    ("epoch bool", _put(["epoch"], True), "epoch must be int"),
    ("epoch -5", _put(["epoch"], -5), "epoch=-5 must be >= 0"),
    ("epoch beyond history", _put(["epoch"], 3), "history has 1 epochs but epoch=3"),
    ("history str", _put(["history"], "x"), "history must be list"),
    ("history row", _put(["history", 0], {"epoch": 1}), r"history\[0\] must be a dict with"),
    ("history NaN loss", _put(["history", 0, "loss"], float("nan")), r"\['loss'\] must be finite"),
    ("history epoch number", _put(["history", 0, "epoch"], 7), r"history\[0\] is epoch 7"),
    ("model list", _put(["model"], [1]), "model must be dict"),
    ("model NaN", lambda s: s["model"]["hidden.fc1.weight"].__setitem__((0, 0), float("nan")),
     "model weight 'hidden.fc1.weight' contains NaN or inf"),
    ("model inf", lambda s: s["model"]["readout.fc2.weight"].fill_(float("inf")), "contains NaN or inf"),
    ("model non-tensor", _put(["model", "hidden.fc1.weight"], [[0.0]]), "model must map names to tensors"),
    ("config missing", _drop("config", "lr"), "config must have the keys"),
    ("config extra", _put(["config", "evil"], 1), "config must have the keys"),
    ("config lr str", _put(["config", "lr"], "fast"), "config.lr='fast' has the wrong type"),
    ("config lr NaN", _put(["config", "lr"], float("nan")), "config.lr=nan has the wrong type"),
    ("config task", _put(["config", "task"], "cifar"), "config.task='cifar' is not one of"),
    ("network keys", _drop("network", "steps"), "network must have the keys"),
    ("network type", _put(["network", "n_in"], "256"), "network.n_in='256' has the wrong type"),
    ("rng dtype", lambda s: s.__setitem__("rng", s["rng"].float()), "rng must be a torch RNG state"),
    ("rng size", lambda s: s.__setitem__("rng", s["rng"][:100]), r"rng must be a torch RNG state \(uint8 \[5056\]\)"),
    ("rng list", _put(["rng"], [1, 2]), "rng must be Tensor"),
    ("no optimiser state", _put(["optimizer"], {}), "optimizer must be an optimiser state_dict"),
    ("optimiser groups", _put(["optimizer", "param_groups"], "x"), "optimizer must be an optimiser state_dict"),
    ("optimiser lr NaN", lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", float("nan")),
     "optimizer.param_groups.lr=nan"),
    ("optimiser params str", lambda s: s["optimizer"]["param_groups"][0].__setitem__("params", ["a"]),
     "lists of parameter ids|list of parameter ids"),
    ("optimiser NaN moment", lambda s: _first_param_state(s)["exp_avg"].fill_(float("nan")),
     r"exp_avg must be a finite float tensor"),
    ("optimiser negative second moment", lambda s: _first_param_state(s)["exp_avg_sq"].fill_(-1.0),
     "exp_avg_sq must be >= 0"),
    ("optimiser step", lambda s: _first_param_state(s).__setitem__("step", torch.tensor(-3.0)),
     r"step=tensor\(-3.\) must be a number >= 0"),
    ("optimiser unknown param", lambda s: s["optimizer"]["state"].__setitem__(9, {}),
     r"optimizer.state\[9\] must be Adam's state"),
    ("chip missing config", _drop("chip", "config"), r"chip: chip state is missing \['config'\]"),
    ("chip config type", _put(["chip", "config"], "calibrated"), "chip: chip state: config must be a dict"),
    ("chip runs -5", _put(["chip", "runs"], -5), "chip: chip state: runs=-5 is out of range"),
    ("chip runs str", _put(["chip", "runs"], "many"), "runs must be an integer"),
    ("chip circuit -1", lambda s: s["chip"]["placements"][0]["circuits"].__setitem__(0, [-1, 255]),
     "circuit index=-1 is out of range"),
    ("chip neurons list", _put(["chip", "neurons"], [0.0]), "chip: chip state: neurons must be a dict"),
    ("chip cpn 7", _put(["chip", "placements", 0, "circuits_per_neuron"], 7),
     "circuits_per_neuron=7; allowed 1 or 2"),
    ("chip overlap", lambda s: s["chip"]["placements"].append(dict(s["chip"]["placements"][0], name="x")),
     "never share circuits"),
    ("meta weight", _put(["model", "hidden.fc1.weight"], torch.zeros(246, 256, device="meta")),
     "model.hidden.fc1.weight must be a dense tensor with data"),
    ("sparse weight", _put(["model", "hidden.fc1.weight"], torch.zeros(246, 256).to_sparse()),
     "must be a dense tensor"),
    ("meta chip draw", lambda s: s["chip"]["neurons"].__setitem__("leak_lsb", torch.zeros(512, device="meta")),
     "chip.neurons.leak_lsb must be a dense tensor with data"),
    ("meta rng", _put(["rng"], torch.zeros(5056, dtype=torch.uint8, device="meta")),
     "rng must be a dense tensor"),
    ("chip tampered draw", lambda s: s["chip"]["neurons"]["threshold_lsb"].add_(1.0),
     "threshold_lsb differs from what seed 0 draws"),
]


@pytest.mark.parametrize("edit, match", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_tampered_checkpoints_are_one_line_errors(real, tmp_path, edit, match):
    _, state = real
    state = copy.deepcopy(state)
    replaced = edit(state)
    state = replaced if isinstance(replaced, list) else state     # an edit may replace the whole
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04broken zip", bytes(range(256)) * 8])
def test_files_that_are_no_checkpoint(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        load_checkpoint(path)


def test_a_folder_named_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def _restore_into_fresh_model(state, path):
    chip = Chip(seed=0)
    model = build_network(CFG, chip, 256, 10)
    optimiser = torch.optim.Adam(model.parameters(), lr=CFG.lr)
    return ck.restore(state, path, model, optimiser, chip)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["model"].__setitem__("hidden.fc1.weight", torch.zeros(246, 255)),
     r"weight 'hidden.fc1.weight' has shape \[246, 255\]"),
    (lambda s: s["model"].__setitem__("hidden.fc1.weight", torch.zeros(246, 256, dtype=torch.float64)),
     "torch.float64, the model's is"),
    (lambda s: s["model"].pop("readout.fc2.weight"), "the model's weights are"),
    (lambda s: s["model"].__setitem__("extra.weight", torch.zeros(1)), "the model's weights are"),
    (lambda s: _first_param_state(s).__setitem__("exp_avg", torch.zeros(3)),
     r"exp_avg has shape \[3\], its parameter \[246, 256\]"),
    (lambda s: s["optimizer"]["param_groups"][0].__setitem__("params", [0]),
     "the optimiser state is for 1 parameters"),
], ids=["weight shape", "weight dtype", "missing weight", "extra weight", "moment shape",
        "parameter count"])
def test_checkpoints_that_do_not_fit_the_model(real, edit, match):
    _, state = real
    state = copy.deepcopy(state)
    edit(state)
    with pytest.raises(CheckpointError, match=match):
        _restore_into_fresh_model(state, "checkpoint.pt")


def test_todays_checkpoints_load_and_restore(real):
    folder, state = real
    loaded = load_checkpoint(folder / "checkpoint.pt")
    assert loaded["epoch"] == 1 and len(loaded["history"]) == 1
    epoch, history = _restore_into_fresh_model(loaded, folder / "checkpoint.pt")
    assert epoch == 1 and history == state["history"]


def test_resume_past_the_requested_epochs_trains_nothing_and_reports_the_true_count(real, tmp_path):
    folder, _ = real
    data = load_digits().subset(64, 32)
    logs = []
    model, history = fit(CFG, data, Chip(seed=0), out=folder, resume=True, log=logs.append,
                         progress=False)
    assert len(history) == 1 and any("nothing left to train" in line for line in logs)


def test_a_checkpoint_from_before_the_newer_fields_loads_and_resumes(real, tmp_path):
    """Checkpoints written before chips, dropout, lr_schedule and freeze_recurrent existed were
    trained with their defaults: they load and match a run asking for those."""
    state = copy.deepcopy(real[1])
    for key in ck.NEWER_CONFIG:
        state["config"].pop(key, None)
    old = tmp_path / "old.pt"
    torch.save(state, old)
    loaded = load_checkpoint(old)
    ck.check_matches(loaded, old, CFG, Chip(seed=0), CFG.network_signature(256, 10))
    import dataclasses
    with pytest.raises(CheckpointError, match="dropout"):
        ck.check_matches(loaded, old, dataclasses.replace(CFG, dropout=0.2), Chip(seed=0),
                         CFG.network_signature(256, 10))
