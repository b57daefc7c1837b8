"""Training checkpoints: written atomically after every epoch, read back by one checked loader.

Reading a checkpoint never runs code from it: torch.load(weights_only=True) unpickles tensors,
containers and plain numbers only, and refuses a pickle that names any other callable (the way a
crafted file with a __reduce__ would run code), also for files in the legacy, non-zip format. Then
the schema is checked before anything in it is used: format, version, keys and their types, the
chip state (Chip.from_state_dict), epoch >= 0 and a history of that length, the RNG state, and,
against the model the run builds, every weight's name, shape, dtype and finiteness and the
optimiser state's structure and shapes. Every problem is a CheckpointError (a ValueError) with a
one-line message naming the file and what is wrong.

Every reader of checkpoints (resume; later evaluation and export) goes through load_checkpoint.
"""
import math
import numbers
import pickle
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..chip import Chip
from .config import LR_SCHEDULES, TASKS, TrainConfig

FORMAT = "bss2-train-checkpoint"
VERSION = 1
# what a checkpoint holds, and the type of each entry
SCHEMA = {"format": str, "version": int, "config": dict, "network": dict, "model": dict,
          "optimizer": dict, "chip": dict, "epoch": int, "history": list, "rng": torch.Tensor}
NETWORK_KEYS = {"task": str, "n_in": int, "n_out": int, "steps": int, "t_last": int}
HISTORY_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy", "spikes_per_hidden_neuron",
                "test_spikes_per_hidden_neuron", "seconds")
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is damaged, or does not belong to this run."""


def make_checkpoint(cfg, model, optimiser, chip, epoch, history, signature):
    return {"format": FORMAT, "version": VERSION, "config": asdict(cfg), "network": signature,
            "model": model.state_dict(), "optimizer": optimiser.state_dict(),
            "chip": chip.state_dict(), "epoch": epoch, "history": history,
            "rng": torch.get_rng_state()}


def load_checkpoint(path):
    """The checkpoint at `path` as a dict, its schema checked (see the module docstring); tensors
    on the CPU (load_state_dict moves them to the model's device)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    try:
        with warnings.catch_warnings():          # torch warns about unusual pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} cannot be read as a checkpoint: it holds more than tensors "
                              f"and plain data ({_unpickler_detail(e)}), which is refused unread, "
                              f"since loading it could run code; remove it or pick another "
                              f"--out") from None
    except Exception as e:           # whatever the file holds, reading it is one line of error
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{_first_line(e)}); remove it or pick another --out") from None
    try:
        validate(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return state


def _unpickler_detail(error):
    """The reason torch's weights-only unpickler gives, without its advice to disable it."""
    text = " ".join(str(error).split())
    _, _, detail = text.partition("WeightsUnpickler error:")
    detail = detail.split(" Check the documentation")[0].strip()
    return (detail[:120] or "unsupported content")


def _first_line(error, limit=160):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(message):
    raise CheckpointError(message)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def validate(state):
    """Raise CheckpointError unless `state` has the schema of a bss2 train checkpoint."""
    if not isinstance(state, dict):
        _fail(f"is not a bss2 train checkpoint (a {type(state).__name__}, not a dict)")
    if state.get("format") != FORMAT:
        _fail("is not a bss2 train checkpoint (no 'format': 'bss2-train-checkpoint')")
    if state.get("version") != VERSION:
        _fail(f"has checkpoint version {state.get('version')!r}, this bss2 reads {VERSION}; start "
              f"afresh in another --out")
    missing = [k for k in SCHEMA if k not in state]
    if missing:
        _fail(f"is missing {missing}")
    _check_tensors(state, "")
    for key, kind in SCHEMA.items():
        if kind is int and not _is_int(state[key]) or kind is not int and not isinstance(state[key], kind):
            _fail(f"{key} must be {kind.__name__}, got {type(state[key]).__name__}")
    _check_config(state["config"])
    _check_network(state["network"])
    _check_model(state["model"])
    if state["epoch"] < 0:
        _fail(f"epoch={state['epoch']} must be >= 0")
    _check_history(state["history"], state["epoch"])
    _check_rng(state["rng"])
    try:
        Chip.from_state_dict(state["chip"])
    except (TypeError, ValueError) as e:
        _fail(f"chip: {_first_line(e)}")
    _check_optimizer_structure(state["optimizer"])


def _check_tensors(obj, where, depth=0):
    """Every tensor anywhere in the checkpoint: a plain dense tensor with data on the CPU (no meta,
    sparse or quantized tensors, which nothing here writes and later checks could not read)."""
    if depth > 12:
        _fail(f"{where or 'the checkpoint'} is nested too deeply")
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and type(obj) is not torch.nn.Parameter:
            _fail(f"{where} is a {type(obj).__name__}, not a plain tensor")
        if obj.device.type != "cpu" or obj.layout != torch.strided or obj.is_quantized:
            _fail(f"{where} must be a dense tensor with data, got {obj.layout} on {obj.device}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_tensors(v, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_tensors(v, f"{where}[{i}]", depth + 1)


# TrainConfig fields younger than the checkpoint format: a checkpoint without them was trained
# with these values
NEWER_CONFIG = {"chips": 1, "dropout": 0.0, "lr_schedule": "constant", "freeze_recurrent": False,
                "augment": 0}


def _check_config(config):
    known = {f.name: f.type for f in fields(TrainConfig)}
    missing = [k for k in known if k not in config and k not in NEWER_CONFIG]
    if missing or set(config) - set(known):
        _fail(f"config must have the keys {sorted(known)}, got {sorted(config)}")
    for key, kind in known.items():
        if key not in config:
            continue
        value = config[key]
        ok = isinstance(value, bool) if kind in (bool, "bool") else \
            _is_int(value) if kind in (int, "int") else \
            _is_real(value) and math.isfinite(value) if kind in (float, "float") else \
            isinstance(value, str)
        if not ok:
            _fail(f"config.{key}={value!r} has the wrong type")
    if config["task"] not in TASKS:
        _fail(f"config.task={config['task']!r} is not one of {list(TASKS)}")
    if config.get("lr_schedule", "constant") not in LR_SCHEDULES:
        _fail(f"config.lr_schedule={config['lr_schedule']!r} is not one of {list(LR_SCHEDULES)}")
    if not 0.0 <= config.get("dropout", 0.0) < 1.0 or config.get("chips", 1) < 1:
        _fail(f"config: dropout={config.get('dropout')!r} must lie in [0, 1) and "
              f"chips={config.get('chips')!r} be >= 1")


def _check_network(network):
    if set(network) != set(NETWORK_KEYS):
        _fail(f"network must have the keys {sorted(NETWORK_KEYS)}, got {sorted(network)}")
    for key, kind in NETWORK_KEYS.items():
        if not (_is_int(network[key]) if kind is int else isinstance(network[key], kind)):
            _fail(f"network.{key}={network[key]!r} has the wrong type")


def _check_model(model):
    for name, t in model.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            _fail(f"model must map names to tensors, got {name!r}: {type(t).__name__}")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            _fail(f"model weight {name!r} contains NaN or inf")


def _check_history(history, epoch):
    if len(history) != epoch:
        _fail(f"history has {len(history)} epochs but epoch={epoch}; the file is damaged")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or any(k not in row for k in HISTORY_KEYS):
            _fail(f"history[{i}] must be a dict with {list(HISTORY_KEYS)}")
        if row["epoch"] != i + 1:
            _fail(f"history[{i}] is epoch {row['epoch']!r}, expected {i + 1}")
        bad = [k for k in HISTORY_KEYS if not (_is_real(row[k]) and math.isfinite(row[k]))]
        if bad:
            _fail(f"history[{i}]: {bad} must be finite numbers")


def _check_rng(rng):
    expected = torch.get_rng_state()
    if rng.dtype != expected.dtype or rng.shape != expected.shape:
        _fail(f"rng must be a torch RNG state (uint8 [{expected.numel()}]), got {rng.dtype} "
              f"{list(rng.shape)}")


def _check_optimizer_structure(opt):
    if set(opt) != {"state", "param_groups"} or not isinstance(opt["state"], dict) \
            or not isinstance(opt["param_groups"], list) or not opt["param_groups"]:
        _fail("optimizer must be an optimiser state_dict ({'state': {...}, 'param_groups': [...]})")
    ids = []
    for g in opt["param_groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) \
                or not all(_is_int(i) for i in g["params"]):
            _fail("optimizer.param_groups must be dicts with a list of parameter ids")
        for key in ("lr", "eps", "weight_decay"):
            value = g.get(key)
            if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
                value = float(value)          # a GPU run keeps its lr as a tensor
            if key in g and not (_is_real(value) and math.isfinite(value) and value >= 0):
                _fail(f"optimizer.param_groups.{key}={g[key]!r} must be a finite number >= 0")
        ids += g["params"]
    if len(set(ids)) != len(ids):
        _fail("optimizer.param_groups list a parameter twice")
    for pid, entry in opt["state"].items():
        if pid not in ids or not isinstance(entry, dict) or set(entry) != set(ADAM_STATE):
            _fail(f"optimizer.state[{pid!r}] must be Adam's state {list(ADAM_STATE)} of a listed "
                  f"parameter")
        step = entry["step"]
        step = float(step) if isinstance(step, torch.Tensor) and step.numel() == 1 else step
        if not (_is_real(step) and math.isfinite(step) and step >= 0):
            _fail(f"optimizer.state[{pid}].step={entry['step']!r} must be a number >= 0")
        for key in ("exp_avg", "exp_avg_sq"):
            t = entry[key]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() \
                    or not bool(torch.isfinite(t).all()):
                _fail(f"optimizer.state[{pid}].{key} must be a finite float tensor")
        if bool((entry["exp_avg_sq"] < 0).any()):
            _fail(f"optimizer.state[{pid}].exp_avg_sq must be >= 0")


def check_matches(state, path, cfg, chip, signature):
    """Raise CheckpointError (one line, what differs and what to do) unless a validated `state`
    belongs to this run: the same network, chip and hyper-parameters."""
    if state["network"] != signature:
        diff = {k: (state["network"].get(k), v) for k, v in signature.items()
                if state["network"].get(k) != v}
        _fail(f"{path} was written for another network ({_describe(diff)}: saved vs requested); "
              f"use the same --task/--data/--steps or another --out")
    saved_chip = state["chip"]["config"]
    if saved_chip != chip.config():
        keys = [k for k in chip.config() if saved_chip.get(k) != chip.config()[k]]
        diff = {k: (saved_chip.get(k), chip.config()[k]) for k in keys}
        _fail(f"{path} was trained on another chip ({_describe(diff)}: saved vs requested); pass "
              f"the same --chip-seed/--mismatch/--no-noise/--ideal or another --out")
    defaults = NEWER_CONFIG
    for key in ("batch_size", "lr", "seed", "loss_scale", "reg", "chips", "dropout",
                "lr_schedule", "augment"):
        saved = state["config"].get(key, defaults.get(key))
        if saved != getattr(cfg, key):
            _fail(f"{path} was trained with {key}={saved}, this run asks for "
                  f"{getattr(cfg, key)}; resume with the same value or use another --out")


def _describe(diff):
    return ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())


def restore(state, path, model, optimiser, chip):
    """Load a validated, matching checkpoint into model, optimiser, chip and the RNG; returns
    (epoch, history). Shapes and dtypes are compared with the model before anything is loaded."""
    own = model.state_dict()
    saved = state["model"]
    if set(saved) != set(own):
        _fail(f"{path}: the model's weights are {sorted(own)}, the checkpoint holds {sorted(saved)}")
    for name, t in own.items():
        if saved[name].shape != t.shape or saved[name].dtype != t.dtype:
            _fail(f"{path}: weight {name!r} has shape {list(saved[name].shape)} "
                  f"{saved[name].dtype}, the model's is {list(t.shape)} {t.dtype}")
    params = list(model.parameters())
    opt = state["optimizer"]
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    if sorted(ids) != list(range(len(params))) or len(opt["param_groups"]) != len(optimiser.param_groups):
        _fail(f"{path}: the optimiser state is for {len(ids)} parameters in "
              f"{len(opt['param_groups'])} group(s), the model has {len(params)} in "
              f"{len(optimiser.param_groups)}")
    for pid, entry in opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            if entry[key].shape != params[pid].shape:
                _fail(f"{path}: optimizer.state[{pid}].{key} has shape {list(entry[key].shape)}, "
                      f"its parameter {list(params[pid].shape)}")
    model.load_state_dict(saved)
    optimiser.load_state_dict(opt)
    for group in optimiser.param_groups:
        # Adam is capturable on a GPU (its step count on the device, for CUDA graphs) and not on
        # the CPU: a checkpoint resumes on either
        if "capturable" in group:
            group["capturable"] = params[0].is_cuda
        lr = float(group["lr"])           # a tensor on the GPU (captured steps), a float elsewhere
        group["lr"] = torch.tensor(lr, device=params[0].device) if params[0].is_cuda else lr
    chip.runs = int(state["chip"]["runs"])
    chip.layer_runs = dict(state["chip"].get("layer_runs", {}))
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"])
