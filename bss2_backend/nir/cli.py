"""`bss2 export --checkpoint CKPT --nir FILE` and `bss2 eval --nir FILE [--chips N ...]`.

export writes a trained network as NIR (bss2_backend.nir.save); eval --nir evaluates an external
network (any framework's NIR graph taking the data's pixels and giving one output per class) in
ideal mode and on --chips fresh emulated chips, on the same data and latency code as bss2 train.
eval is `bss2 eval` with --nir added: its other options (--chips, --mismatch, --no-noise,
--seed-base, --data, --limit-test, --dead, --firing, --out, --json) keep their meaning.
"""
import json
from dataclasses import replace
from pathlib import Path

import torch

from ..cli import UserError, integer
from .timebase import PRESETS

NIR_SUFFIXES = (".nir", ".h5", ".hdf5")


def register(subparsers):
    ex = subparsers.add_parser(
        "export", help="write a trained network as a NIR graph (for hxtorch, snntorch, ...)",
        description="Write the network of a bss2 train checkpoint as a NIR graph: the weights the "
                    "chip realised (6-bit codes / weight scale, model units) and the nominal "
                    "neuron parameters; see bss2_backend.nir.save.")
    ex.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT",
                    help="checkpoint.pt of bss2 train (read by the checked loader)")
    ex.add_argument("--nir", required=True, type=Path, metavar="FILE",
                    help=f"the NIR file to write ({', '.join(NIR_SUFFIXES)})")
    ex.add_argument("--time-base", choices=sorted(PRESETS), default="hxtorch",
                    help="what the graph's times count in (default hxtorch: ms of chip time, "
                         "what hxtorch's from_nir reads); nir: ms of model time; snntorch: s")
    ex.add_argument("--per-neuron", action="store_true",
                    help="write the training chip's drawn parameters of every neuron (readers "
                         "such as hxtorch and snntorch take one value per layer)")
    ex.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ex.set_defaults(func=cmd_export)
    ev = subparsers.choices.get("eval")
    if ev is None:
        return
    ev.add_argument("--nir", type=Path, metavar="FILE",
                    help="evaluate this NIR graph instead of checkpoints (ideal mode and on "
                         "--chips fresh chips)")
    ev.add_argument("--time-base", choices=sorted(PRESETS), default=None,
                    help="--nir: the graph's time base (default: its metadata's, else nir)")
    ev.add_argument("--steps", type=integer(3, 100_000), default=None,
                    help="--nir: time steps per sample (default that of bss2 train, 40)")
    evaluate_checkpoints = ev.get_default("func")

    def dispatch(args):
        if args.nir is not None and args.checkpoint:
            raise UserError("give --checkpoint or --nir, not both")
        if args.nir is not None:
            return cmd_eval_nir(args)
        return evaluate_checkpoints(args)
    ev.set_defaults(func=dispatch)


def _one_line(fn, args):
    """Run fn(args); the user's mistakes (bad files, graphs, chips, checkpoints) become one-line
    UserErrors (a NIRError is a ValueError)."""
    from ..train.cli import one_line_errors
    return one_line_errors(fn, also=(ValueError, TypeError))(args)


def cmd_export(args):
    return _one_line(_export, args)


def _export(args):
    from ..chip import Chip
    from ..files import check_output_file
    from ..train.checkpoint import load_checkpoint
    from ..train.loop import build_network
    from ..train.transfer import config_of
    from . import save
    check_output_file(args.nir, "--nir", NIR_SUFFIXES)
    state = load_checkpoint(args.checkpoint)
    chip = Chip.from_state_dict(state["chip"])
    cfg, net = config_of(state), state["network"]
    model = build_network(replace(cfg, dropout=0.0), chip, net["n_in"], net["n_out"])
    model.load_state_dict(state["model"])
    graph = save(model, args.nir, time_base=args.time_base, per_neuron=args.per_neuron)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    result = {"nir": str(args.nir), "checkpoint": str(args.checkpoint), "nodes": kinds,
              "metadata": {k: (v if isinstance(v, (str, int, float)) else str(v))
                           for k, v in graph.metadata.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {args.nir}: {' -> '.join(k for k in kinds if k not in ('Input', 'Output'))} "
              f"({args.time_base} time base, dt {graph.metadata['dt']:g}); hxtorch: "
              f"ConversionConfig(weight_scale={graph.metadata['hxtorch_weight_scale']:g}, "
              f"trace_scale=1/{1 / graph.metadata['hxtorch_trace_scale']:g})")
    return 0


def cmd_eval_nir(args):
    return _one_line(_eval_nir, args)


def _predict(out, spikes):
    """Class per sample of outputs [..., T, B, classes]: most spikes, or highest membrane."""
    score = out.sum(-3) if spikes else out.max(-3).values
    return score.argmax(-1)


def _accuracy(model, x, y, steps, t_last, batch):
    """Accuracy (per chip on a population) of a loaded graph on images x, labels y."""
    from ..train.coding import latency_code
    correct = None
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(latency_code(x[i:i + batch], steps, t_last=t_last))
            hits = (_predict(out, model.output_spikes) == y[i:i + batch]).sum(-1).double()
            correct = hits if correct is None else correct + hits
    return (correct / len(y)).reshape(-1).tolist()


def _eval_nir(args):
    from ..files import prepare_out, write_text
    from ..noise import Noise
    from ..population import Chips
    from ..train.config import TrainConfig
    from ..train.data import load_images
    from ..train.transfer import CHUNK, EVAL_ELEMENTS, fresh_seeds, summary
    from . import load
    torch.set_num_threads(args.threads)
    out_dir = prepare_out(args.out)
    if args.dead + args.firing > 1:
        raise UserError(f"--dead {args.dead:g} + --firing {args.firing:g} must be <= 1")
    ideal = load(args.nir, time_base=args.time_base)
    data = load_images(args.data).subset(None, args.limit_test)
    n_in, classes = data.x_test[0].numel(), data.classes
    if tuple(ideal.input_shape) != (n_in,):
        raise UserError(f"--nir {args.nir}: the graph takes inputs of shape "
                        f"{tuple(ideal.input_shape)}, the data has {n_in} pixels per sample")
    steps = args.steps or TrainConfig().steps
    t_last = min(TrainConfig().t_last, steps - 1)
    x, y = data.x_test, data.y_test
    probe = ideal(torch.zeros(1, 1, n_in))
    if probe.shape[-1] != classes:
        raise UserError(f"--nir {args.nir}: the graph gives {probe.shape[-1]} outputs, the data "
                        f"has {classes} classes")
    ideal_acc = _accuracy(ideal, x, y, steps, t_last, 256)[0]
    seeds = fresh_seeds(args.chips, base=1_000_000 if args.seed_base is None else args.seed_base)
    kwargs = {"mismatch": args.mismatch or "calibrated"}
    if args.no_noise:
        kwargs["noise"] = Noise(0.0, 0.0)
    accs = []
    for start in range(0, len(seeds), CHUNK):
        chips = Chips(seeds[start:start + CHUNK], **kwargs)
        if args.dead or args.firing:
            chips.set_failures(args.dead, args.firing)
        model = load(args.nir, chip=chips, time_base=args.time_base)
        accs += _accuracy(model, x, y, steps, t_last, max(1, EVAL_ELEMENTS // chips.size))
    s = summary(accs)
    result = {"nir": str(args.nir), "dataset": data.name, "steps": steps,
              "ideal_accuracy": ideal_acc, "seeds": seeds, "accuracy_per_chip": accs,
              "summary": s, "mismatch": kwargs["mismatch"], "noise": not args.no_noise}
    write_text(out_dir / "nir-eval.json", json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.nir}: ideal {ideal_acc:.4f}; {len(seeds)} fresh chips: mean {s['mean']:.4f}, "
              f"min {s['min']:.4f}, 5th percentile {s['p5']:.4f}, max {s['max']:.4f}")
        print(f"nir-eval.json in {out_dir}")
    return 0
