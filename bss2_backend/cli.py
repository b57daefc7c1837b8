"""The `bss2` command line (also `python -m bss2_backend`)."""
import argparse
import json
import math
import os
import platform
import sys

import torch

from . import __version__
from . import constants as C
from .validation import check_environment

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other error of the CLI."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(low=None, high=None):
    """argparse type: an integer in [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed "
                                             f"[{low if low is not None else '-inf'}, "
                                             f"{high if high is not None else 'inf'}]")
        return value
    parse.__name__ = "integer"
    return parse


def real(low=None, high=None, low_open=False):
    """argparse type: a finite number in [low, high] (or (low, high] with low_open)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range; allowed {'(' if low_open else '['}"
                f"{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]")
        return value
    parse.__name__ = "number"
    return parse


def sigma_arg(text):
    """argparse type: a decalibration sigma_d in [0, 1]."""
    from .mismatch import MAX_SPREAD
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number sigma_d in "
                                         f"[0, {MAX_SPREAD:g}]") from None
    if not 0.0 <= value <= MAX_SPREAD:          # NaN fails this too
        raise argparse.ArgumentTypeError(f"sigma_d={value} is out of range; allowed "
                                         f"[0, {MAX_SPREAD:g}]")
    return value


def _mismatch_arg(text):
    """--mismatch: a preset name or a float sigma_d in [0, 1]."""
    from .mismatch import MAX_SPREAD, PRESETS
    if text in PRESETS:
        return text
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) "
                                         f"nor a number sigma_d in [0, {MAX_SPREAD:g}]") from None
    return sigma_arg(text)


def folder_arg(text):
    """argparse type: a non-empty path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a folder; name one (e.g. ./out)")
    return text


SEED_MAX = 2**63 - 1
CHIP_SEED = integer(0, SEED_MAX)


def add_chip_args(p):
    p.add_argument("--seed", type=CHIP_SEED, default=0, help="chip seed: fixes the drawn mismatch")
    p.add_argument("--mismatch", type=_mismatch_arg, default=None,
                   help="calibrated (default) | uncalibrated | none | sigma_d (float in [0, 1])")
    p.add_argument("--no-noise", action="store_true", help="switch the temporal noise off")
    p.add_argument("--ideal", action="store_true", help="the nominal model: no mismatch, noise or quantisation")
    p.add_argument("--loose", action="store_true", help="strict=False: a larger BSS-2-like substrate")


def resolve_mismatch(args):
    """--mismatch with its default; --ideal with an explicit --mismatch contradicts itself."""
    if args.ideal and args.mismatch is not None:
        raise UserError(f"--ideal is the nominal model without mismatch; drop --mismatch "
                        f"{args.mismatch} or --ideal")
    return "calibrated" if args.mismatch is None else args.mismatch


def chip_from_args(args):
    from .chip import Chip
    mismatch = resolve_mismatch(args)
    if args.ideal:
        return Chip.ideal(seed=args.seed)
    return Chip(seed=args.seed, mismatch=mismatch, noise=not args.no_noise, strict=not args.loose)


def _device_report():
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
            "cuda": cuda, "backend": "triton" if cuda else "torch"}


def cmd_info(args):
    chip = chip_from_args(args)
    if args.plot is not None:
        from .files import check_output_file
        check_output_file(args.plot, "--plot", FIGURE_SUFFIXES)
    constants = {k: getattr(C, k) for k in dir(C) if k.isupper()}
    info = {"version": __version__, "torch": torch.__version__, **_device_report(),
            "constants": constants, "chip": {"repr": repr(chip), **chip.config()},
            "mismatch_summary": chip.summary()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["snntorch_mapping"] = _snntorch_mapping(args)
    if args.plot:
        from .plotting import plot_mismatch
        plot_mismatch(chip, args.plot)
        info["plot"] = args.plot
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"bss2_backend {info['version']}  torch {info['torch']}  triton {info['triton']}")
    print(f"device: {info['device']}  backend: {info['backend']}")
    print("chip constants:")
    for k, v in constants.items():
        print(f"  {k:32s} {v}")
    print(f"chip: {chip!r}")
    print(f"  {'parameter':18s} {'mean':>10s} {'std':>9s} {'min':>10s} {'max':>10s}")
    for name, s in info["mismatch_summary"].items():
        if isinstance(s, dict):
            print(f"  {name:18s} {s['mean']:10.4g} {s['std']:9.3g} {s['min']:10.4g} {s['max']:10.4g}")
    print(f"  circuits with leak above threshold (fire tonically): {info['mismatch_summary']['tonic_circuits']}")
    print("snntorch -> chip mapping (chip mode, the `bss2 train` network):")
    for name, line in info["snntorch_mapping"].items():
        print(f"  {name}: {line}")
    if args.plot:
        print(f"histograms of the drawn mismatch: {args.plot}")
    return 0


def _snntorch_mapping(args):
    """How chip mode maps snntorch's beta/alpha/threshold onto this chip, shown for the network
    `bss2 train` builds (its own chip instance: the one reported above stays unplaced)."""
    from .train.model import mnist_network
    net = mnist_network(chip_from_args(args))
    return {name: module._bss2_binding.describe() for name, module in net.named_modules()
            if hasattr(module, "_bss2_binding")}


def build_parser():
    parser = Parser(prog="bss2", description="Emulated BrainScaleS-2 chip: fused kernels, "
                    "in-the-loop training, snntorch backend.")
    parser.add_argument("--version", action="version", version=f"bss2_backend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, device, backend, chip constants and drawn mismatch")
    add_chip_args(info)
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    info.add_argument("--plot", metavar="FILE", help="save histograms of the drawn mismatch "
                      f"({', '.join(FIGURE_SUFFIXES)})")
    info.set_defaults(func=cmd_info)
    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    """Sub-commands that live in their own modules (train, selfcal, bench) register here."""
    found = []
    for module, attr in (("bss2_backend.train.cli", "register"),
                         ("bss2_backend.train.chips_cli", "register"),
                         ("bss2_backend.nir.cli", "register"),
                         ("bss2_backend.bench.cli", "register")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError as e:
            if e.name and module.startswith(e.name):
                continue
            raise
        found.append(getattr(mod, attr))
    return found


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:             # --help, --version, or a one-line usage error
        return e.code
    name = f"bss2 {args.command}"
    try:
        check_environment()
    except ValueError as e:
        _say(f"{name}: error: {e}")
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _say(f"{name}: interrupted{_resume_hint(args)}")
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`bss2 info | head`): nothing left to say, and no
        # traceback when the interpreter flushes stdout on exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (UserError, ValueError, TypeError, OSError, FloatingPointError) as e:
        if isinstance(e, (ValueError, TypeError)) and not getattr(args, "_user_errors", True):
            raise
        _say(f"{name}: error: {e}")
        return 2


def _say(message):
    """One line on stderr (a message with line breaks is joined: errors are one line)."""
    text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def _resume_hint(args):
    if getattr(args, "command", None) != "train":
        return ""
    return (f"; every finished epoch is in {args.out}/checkpoint.pt: continue with "
            f"`bss2 train --resume --out {args.out}` and the same flags")


if __name__ == "__main__":
    sys.exit(main())
