"""The modules a loaded NIR graph runs as: ideal mode (the graph's own equations) and chip mode.

Ideal mode integrates each neuron node with forward Euler in steps of dt, as snntorch's exporter
and importer read NIR (time-major [T, B, ...]; u = v - v_leak; x the node's input of the step):

    CubaLIF:  i' = (1 - dt/tau_syn) i + g x,   g = (dt w_in / tau_syn)(dt r / tau_mem)
              u' = (1 - dt/tau_mem) u + i'      (the current of the same step, as snntorch)
    LIF:      u' = (1 - dt/tau) u + (dt r / tau) x          LI, CubaLI: the same without spikes
    IF:       u' = u + dt r x
    spike z = u' > v_threshold - v_leak; reset "hard": u' = v_reset - v_leak at the spike's step
    (NIR; snntorch's reset_mechanism="zero" with reset_delay=False, what its importer builds);
    reset "subtract": snntorch's default, u' -= (v_threshold - v_leak) one step after a spike.

A recurrent kernel adds W z[t-1] (+ bias) to x. Every NIR parameter may differ per neuron.

Chip mode builds the snntorch form of the chain (nn.Linear -> Synaptic/Leaky/RSynaptic/RLeaky,
reset "zero"; the gain g folded into the Linear's rows) and places it with
integrations.snntorch.convert: the chip's dynamics, mismatch, noise, 6-bit weights and hard reset
to its calibrated v_reset, in the loop; on a population of chips (bss2_backend.Chips) at once.
"""
import numpy as np
import torch
from torch import nn

from .graph import NIRError

SPIKING = ("LIF", "CubaLIF", "IF")
CURRENT = ("CubaLIF", "CubaLI")
RESETS = ("hard", "subtract")


def step_factors(kind, p, dt, name):
    """(alpha or None, beta, gain) float64 arrays of a neuron node's parameters for steps of dt
    (module docstring); NIRError naming the field where dt/tau > 1 (forward Euler unstable)."""
    def a(field):
        f = dt / p[field]
        if (f > 1).any():
            raise NIRError(f"node {name!r} ({kind}): {field}={p[field].min():g} is shorter than "
                           f"the step dt={dt:g}, where forward Euler is unstable; pass a smaller "
                           f"dt or the graph's time_base")
        return f
    if kind == "IF":
        return None, np.ones_like(p["r"]), dt * p["r"]
    if kind in CURRENT:
        a_syn, a_mem = a("tau_syn"), a("tau_mem")
        return 1 - a_syn, 1 - a_mem, (a_syn * p["w_in"]) * (a_mem * p["r"])
    a_mem = a("tau")
    return None, 1 - a_mem, a_mem * p["r"]


class Scale(nn.Module):
    """NIR Scale: x * scale (broadcast over the sample shape)."""

    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))

    def forward(self, x):
        return x * self.scale


class NeuronLayer(nn.Module):
    """One NIR neuron node in ideal mode (module docstring). kind: NIR type; params: its fields
    as float64 arrays of the layer's shape (kept as given, for save); dt: the step, graph units;
    reset: "hard" | "subtract"; recurrent: None or (weight [N, N], bias [N] or None)."""

    def __init__(self, kind, params, dt, reset="hard", recurrent=None, name="neuron"):
        super().__init__()
        self.kind, self.dt, self.reset_mode, self.node_name = kind, float(dt), reset, name
        self.nir_params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
        alpha, beta, gain = step_factors(kind, self.nir_params, self.dt, name)
        p = self.nir_params
        v_leak = p.get("v_leak", np.zeros_like(beta))
        f32 = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        self.register_buffer("alpha", f32(alpha) if alpha is not None else None)
        self.register_buffer("beta", f32(beta))
        self.register_buffer("gain", f32(gain))
        self.register_buffer("v_leak", f32(v_leak))
        self.spiking = kind in SPIKING
        if self.spiking:
            self.register_buffer("threshold", f32(p["v_threshold"] - v_leak))
            self.register_buffer("reset_to", f32(p["v_reset"] - v_leak))
        self.recurrent = None
        if recurrent is not None:
            w, b = recurrent
            self.recurrent = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            with torch.no_grad():
                self.recurrent.weight.copy_(torch.as_tensor(w))
                if b is not None:
                    self.recurrent.bias.copy_(torch.as_tensor(b))

    def forward(self, x):
        """x [T, B, *shape] input of the node -> (spikes, membrane v), each [T, B, *shape]."""
        zero = torch.zeros_like(x[0])
        u, i, z = zero, zero, zero
        unit_gain = bool((self.gain == 1).all())
        zs, vs = [], []
        for t in range(x.shape[0]):
            inp = x[t]
            if self.recurrent is not None:
                inp = inp + self.recurrent(z)
            if not unit_gain:
                inp = inp * self.gain
            if self.alpha is not None:
                i = self.alpha * i + inp
                inp = i
            if self.spiking and self.reset_mode == "subtract":
                # snntorch's default: the reset of a spike comes one step later, by subtraction
                fired = (u - self.threshold > 0).to(x.dtype)
                u = self.beta * u + inp - fired * self.threshold
            else:
                u = self.beta * u + inp
            if self.spiking:
                z = (u - self.threshold > 0).to(x.dtype)
                if self.reset_mode == "hard":
                    u = torch.where(z.bool(), self.reset_to, u)
            zs.append(z)
            vs.append(u + self.v_leak)
        return torch.stack(zs), torch.stack(vs)

    def extra_repr(self):
        rec = ", recurrent" if self.recurrent is not None else ""
        return f"{self.node_name!r}: {self.kind}, dt={self.dt:g}, reset={self.reset_mode!r}{rec}"


def _merge(module, x):
    """A stateless module on [T, B, ...] as one batch."""
    lead = x.shape[:2]
    y = module(x.reshape(-1, *x.shape[2:]))
    return y.reshape(*lead, *y.shape[1:])


def stateless_module(stage):
    """The torch module of a stateless stage (ideal mode)."""
    node, kind = stage.node, stage.kind
    t = lambda v: torch.tensor(np.array(v, dtype=np.float32))     # a copy: arrays may be read-only
    if kind in ("Linear", "Affine"):
        w = np.asarray(node.weight)
        m = nn.Linear(w.shape[1], w.shape[0], bias=kind == "Affine")
        with torch.no_grad():
            m.weight.copy_(t(w))
            if kind == "Affine":
                m.bias.copy_(t(node.bias))
        return m
    if kind == "Scale":
        return Scale(node.scale)
    if kind == "Flatten":
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)
    pair = lambda v: tuple(int(a) for a in np.broadcast_to(np.asarray(v).reshape(-1), (2,)))
    if kind == "Conv2d":
        w = np.asarray(node.weight)
        pad = node.padding if isinstance(node.padding, str) else pair(node.padding)
        m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                      stride=pair(node.stride), padding=pad, dilation=pair(node.dilation),
                      groups=int(node.groups), bias=True)
        with torch.no_grad():
            m.weight.copy_(t(w))
            bias = np.asarray(node.bias, dtype=np.float32)
            m.bias.copy_(t(np.broadcast_to(bias, (w.shape[0],))))
        return m
    # SumPool2d sums the window: an average pool with divisor 1
    return nn.AvgPool2d(pair(node.kernel_size), pair(node.stride), pair(node.padding),
                        divisor_override=1 if kind == "SumPool2d" else None)


class NIRNetwork(nn.Module):
    """A NIR graph loaded onto the backend (bss2_backend.nir.load).

    forward(x [T, B, *input shape]) -> what the graph's Output receives, [T, B, *output shape]:
    spikes of a spiking last node, the membrane of an LI/CubaLI readout. On a population of C
    chips the result is [C, T, B, ...]. Attributes: chip (None in ideal mode), time_base, dt,
    reset, layers (ideal mode) or seq (chip mode: the placed snntorch chain)."""

    def __init__(self, stages, time_base, dt, reset, chip=None, metadata=None):
        super().__init__()
        self.time_base, self.dt, self.reset_mode, self.chip = time_base, float(dt), reset, chip
        self.metadata = dict(metadata or {})
        self.input_shape = stages[0].shape_in
        last = stages[-1]
        self.output_spikes = last.kind in SPIKING
        if chip is None:
            self.layers = nn.ModuleDict()
            for st in stages:
                key = _key(st.name)
                if st.kind in ("LIF", "CubaLIF", "LI", "CubaLI", "IF"):
                    self.layers[key] = NeuronLayer(st.kind, st.params, dt, reset,
                                                   st.recurrent and st.recurrent[1:], st.name)
                else:
                    self.layers[key] = stateless_module(st)
            self.seq = None
        else:
            from .chip_chain import build_chip_chain
            self.layers = None
            self.seq, self._offset = build_chip_chain(stages, dt, reset, chip)

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 3:
            raise TypeError(f"x must be a floating-point tensor [T, B, *{self.input_shape}], got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
        if tuple(x.shape[2:]) != tuple(self.input_shape):
            raise ValueError(f"x has sample shape {tuple(x.shape[2:])} (x is time-major "
                             f"[T, B, ...]), the graph's Input takes {tuple(self.input_shape)}")
        if self.seq is not None:
            from ..integrations.snntorch import forward_pass
            spk, mem = forward_pass(self.seq, x.shape[0], x)
            return spk if self.output_spikes else mem + self._offset
        for module in self.layers.values():
            if isinstance(module, NeuronLayer):
                z, v = module(x)
                x = z if module.spiking else v
            else:
                x = _merge(module, x)
        return x


def _key(name):
    """A node name as a module name (torch forbids dots)."""
    return str(name).replace(".", "_") or "node"
