"""Run counters in device memory: a layer's noise seed computed by tensor ops from a counter that
lives where the layer runs, so a captured CUDA graph (or a compiled graph) advances it and draws
new noise on every replay instead of freezing a Python int. On the CPU the same path runs when
asked (Chip.device_counters = True); the GPU capture itself is tested on a GPU only."""
import random

import pytest
import torch

from bss2_backend import Chip, LIFLayer, LIFParams, ReadoutParams, Noise
from bss2_backend.kernels.chip_lif import ChipLIFConfig, chip_lif
from bss2_backend.kernels.chip_lif import triton as fused
from bss2_backend.noise import RUN_MASK, SEED_PRIME, layer_key, layer_seed, layer_seed_tensor
from bss2_backend.dynamics import config as op_config, pack
from bss2_backend.surrogates import Surrogate


def test_device_seed_equals_host_seed():
    rng = random.Random(0)
    cases = [(0, 0, 0), (2**63 - 1, 511, RUN_MASK), (1, 1, RUN_MASK + 1), (7, 3, 2**40 + 5)]
    cases += [(rng.randrange(2**63), rng.randrange(512), rng.randrange(2**34)) for _ in range(200)]
    keys = torch.tensor([layer_key(s, c) for s, c, _ in cases])
    runs = torch.tensor([r for _, _, r in cases])
    got = layer_seed_tensor(keys, runs)
    want = torch.tensor([layer_seed(s, c, r) for s, c, r in cases])
    assert torch.equal(got, want)
    assert int(got.min()) >= 0 and int(got.max()) < SEED_PRIME
    # distinct for consecutive runs of one layer
    seeds = {layer_seed(5, 17, r) for r in range(10000)}
    assert len(seeds) == 10000


def _layer(chip, recurrent=False):
    torch.manual_seed(0)
    layer = LIFLayer(chip, 12, 9, recurrent=recurrent)
    with torch.no_grad():
        layer.weight.mul_(4.0)
    return layer


def _noisy_chip(counters):
    chip = Chip(seed=3, noise=Noise(readout_lsb=3.0, membrane_lsb=2.0))
    chip.device_counters = counters
    return chip


def test_counters_as_tensors_give_the_host_counters_noise():
    x = (torch.rand(10, 4, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    host, dev = _noisy_chip(False), _noisy_chip(True)
    a, b = _layer(host), _layer(dev)
    for _ in range(3):
        (za, ua), (zb, ub) = a(x), b(x)
        assert torch.equal(za, zb) and torch.equal(ua, ub)
    assert host.layer_runs == dev.layer_runs == {0: 3}
    assert all(isinstance(v, torch.Tensor) for v in dev._layer_runs.values())
    # the state saves and restores the counts wherever they live
    back = Chip.from_state_dict(dev.state_dict())
    assert back.layer_runs == {0: 3}


class Counting:
    """A torch.compile backend that counts compilations and runs the graph as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("recurrent", [False, True])
def test_compiled_forward_draws_new_noise_every_call_without_recompiling(recurrent):
    """What a CUDA graph needs, checked on the CPU with a compiled graph: the counter is advanced
    inside the graph, so every call gets the next run's noise, as eager does, with one graph."""
    torch._dynamo.reset()
    x = (torch.rand(10, 4, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    eager_chip, graph_chip = _noisy_chip(True), _noisy_chip(True)
    eager, compiled = _layer(eager_chip, recurrent), _layer(graph_chip, recurrent)
    eager(x), compiled(x)       # warm-up: the layer's parameters are placed and cached eagerly
    backend = Counting()
    run = torch.compile(compiled, backend=backend, fullgraph=True)
    outs = []
    for _ in range(3):
        (z, u), (z_ref, u_ref) = run(x), eager(x)
        assert torch.equal(z, z_ref) and torch.equal(u, u_ref)
        outs.append(u)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    assert backend.graphs == 1
    assert graph_chip.layer_runs == eager_chip.layer_runs == {0: 4}


def test_kernels_read_a_seed_tensor_like_the_int():
    """The fused kernels (Triton interpreter here) read a seed tensor from memory and draw exactly
    the noise of the same seed passed by value."""
    N = 8
    p = LIFParams.uniform(N, a_mem=0.2)
    ro = ReadoutParams(torch.zeros(N), 2.0, True)
    packed = pack(p, p, ro, torch.float32, torch.device("cpu"))
    cfg = op_config(ro, 1.5, Surrogate(), True, True)
    x = torch.rand(6, 3, N) * 0.3
    seed = layer_seed(11, 4, 2)
    by_value = fused.forward(cfg, x, None, *packed[:3], None, None, seed)
    by_tensor = fused.forward(cfg, x, None, *packed[:3], None, None,
                              torch.tensor([seed], dtype=torch.int64))
    for a, b in zip(by_value[:2], by_tensor[:2]):
        assert torch.equal(a, b)
    other = fused.forward(cfg, x, None, *packed[:3], None, None, torch.tensor([seed + 1]))
    assert not torch.equal(other[1], by_value[1])


def test_a_bad_seed_tensor_is_named():
    N = 4
    p = LIFParams.uniform(N)
    ro = ReadoutParams(torch.zeros(N), 0.0, False)
    packed = pack(p, p, ro, torch.float32, torch.device("cpu"))
    cfg = op_config(ro, 1.0, Surrogate(), True, True)
    with pytest.raises(ValueError, match="seed"):
        chip_lif(torch.zeros(2, 1, N), None, *packed, cfg, torch.tensor([1.0, 2.0]))
    assert isinstance(cfg, ChipLIFConfig)
