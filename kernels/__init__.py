"""The fused ops of the emulated chip: the bottom layer, importing nothing from bss2_backend.

Tensors, ints and small NamedTuple configs in, tensors out. One folder per op, each holding the
op's math three ways and its registration:

    chip_lif/     the chip's CUBA-LIF population / LI readout (mismatch, noise, CADC readout,
                  in-the-loop backward)
    snn_neuron/   snntorch's neurons (Leaky, Synaptic, RLeaky, RSynaptic, Lapicque), bit-exact
        __init__.py   config, torch.library registration, entry point
        naive.py      step-by-step autograd model (what the others are checked against)
        reference.py  hand-written plain-PyTorch twin (the CPU path)
        triton.py     fused Triton kernels (imported only when asked for)
    surrogate/    one surrogate table for both ops, PyTorch and Triton forms
    op.py         FusedOp: registers an op's forward and backward (custom ops + eager fast path)
    backend.py    implementations ("torch", "triton"), the interpreter check, output buffers

Design and derivations: README.md beside this file. Each op is used through its folder, e.g.
`from bss2_backend.kernels.chip_lif import chip_lif` (this package re-exports nothing, so an op's
folder and its entry function never shadow each other).
"""
