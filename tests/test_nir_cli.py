"""`bss2 export` / `bss2 eval --nir` and the README's NIR example (run in a temporary folder)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

import bss2_backend.nir as bn  # noqa: E402
from bss2_backend.cli import main  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bss2 train checkpoint of the MNIST network at its initialisation (epoch 0)."""
    from bss2_backend.chip import Chip
    from bss2_backend.files import save_torch
    from bss2_backend.train.checkpoint import make_checkpoint
    from bss2_backend.train.config import TrainConfig
    from bss2_backend.train.loop import build_network
    cfg = TrainConfig(steps=12, t_last=6)
    chip = Chip(seed=0)
    model = build_network(cfg, chip, 256, 10)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    path = tmp_path_factory.mktemp("train") / "checkpoint.pt"
    save_torch(make_checkpoint(cfg, model, opt, chip, 0, [], cfg.network_signature(256, 10)), path)
    return path


def test_export_then_eval(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.nir"
    assert main(["export", "--checkpoint", str(checkpoint), "--nir", str(out)]) == 0
    assert "hxtorch: ConversionConfig(weight_scale=64" in capsys.readouterr().out
    graph = nir.read(out)
    assert [type(n).__name__ for n in graph.nodes.values()].count("CubaLIF") == 1
    assert bn.check_hxtorch_compatible(out)["weight_scale"] == 64
    assert main(["eval", "--nir", str(out), "--chips", "2", "--limit-test", "24", "--steps", "12",
                 "--out", str(tmp_path / "ev"), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["accuracy_per_chip"]) == 2 and 0 <= result["ideal_accuracy"] <= 1
    assert (tmp_path / "ev" / "nir-eval.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["export", "--checkpoint", "{ckpt}", "--nir", "{tmp}/m.txt"], "file type '.txt'"),
    (["export", "--checkpoint", "{tmp}/missing.pt", "--nir", "{tmp}/m.nir"], "is not a file"),
    (["eval", "--out", "{tmp}/ev"], "--checkpoint CKPT"),
    (["eval", "--nir", "{tmp}/junk.nir", "--checkpoint", "{ckpt}", "--out", "{tmp}/ev"], "not both"),
    (["eval", "--nir", "{tmp}/junk.nir", "--out", "{tmp}/ev"], "is not a NIR file"),
    (["eval", "--nir", "{tmp}/small.nir", "--out", "{tmp}/ev"], "256 pixels"),
])
def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys, argv, message):
    (tmp_path / "junk.nir").write_text("junk")
    small = nir.NIRGraph.from_list(nir.Input(input_type=np.array([4])),
                                   nir.Linear(weight=np.ones((10, 4))),
                                   nir.LI(tau=np.full(10, 5.0), r=np.ones(10), v_leak=np.zeros(10)),
                                   nir.Output(output_type=np.array([10])))
    nir.write(tmp_path / "small.nir", small)
    argv = [a.format(ckpt=checkpoint, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_readme_nir_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    section = text[text.index("## Exchange with other frameworks and the real chip"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert "bn.save(" in code and "bn.load(" in code
    exec(compile(code, "README NIR", "exec"), {})
    assert (tmp_path / "model.nir").is_file()
