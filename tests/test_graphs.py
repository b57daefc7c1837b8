"""CUDA graphs (bss2_backend.graphs): a whole training step captured once and replayed. The capture
itself needs a GPU (those tests skip here with the reason); on the CPU: when a step is not
captured and why, and that the training and evaluation steps read nothing on the host (a captured
graph cannot), checked by running them under a mode that refuses every host read."""
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bss2_backend import Chip, validation
from bss2_backend.graphs import GraphedStep, unavailable
from bss2_backend.train.config import TrainConfig
from bss2_backend.train.data import load_digits
from bss2_backend.train.loop import build_network, eval_step, fit, train_step

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: graph capture and replay")

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy",
              "__format__", "__repr__", "__str__", "cpu"}


def _in_cpu_twin():
    """Whether the caller is the ops' CPU path (kernels/*/reference.py, the twin, or
    kernels/*/compiled.py, its compiled loop): it reads its seed and a flag on the host by design;
    on a GPU the Triton kernels run instead and read nothing."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/kernels/" in path and path.endswith(("/reference.py", "/compiled.py")):
            return True
        frame = frame.f_back
    return False


class RefuseHostReads(TorchFunctionMode):
    """Raises on every operation that brings a tensor's values to the host."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(a == "cpu" or a == torch.device("cpu")
                                      for a in list(args[1:]) + list((kwargs or {}).values()))
        if (name in HOST_READS or to_cpu) and not _in_cpu_twin():
            raise AssertionError(f"host read in a step meant for capture: {name}")
        return func(*args, **(kwargs or {}))


def test_a_step_off_the_gpu_runs_eagerly_and_says_why():
    calls = []
    step = GraphedStep(lambda x: calls.append(1) or x * 2, device="cpu")
    assert "CUDA device" in step.reason
    assert torch.equal(step(torch.ones(2)), torch.full((2,), 2.0)) and calls == [1]
    assert GraphedStep(lambda: None, device="cpu", enabled=False).reason == "turned off"
    assert step.captured == 0
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda: None, device="cpu", warmup=0)


def test_value_checks_keep_steps_uncaptured(monkeypatch):
    previous = validation.check_values(True)
    try:
        if CUDA:
            assert "value checks" in unavailable("cuda")
    finally:
        validation.check_values(previous)
    assert unavailable("cpu").startswith("CUDA graphs need a CUDA device")


@pytest.mark.parametrize("task", ["mnist"])
def test_training_and_evaluation_steps_read_nothing_on_the_host(task):
    """What capture needs, on the CPU: with value checks off (their default on a GPU) and the
    run counters as tensors (their default on a GPU), a whole training step and an evaluation
    step run without a single host read."""
    data = load_digits().subset(32, 16)
    cfg = TrainConfig(task=task, batch_size=16, steps=12, t_last=6, epochs=1)
    chip = Chip(seed=1)
    chip.device_counters = True
    model = build_network(cfg, chip, data.x_train[0].numel(), data.classes)
    # Adam(capturable=True), what fit() uses on a GPU, is refused on the CPU; plain SGD reads
    # nothing on the host either
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    totals = torch.zeros(4, dtype=torch.float64)
    step = train_step(cfg, model, optimiser, totals)
    x, y = data.x_train[:16], data.y_train[:16]
    step(x, y)                                   # warm-up: placement and caches, as before capture
    previous = validation.check_values(False)
    try:
        optimiser.zero_grad(set_to_none=True)
        with RefuseHostReads():
            step(x, y)
            eval_totals = torch.zeros(2, dtype=torch.float64)
            with torch.no_grad():
                eval_step(cfg, model, eval_totals)(x, y)
    finally:
        validation.check_values(previous)
    assert float(totals[3]) == 32 and float(eval_totals[1]) >= 0


def test_the_detector_catches_a_host_read():
    with pytest.raises(AssertionError, match="host read"):
        with RefuseHostReads():
            torch.ones(2).sum().item()


# --- on a GPU --------------------------------------------------------------------------------------
@needs_gpu
def test_a_captured_noisy_layer_draws_new_noise_every_replay_like_eager():
    from bss2_backend import LIFLayer, Noise
    x = (torch.rand(20, 8, 16, device="cuda") < 0.3).float()

    def build():
        chip = Chip(seed=2, noise=Noise(readout_lsb=3.0, membrane_lsb=2.0))
        torch.manual_seed(0)
        return LIFLayer(chip, 16, 12).cuda()
    eager, graphed = build(), build()

    def run(layer):
        def fn(x):
            z, u = layer(x)
            (u.sum() + z.sum()).backward()
            return u.detach()
        return fn
    step = GraphedStep(run(graphed), device="cuda", warmup=2)
    outs = []
    for _ in range(5):
        for layer in (eager, graphed):
            layer.zero_grad(set_to_none=True)
        u_ref = run(eager)(x)
        u = step(x).clone()
        torch.testing.assert_close(u, u_ref, rtol=0, atol=0)
        outs.append(u)
    assert step.captured == 1 and step.replays == 3
    assert not torch.equal(outs[3], outs[4])


@needs_gpu
def test_training_with_and_without_graphs_gives_the_same_history(tmp_path):
    data = load_digits().subset(192, 64)
    cfg = TrainConfig(batch_size=32, steps=20, t_last=10, epochs=2)
    quiet = dict(progress=False, log=lambda m: None, device="cuda")
    _, with_graphs = fit(cfg, data, Chip(seed=0), cuda_graph=True, **quiet)
    _, without = fit(cfg, data, Chip(seed=0), cuda_graph=False, **quiet)
    assert with_graphs[-1]["cuda_graphs"] >= 1 and without[-1]["cuda_graphs"] == 0
    for a, b in zip(with_graphs, without):
        for key in ("loss", "train_accuracy", "test_accuracy", "spikes_per_hidden_neuron"):
            assert a[key] == b[key], key
