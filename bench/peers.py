"""Peers on the same device, in the same run: other SNN libraries running the Open Neuromorphic
shape (kind "chip" workloads without readout: Linear N -> N + LIF, the C-* workloads) and, for
SpikingJelly, the paper's network (A), each an optional extra recorded as "not available" with
the reason when it is absent.

Every peer runs the same network as the `snntorch` baseline there (SnnTorchNet: a bias-free
Linear, then a leaky neuron with beta = 0.9, threshold 1, reset to zero), in float32 (under
`--matmul-precision high` every library's Linear runs on TF32 alike), forward and backward:
- spikingjelly: LIFNode(tau=10, decay_input=False, v_reset=0) in multi-step mode (on the paper's
  network A also its synaptic filter and LI readout as non-firing LIFNodes, eager and under
  torch.compile: SpikingJellyCubaNet); SpikingJelly 2
  picks its own kernels per device (Triton on CUDA). Its CuPy kernels need cupy, whose CUDA wheel
  (~100 MB) cannot travel to a lent GPU machine (no network there);
- norse: LIFBoxCell (no synaptic current) with dt * tau_mem_inv = 0.1, the cell compiled with
  torch.compile and stepped in Python (compiling the unrolled 500-step loop takes minutes);
- snntorch+compile: the baseline's Leaky step compiled with torch.compile, stepped in Python;
- Spyx (JAX) is not offered: jax and jaxlib for CUDA (hundreds of MB) cannot travel to the GPU
  machine either; its published number (47 ms fwd+bwd for C-16384, half precision, RTX 4090) is
  quoted in the README, not measured here.

The libraries' update orders differ in details (when a reset acts, what the surrogate is), so a
peer's check reports its spike agreement with stock snntorch on the same weights and is marked
"reference": its timing is recorded, never refused, and never called identical.
"""
import importlib.util

import torch
from torch import nn

from . import checks
from .registry import make_inputs

BETA = 0.9


def _missing(module):
    return None if importlib.util.find_spec(module) is not None else \
        f"{module} is not installed (an optional peer: pip install {module})"


class _Peer(nn.Module):
    """Linear N -> N (no bias) + a peer's LIF over [T, B, N]; forward returns (spikes, None)."""

    def __init__(self, w):
        super().__init__()
        self.fc = nn.Linear(w.n_in, w.n_hidden, bias=False)

    def weights(self):
        return {"w_in": self.fc.weight}

    def currents(self, spikes):
        T, B = spikes.shape[:2]
        return self.fc(spikes.reshape(T * B, -1)).reshape(T, B, -1)


class SpikingJellyNet(_Peer):
    def __init__(self, w):
        super().__init__(w)
        from spikingjelly.activation_based import neuron, surrogate
        self.lif = neuron.LIFNode(tau=1.0 / (1.0 - BETA), decay_input=False, v_threshold=1.0,
                                  v_reset=0.0, surrogate_function=surrogate.Sigmoid(),
                                  step_mode="m")

    def forward(self, spikes):
        from spikingjelly.activation_based import functional
        functional.reset_net(self.lif)
        return self.lif(self.currents(spikes)), None


class SpikingJellyCubaNet(_Peer):
    """The paper's network (workload A: Linear -> CUBA LIF -> Linear -> LI readout) in SpikingJelly,
    multi-step. SpikingJelly has no two-state neuron: its LIFNode(decay_input=False) computes
    v <- v (1 - 1/tau) + x, so a non-firing LIFNode is the synaptic filter and the readout's leaky
    integrator, and the firing one the membrane, with alpha = beta = 0.9 (tau = 10) like stock."""

    def __init__(self, w, compiled=False):
        super().__init__(w)
        from spikingjelly.activation_based import neuron, surrogate
        tau = 1.0 / (1.0 - BETA)
        never = 1e30     # a threshold no membrane reaches: an integrator that never fires

        def integrator():
            return neuron.LIFNode(tau=tau, decay_input=False, v_threshold=never, v_reset=None,
                                  step_mode="m", store_v_seq=True)
        self.syn, self.out_syn, self.out_mem = integrator(), integrator(), integrator()
        self.lif = neuron.LIFNode(tau=tau, decay_input=False, v_threshold=1.0, v_reset=0.0,
                                  surrogate_function=surrogate.Sigmoid(), step_mode="m")
        self.fc_out = nn.Linear(w.n_hidden, w.n_out, bias=False)
        self.run = torch.compile(self._run) if compiled else self._run

    def weights(self):
        return {"w_in": self.fc.weight, "w_out": self.fc_out.weight}

    def _run(self, spikes):
        self.syn(self.currents(spikes))
        z = self.lif(self.syn.v_seq)
        T, B = z.shape[:2]
        self.out_syn(self.fc_out(z.reshape(T * B, -1)).reshape(T, B, -1))
        self.out_mem(self.out_syn.v_seq)
        return z, self.out_mem.v_seq

    def forward(self, spikes):
        from spikingjelly.activation_based import functional
        functional.reset_net(self)
        return self.run(spikes)


class NorseNet(_Peer):
    def __init__(self, w):
        super().__init__(w)
        import norse.torch as nt
        p = nt.LIFBoxParameters(tau_mem_inv=torch.tensor((1.0 - BETA) / 1e-3),
                                v_th=torch.tensor(1.0), v_reset=torch.tensor(0.0),
                                v_leak=torch.tensor(0.0))
        self.cell = nt.LIFBoxCell(p, dt=1e-3)
        self.step = torch.compile(self.cell)

    def forward(self, spikes):
        x = self.currents(spikes) * 10.0     # norse integrates dt * tau_mem_inv * input
        state, out = None, []
        for t in range(x.shape[0]):
            z, state = self.step(x[t], state)
            out.append(z)
        return torch.stack(out), None


class SnnTorchCompiledNet(_Peer):
    def __init__(self, w):
        super().__init__(w)
        import snntorch as snn
        from snntorch import surrogate
        self.lif = snn.Leaky(BETA, reset_mechanism="zero",
                             spike_grad=surrogate.fast_sigmoid(slope=50))
        self.step = torch.compile(self.lif)

    def forward(self, spikes):
        x = self.currents(spikes)
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            z, mem = self.step(x[t], mem)
            out.append(z)
        return torch.stack(out), None


@checks._guard
def spike_agreement(build, stock_build, workload, device):
    """The peer against stock snntorch on the same weights and inputs (small size): the fraction
    of identical spikes, reported, not gated (the libraries' update orders differ)."""
    w = workload.check_size()
    peer, stock = build(w, device), stock_build(w, device)
    with torch.no_grad():
        peer.weights()["w_in"].copy_(stock.weights()["w_in"])
    x, _ = make_inputs(w, device, seed=4)
    with torch.no_grad():
        z, _ = peer(x * 4.0)
        z_ref, _ = stock(x * 4.0)
    same = float((z == z_ref).float().mean())
    return checks.Check("reference", f"peer: {100 * same:.1f} % of spikes equal to stock "
                                     f"snntorch's on the same weights (update orders differ)")


def peer_impls(Impl, stock_build):
    """The peers as bench Impls (kind chip, workloads without readout)."""
    no_readout = lambda w: w.n_out == 0 and not w.recurrent
    peers = (("spikingjelly", SpikingJellyNet, "spikingjelly"), ("norse+compile", NorseNet, "norse"),
             ("snntorch+compile", SnnTorchCompiledNet, "snntorch"))
    out = []
    with_readout = lambda w: w.n_out > 0 and not w.recurrent
    for name, compiled in (("spikingjelly", False), ("spikingjelly+compile", True)):
        build = (lambda c: lambda w, d, dt=torch.float32:
                 SpikingJellyCubaNet(w, compiled=c).to(d, dt))(compiled)
        out.append(Impl(name, "chip", build,
                        (lambda build: lambda w, device: spike_agreement(build, stock_build, w,
                                                                         device))(build),
                        lambda device: _missing("spikingjelly"), applies=with_readout))
    for name, cls, module in peers:
        build = (lambda cls: lambda w, d, dt=torch.float32: cls(w).to(d, dt))(cls)
        out.append(Impl(name, "chip", build,
                        (lambda build: lambda w, device: spike_agreement(build, stock_build, w,
                                                                         device))(build),
                        (lambda module: lambda device: _missing(module))(module),
                        applies=no_readout))
    return out
