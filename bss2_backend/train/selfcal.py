"""Self-calibration by training in the loop (Cramer et al. 2022, Fig. 4B).

For each decalibration sigma_d (every neuron parameter p -> p (1 + sigma_d xi), drawn once per chip
from its seed) and each chip seed (--chip-seeds: a mean with error bars), on the same frozen chip:
  (a) transfer: the network trained on the ideal model (Chip.ideal, trained once) is loaded onto the
      decalibrated chip and tested there;
  (b) in the loop: the same network (same initial weights) is trained on that chip and tested.
In-the-loop training compensates the mismatch; the transferred network degrades as sigma_d grows.
"""
import csv
import io

from ..chip import Chip
from ..files import write_text
from .config import SEQUENCE_TASKS
from .loop import build_network, evaluate, fit

SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
CSV_FIELDS = ("sigma_d", "chip_seed", "itl_accuracy", "transfer_accuracy", "ideal_accuracy",
              "tonic_hidden")


# sigma_d = 0.5 detunes some time constants below dt = 1 us, where forward Euler is unstable; every
# chip of the sweep (the ideal one too) integrates with the exact exponential decay instead
INTEGRATION = "exact"


def decalibrated_chip(seed, sigma_d, noise=True, disable_tonic=False):
    chip = Chip(seed=seed, mismatch=float(sigma_d), noise=noise, integration=INTEGRATION)
    if disable_tonic:
        chip.disable_tonic()
    return chip


def tonic_hidden(net):
    """How many hidden neurons of a network that has run sit with leak or reset at/above threshold
    (they fire without input: strong detuning's failure state)."""
    binding = net.hidden[-1]._bss2_binding
    return int(binding.chip.tonic_mask(binding.placement).sum())


def run(cfg, dataset, *, sigmas=SIGMAS, chip_seeds=(0,), noise=True, device="cpu", log=print,
        progress=True, disable_tonic=False):
    """Rows [{sigma_d, chip_seed, itl_accuracy, transfer_accuracy, ideal_accuracy, tonic_hidden}]
    per chip seed, in sigma order. The ideal model has no mismatch: it is trained once."""
    log("training on the ideal model (no mismatch, noise or quantisation) ...")
    ideal, _ = fit(cfg, dataset, Chip.ideal(seed=chip_seeds[0], integration=INTEGRATION),
                   device=device, log=log, progress=progress)
    ideal_acc, _ = evaluate(cfg, ideal, dataset.x_test, dataset.y_test, device)
    trained = {k: v for k, v in ideal.state_dict().items()}
    n_in = dataset.x_train[0].numel() if cfg.task not in SEQUENCE_TASKS else dataset.x_train.shape[-1]
    rows = []
    for seed in chip_seeds:
        for sigma in sigmas:
            where = f"chip seed {seed}, sigma_d={sigma:g}"
            transfer_net = build_network(cfg, decalibrated_chip(seed, sigma, noise, disable_tonic),
                                         n_in, dataset.classes).to(device)
            transfer_net.load_state_dict(trained)
            transfer_acc, _ = evaluate(cfg, transfer_net, dataset.x_test, dataset.y_test, device)
            log(f"{where}: trained ideal, loaded on the chip: test {transfer_acc:.4f}; "
                f"training in the loop ...")
            itl_net, _ = fit(cfg, dataset, decalibrated_chip(seed, sigma, noise, disable_tonic),
                             device=device, log=log, progress=progress)
            itl_acc, _ = evaluate(cfg, itl_net, dataset.x_test, dataset.y_test, device)
            rows.append({"sigma_d": float(sigma), "chip_seed": int(seed), "itl_accuracy": itl_acc,
                         "transfer_accuracy": transfer_acc, "ideal_accuracy": ideal_acc,
                         "tonic_hidden": tonic_hidden(itl_net)})
            log(f"{where}: in the loop {itl_acc:.4f}  transfer {transfer_acc:.4f}")
    return rows


def summary(rows):
    """Per sigma_d over the chip seeds: mean, sample standard deviation (0 for one seed), min and
    max of both accuracies, and the mean number of tonic hidden neurons."""
    out = []
    for sigma in sorted({r["sigma_d"] for r in rows}):
        group = [r for r in rows if r["sigma_d"] == sigma]
        entry = {"sigma_d": sigma, "chip_seeds": [r["chip_seed"] for r in group]}
        for key in ("itl_accuracy", "transfer_accuracy"):
            v = [r[key] for r in group]
            mean = sum(v) / len(v)
            std = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
            entry.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_min": min(v),
                          f"{key}_max": max(v)})
        entry["tonic_hidden_mean"] = sum(r["tonic_hidden"] for r in group) / len(group)
        out.append(entry)
    return out


def table(rows):
    lines = [f"{'sigma_d':>8s}  {'in the loop':>16s}  {'ideal -> chip':>16s}  {'tonic hidden':>12s}"]
    lines += [f"{r['sigma_d']:8.2f}  {r['itl_accuracy_mean']:8.4f} +- {r['itl_accuracy_std']:.4f}  "
              f"{r['transfer_accuracy_mean']:8.4f} +- {r['transfer_accuracy_std']:.4f}  "
              f"{r['tonic_hidden_mean']:12.1f}" for r in summary(rows)]
    return "\n".join(lines)


def write_csv(rows, path):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in CSV_FIELDS})
    write_text(path, buf.getvalue())
