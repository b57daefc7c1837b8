"""SHD loader on small HDF5 files in the dataset's layout, and `bss2 train --task shd`."""
import json

import h5py
import numpy as np
import pytest
import torch

from bss2_backend.cli import main
from bss2_backend.train.data import DataError
from bss2_backend.train.shd import bin_spikes, load_shd


def _write_shd(path, samples, labels):
    with h5py.File(path, "w") as f:
        ft = h5py.vlen_dtype(np.float32)
        fu = h5py.vlen_dtype(np.uint16)
        times = f.create_dataset("spikes/times", (len(samples),), dtype=ft)
        units = f.create_dataset("spikes/units", (len(samples),), dtype=fu)
        for i, (t, u) in enumerate(samples):
            times[i] = np.asarray(t, dtype=np.float32)
            units[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8))


def _random_samples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 60))
        out.append((np.sort(rng.uniform(0, 1.2, k)), rng.integers(0, 700, k)))
    return out, rng.integers(0, 20, n)


def test_binning_and_channel_reduction_by_hand():
    times = [0.0, 0.004, 0.0099, 0.5, 0.999, 1.3]
    units = [0, 9, 10, 699, 345, 3]
    counts = bin_spikes(times, units, steps=100, duration=1.0)
    assert counts.shape == (100, 70) and counts.dtype == np.uint8
    want = np.zeros((100, 70), dtype=np.uint8)
    want[0, 0] = 2          # channels 0 and 9 -> group 0, both in bin 0
    want[0, 1] = 1          # channel 10 -> group 1
    want[50, 69] = 1
    want[99, 34] = 1        # the spike at 1.3 s lies beyond the window: dropped
    np.testing.assert_array_equal(counts, want)


def test_load_shd_folder_plain_and_gzipped(tmp_path):
    import gzip
    train, y_train = _random_samples(6, 0)
    test, y_test = _random_samples(4, 1)
    _write_shd(tmp_path / "shd_train.h5", train, y_train)
    _write_shd(tmp_path / "src_test.h5", test, y_test)
    with open(tmp_path / "src_test.h5", "rb") as src, gzip.open(tmp_path / "shd_test.h5.gz", "wb") as dst:
        dst.write(src.read())
    d = load_shd(tmp_path, steps=50)
    assert d.x_train.shape == (6, 50, 70) and d.x_test.shape == (4, 50, 70) and d.classes == 20
    assert torch.equal(d.y_test, torch.as_tensor(y_test, dtype=torch.int64))
    for i, (t, u) in enumerate(test):
        in_window = int((np.asarray(t) < 1.0).sum())
        assert int(d.x_test[i].sum()) == in_window
        np.testing.assert_array_equal(d.x_test[i].numpy(), bin_spikes(t, u, 50, 1.0))


def test_malformed_shd_files(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_shd(tmp_path / "absent")
    with pytest.raises(DataError, match="no shd_train.h5"):
        load_shd(tmp_path)
    with h5py.File(tmp_path / "shd_train.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(2, dtype=np.uint8))
    _write_shd(tmp_path / "shd_test.h5", *_random_samples(2, 2))
    with pytest.raises(DataError, match="spikes/times"):
        load_shd(tmp_path)
    (tmp_path / "shd_train.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable SHD"):
        load_shd(tmp_path)
    samples, _ = _random_samples(2, 3)
    _write_shd(tmp_path / "shd_train.h5", samples, [3, 25])
    with pytest.raises(DataError, match="labels must be integers 0..19"):
        load_shd(tmp_path)


def test_train_task_shd_runs_the_recurrent_network(tmp_path, capsys):
    for name, n, seed in (("shd_train.h5", 24, 4), ("shd_test.h5", 8, 5)):
        _write_shd(tmp_path / name, *_random_samples(n, seed))
    before = torch.get_num_threads()
    try:
        code = main(["train", "--task", "shd", "--data", str(tmp_path), "--epochs", "1",
                     "--steps", "20", "--batch-size", "8", "--out", str(tmp_path / "out"),
                     "--json", "--no-progress"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "shd" and 0.0 <= result["test_accuracy"] <= 1.0
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert state["model"]["hidden.lif1.recurrent.weight"].shape == (128, 128)
    assert state["network"]["n_in"] == 70 and state["network"]["n_out"] == 20
