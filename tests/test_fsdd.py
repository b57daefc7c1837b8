"""Spoken digits (FSDD) for the recurrent network: the wav reader, the cochlea-like front end, the
folder loader's refusals (named by file), and `bss2 train --task fsdd` end to end, on wav files the
test writes itself (the real recordings are used when ../shared has them)."""
import json
import math
import struct
import wave
from pathlib import Path

import pytest
import torch

from bss2_backend.cli import main
from bss2_backend.train import fsdd
from bss2_backend.train.data import DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def _wav(path, samples, rate=8000, channels=1, width=2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        frames = b"".join(struct.pack("<h", int(max(-1, min(1, s)) * 32000)) * channels
                          for s in samples) if width == 2 else bytes(len(samples) * width * channels)
        w.writeframes(frames)


def _tone(digit, speaker, seconds=0.5, rate=8000):
    """A digit's 'word': two tones whose pitch depends on the digit, a little on the speaker."""
    f1 = 300 + 250 * digit + 20 * speaker
    n = int(seconds * rate)
    env = [math.sin(math.pi * i / n) for i in range(n)]
    return [0.5 * e * (math.sin(2 * math.pi * f1 * i / rate) +
                       0.5 * math.sin(2 * math.pi * 1.5 * f1 * i / rate)) for i, e in enumerate(env)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdd")
    for digit in range(10):
        for s, speaker in enumerate(("ann", "bob")):
            for index in range(8):
                _wav(d / f"{digit}_{speaker}_{index}.wav", _tone(digit, s, 0.3 + 0.05 * index))
    return d


def test_front_end_gives_binary_spikes_where_there_is_sound(folder):
    x = fsdd.read_wav(folder / "3_ann_5.wav")
    assert x.dtype == torch.float32 and float(x.abs().max()) <= 1
    s = fsdd.spikes_of(x, 50)
    assert s.shape == (50, fsdd.CHANNELS) and set(s.unique().tolist()) <= {0.0, 1.0}
    per_step = s.sum(1)
    assert float(per_step[:5].sum()) == 0 and float(per_step[20:30].sum()) > 0   # padded silence
    # different digits drive different bands
    other = fsdd.spikes_of(fsdd.read_wav(folder / "8_ann_5.wav"), 50)
    assert not torch.equal(s.sum(0) > 0, other.sum(0) > 0)
    assert torch.equal(fsdd.spikes_of([x, x], 50)[1], s)


def test_loader_splits_by_index_and_keeps_speakers(folder):
    data, speakers = fsdd.load_fsdd(folder, steps=40)
    assert data.name == "fsdd" and data.classes == 10
    assert data.x_train.shape == (60, 40, 70) and data.x_test.shape == (100, 40, 70)
    assert sorted(set(speakers)) == ["ann", "bob"] and len(speakers) == 100
    assert fsdd.test_speakers(folder) == speakers


@pytest.mark.parametrize("name, write, match", [
    ("1_ann_0.wav", lambda p: p.write_bytes(b"RIFF junk, not a wav"), "not a readable wav"),
    ("1_ann_0.wav", lambda p: _wav(p, []), "holds no samples"),
    ("1_ann_0.wav", lambda p: _wav(p, [0.1] * 100, rate=16000), "16000 Hz"),
    ("1_ann_0.wav", lambda p: _wav(p, [0.1] * 100, channels=2), "2 channels"),
    ("hello.wav", lambda p: _wav(p, [0.1] * 100), "not an FSDD name"),
    ("12_ann_0.wav", lambda p: _wav(p, [0.1] * 100), "outside 0..9"),
])
def test_bad_files_are_named(tmp_path, name, write, match):
    write(tmp_path / name)
    _wav(tmp_path / "2_ann_7.wav", [0.1] * 100)
    with pytest.raises(DataError, match=match) as e:
        fsdd.load_fsdd(tmp_path)
    assert name in str(e.value)


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="no .wav files"):
        fsdd.load_fsdd(tmp_path)
    _wav(tmp_path / "2_ann_7.wav", [0.1] * 100)
    with pytest.raises(DataError, match="no test recordings"):
        fsdd.load_fsdd(tmp_path)


def test_train_fsdd_end_to_end_with_frozen_recurrence(folder, tmp_path, capsys):
    args = ["train", "--task", "fsdd", "--data", str(folder), "--epochs", "2", "--steps", "30",
            "--batch-size", "20", "--no-progress", "--device", "cpu", "--json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dataset"] == "fsdd" and set(result["accuracy_per_speaker"]) == {"ann", "bob"}
    assert len(result["confusion"]) == 10 and (tmp_path / "a" / "confusion.png").exists()
    assert sum(map(sum, result["confusion"])) == 100
    assert main([*args, "--freeze-recurrent", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    before = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    frozen = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    key = "hidden.lif1.recurrent.weight"
    torch.manual_seed(0)
    # frozen: still its initial value, which the unfrozen run moved away from
    from bss2_backend import Chip
    from bss2_backend.train.loop import build_network
    from bss2_backend.train.transfer import config_of
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    init = build_network(config_of(state), Chip(seed=0), 70, 10).state_dict()[key]
    assert torch.equal(frozen[key], init) and not torch.equal(before[key], init)


def test_freezing_needs_a_recurrent_network(tmp_path, capsys):
    assert main(["train", "--freeze-recurrent", "--limit-train", "32", "--limit-test", "16",
                 "--epochs", "1", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "no recurrent weights" in capsys.readouterr().err


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/fsdd is not here")
def test_the_real_recordings_load():
    data, speakers = fsdd.load_fsdd(REAL, steps=100)
    assert data.x_train.shape == (2700, 100, 70) and data.x_test.shape == (300, 100, 70)
    assert len(set(speakers)) == 6 and data.y_test.bincount().tolist() == [30] * 10
