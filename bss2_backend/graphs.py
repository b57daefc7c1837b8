"""CUDA graphs: a whole step (forward, loss, backward, optimiser step; or an evaluation batch)
captured once and replayed, so the GPU, not the host's per-launch time, sets the pace.

    step = GraphedStep(train_step, device="cuda")        # train_step(x, y) -> tensors
    for x, y in batches:
        optimiser.zero_grad(set_to_none=True)
        loss = step(x, y)                                  # replayed after a short warm-up

The first `warmup` calls of each input signature (shapes, dtypes, devices) run eagerly on a side
stream (cuBLAS handles, Triton autotuning, the optimiser's state and the chip's cached parameters
come into being there); the next call captures the step and replays it, and later calls copy their
inputs into the graph's static input buffers and replay. Every call runs the step once: the
sequence of results equals the eager sequence. Outputs are the graph's static tensors,
overwritten by the next replay: read or clone them before the next call.

What a captured step must be: tensor work on one CUDA device with no host synchronisation
(`.item()`, `float(t)`, printing a tensor) and no new host-side state that the replay would not
update. The chip's temporal noise satisfies that: its run counters live in device memory
(Chip.device_counters) and are advanced inside the graph, so every replay draws new noise. An
optimiser must be capturable (`torch.optim.Adam(..., capturable=True)`). Gradients: call
`optimiser.zero_grad(set_to_none=True)` before every call (as before capture), so the captured
backward allocates the gradients it writes on every replay.

Not captured (the step runs eagerly, and `reason` says why): a device other than CUDA; value checks
on (BSS2_CHECK_VALUES=1: they read tensors on the host); torch.distributed initialised (gloo's
collectives run on the host); more than `max_graphs` input signatures; a capture that fails
(a one-time warning with the error). torch.compile(mode="reduce-overhead") also works through the
chip's ops (their seeds live on the device, so there is no recompilation per run); it captures the
compiled forward and backward, not the optimiser step: GraphedStep is the one to use for a whole
training step, reduce-overhead for a model's forward inside code you do not control.
"""
import warnings

import torch

from . import validation


def unavailable(device):
    """None when a step on `device` can be captured, else the reason (one line)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this step runs on {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if validation._policy() is True:
        return ("value checks are on (BSS2_CHECK_VALUES=1): they read tensors on the host, which "
                "a captured graph cannot")
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return ("torch.distributed is initialised: its collectives (gloo) run on the host and "
                "cannot be captured")
    return None


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and all(o is None or _tensors(o) for o in out)


class GraphedStep:
    """fn(*tensors) captured as a CUDA graph per input signature (see the module docstring).

    Args:
        fn: the step; takes tensors, returns a tensor, a tuple of tensors or None.
        device: the device it runs on (anything but CUDA: never captured).
        warmup: eager calls per signature before the capture (>= 1).
        enabled: False runs every call eagerly (same results).
        max_graphs: at most this many signatures are captured; others run eagerly.
    """

    def __init__(self, fn, *, device, warmup=2, enabled=True, max_graphs=4):
        validation.check_number("warmup", warmup, low=1, integer=True)
        validation.check_number("max_graphs", max_graphs, low=1, integer=True)
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.reason = "turned off" if not enabled else unavailable(device)
        self._graphs = {}           # signature -> (graph, static inputs, static outputs)
        self._warm = {}             # signature -> eager calls so far
        self.replays = 0

    @property
    def captured(self):
        """How many input signatures run as graphs."""
        return len(self._graphs)

    def __call__(self, *inputs):
        if self.reason is not None:
            return self.fn(*inputs)
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"GraphedStep: input {i} is a {type(t).__name__}; a captured "
                                f"step takes tensors only (other values would be frozen)")
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        entry = self._graphs.get(key)
        if entry is not None:
            graph, static_in, static_out = entry
            for s, t in zip(static_in, inputs):
                s.copy_(t)
            graph.replay()
            self.replays += 1
            return static_out
        warm = self._warm.get(key, 0)
        if warm < self.warmup or len(self._graphs) >= self.max_graphs:
            self._warm[key] = warm + 1
            return self._side_stream(inputs)
        return self._capture(key, inputs)

    def _side_stream(self, inputs):
        # eager work before a capture runs on a side stream, as torch's capture recipe asks
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, key, inputs):
        static_in = [t.clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = self.fn(*static_in)
            if static_out is not None and not _tensors(static_out):
                raise TypeError(f"the step returned {type(static_out).__name__}; a captured step "
                                f"returns tensors (other values are frozen at capture)")
        except Exception as e:          # the step ran nowhere: run it eagerly, stop capturing
            self.reason = f"capture failed: {type(e).__name__}: {e}"
            warnings.warn(f"GraphedStep: {self.reason}; running eagerly", RuntimeWarning,
                          stacklevel=3)
            torch.cuda.synchronize()
            return self.fn(*inputs)
        self._graphs[key] = (graph, static_in, static_out)
        graph.replay()                  # capturing recorded the call; replaying runs it
        self.replays += 1
        return static_out
