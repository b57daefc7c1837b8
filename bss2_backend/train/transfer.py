"""A trained network on other chips: transfer statistics (`bss2 eval`) and failed neurons
(`bss2 failure`, the paper's Fig. 4C).

Fresh chips have seeds FRESH_SEED_BASE, FRESH_SEED_BASE + 1, ... skipping the training chip's seed:
the same chips in every run, never the one trained on. They run as populations (bss2_backend.
Chips) of at most CHUNK chips per launch, so memory stays bounded for any number of chips.
"""
import dataclasses
import math

import torch

from ..chip import Chip
from ..population import Chips
from .config import SEQUENCE_TASKS, TrainConfig
from .loop import build_network, evaluate

FRESH_SEED_BASE = 1_000_000
CHUNK = 16                 # chips per population launch
EVAL_ELEMENTS = 1 << 12    # chips x samples per evaluation batch


def fresh_seeds(n, exclude=(), base=FRESH_SEED_BASE):
    """n chip seeds from `base` on, skipping `exclude`."""
    seeds, s = [], base
    while len(seeds) < n:
        if s not in exclude:
            seeds.append(s)
        s += 1
    return seeds


def config_of(state):
    """The TrainConfig a checkpoint was trained with (fields it lacks take their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in state["config"].items() if k in names})


def check_data(state, dataset):
    """Refuse data the checkpoint's network cannot take, naming both."""
    net = state["network"]
    n_in = dataset.x_test[0].numel() if net["task"] not in SEQUENCE_TASKS else dataset.x_test.shape[-1]
    if n_in != net["n_in"] or dataset.classes != net["n_out"]:
        raise ValueError(f"the checkpoint's network takes {net['n_in']} inputs and "
                         f"{net['n_out']} classes ({net['task']}); the data has {n_in} inputs "
                         f"and {dataset.classes} classes: pass the data it was trained on")


def _network(state, chip):
    cfg = config_of(state)
    net = state["network"]
    model = build_network(dataclasses.replace(cfg, dropout=0.0), chip, net["n_in"], net["n_out"])
    model.load_state_dict(state["model"])
    return cfg, model


def training_chip(state):
    """The chip the checkpoint was trained on, restored from its state."""
    return Chip.from_state_dict(state["chip"])


def chip_kwargs(state, mismatch=None, noise=None):
    """The fresh chips' configuration: the training chip's, or with a `mismatch` given, standard
    chips of that mismatch (quantised, with the default noise unless `noise` says otherwise),
    whatever the network was trained on (an ideal-trained network loaded onto real chips)."""
    if mismatch is None:
        kwargs = Chip.config_kwargs(state["chip"]["config"])
    else:
        kwargs = {"mismatch": mismatch}
    if noise is not None:
        kwargs["noise"] = noise
    return kwargs


def evaluate_chips(state, dataset, seeds, device, *, mismatch=None, noise=None, failures=None,
                   progress=None):
    """Accuracy (and details) of the checkpoint's network on each chip of `seeds`: a list of
    dicts {seed, accuracy, spikes_per_sample, decision_steps}. failures: (dead, firing, seed)."""
    check_data(state, dataset)
    kwargs = chip_kwargs(state, mismatch, noise)
    rows = []
    for start in range(0, len(seeds), CHUNK):
        chunk = seeds[start:start + CHUNK]
        chips = Chips(chunk, **kwargs)
        if failures is not None:
            chips.set_failures(*failures)
        cfg, model = _network(state, chips)
        model.to(device)
        batch = max(1, EVAL_ELEMENTS // len(chunk))
        result = evaluate(cfg, model, dataset.x_test, dataset.y_test, device, batch_size=batch,
                          details=True)
        for seed, acc in zip(chunk, result["per_chip"]):
            rows.append({"seed": seed, "accuracy": acc,
                         "spikes_per_sample": result["spikes_per_sample"],
                         "decision_steps": result["decision_steps"]})
        if progress is not None:
            progress(len(chunk))
    return rows


def evaluate_training_chip(state, dataset, device, failures=None):
    """details of evaluate() on the chip the checkpoint was trained on."""
    check_data(state, dataset)
    chip = training_chip(state)
    if failures is not None:
        chip.set_failures(*failures)
    cfg, model = _network(state, chip)
    model.to(device)
    return evaluate(cfg, model, dataset.x_test, dataset.y_test, device, details=True)


def summary(accuracies):
    """mean, std, min, 5th percentile, median, max of a list of accuracies."""
    t = torch.tensor(accuracies, dtype=torch.float64)
    q = lambda p: float(torch.quantile(t, p)) if len(t) > 1 else float(t[0])
    return {"mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0,
            "min": float(t.min()), "p5": q(0.05), "median": q(0.5), "max": float(t.max())}


def plot_transfer(results, path):
    """Histogram of accuracy per chip, one colour per checkpoint; the training chip marked."""
    from .plots import _pyplot, save_figure
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    lo = min(min(r["accuracy_per_chip"]) for r in results)
    bins = torch.linspace(math.floor(lo * 50) / 50, 1.0, 26).tolist()
    for i, r in enumerate(results):
        ax.hist(r["accuracy_per_chip"], bins=bins, alpha=0.6, color=f"C{i}",
                label=f"{r['label']}: mean {r['summary']['mean']:.3f}, "
                      f"p5 {r['summary']['p5']:.3f}")
        if r.get("training_chip_accuracy") is not None:
            ax.axvline(r["training_chip_accuracy"], color=f"C{i}", ls="--", lw=1.2)
    ax.set(xlabel=f"test accuracy on {len(results[0]['accuracy_per_chip'])} fresh chips "
                  f"(dashed: the training chip)", ylabel="chips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_failure(rows, path, kind):
    """Accuracy against the fraction of failed hidden neurons, with and without dropout."""
    from .plots import _pyplot, save_figure
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, label in enumerate(dict.fromkeys(r["network"] for r in rows)):
        mine = [r for r in rows if r["network"] == label]
        f = [r["fraction"] for r in mine]
        m = [r["mean"] for r in mine]
        s = [r["std"] for r in mine]
        ax.errorbar(f, m, yerr=s, marker="o", capsize=3, label=label, color=f"C{i}")
    ax.set(xlabel=f"fraction of {kind} hidden neurons", ylabel="test accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
