"""Image data sets for the MNIST-like task, as float tensors [N, 16, 16] in [0, 1] with int64 labels.

- digits (the default, no network needed): scikit-learn's bundled 8x8 digits (1797 images, 0..16),
  upsampled to 16x16; a fixed, seeded 80/20 split.
- MNIST from a path: an .npz with x_train, y_train, x_test, y_test, or a folder with the four IDX
  files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte; gzipped or not); 28x28 is downsampled to 16x16 by area averaging.

Every problem with a file is a DataError (a ValueError) whose message names the file, what is
wrong and what is expected.
"""
import gzip
import importlib.util
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

SIDE = 16
IDX_NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data file is missing or malformed."""


class Dataset(NamedTuple):
    name: str
    x_train: torch.Tensor     # float32 [N, ...] in [0, 1] (images) or spike counts (SHD)
    y_train: torch.Tensor     # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int

    def subset(self, train=None, test=None):
        """The first `train` / `test` samples (None keeps all): small runs and tests."""
        return self._replace(x_train=self.x_train[:train], y_train=self.y_train[:train],
                             x_test=self.x_test[:test], y_test=self.y_test[:test])


def resize(images, side=SIDE):
    """[N, H, W] float in [0, 1] -> [N, side, side]: area average down, bilinear up."""
    x = images.unsqueeze(1)
    if images.shape[-1] >= side:
        x = F.interpolate(x, size=(side, side), mode="area")
    else:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x.squeeze(1).clamp_(0.0, 1.0)


def load_digits(seed=0, test_fraction=0.2):
    """scikit-learn's bundled 8x8 digits, upsampled to 16x16, split 80/20 with a fixed seed."""
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(table[:, :-1].reshape(-1, 8, 8) / 16.0)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x = resize(x)
    return Dataset("digits", x[train], y[train], x[test], y[test], 10)


def _digits_file():
    """sklearn/datasets/data/digits.csv.gz, found without importing scikit-learn (slow to import)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default digits data set comes with scikit-learn; pip install "
                        "scikit-learn, or pass --data with MNIST")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's bundled digits are missing ({path}); reinstall scikit-learn")
    return path


def load_mnist(path):
    """MNIST from an .npz file or a folder of IDX files, downsampled to 16x16."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder; pass an .npz with "
                        f"{', '.join(NPZ_KEYS)} or a folder with the four MNIST IDX files")
    arrays = _read_npz(path) if path.is_file() else _read_idx_folder(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] < SIDE or x.shape[2] < SIDE:
            raise DataError(f"{path}: x_{split} must be images [N, H, W] with N >= 1 and "
                            f"H, W >= {SIDE}, got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{path}: y_{split} must be labels [{x.shape[0]}] (one per image of "
                            f"x_{split}), got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{path}: y_{split} must hold integer labels 0..9")
        check_pixels(path, f"x_{split}", x)
    # one scale for both splits: 0..255 (uint8 MNIST) unless every pixel already lies in [0, 1]
    scale = 255.0 if max(float(arrays["x_train"].max()), float(arrays["x_test"].max())) > 1.0 \
        else 1.0
    out = {}
    for key, a in arrays.items():
        if key.startswith("x"):
            out[key] = resize(torch.from_numpy(a.astype(np.float32) / np.float32(scale)))
        else:
            out[key] = torch.from_numpy(a.astype(np.int64))
    return Dataset("mnist", out["x_train"], out["y_train"], out["x_test"], out["y_test"], 10)


def check_pixels(path, key, x):
    """Pixels must be real numbers (integers or floats; not strings, objects or complex), finite,
    and within [0, 255] (uint8 images) or [0, 1]: nothing is clipped or truncated silently."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer)
                                   or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; pixels must be real numbers "
                        f"(uint8 0..255 or float 0..1)")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{path}: {key} contains NaN or inf pixels; all pixels must be finite")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise DataError(f"{path}: {key} has pixels in [{low:g}, {high:g}]; allowed [0, 255] "
                        f"(uint8) or [0, 1]")


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; an MNIST .npz needs "
                                f"{list(NPZ_KEYS)} (has {sorted(f.files)})")
            return {k: np.asarray(f[k]) for k in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}); pass an .npz with "
                        f"{list(NPZ_KEYS)} or a folder of MNIST IDX files") from None


def _read_idx_folder(folder):
    arrays = {}
    for key, stem in IDX_NAMES.items():
        found = [folder / n for n in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                                      stem.replace("-idx", ".idx") + ".gz") if (folder / n).is_file()]
        if not found:
            raise DataError(f"{folder}: no {stem}[.gz]; a MNIST folder needs the four IDX files "
                            f"{sorted(IDX_NAMES.values())} (gzipped or not)")
        arrays[key] = read_idx(found[0])
    return arrays


def read_idx(path):
    """One IDX file (unsigned bytes, gzipped or not) -> numpy array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({e}); is the download complete? "
                        f"Re-download the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim not in (1, 3) or len(raw) < head:
        raise DataError(f"{path}: IDX header says {ndim} dimensions; MNIST has 1 (labels) or 3 (images)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - head != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header promises shape {shape} ({int(np.prod(shape))} bytes) "
                        f"but the file holds {len(raw) - head}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


def load_images(data=None, seed=0):
    """The default digits (data=None) or MNIST from `data` (an .npz or an IDX folder)."""
    if data is None:
        return load_digits(seed)
    return load_mnist(os.fspath(data))
