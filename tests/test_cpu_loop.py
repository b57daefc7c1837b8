"""The chip LIF op's compiled CPU time loop (kernels/chip_lif/cpu_loop.c) against the eager twin
(reference.py) on awkward shapes: forward bit for bit with noise off, gradients within the
tolerance table (noisy runs: tests/test_cpu_loop_noise.py); the run-time build, its cache, and the
eager fallback with a one-time notice when no C compiler exists."""
import time
import warnings

import pytest
import torch

import bss2_backend.kernels.chip_lif as op
from bss2_backend import Chip, LIFLayer, LILayer
from bss2_backend.kernels import native, paths
from bss2_backend.kernels.chip_lif import ChipLIFConfig, ChipState, compiled
from op_testing import TOL, compare

# the tests that run the compiled loop; the fallback test runs everywhere
needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")


@pytest.fixture(autouse=True)
def _poison(poisoned):
    yield


def _case(T, B, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(N, generator=g, dtype=dtype)
    par = torch.stack([r(-.1, .1), r(-.3, 0.), r(.85, 1.15), r(.05, .4), r(.1, .6), r(.1, .6)])
    ref = torch.randint(0, 4, (N,), dtype=torch.int32, generator=g)
    offset = torch.randn(N, generator=g, dtype=dtype) * 3
    nom = torch.stack([r(.9, 1.1), r(.05, .3), r(.05, .3), r(.1, .4)])
    x_exc = (torch.rand(T, B, N, generator=g, dtype=dtype) * 2.5).requires_grad_()
    x_inh = (torch.rand(T, B, N, generator=g, dtype=dtype) * .8).requires_grad_()
    cot = torch.randn(2, T, B, N, generator=g, dtype=dtype)
    return par, ref, offset, nom, x_exc, x_inh, cot


def _run(mode, case, config, inh=True, state=None):
    par, ref, offset, nom, x_exc, x_inh, cot = case
    x_inh = x_inh if inh else None
    with native.cpu_loop(mode), paths.collect() as seen:
        z, u, out = op.chip_lif(x_exc, x_inh, par, ref, offset, nom, config, 11, state=state,
                                step=3)
        loss = (u * cot[0]).sum() + (z * cot[1]).sum() + out.v.sum() + out.i_exc.sum()
        leaves = [x for x in (x_exc, x_inh, *(state or ())) if x is not None and x.requires_grad]
        grads = torch.autograd.grad(loss, leaves)
    assert seen["loop"] == {mode}
    named = {"z": z, "u": u, **{f"state_{k}": v for k, v in out._asdict().items()}}
    named.update({f"g{i}": g for i, g in enumerate(grads)})
    return named


SHAPES = [(1, 1, 1), (63, 7, 5), (5, 3, 500), (20, 16, 246)]


@pytest.mark.parametrize("T, B, N", SHAPES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("spiking, quantise, inh", [
    (True, True, True), (True, False, False), (True, False, True), (False, True, True),
    (False, False, False)])
@needs_cc
def test_compiled_loop_equals_twin(T, B, N, dtype, spiking, quantise, inh):
    case = _case(T, B, N, dtype)
    config = ChipLIFConfig(spiking, quantise, 0.0, 0.0, 45.0, 64.0, 1, 50.0, False)
    eager, comp = (_run(m, case, config, inh) for m in ("eager", "compiled"))
    tol = TOL["float64"] if dtype == torch.float64 else TOL["grad"]
    compare(eager, comp, grads=tol, exact=[k for k in eager if not k.startswith("g")])


@needs_cc
@pytest.mark.parametrize("surrogate", range(8))
def test_every_surrogate(surrogate):
    case = _case(12, 3, 40, torch.float64, seed=surrogate)
    config = ChipLIFConfig(True, False, 0.0, 0.0, 45.0, 64.0, surrogate, 5.0, False)
    eager, comp = (_run(m, case, config) for m in ("eager", "compiled"))
    compare(eager, comp, grads=TOL["float64"], exact=("z", "u"))


@needs_cc
@pytest.mark.parametrize("mirrored", (True, False))
def test_continued_run_with_state_gradients(mirrored):
    """A run continued from a given state: the state's gradients too."""
    case = _case(9, 4, 30, torch.float64, seed=5)

    def state():
        g = torch.Generator().manual_seed(9)
        return ChipState(*(torch.rand(4, 30, generator=g, dtype=torch.float64).requires_grad_()
                           for _ in range(3)),
                         torch.randint(0, 3, (4, 30), dtype=torch.int32, generator=g),
                         torch.zeros(4, 30, dtype=torch.float64))
    config = ChipLIFConfig(True, True, 0.0, 0.0, 45.0, 64.0, 2, 3.0, mirrored)
    eager = _run("eager", case, config, state=state())
    comp = _run("compiled", case, config, state=state())
    compare(eager, comp, grads=TOL["float64"], exact=("z", "u", "state_v", "state_ref"))


@needs_cc
def test_chip_layers_equal_the_twin():
    """A calibrated chip (mismatch, quantisation, two synaptic streams, refractory clamp) with
    noise off, as the layers call it."""
    spikes = (torch.rand(40, 5, 30, generator=torch.Generator().manual_seed(2)) < 0.1).float()
    runs = []
    for mode in ("eager", "compiled"):
        torch.manual_seed(4)
        chip = Chip(seed=3, noise=False)
        hidden, readout = LIFLayer(chip, 30, 20), LILayer(chip, 20, 4)
        with native.cpu_loop(mode):
            z, u = hidden(spikes)
            out = readout(z)
            out.square().sum().backward()
        runs.append({"z": z, "u": u, "out": out, "g_in": hidden.weight.grad,
                     "g_out": readout.weight.grad})
    assert runs[0]["z"].sum() > 0
    compare(runs[0], runs[1], exact=("z", "u", "out"))


@needs_cc
@pytest.mark.parametrize("dtype, dyadic", [(torch.float32, True), (torch.float64, False)])
@pytest.mark.parametrize("with_state", (False, True))
def test_recurrent_forward_compiled_backward_twin(dtype, dyadic, with_state):
    """Recurrent layers: the forward in C (recurrent input from the spike events), the backward in
    the twin. Dyadic weights (exact sums): bit for bit; float64 weights: spikes equal, the rest to
    1e-12."""
    T, B, N = 30, 5, 40
    case = _case(T, B, N, dtype, seed=3)
    g = torch.Generator().manual_seed(8)
    if dyadic:
        w = (torch.randint(-8, 9, (N, N), generator=g) / 64.0).to(dtype)
    else:
        w = torch.randn(N, N, generator=g, dtype=dtype) * 0.15
    config = ChipLIFConfig(True, True, 0.0, 0.0, 45.0, 64.0, 1, 20.0, False)
    runs = []
    for mode in ("eager", "compiled"):
        w_rec = w.clone().requires_grad_()
        state = None
        if with_state:
            gs = torch.Generator().manual_seed(4)
            state = ChipState(*(torch.rand(B, N, generator=gs, dtype=dtype) for _ in range(3)),
                              torch.randint(0, 2, (B, N), dtype=torch.int32, generator=gs),
                              (torch.rand(B, N, generator=gs) < 0.3).to(dtype))
        par, ref, offset, nom, x_exc, x_inh, cot = case
        with native.cpu_loop(mode), paths.collect() as seen:
            z, u, _ = op.chip_lif(x_exc, x_inh, par, ref, offset, nom, config, 0,
                                  recurrence=(w_rec, w_rec.detach().clamp(min=0),
                                              (-w_rec.detach()).clamp(min=0)), state=state)
            grads = torch.autograd.grad((u * cot[0]).sum() + (z * cot[1]).sum(),
                                        (x_exc, x_inh, w_rec))
        assert seen["loop"] == ({"eager"} if mode == "eager" else {"compiled", "eager"})
        runs.append({"z": z, "u": u, **{f"g{i}": t for i, t in enumerate(grads)}})
    assert runs[0]["z"].sum() > 0
    if dyadic:
        compare(runs[0], runs[1], exact=("z", "u"))
    else:
        compare(runs[0], runs[1], values=TOL["float64"], grads=TOL["float64"], exact=("z",))


@needs_cc
def test_cold_build_is_cached_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("BSS2_CACHE_DIR", str(tmp_path))
    native.forget()
    try:
        start = time.perf_counter()
        assert native.library(compiled.SOURCE) is not None
        cold = time.perf_counter() - start
        built = list((tmp_path / "native").glob("cpu_loop-*.so"))
        assert len(built) == 1 and cold <= 20.0
        native.forget()                           # a new process: loads the cached file
        stamp = built[0].stat().st_mtime_ns
        assert native.library(compiled.SOURCE) is not None
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        native.forget()


def test_without_a_compiler_the_eager_loop_runs_with_one_notice(monkeypatch, tmp_path):
    monkeypatch.setenv("BSS2_CACHE_DIR", str(tmp_path))      # nothing cached to load
    monkeypatch.setattr(native, "compiler", lambda: None)
    native.forget()
    case = _case(8, 3, 10, torch.float32)
    config = ChipLIFConfig(True, True, 0.0, 0.0, 45.0, 64.0, 1, 50.0, False)
    try:
        with pytest.warns(native.NativeNotice, match="no C compiler"):
            with native.cpu_loop("auto"), paths.collect() as seen:
                z, u, _ = op.chip_lif(case[4], case[5], *case[:4], config, 0)
        assert seen["loop"] == {"eager"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")                   # said once only
            with native.cpu_loop("auto"):
                z2, u2, _ = op.chip_lif(case[4], case[5], *case[:4], config, 0)
        with native.cpu_loop("eager"):
            z_ref, u_ref, _ = op.chip_lif(case[4], case[5], *case[:4], config, 0)
        assert torch.equal(z, z_ref) and torch.equal(u, u_ref) and torch.equal(u2, u_ref)
        with native.cpu_loop("compiled"), pytest.raises(RuntimeError, match="no C compiler"):
            op.chip_lif(case[4], case[5], *case[:4], config, 0)
    finally:
        native.forget()


def test_loop_mode_is_validated():
    with pytest.raises(ValueError, match="cpu_loop must be one of"):
        native.cpu_loop("fast")


@needs_cc
def test_reused_output_buffers_never_overwrite_a_held_result(monkeypatch):
    """backend.output hands a buffer out again only when nothing shares its storage: results a
    caller keeps (or autograd saved) survive later calls, and freed ones are reused."""
    from bss2_backend.kernels import backend
    monkeypatch.setattr(backend, "reuse_outputs", True)      # the poisoning fixture turns it off
    first = backend.output("test.out", (3, 4), torch.float32, "cpu").fill_(1.0)
    view = first[1]
    del first
    second = backend.output("test.out", (3, 4), torch.float32, "cpu").fill_(2.0)
    assert torch.equal(view, torch.ones(4))                  # a view still held: a new buffer
    ptr = second.data_ptr()
    del second
    third = backend.output("test.out", (2, 6), torch.float32, "cpu")
    assert third.data_ptr() == ptr                           # a freed buffer is taken again
    case = _case(10, 3, 7, torch.float32)
    config = ChipLIFConfig(True, True, 0.0, 0.0, 45.0, 64.0, 1, 50.0, False)
    with native.cpu_loop("compiled"):
        z1, u1, _ = op.chip_lif(case[4].detach(), None, *case[:4], config, 0)
        kept = u1.clone()
        z2, u2, _ = op.chip_lif(case[4].detach() * 0.5, None, *case[:4], config, 0)
    assert torch.equal(u1, kept) and u1.data_ptr() != u2.data_ptr()


# --- snntorch's neurons (kernels/snn_neuron) on the compiled loop ---------------------------------
from bss2_backend.kernels import surrogate as sg                     # noqa: E402
from bss2_backend.kernels.snn_neuron import (RESET_NONE, RESET_SUB, RESET_ZERO,  # noqa: E402
                                             NeuronSpec, snn_neuron)


def _snn_run(mode, spec, T, S, dtype, need_params):
    g = torch.Generator().manual_seed(T * 7 + len(S))
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()
    n = S[-1]
    x, u0 = rnd(T, *S, scale=1.2), rnd(*S)
    i0 = rnd(*S) if spec.synaptic else None
    params = dict(beta=torch.rand(n, generator=g, dtype=dtype).mul(0.9).requires_grad_(need_params),
                  alpha=torch.tensor(0.7, dtype=dtype, requires_grad=need_params)
                  if spec.synaptic else None,
                  theta=torch.rand(n, generator=g, dtype=dtype).add(0.5).requires_grad_(need_params),
                  g=torch.tensor(1.5, dtype=dtype, requires_grad=need_params))
    with native.cpu_loop(mode), paths.collect() as seen:
        spk, syn, mem = snn_neuron(spec, x, u0, i0, **params)
        cot = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=cot, dtype=t.dtype)).sum()
                   for t in (spk, syn, mem) if t is not None)
        leaves = [t for t in (x, u0, i0, *params.values()) if t is not None and t.requires_grad]
        grads = torch.autograd.grad(loss, leaves)
    assert seen["loop"] == {mode}
    return {"spk": spk, "syn": syn, "mem": mem, **{f"g{i}": t for i, t in enumerate(grads)}}


@pytest.mark.parametrize("synaptic, reset, zero_before_decay", [
    (False, RESET_SUB, False), (False, RESET_ZERO, True), (False, RESET_ZERO, False),
    (False, RESET_NONE, False), (True, RESET_SUB, False), (True, RESET_ZERO, False),
    (True, RESET_NONE, False)])
@needs_cc
@pytest.mark.parametrize("T, S", [(1, (1,)), (63, (7, 5)), (9, (2, 3, 4))])
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_snn_neuron_compiled_loop_equals_twin_bit_for_bit(synaptic, reset, zero_before_decay, T, S,
                                                          dtype):
    spec = NeuronSpec(synaptic=synaptic, reset=reset, zero_before_decay=zero_before_decay,
                      surrogate=sg.ATAN, surrogate_param=2.0)
    for need_params in (False, True):
        eager = _snn_run("eager", spec, T, S, dtype, need_params)
        comp = _snn_run("compiled", spec, T, S, dtype, need_params)
        compare(eager, comp, exact=list(eager))
