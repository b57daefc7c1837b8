"""`bss2 eval` (a trained network on many fresh chips) and `bss2 failure` (failed hidden neurons,
with and without dropout): the command lines over bss2_backend.train.transfer."""
import csv
import json
from dataclasses import asdict, replace

import torch

from pathlib import Path

from ..cli import UserError, _mismatch_arg, folder_arg, integer, real
from .cli import _chip, _common, _config, _logger, one_line_errors, resolve_device

MAX_EVAL_CHIPS = 100_000
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def register(subparsers):
    register_sweep(subparsers)
    ev = subparsers.add_parser(
        "eval", help="evaluate trained networks on many fresh chips (transfer statistics)",
        description="Evaluate the network of each checkpoint on --chips fresh chips (seeds from "
                    "--seed-base on, never the training chip's) and on its training chip: "
                    "accuracy per chip, mean, min, 5th percentile, a histogram.")
    # not required by argparse: `bss2 eval --nir FILE` (bss2_backend.nir.cli) evaluates a graph
    ev.add_argument("--checkpoint", nargs="+", metavar="CKPT", type=Path,
                    help="checkpoint.pt file(s) of bss2 train (read by the same checked loader "
                         "as --resume)")
    ev.add_argument("--label", nargs="+", metavar="NAME",
                    help="a name per checkpoint for the table and plot (default: its folder)")
    ev.add_argument("--chips", type=integer(1, MAX_EVAL_CHIPS), default=100,
                    help="fresh chips to evaluate on (default 100)")
    ev.add_argument("--seed-base", type=integer(0, 2**62), default=None,
                    help="first fresh chip seed (default 1000000); the training chip's is skipped")
    ev.add_argument("--mismatch", type=_mismatch_arg, default=None,
                    help="fresh chips of this mismatch, quantised and noisy like real chips "
                         "(default: chips configured like the training chip; give it to load an "
                         "ideal-trained network onto real chips): calibrated | uncalibrated | "
                         "none | sigma_d")
    ev.add_argument("--no-noise", action="store_true", help="fresh chips without temporal noise")
    ev.add_argument("--dead", type=real(0.0, 1.0), default=0.0,
                    help="fraction of failed (silent) hidden neurons per chip (default 0)")
    ev.add_argument("--firing", type=real(0.0, 1.0), default=0.0,
                    help="fraction of always-firing hidden neurons per chip (default 0)")
    ev.add_argument("--data", metavar="PATH", type=folder_arg,
                    help="MNIST .npz or IDX folder the checkpoints were trained on (default: the "
                         "bundled digits)")
    ev.add_argument("--limit-test", type=integer(1, None), metavar="N")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", default="bss2-eval", metavar="DIR", type=folder_arg,
                    help="transfer.json, transfer.csv and transfer.png go here")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--threads", type=integer(1, 1024), default=1)
    ev.set_defaults(func=cmd_eval, _user_errors=False)

    fa = subparsers.add_parser(
        "failure", help="accuracy as hidden neurons fail, trained with and without dropout (Fig. 4C)",
        description="Train the network in the loop twice (without and with --dropout), then "
                    "evaluate both with a growing fraction of failed hidden neurons on the "
                    "training chip, --repeats draws each: a table, CSV, JSON and plot.")
    fa.add_argument("--data", metavar="PATH", type=folder_arg,
                    help="MNIST .npz or IDX folder (default: the bundled digits)")
    _common(fa)
    fa.add_argument("--dropout", type=real(0.0, 1.0), default=0.2,
                    help="dropout of the second network (0 < P < 1, default 0.2)")
    fa.add_argument("--fractions", type=real(0.0, 1.0), nargs="+", default=None, metavar="F",
                    help=f"failed fractions (default {' '.join(map(str, FRACTIONS))})")
    fa.add_argument("--kind", choices=("dead", "firing"), default="dead",
                    help="dead: silent neurons (default); firing: leak above threshold")
    fa.add_argument("--repeats", type=integer(1, 1000), default=3,
                    help="failure draws per fraction (default 3)")
    fa.add_argument("--out", default="bss2-failure", metavar="DIR", type=folder_arg)
    fa.set_defaults(func=one_line_errors(_failure), _user_errors=False, task="mnist", mismatch=None,
                    integration="auto", ideal=False, chips=1)


def register_sweep(subparsers):
    sw = subparsers.add_parser(
        "sweep", help="train over a range of spike regularisation strengths (Fig. 3E)",
        description="Train the network in the loop once per --reg value and plot test accuracy "
                    "against hidden spikes per sample.")
    sw.add_argument("--data", metavar="PATH", type=folder_arg,
                    help="MNIST .npz or IDX folder (default: the bundled digits)")
    _common(sw)
    sw.add_argument("--regs", type=real(0.0), nargs="+", required=True, metavar="R",
                    help="regularisation strengths to train with (e.g. 0 1e-4 1e-3 1e-2 1e-1)")
    sw.add_argument("--out", default="bss2-sweep", metavar="DIR", type=folder_arg)
    sw.set_defaults(func=one_line_errors(_sweep), _user_errors=False, task="mnist", mismatch=None,
                    integration="auto", ideal=False, chips=1)


def _sweep(args):
    from ..files import prepare_out, write_text
    from . import plots
    from .data import load_images
    from .loop import evaluate, fit
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = _logger(args)
    out = prepare_out(args.out)
    dataset = load_images(args.data).subset(args.limit_train, args.limit_test)
    base = _config(args, "mnist" if args.data else "digits")
    rows = []
    for reg in args.regs:
        cfg = replace(base, reg=reg)
        model, _ = fit(cfg, dataset, _chip(args), device=device, log=log,
                       progress=not args.no_progress)
        d = evaluate(cfg, model, dataset.x_test, dataset.y_test, device, details=True)
        rows.append({"reg": reg, "test_accuracy": d["accuracy"],
                     "spikes_per_sample": d["spikes_per_sample"],
                     "spikes_per_hidden_neuron": d["spikes_per_hidden_neuron"]})
        log(f"reg {reg:g}: test {d['accuracy']:.4f} at {d['spikes_per_sample']:.1f} hidden "
            f"spikes per sample")
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots.plot_sweep(rows, out / "sweep.png")
    result = {"rows": rows, "dataset": dataset.name, "config": asdict(base),
              "chip_seed": args.chip_seed, "device": str(device),
              "csv": str(out / "sweep.csv"), "plot": str(out / "sweep.png")}
    write_text(out / "sweep.json", json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        for r in rows:
            print(f"reg {r['reg']:<8g} test {r['test_accuracy']:.4f}  "
                  f"{r['spikes_per_sample']:8.1f} hidden spikes per sample")
        print(f"sweep.csv, sweep.json and sweep.png in {out}")
    return 0


def _load_data(args, task):
    from .data import load_images
    if task != "mnist":
        raise UserError(f"bss2 eval / failure: {task} networks are recurrent, which populations "
                        f"of chips do not run yet; evaluate MNIST/digits checkpoints")
    return load_images(args.data).subset(None, args.limit_test)


def cmd_eval(args):
    if not args.checkpoint:
        raise UserError("give --checkpoint CKPT [CKPT ...] or --nir FILE")
    return one_line_errors(_eval, also=(ValueError, TypeError))(args)


def _eval(args):
    from ..energy import figures
    from ..files import prepare_out, write_text
    from ..noise import Noise
    from . import transfer
    from .checkpoint import load_checkpoint
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = _logger(args)
    out = prepare_out(args.out)
    labels = args.label or [None] * len(args.checkpoint)
    if len(labels) != len(args.checkpoint):
        raise UserError(f"--label: {len(labels)} names for {len(args.checkpoint)} checkpoints")
    if args.dead + args.firing > 1:
        raise UserError(f"--dead {args.dead:g} + --firing {args.firing:g} must be <= 1")
    failures = (args.dead, args.firing, 0) if args.dead or args.firing else None
    mismatch = args.mismatch
    results, dataset = [], None
    for path, label in zip(args.checkpoint, labels):
        state = load_checkpoint(path)
        cfg = transfer.config_of(state)
        dataset = dataset or _load_data(args, cfg.task)
        train_seed = state["chip"]["config"]["seed"]
        base = transfer.FRESH_SEED_BASE if args.seed_base is None else args.seed_base
        # a network trained on a population (--chips K) saw seeds train_seed .. + K - 1
        trained_on = set(range(train_seed, train_seed + cfg.chips))
        seeds = transfer.fresh_seeds(args.chips, exclude=trained_on, base=base)
        label = label or path.parent.name or str(path)
        log(f"{label}: {args.chips} fresh chips (seeds {seeds[0]}..{seeds[-1]}), "
            f"{len(dataset.y_test)} test samples each")
        bar = None
        if not args.no_progress and not args.json:
            from tqdm import tqdm
            bar = tqdm(total=args.chips, desc=label, unit="chip", leave=False)
        try:
            rows = transfer.evaluate_chips(state, dataset, seeds, device, mismatch=mismatch,
                                           noise=Noise(0.0, 0.0) if args.no_noise else None,
                                           failures=failures,
                                           progress=None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
        own = transfer.evaluate_training_chip(state, dataset, device, failures)
        accs = [r["accuracy"] for r in rows]
        decision = sum(r["decision_steps"] for r in rows) / len(rows)
        spikes = sum(r["spikes_per_sample"] for r in rows) / len(rows)
        chip_dt = state["chip"]["config"]["dt_us"]
        results.append({
            "label": label, "checkpoint": str(path), "training_chip_seed": train_seed,
            "training_chip_accuracy": own["accuracy"], "seeds": seeds,
            "accuracy_per_chip": accs, "summary": transfer.summary(accs),
            "chip_figures": figures(cfg.steps, chip_dt, time_to_decision_us=decision * chip_dt,
                                    spikes_per_sample=spikes)._asdict()})
        s = results[-1]["summary"]
        log(f"{label}: training chip {own['accuracy']:.4f}; fresh chips mean {s['mean']:.4f}, "
            f"min {s['min']:.4f}, 5th percentile {s['p5']:.4f}, max {s['max']:.4f}")
    transfer.plot_transfer(results, out / "transfer.png")
    with (out / "transfer.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "seed", "accuracy"])
        for r in results:
            w.writerow([r["label"], r["training_chip_seed"], r["training_chip_accuracy"]])
            for seed, acc in zip(r["seeds"], r["accuracy_per_chip"]):
                w.writerow([r["label"], seed, acc])
    result = {"results": results, "dataset": dataset.name, "device": str(device),
              "mismatch": args.mismatch, "noise": not args.no_noise,
              "failures": {"dead": args.dead, "firing": args.firing},
              "plot": str(out / "transfer.png"), "csv": str(out / "transfer.csv")}
    write_text(out / "transfer.json", json.dumps(result, indent=1, default=str))
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(table(results))
        print(f"transfer.json, transfer.csv and transfer.png in {out}")
    return 0


def table(results):
    head = f"{'network':24s} {'own chip':>9s} {'mean':>7s} {'min':>7s} {'p5':>7s} {'max':>7s}"
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["summary"]
        lines.append(f"{r['label'][:24]:24s} {r['training_chip_accuracy']:9.4f} {s['mean']:7.4f} "
                     f"{s['min']:7.4f} {s['p5']:7.4f} {s['max']:7.4f}")
    return "\n".join(lines)


def _failure(args):
    from ..files import prepare_out, write_text
    from . import transfer
    from .data import load_images
    from .loop import evaluate, fit
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = _logger(args)
    out = prepare_out(args.out)
    if not 0.0 < args.dropout < 1.0:
        raise UserError(f"--dropout {args.dropout:g} must lie in (0, 1): the second network is "
                        f"trained with dropout")
    fractions = list(args.fractions) if args.fractions else list(FRACTIONS)
    dataset = load_images(args.data).subset(args.limit_train, args.limit_test)
    base = _config(args, "mnist" if args.data else "digits")
    rows = []
    for label, dropout in (("no dropout", 0.0), (f"dropout {args.dropout:g}", args.dropout)):
        cfg = replace(base, dropout=dropout)
        chip = _chip(args)
        log(f"training ({label}) in the loop on chip seed {args.chip_seed}, {cfg.epochs} epochs")
        model, _ = fit(cfg, dataset, chip, device=device, log=log,
                       progress=not args.no_progress)
        for fraction in fractions:
            accs = []
            for r in range(args.repeats):
                failed = dict(dead=fraction) if args.kind == "dead" else dict(firing=fraction)
                chip.set_failures(**failed, seed=r)
                accs.append(evaluate(cfg, model, dataset.x_test, dataset.y_test, device)[0])
            chip.set_failures()
            t = torch.tensor(accs, dtype=torch.float64)
            rows.append({"network": label, "dropout": dropout, "fraction": fraction,
                         "mean": float(t.mean()), "std": float(t.std()) if len(t) > 1 else 0.0,
                         "accuracies": accs})
            log(f"{label}: {fraction:.0%} {args.kind} -> {rows[-1]['mean']:.4f}")
    with (out / "failure.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["network", "dropout", "fraction", "mean", "std"])
        for r in rows:
            w.writerow([r["network"], r["dropout"], r["fraction"], r["mean"], r["std"]])
    transfer.plot_failure(rows, out / "failure.png", args.kind)
    result = {"rows": rows, "kind": args.kind, "repeats": args.repeats, "dataset": dataset.name,
              "chip_seed": args.chip_seed, "config": asdict(base), "device": str(device),
              "csv": str(out / "failure.csv"), "plot": str(out / "failure.png")}
    write_text(out / "failure.json", json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        nets = list(dict.fromkeys(r["network"] for r in rows))
        print(f"{'failed':>8s} " + " ".join(f"{n:>14s}" for n in nets))
        for fraction in fractions:
            print(f"{fraction:8.0%} " + " ".join(
                f"{next(r['mean'] for r in rows if r['network'] == n and r['fraction'] == fraction):14.4f}"
                for n in nets))
        print(f"failure.csv, failure.json and failure.png in {out}")
    return 0
