"""Data loaders (digits, MNIST .npz / IDX, gzipped or not), latency coding and losses."""
import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bss2_backend.train.coding import (latency_code, max_over_time_loss, spike_regulariser,
                                       sum_over_time_loss)
from bss2_backend.train.data import DataError, load_digits, load_mnist, read_idx


def _mnist_arrays(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


def _idx_bytes(a):
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return head + a.tobytes()


def _write_idx_folder(folder, arrays, gz):
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    folder.mkdir(exist_ok=True)
    for key, name in names.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (folder / name).write_bytes(raw)
    return folder


def test_digits_are_16x16_in_unit_range_with_a_fixed_split():
    d = load_digits()
    assert d.x_train.shape[1:] == (16, 16) and d.x_test.shape[1:] == (16, 16)
    assert len(d.y_train) + len(d.y_test) == 1797 and len(d.y_test) == 359
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert set(d.y_train.tolist()) == set(range(10)) and d.classes == 10
    again = load_digits()
    assert torch.equal(d.x_test, again.x_test) and torch.equal(d.y_train, again.y_train)


def test_mnist_npz_and_idx_folders_load_the_same(tmp_path):
    arrays = _mnist_arrays()
    np.savez(tmp_path / "m.npz", **arrays)
    from_npz = load_mnist(tmp_path / "m.npz")
    raw = load_mnist(_write_idx_folder(tmp_path / "raw", arrays, gz=False))
    zipped = load_mnist(_write_idx_folder(tmp_path / "gz", arrays, gz=True))
    want = F.interpolate(torch.from_numpy(arrays["x_train"]).float().unsqueeze(1) / 255.0,
                         size=(16, 16), mode="area").squeeze(1)
    for d in (from_npz, raw, zipped):
        assert d.x_train.shape == (12, 16, 16) and d.x_test.shape == (5, 16, 16)
        torch.testing.assert_close(d.x_train, want)
        assert torch.equal(d.y_test, torch.from_numpy(arrays["y_test"].astype(np.int64)))


@pytest.mark.parametrize("break_it, message", [
    (lambda a: a.pop("y_test"), "missing key"),
    (lambda a: a.update(x_train=a["x_train"][:, :, :10]), "x_train must be images"),
    (lambda a: a.update(y_train=a["y_train"][:3]), "y_train must be labels"),
    (lambda a: a.update(y_test=a["y_test"].astype(np.int64) + 20), "labels 0..9"),
])
def test_malformed_npz_names_the_problem(tmp_path, break_it, message):
    arrays = _mnist_arrays()
    break_it(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_mnist(tmp_path / "bad.npz")


def test_unreadable_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_mnist(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_mnist(tmp_path / "junk.npz")
    folder = _write_idx_folder(tmp_path / "gz", _mnist_arrays(), gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot be read"):
        load_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        load_mnist(folder)


def test_truncated_idx_is_rejected(tmp_path):
    raw = _idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    (tmp_path / "x").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"\x00\x00\x0d\x01" + raw[4:])
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "y")


def test_real_mnist_loads_at_16x16(shared_data):
    path = shared_data / "mnist" / "mnist.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    d = load_mnist(path)
    assert d.x_train.shape == (60000, 16, 16) and d.x_test.shape == (10000, 16, 16)
    assert float(d.x_train.max()) <= 1.0 and float(d.x_train.mean()) > 0.05


def test_latency_code_one_spike_per_bright_pixel_earlier_when_brighter():
    images = torch.tensor([[1.0, 0.5, 0.05, 0.0, 0.75]])
    s = latency_code(images, 20, t_first=2, t_last=10, cutoff=0.1)
    assert s.shape == (20, 1, 5)
    assert s.sum(0).tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]
    times = s[:, 0].argmax(0)
    assert times[0].item() == 2 and times[1].item() == 6 and times[4].item() == 4


def test_latency_code_rejects_bad_windows():
    with pytest.raises(ValueError, match="t_last"):
        latency_code(torch.rand(2, 4), 10, t_last=10)


def test_losses_and_regulariser():
    torch.manual_seed(1)
    readout = torch.randn(7, 3, 4)
    labels = torch.tensor([0, 3, 1])
    torch.testing.assert_close(max_over_time_loss(readout, labels, scale=2.0),
                               F.cross_entropy(2.0 * readout.max(0).values, labels))
    torch.testing.assert_close(sum_over_time_loss(readout, labels),
                               F.cross_entropy(readout.mean(0), labels))
    spikes = torch.zeros(5, 2, 3)
    spikes[:3, 0, 0] = 1.0
    assert float(spike_regulariser(spikes, 0.5)) == pytest.approx(0.5 * 9 / 6)
    assert float(spike_regulariser(spikes, 0.5, target=3.0)) == 0.0
    assert float(spike_regulariser(spikes, 0.0)) == 0.0


def test_max_over_time_loss_reaches_every_step_of_a_flat_readout():
    """A noise-free network silent at initialisation reads exactly 0 at every step: the loss's
    gradient must reach the steps that inputs can influence, not only step 0 (ties shared)."""
    flat = torch.zeros(6, 2, 3, requires_grad=True)
    max_over_time_loss(flat, torch.tensor([0, 2]), scale=5.0).backward()
    per_step = flat.grad.abs().sum((1, 2))
    assert bool((per_step > 0).all()) and torch.allclose(per_step, per_step[0].expand(6))
    # a unique maximum still takes the whole gradient
    peaked = torch.zeros(6, 1, 2)
    peaked[4] = 1.0
    peaked.requires_grad_(True)
    max_over_time_loss(peaked, torch.tensor([1])).backward()
    assert bool((peaked.grad[torch.arange(6) != 4] == 0).all()) and bool(peaked.grad[4].ne(0).all())
