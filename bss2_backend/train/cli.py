"""`bss2 train` and `bss2 selfcal`: in-the-loop training on an emulated chip from the command line."""
import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch

from ..cli import CHIP_SEED, UserError, _mismatch_arg, folder_arg, integer, real, sigma_arg
from .. import validation
from .config import LR_SCHEDULES, MIN_STEPS, SEQUENCE_TASKS, TASKS, TrainConfig

DEFAULT_EPOCHS = {"digits": 10, "mnist": 30, "shd": 30, "fsdd": 30}
DEFAULT_LR_SCHEDULE = {"mnist": "cosine"}
# the MNIST recipe (bench/results/mnist-recipe.json): larger batches at twice the rate, annealed
DEFAULT_BATCH = {"mnist": 256}
DEFAULT_LR = {"mnist": 1e-3}
DEFAULT_AUGMENT = {}
MAX_SHIFT = 4                    # pixels of a 16x16 image
MAX_EPOCHS = 1_000_000
MAX_BATCH = 10_000_000
MAX_THREADS = 1024
MAX_TRAIN_CHIPS = 1024


def register(subparsers):
    train = subparsers.add_parser(
        "train", help="train the paper's MNIST network (or SHD) in the loop on an emulated chip",
        description="Train 16x16 inputs -> 246 LIF -> 10 LI in the loop on an emulated BSS-2 chip. "
                    "Without --data it uses scikit-learn's bundled digits (no download).")
    train.add_argument("--task", choices=TASKS, default="mnist",
                       help="mnist: images, latency coded (default); shd: Spiking Heidelberg "
                            "Digits; fsdd: spoken digits (wav) through a cochlea-like front end")
    train.add_argument("--data", metavar="PATH", type=folder_arg,
                       help="MNIST .npz (x_train, y_train, x_test, y_test) or folder of the four "
                            "IDX files; for --task shd the folder with shd_*.h5; for --task fsdd "
                            "the folder of FSDD wav recordings")
    _common(train)
    train.add_argument("--mismatch", type=_mismatch_arg, default=None,
                       help="calibrated (default) | uncalibrated | none | sigma_d (float in [0, 1])")
    train.add_argument("--integration", choices=("auto", "euler", "exact"), default="auto",
                       help="auto: exact exponential decay for a numeric sigma_d (detuned time "
                            "constants can fall below dt, where forward Euler is unstable), else "
                            "Euler as hxtorch")
    train.add_argument("--ideal", action="store_true",
                       help="train on the nominal model: no mismatch, noise or quantisation")
    train.add_argument("--out", default="bss2-train", metavar="DIR", type=folder_arg,
                       help="checkpoint, metrics and plots go here (default ./bss2-train)")
    train.add_argument("--resume", action="store_true",
                       help="continue exactly from DIR/checkpoint.pt up to --epochs")
    train.add_argument("--freeze-recurrent", action="store_true",
                       help="keep the recurrent weights at their initial values (shd, fsdd): the "
                            "paper's contrast to trained recurrence")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                       help="constant, or cosine decay to 0 over the epochs (default: cosine "
                            "for MNIST, constant otherwise)")
    train.add_argument("--chips", type=integer(1, MAX_TRAIN_CHIPS), default=1, metavar="K",
                       help="train one network in the loop on K chips at once (seeds --chip-seed "
                            ".. --chip-seed+K-1; the loss averaged over them): robust to unseen "
                            "chips (default 1)")
    train.add_argument("--augment", type=integer(0, MAX_SHIFT), default=None, metavar="PIXELS",
                       help=f"images: shift each training image by up to this many pixels "
                            f"(0 .. {MAX_SHIFT}; default 0)")
    train.add_argument("--dropout", type=real(0.0, 1.0), default=0.0, metavar="P",
                       help="drop this fraction of hidden spikes in training (0 <= P < 1): "
                            "resilience to failed neurons (default 0)")
    train.add_argument("--disable-tonic", action="store_true",
                       help="switch off the spike output of neurons that fire without input "
                            "(leak or reset at/above threshold, under strong mismatch)")
    train.add_argument("--no-cuda-graph", action="store_true",
                       help="on a GPU, run every batch eagerly instead of replaying it as one "
                            "captured CUDA graph (the same results, more host time)")
    train.set_defaults(func=cmd_train, _user_errors=False)

    sc = subparsers.add_parser(
        "selfcal", help="self-calibration sweep (Fig. 4B): in the loop vs trained ideal and loaded",
        description="For each sigma_d: train on the ideal model and load onto the decalibrated chip, "
                    "versus train in the loop on that chip; test accuracy of both.")
    sc.add_argument("--data", metavar="PATH", type=folder_arg,
                    help="MNIST .npz or IDX folder (default: digits)")
    _common(sc)
    sc.add_argument("--sigmas", type=sigma_arg, nargs="+", default=None, metavar="S",
                    help="decalibration values (default 0 0.1 0.2 0.3 0.4 0.5)")
    sc.add_argument("--chip-seeds", type=CHIP_SEED, nargs="+", default=None, metavar="SEED",
                    help="sweep several chips (one mismatch draw each) and report the mean with "
                         "error bars; replaces --chip-seed")
    sc.add_argument("--disable-tonic", action="store_true",
                    help="switch off the spike output of hidden neurons that fire without input "
                         "(leak or reset above threshold: strong detuning's failure state), as "
                         "an experimenter does on BSS-2")
    sc.add_argument("--quick", action="store_true",
                    help="digits, fewer epochs and steps: under 10 minutes on 2 CPU cores")
    sc.add_argument("--out", default="bss2-selfcal", metavar="DIR", type=folder_arg,
                    help="selfcal.csv, selfcal.json and selfcal.png go here (default ./bss2-selfcal)")
    # chip_seed None: tells an explicit --chip-seed from the default, to refuse it with --chip-seeds
    sc.set_defaults(func=one_line_errors(_selfcal), _user_errors=False, task="mnist", chip_seed=None)


def _common(p):
    p.add_argument("--chip-seed", type=CHIP_SEED, default=0,
                   help="seed of the emulated chip's mismatch (0 .. 2^63-1)")
    p.add_argument("--no-noise", action="store_true", help="switch the chip's temporal noise off")
    p.add_argument("--epochs", type=integer(1, MAX_EPOCHS),
                   help="epochs (default: 10 digits, 30 MNIST/SHD)")
    p.add_argument("--batch-size", type=integer(1, MAX_BATCH), default=None,
                   help=f"samples per step (default: MNIST 256, else {TrainConfig.batch_size})")
    p.add_argument("--lr", type=real(0.0, None, low_open=True), default=None,
                   help=f"Adam learning rate (finite, > 0; default: MNIST 1e-3, else "
                        f"{TrainConfig.lr:g})")
    p.add_argument("--steps", type=integer(MIN_STEPS, None),
                   help=f"time steps T of dt = 1 us (default 40; SHD 100; at least {MIN_STEPS}: an "
                        f"input reaches the readout two steps later)")
    p.add_argument("--loss-scale", type=real(0.0, None, low_open=True),
                   default=TrainConfig.loss_scale, metavar="S",
                   help=f"softmax temperature on the readout membranes (finite, > 0; default "
                        f"{TrainConfig.loss_scale:g}: the chip's CADC reads about -1.8 .. 3.9 model "
                        f"units, so logits need this gain to separate)")
    p.add_argument("--reg", type=real(0.0), default=TrainConfig.reg,
                   help="spike-count regulariser strength (finite, >= 0; 0: off)")
    p.add_argument("--seed", type=integer(0, 2**32 - 1), default=0,
                   help="weight init and batch order (0 .. 2^32-1)")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu) | cpu | cuda[:i]")
    p.add_argument("--limit-train", type=integer(1, None), metavar="N",
                   help="use only the first N training samples")
    p.add_argument("--limit-test", type=integer(1, None), metavar="N",
                   help="use only the first N test samples")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout; progress and logs go to stderr")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=integer(1, MAX_THREADS), default=1,
                   help="CPU threads per process (default 1: the per-step tensors are small, and "
                        "more threads mostly spin when cores are shared)")


def resolve_device(text):
    try:
        return validation.resolve_device(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _config(args, dataset_name):
    cfg = TrainConfig(task=args.task, reg=args.reg,
                      loss_scale=getattr(args, "loss_scale", TrainConfig.loss_scale),
                      batch_size=args.batch_size or DEFAULT_BATCH.get(dataset_name,
                                                                      TrainConfig.batch_size),
                      lr=args.lr or DEFAULT_LR.get(dataset_name, TrainConfig.lr),
                      seed=args.seed, epochs=args.epochs or DEFAULT_EPOCHS[dataset_name],
                      chips=getattr(args, "chips", 1), dropout=getattr(args, "dropout", 0.0),
                      augment=DEFAULT_AUGMENT.get(dataset_name, 0)
                      if getattr(args, "augment", None) is None else args.augment,
                      lr_schedule=getattr(args, "lr_schedule", None) or
                      DEFAULT_LR_SCHEDULE.get(dataset_name, "constant"),
                      freeze_recurrent=getattr(args, "freeze_recurrent", False))
    if cfg.dropout >= 1.0:
        raise UserError(f"--dropout {cfg.dropout:g} must be < 1 (1 drops every hidden spike)")
    if cfg.augment and cfg.task in SEQUENCE_TASKS:
        raise UserError(f"--augment shifts images; the {cfg.task} task's samples are spike trains")
    if cfg.freeze_recurrent and cfg.task not in SEQUENCE_TASKS:
        raise UserError(f"--freeze-recurrent: the {cfg.task} network has no recurrent weights "
                        f"(it applies to --task {' / '.join(SEQUENCE_TASKS)})")
    if args.task in SEQUENCE_TASKS:
        cfg = replace(cfg, steps=args.steps or 100)
    elif args.steps:
        cfg = replace(cfg, steps=args.steps, t_last=max(1, min(cfg.t_last, args.steps // 2)))
    return cfg


def _load(args, steps):
    if args.task == "fsdd":
        from .fsdd import load_fsdd
        if not args.data:
            raise UserError("--task fsdd needs --data DIR, the folder of the Free Spoken Digit "
                            "Dataset's {digit}_{speaker}_{index}.wav recordings")
        return load_fsdd(args.data, steps=steps)[0]
    if args.task == "shd":
        from .shd import load_shd
        if not args.data:
            raise UserError("--task shd needs --data DIR, the folder with shd_train.h5 and shd_test.h5")
        return load_shd(args.data, steps=steps)
    from .data import load_images
    return load_images(args.data, seed=0)


def _chip(args):
    from ..chip import Chip
    from ..cli import resolve_mismatch
    mismatch = resolve_mismatch(args)
    integration = args.integration
    if integration == "auto":
        integration = "exact" if isinstance(mismatch, float) else "euler"
    chips = getattr(args, "chips", 1)
    if chips > 1:
        from ..population import Chips
        if args.chip_seed + chips - 1 > 2**63 - 1:
            raise UserError(f"--chip-seed {args.chip_seed} + --chips {chips} runs past the largest "
                            f"seed 2^63-1")
        seeds = range(args.chip_seed, args.chip_seed + chips)
        if args.ideal:
            return Chips(seeds, mismatch="none", noise=False, quantise=False, strict=False,
                         integration=integration)
        make = lambda **kw: Chips(seeds, **kw)
    else:
        if args.ideal:
            return Chip.ideal(seed=args.chip_seed, integration=integration)
        make = lambda **kw: Chip(seed=args.chip_seed, **kw)
    try:
        chip = make(mismatch=mismatch, noise=not args.no_noise, integration=integration)
    except (ValueError, TypeError) as e:
        raise UserError(f"--mismatch / --chip-seed: {e}") from None
    if getattr(args, "disable_tonic", False):
        chip.disable_tonic()
    n = chip.neurons
    fastest = min(float(t.min()) for t in (n.tau_mem_us, n.tau_syn_exc_us, n.tau_syn_inh_us))
    if integration == "euler" and fastest < chip.dt_us:
        raise UserError(f"--mismatch {mismatch} detunes a time constant to {fastest:.3g} us, "
                        f"below dt = {chip.dt_us:g} us, where forward Euler is unstable; use "
                        f"--integration exact")
    return chip


def distributed_env():
    """(world size, rank, local rank) from torchrun's environment, checked: a WORLD_SIZE that is
    no integer, or > 1 without the rest of what torchrun sets, is a one-line error."""
    values = {}
    for key, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        text = os.environ.get(key, default)
        try:
            values[key] = int(text)
        except ValueError:
            raise UserError(f"environment variable {key}={text!r} is not an integer; unset it, "
                            f"or start the ranks with torchrun") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1:
        raise UserError(f"environment variable WORLD_SIZE={world} must be >= 1")
    if world > 1:
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if not os.environ.get(k)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} is set but {', '.join(missing)} are not: start the "
                            f"ranks with `torchrun --nproc_per_node={world} -m bss2_backend train ...`, "
                            f"or unset WORLD_SIZE for one process")
        if not 0 <= rank < world or local < 0:
            raise UserError(f"RANK={rank} / LOCAL_RANK={local} must lie in [0, WORLD_SIZE={world})")
    return world, rank, local


def _start_distributed(device):
    """Join torchrun's process group (WORLD_SIZE > 1); returns the device of this rank."""
    world, _, local = distributed_env()
    if world <= 1:
        return device
    import torch.distributed as dist
    backend = "gloo"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError("--device cuda under torchrun, but no CUDA device is visible")
        # one rank per GPU talks NCCL; ranks sharing a GPU (more ranks than GPUs) use gloo on
        # CUDA tensors, since NCCL refuses two ranks on one device
        backend = "nccl" if world <= count else "gloo"
        device = torch.device("cuda", local % count)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return device


def _logger(args, main=True):
    stream = sys.stderr if args.json else sys.stdout
    return (lambda msg: print(msg, file=stream, flush=True)) if main else (lambda msg: None)


def _user_errors():
    """Exceptions that are the user's to fix: shown as one line, never as a traceback."""
    from ..placement import PlacementError
    from ..validation import TooLargeError
    from .data import DataError
    from ..files import OutputError
    from .checkpoint import CheckpointError
    return DataError, CheckpointError, OutputError, PlacementError, TooLargeError, FloatingPointError


def one_line_errors(run, also=()):
    """A command of `run(args)` whose user errors (and `also`) are one-line UserErrors."""
    def command(args):
        try:
            return run(args)
        except (*_user_errors(), *also) as e:
            raise UserError(str(e)) from None
    return command


def cmd_train(args):
    import torch.distributed as dist
    try:
        result = _train(args)
        if dist.is_available() and dist.is_initialized():
            # every rank done before any tears the group down: gloo aborts a rank whose peer
            # closed the connection under it ("terminate called without an active exception")
            dist.barrier()
        return result
    except _user_errors() as e:
        raise UserError(str(e)) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(args):
    from . import plots
    from ..files import prepare_out, write_text
    from .loop import fit
    world, rank, _ = distributed_env()
    torch.set_num_threads(args.threads)
    device = _start_distributed(resolve_device(args.device))
    main = rank == 0
    log = _logger(args, main)
    out = prepare_out(args.out)
    dataset_name = args.task if args.task in SEQUENCE_TASKS else ("mnist" if args.data else "digits")
    cfg = _config(args, dataset_name)
    dataset = _load(args, cfg.steps).subset(args.limit_train, args.limit_test)
    if len(dataset.y_train) < world:
        raise UserError(f"{len(dataset.y_train)} training sample(s) cannot be split over "
                        f"{world} ranks; use more samples (--limit-train) or fewer ranks")
    chip = _chip(args)
    log(f"{dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test samples; "
        f"{chip!r}; device {device}; {cfg.epochs} epochs of batch {cfg.batch_size}, T={cfg.steps}")

    def on_epoch(model, history):
        plots.plot_history(history, out / "curves.png")

    model, history = fit(cfg, dataset, chip, device=device, out=out, resume=args.resume, log=log,
                         cuda_graph=not args.no_cuda_graph,
                         progress=main and not args.no_progress, on_epoch=on_epoch)
    if not main:
        return 0
    final = history[-1] if history else {}
    from ..energy import figures
    chip_figures = figures(cfg.steps, chip.dt_us,
                           time_to_decision_us=final.get("time_to_decision_us", float("nan")),
                           spikes_per_sample=final.get("test_spikes_per_sample", float("nan")))
    log(chip_figures.line())
    plots.plot_history(history, out / "curves.png")
    plots.plot_activity(cfg, model, dataset.x_test, dataset.y_test, out / "activity.png")
    from .loop import accuracy_over_time, time_to_decision
    curve = accuracy_over_time(cfg, model, dataset.x_test, dataset.y_test, device)
    decided = time_to_decision(curve, chip.dt_us)
    plots.plot_decision(curve, chip.dt_us, decided, out / "decision.png")
    log(f"time to decision: 99 % of the final test accuracy from {decided:g} us of chip time on")
    extra = {"accuracy_over_time": curve, "time_to_decision_us": decided}
    if cfg.task == "fsdd":
        extra.update(_fsdd_report(cfg, model, dataset, args, device, out))
    result = {"test_accuracy": final.get("test_accuracy"), "train_accuracy": final.get("train_accuracy"),
              "loss": final.get("loss"), "epochs": len(history), "device": str(device),
              "world_size": world, "dataset": dataset.name,
              "train_samples": len(dataset.y_train), "test_samples": len(dataset.y_test),
              "spikes_per_hidden_neuron": final.get("test_spikes_per_hidden_neuron"),
              "chip": chip.config(), "config": asdict(cfg), "history": history,
              "chip_figures": chip_figures._asdict(), **extra,
              "out": str(out), "checkpoint": str(out / "checkpoint.pt"),
              "plots": [str(out / "curves.png"), str(out / "activity.png"),
                        str(out / "decision.png")]}
    write_text(out / "metrics.json", json.dumps(result, indent=1, default=str))
    if args.json:
        print(json.dumps(result, default=str))
    else:
        plotted = [os.path.basename(p) for p in result["plots"]]
        plotted += ["confusion.png"] if "confusion_plot" in result else []
        print(f"test accuracy {result['test_accuracy']:.4f} after {result['epochs']} epochs "
              f"({dataset.name}, {chip.mismatch_label() if not chip.is_ideal else 'ideal'} chip, "
              f"{device}); {', '.join(['checkpoint.pt', 'metrics.json', *plotted])} in {out}")
    return 0


@torch.no_grad()
def _fsdd_report(cfg, model, dataset, args, device, out):
    """Confusion matrix and accuracy per speaker on the test split (confusion.png)."""
    from . import plots
    from .fsdd import test_speakers
    from .loop import encode, loss_and_prediction
    model.eval()
    preds = []
    for i in range(0, len(dataset.y_test), 256):
        xb, yb = dataset.x_test[i:i + 256].to(device), dataset.y_test[i:i + 256].to(device)
        _, readout = model(encode(cfg, xb))
        preds.append(loss_and_prediction(cfg, readout, yb)[1].cpu())
    pred = torch.cat(preds)
    confusion = torch.zeros(dataset.classes, dataset.classes, dtype=torch.int64)
    confusion.index_put_((dataset.y_test, pred), torch.ones_like(pred), accumulate=True)
    speakers = test_speakers(args.data)[:len(pred)]     # --limit-test keeps the first ones
    per_speaker = {}
    for name in sorted(set(speakers)):
        mine = torch.tensor([s == name for s in speakers])
        per_speaker[name] = float((pred[mine] == dataset.y_test[mine]).float().mean())
    plots.plot_confusion(confusion, per_speaker, out / "confusion.png",
                         f"fsdd test, accuracy {float((pred == dataset.y_test).float().mean()):.3f}")
    return {"confusion": confusion.tolist(), "accuracy_per_speaker": per_speaker,
            "confusion_plot": str(out / "confusion.png")}


def _selfcal(args):
    from . import plots, selfcal
    started = time.perf_counter()
    from .data import load_images
    from ..files import prepare_out, write_text
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = _logger(args)
    out = prepare_out(args.out)
    if args.quick and args.data:
        raise UserError("--quick runs on the bundled digits; drop --data or --quick")
    dataset_name = "mnist" if args.data else "digits"
    cfg = _config(args, dataset_name)
    if args.quick:
        steps = args.steps or 30
        cfg = replace(cfg, epochs=args.epochs or 10, steps=steps,
                      t_last=max(1, min(cfg.t_last, steps // 2)))
    dataset = load_images(args.data).subset(args.limit_train, args.limit_test)
    sigmas = tuple(args.sigmas) if args.sigmas else selfcal.SIGMAS
    if args.chip_seeds and args.chip_seed is not None:
        raise UserError("give the chips either as --chip-seed S or as --chip-seeds S [S ...]")
    seeds = tuple(dict.fromkeys(args.chip_seeds or [args.chip_seed or 0]))
    log(f"self-calibration sweep on {dataset.name} ({len(dataset.y_train)} train / "
        f"{len(dataset.y_test)} test), chip seeds {list(seeds)}, sigma_d {list(sigmas)}, "
        f"{cfg.epochs} epochs, T={cfg.steps}, device {device}")
    rows = selfcal.run(cfg, dataset, sigmas=sigmas, chip_seeds=seeds,
                       noise=not args.no_noise, device=device, log=log,
                       progress=not args.no_progress, disable_tonic=args.disable_tonic)
    selfcal.write_csv(rows, out / "selfcal.csv")
    plots.plot_selfcal(rows, out / "selfcal.png")
    result = {"rows": rows, "summary": selfcal.summary(rows), "dataset": dataset.name,
              "epochs": cfg.epochs, "device": str(device), "chip_seeds": list(seeds),
              "disable_tonic": args.disable_tonic, "noise": not args.no_noise,
              "config": asdict(cfg), "seconds": round(time.perf_counter() - started, 1),
              "csv": str(out / "selfcal.csv"), "plot": str(out / "selfcal.png")}
    write_text(out / "selfcal.json", json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(selfcal.table(rows))
        print(f"selfcal.csv, selfcal.json and selfcal.png in {out}")
    return 0
