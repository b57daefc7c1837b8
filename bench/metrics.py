"""Work of one benchmark call: model FLOPs and the bytes a lean fp32 implementation must move.

Forward FLOPs are the synapse products, 2 T B (n_in N + N^2 [recurrent] + N n_out); the backward
adds the weight gradients and the spike gradients that flow back (the input layer's input gradient
is not needed): 2 T B (n_in N + 2 N^2 + 2 N n_out). Element-wise neuron work (~30 ops per
neuron-step) is not counted.

Bytes (fp32, each tensor touched once): the forward reads the input and the weights and writes
the recorded hidden spikes and membrane and the readout membrane; the backward reads the input
again, the saved spikes and membrane and the output gradient, writes and reads the current
gradients, and writes the weight gradients. GB/s = bytes / median time; the fraction of the floor
is that over the device's bandwidth. It is a lower bound on real traffic, so a fraction near 1
means the op streams memory at the device's limit.
"""
FP32 = 4


def _sizes(w):
    tb = w.T * w.B * w.chips          # a population: every chip its own batch
    n_w = w.n_in * w.n_hidden + (w.n_hidden ** 2 if w.recurrent else 0) + w.n_hidden * w.n_out
    return tb, n_w


def flops(w, mode):
    tb, _ = _sizes(w)
    n, rec = w.n_hidden, w.recurrent
    fwd = 2 * tb * (w.n_in * n + (n * n if rec else 0) + n * w.n_out)
    if mode == "fwd":
        return fwd
    return fwd + 2 * tb * (w.n_in * n + (2 * n * n if rec else 0) + 2 * n * w.n_out)


def traffic(w, mode):
    tb, n_w = _sizes(w)
    n = w.n_hidden
    fwd = FP32 * (tb * w.n_in + n_w + 2 * tb * n + tb * w.n_out)
    if mode == "fwd":
        return fwd
    return fwd + FP32 * (tb * w.n_in + 2 * tb * n + tb * w.n_out + 2 * tb * n + n_w)


def host_bytes(w):
    """Rough peak host memory to build the chip layers (int64 [N, n_in] placement temporaries)."""
    return 6 * 8 * w.n_hidden * (w.n_in + (w.n_hidden if w.recurrent else 0))
