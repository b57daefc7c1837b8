"""Spiking Heidelberg Digits (Cramer et al. 2020): HDF5 files -> binned, channel-reduced spike counts.

A folder holds shd_train.h5 and shd_test.h5 (or their .gz downloads), each with
    spikes/times  variable-length float arrays, seconds, one per sample
    spikes/units  variable-length int arrays, channel 0..699, one per sample
    labels        int [N], 0..19
Each sample becomes counts [steps, 70]: time is binned into `steps` equal bins over [0, duration)
(later spikes are dropped) and the 700 cochlea channels are summed in groups of 10 adjacent ones,
as in the paper's 70-input network.
"""
import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import torch

from .data import DataError, Dataset

CHANNELS = 700
REDUCED = 70
CLASSES = 20
SPLITS = {"train": "shd_train.h5", "test": "shd_test.h5"}


def bin_spikes(times, units, steps, duration, channels=CHANNELS, reduced=REDUCED):
    """One sample's spike times (s) and channels -> uint8 counts [steps, reduced] (saturating at 255)."""
    times = np.asarray(times, dtype=np.float64)
    units = np.asarray(units, dtype=np.int64)
    keep = (times >= 0) & (times < duration)
    t = np.minimum((times[keep] / duration * steps).astype(np.int64), steps - 1)
    c = units[keep] * reduced // channels
    counts = np.zeros((steps, reduced), dtype=np.int64)
    np.add.at(counts, (t, c), 1)
    return np.minimum(counts, 255).astype(np.uint8)


def read_split(path, steps, duration, limit=None):
    """One SHD file -> (counts uint8 [N, steps, 70], labels int64 [N])."""
    try:
        import h5py
    except ImportError:
        raise DataError("reading SHD needs h5py: pip install 'bss2_backend[shd]'") from None
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                source = io.BytesIO(f.read())
        else:
            source = path
        with h5py.File(source, "r") as f:
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    raise DataError(f"{path}: missing dataset {key!r}; an SHD file has spikes/times, "
                                    f"spikes/units and labels")
            times, units, labels = f["spikes/times"], f["spikes/units"], np.asarray(f["labels"])
            n = len(labels) if limit is None else min(limit, len(labels))
            if len(times) != len(labels) or len(units) != len(labels):
                raise DataError(f"{path}: spikes/times ({len(times)}), spikes/units ({len(units)}) "
                                f"and labels ({len(labels)}) must have one entry per sample")
            counts = np.zeros((n, steps, REDUCED), dtype=np.uint8)
            for i in range(n):
                ti, ui = np.asarray(times[i]), np.asarray(units[i])
                if ti.shape != ui.shape or ti.ndim != 1:
                    raise DataError(f"{path}: sample {i} has {ti.size} spike times but {ui.size} "
                                    f"units (one channel per spike time)")
                if not np.issubdtype(ti.dtype, np.floating) and not np.issubdtype(ti.dtype, np.integer):
                    raise DataError(f"{path}: sample {i} has spike times of dtype {ti.dtype}; "
                                    f"they must be real numbers (seconds)")
                if ti.size and not np.isfinite(ti).all():
                    raise DataError(f"{path}: sample {i} has NaN or inf spike times")
                if ti.size and ti.min() < 0:
                    raise DataError(f"{path}: sample {i} has negative spike times; times are "
                                    f"seconds from the start of the sample, >= 0")
                if ui.dtype == np.bool_ or not np.issubdtype(ui.dtype, np.integer):
                    raise DataError(f"{path}: sample {i} has channels of dtype {ui.dtype}; they "
                                    f"must be integers 0..{CHANNELS - 1}")
                if ui.size and (ui.min() < 0 or ui.max() >= CHANNELS):
                    raise DataError(f"{path}: sample {i} has channels outside 0..{CHANNELS - 1}")
                counts[i] = bin_spikes(ti, ui, steps, duration)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a readable SHD HDF5 file ({type(e).__name__}: {e})") from None
    labels = labels[:n]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or \
            (n and (labels.min() < 0 or labels.max() >= CLASSES)):
        raise DataError(f"{path}: labels must be integers 0..{CLASSES - 1}, one per sample")
    return torch.from_numpy(counts), torch.from_numpy(labels.astype(np.int64))


def load_shd(folder, steps=100, duration=1.0, limit=None):
    """Dataset of SHD counts [N, steps, 70] (uint8) from `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder}: not a folder; for --task shd pass the folder holding "
                        f"{SPLITS['train']} and {SPLITS['test']}")
    arrays = {}
    for split, name in SPLITS.items():
        found = [folder / n for n in (name, name + ".gz") if (folder / n).is_file()]
        if not found:
            raise DataError(f"{folder}: no {name}[.gz]; download the SHD files "
                            f"(shd_train.h5.gz, shd_test.h5.gz) into it")
        arrays[split] = read_split(found[0], steps, duration, limit)
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    if len(y_train) == 0 or len(y_test) == 0:
        raise DataError(f"{folder}: the SHD files hold no samples")
    return Dataset("shd", x_train, y_train, x_test, y_test, CLASSES)
