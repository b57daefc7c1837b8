"""Self-calibration by training in the loop (Cramer et al. 2022, Fig. 4B).

For each decalibration sigma_d (every neuron parameter p -> p (1 + sigma_d xi), drawn once per chip
from --chip-seed), on the same frozen chip:
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
CSV_FIELDS = ("sigma_d", "itl_accuracy", "transfer_accuracy", "ideal_accuracy")


# sigma_d = 0.5 detunes some time constants below dt = 1 us, where forward Euler is unstable; every
# chip of the sweep (the ideal one too) integrates with the exact exponential decay instead
INTEGRATION = "exact"


def decalibrated_chip(seed, sigma_d, noise=True, disable_tonic=False):
    chip = Chip(seed=seed, mismatch=float(sigma_d), noise=noise, integration=INTEGRATION)
    if disable_tonic:
        chip.disable_tonic()
    return chip


def run(cfg, dataset, *, sigmas=SIGMAS, chip_seed=0, noise=True, device="cpu", log=print,
        progress=True, disable_tonic=False):
    """Returns rows [{sigma_d, itl_accuracy, transfer_accuracy, ideal_accuracy}] in sigma order."""
    log("training on the ideal model (no mismatch, noise or quantisation) ...")
    ideal, _ = fit(cfg, dataset, Chip.ideal(seed=chip_seed, integration=INTEGRATION),
                   device=device, log=log, progress=progress)
    ideal_acc, _ = evaluate(cfg, ideal, dataset.x_test, dataset.y_test, device)
    trained = {k: v for k, v in ideal.state_dict().items()}
    n_in = dataset.x_train[0].numel() if cfg.task not in SEQUENCE_TASKS else dataset.x_train.shape[-1]
    rows = []
    for sigma in sigmas:
        transfer_net = build_network(cfg, decalibrated_chip(chip_seed, sigma, noise,
                                                            disable_tonic), n_in,
                                     dataset.classes).to(device)
        transfer_net.load_state_dict(trained)
        transfer_acc, _ = evaluate(cfg, transfer_net, dataset.x_test, dataset.y_test, device)
        log(f"sigma_d={sigma:g}: trained ideal, loaded on the chip: test {transfer_acc:.4f}; "
            f"training in the loop ...")
        itl_net, _ = fit(cfg, dataset, decalibrated_chip(chip_seed, sigma, noise, disable_tonic),
                         device=device, log=log, progress=progress)
        itl_acc, _ = evaluate(cfg, itl_net, dataset.x_test, dataset.y_test, device)
        rows.append({"sigma_d": float(sigma), "itl_accuracy": itl_acc,
                     "transfer_accuracy": transfer_acc, "ideal_accuracy": ideal_acc})
        log(f"sigma_d={sigma:g}: in the loop {itl_acc:.4f}  transfer {transfer_acc:.4f}")
    return rows


def table(rows):
    lines = [f"{'sigma_d':>8s}  {'in the loop':>12s}  {'ideal -> chip':>14s}"]
    lines += [f"{r['sigma_d']:8.2f}  {r['itl_accuracy']:12.4f}  {r['transfer_accuracy']:14.4f}"
              for r in rows]
    return "\n".join(lines)


def write_csv(rows, path):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in CSV_FIELDS})
    write_text(path, buf.getvalue())
