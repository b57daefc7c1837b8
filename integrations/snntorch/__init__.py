"""snntorch on bss2_backend: drop-in neurons, convert, patch and a fused forward_pass.

API (stable):
    convert(model, chip=None, backend="auto") -> model
        Swaps the snntorch neurons (Leaky, Synaptic, RLeaky, RSynaptic, Lapicque, Alpha) of `model`
        in place for the backend's subclasses. chip=None: ideal mode, snntorch's own semantics.
        chip=bss2_backend.Chip(...): chip mode, every nn.Linear -> neuron pair of an nn.Sequential
        is placed on the chip (PlacementError when it does not fit in strict mode).
    forward_pass(net, num_steps, data) -> (spk_rec, mem_rec)
        snntorch's tutorial helper: resets the net, runs num_steps steps on static data [B, ...] or
        time-major data [num_steps, B, ...], returns the last layer's spikes and membrane
        [num_steps, B, ...]. Chip-mode nets run only through it.
    patch(chip=None) -> Patch
        Makes snntorch.Leaky etc. the backend classes; `with patch(): ...` or `undo = patch(); undo()`.
    revert(model) -> model
        Undoes convert.
    Leaky, Synaptic, RLeaky, RSynaptic, Lapicque, Alpha: the backend classes.

Chip mode in snntorch terms (README.md here has the full mapping and every decision):
    beta -> tau_mem, alpha -> tau_syn (Leaky keeps the chip's tau_syn), threshold -> readout scale;
    reset_mechanism="none" marks the LI readout (the chip's leaky integrator, whose spikes are zero);
    "subtract" runs as the chip's hard reset to v_reset (one warning), biases are ignored (one
    warning); Conv2d, pooling, inhibition, state_quant, Lapicque and Alpha are errors. The chip's
    surrogate (Chip(surrogate=...), SuperSpike by default) drives the in-the-loop backward.

    net = nn.Sequential(nn.Linear(256, 246, bias=False), snn.Synaptic(alpha=0.9, beta=0.9, init_hidden=True),
                        nn.Linear(246, 10, bias=False),
                        snn.Synaptic(alpha=0.9, beta=0.9, init_hidden=True, output=True,
                                     reset_mechanism="none"))
    convert(net, chip=bss2_backend.Chip(seed=1))
    spk_rec, mem_rec = forward_pass(net, 100, spikes)     # spikes [100, B, 256]

Ideal mode reproduces snntorch 1.0 (bit-identical spikes and membranes per neuron, matching
gradients); its deliberate differences (RSynaptic reset_delay=False, per-net reset in forward_pass,
wrong-shape states raise) are listed in README.md.
"""
from .convert import Patch, convert, patch, revert
from .forward import forward_pass
from .neurons import Alpha, Lapicque, Leaky, RLeaky, RSynaptic, Synaptic, SUPPORTED
from .notices import BackendNotice

__all__ = ["convert", "forward_pass", "patch", "revert", "Patch", "Leaky", "Synaptic", "RLeaky",
           "RSynaptic", "Lapicque", "Alpha", "SUPPORTED", "BackendNotice"]
