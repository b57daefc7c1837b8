"""`bss2 bench` and `python -m bench`: command-line front end of bss2_backend.bench.run."""
import os
import sys
from pathlib import Path

from bss2_backend.cli import Parser, folder_arg, integer
from bss2_backend.validation import check_environment

from . import registry, results


def add_arguments(p):
    names = [w.name for w in registry.WORKLOADS]
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:i]")
    p.add_argument("--workloads", nargs="+", metavar="NAME",
                   help=f"workloads to run (default: all): {' '.join(names)}")
    p.add_argument("--impls", nargs="+", metavar="NAME",
                   help="implementations to run besides the snntorch baseline (default: all)")
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwd+bwd"), default=["fwd", "fwd+bwd"])
    p.add_argument("--quick", action="store_true", help="shorter timing loops (fewer samples)")
    p.add_argument("--tiny", action="store_true",
                   help="shrink every workload to a smoke-test size (numbers mean nothing)")
    p.add_argument("--all", dest="run_all", action="store_true",
                   help="also run the workloads the CPU run skips as too slow or too big")
    p.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is steadier on a "
                        "host whose cores other processes share")
    p.add_argument("--out", type=folder_arg, default=None,
                   help=f"directory of {results.CSV_NAME} and {results.PLOT_NAME} (default: "
                        f"bench/results in a source checkout, else the current directory)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the plot")
    p.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
                   help="torch.set_float32_matmul_precision for the run: highest = strict fp32 "
                        "(default), high = TF32 tensor cores; recorded in the CSV")


def cmd_bench(args):
    import torch
    if not torch.cuda.is_available():
        # lets the correctness checks run the Triton kernels in the interpreter; the timed CPU
        # path is the torch twin either way. Must precede the first kernel import.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .run import Options, run
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = Options(device=args.device, workloads=args.workloads, impls=args.impls,
                      modes=tuple(args.modes), quick=args.quick, tiny=args.tiny,
                      run_all=args.run_all, out_dir=None if args.out is None else Path(args.out),
                      plot=args.plot, matmul_precision=args.matmul_precision)
    run(options)
    return 0


def register(subparsers):
    p = subparsers.add_parser(
        "bench", help="time the chip layers against stock snntorch and eager PyTorch",
        description="Benchmark every workload of the registry with every implementation on one "
                    "device; results are appended to results.csv in --out.")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def main(argv=None):
    parser = Parser(prog="python -m bench", description=(
        "Benchmark the emulated chip against stock snntorch and eager PyTorch."))
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        check_environment()
        return cmd_bench(args)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
