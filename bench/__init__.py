"""Benchmark of the emulated chip against stock snntorch and plain eager PyTorch.

`bss2 bench` or `python -m bench` (from the repository root) runs every workload of
bss2_backend.bench.registry with every implementation of bss2_backend.bench.impls on one device,
checks each implementation's numbers against a reference in the same run, and appends the results
to bench/results/results.csv (plot: bench/results/latest.png).
"""
