"""The `bss2` command line (also `python -m bss2_backend`)."""
import argparse
import json
import platform
import sys

import torch

from . import __version__
from . import constants as C


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit code 2."""


def _mismatch_arg(text):
    try:
        return float(text)
    except ValueError:
        return text


def add_chip_args(p):
    p.add_argument("--seed", type=int, default=0, help="chip seed: fixes the drawn mismatch")
    p.add_argument("--mismatch", type=_mismatch_arg, default="calibrated",
                   help="calibrated | uncalibrated | none | sigma_d (float in [0, 1])")
    p.add_argument("--no-noise", action="store_true", help="switch the temporal noise off")
    p.add_argument("--ideal", action="store_true", help="the nominal model: no mismatch, noise or quantisation")
    p.add_argument("--loose", action="store_true", help="strict=False: a larger BSS-2-like substrate")


def chip_from_args(args):
    from .chip import Chip
    if args.ideal:
        return Chip.ideal(seed=args.seed)
    return Chip(seed=args.seed, mismatch=args.mismatch, noise=not args.no_noise,
                strict=not args.loose)


def _device_report():
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
            "cuda": cuda, "backend": "triton" if cuda else "torch"}


def cmd_info(args):
    chip = chip_from_args(args)
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
    parser = argparse.ArgumentParser(prog="bss2", description="Emulated BrainScaleS-2 chip: "
                                     "fused kernels, in-the-loop training, snntorch backend.")
    parser.add_argument("--version", action="version", version=f"bss2_backend {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, device, backend, chip constants and drawn mismatch")
    add_chip_args(info)
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    info.add_argument("--plot", metavar="PNG", help="save histograms of the drawn mismatch")
    info.set_defaults(func=cmd_info)
    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    """Sub-commands that live in their own modules (train, selfcal, bench) register here."""
    found = []
    for module, attr in (("bss2_backend.train.cli", "register"), ("bss2_backend.bench.cli", "register")):
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        if isinstance(e, (ValueError, TypeError)) and not getattr(args, "_user_errors", True):
            raise
        print(f"bss2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
