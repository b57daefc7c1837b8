"""Synaptic products from spike events (kernels/events.py) against the dense products they replace
on the CPU: values and weight gradients at densities 0, 1, 50 and 100 %, empty batches, all-zero
steps; bit for bit where every partial sum is exact (0/1 spikes times integer codes), to 1e-12 in
float64 otherwise; then through the chip layers and forward_pass, and the per-call choice."""
import pytest
import torch
from torch import nn

from bss2_backend import Chip, LIFLayer, LILayer
from bss2_backend.kernels import events as ev
from bss2_backend.kernels import native, paths
from op_testing import TOL, rel_rms

GEN = torch.Generator().manual_seed(0)
DENSITIES = (0.0, 0.01, 0.5, 1.0)


def _spikes(M, K, density, dtype=torch.float32):
    s = (torch.rand(M, K, generator=GEN) < density).to(dtype)
    if M > 2:
        s[M // 2] = 0                       # an all-zero step (row) inside the batch
    return s


# "compiled": the C finder and sums (events.c); "eager": torch's nonzero and embedding_bag
LOOPS = ("compiled", "eager")


@pytest.fixture(params=LOOPS)
def loop(request):
    if request.param == "compiled" and native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    with native.cpu_loop(request.param):
        yield request.param


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("M, K, N", [(0, 16, 5), (1, 1, 1), (63, 7, 500), (200, 256, 246)])
def test_integer_codes_bit_identical(density, M, K, N, loop):
    s = _spikes(M, K, density)
    codes = torch.randint(-63, 64, (N, K), generator=GEN).float()
    events = ev.events_of(s)
    assert events.values is None                  # 0/1 spikes: no per-event factor
    assert torch.equal(ev.product(s, events, codes), s @ codes.t())
    # integer cotangents: the weight gradient's sums are exact too
    g = torch.randint(-50, 50, (M, N), generator=GEN).float()
    assert torch.equal(ev.weight_grad(g, s, events), g.t() @ s)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("M, K, N", [(0, 16, 5), (1, 3, 2), (97, 33, 46)])
def test_float64_values_and_weight_grads(density, M, K, N, loop):
    s = _spikes(M, K, density, torch.float64)
    w = torch.randn(N, K, generator=GEN, dtype=torch.float64)
    g = torch.randn(M, N, generator=GEN, dtype=torch.float64)
    events = ev.events_of(s)
    for got, ref in ((ev.product(s, events, w), s @ w.t()),
                     (ev.weight_grad(g, s, events), g.t() @ s)):
        assert got.shape == ref.shape
        if ref.numel() and ref.norm() > 0:
            assert rel_rms(ref, got) <= TOL["float64"]
        else:
            assert torch.equal(got, torch.zeros_like(ref))


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_the_c_event_finder_equals_torchs_nonzero(density, dtype):
    """The one-pass C finder (events.c) and the torch route (no compiler: cpu_loop "eager") find
    the same events, in the same order; both give up above the capacity."""
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    s = _spikes(300, 37, density, dtype)
    s[5, 3] = 0.5 if density else 0.0                       # a graded value among the spikes
    with native.cpu_loop("compiled"):
        found = ev.events_of(s)
        over = ev.events_of(s, capacity=int(s.count_nonzero()) - 1) if density else None
    with native.cpu_loop("eager"):
        ref = ev.events_of(s)
    for name in ("offsets", "rows", "cols"):
        assert torch.equal(getattr(found, name), getattr(ref, name)), name
    assert (found.values is None) == (ref.values is None)
    if ref.values is not None:
        assert torch.equal(found.values, ref.values)
    assert over is None


def test_graded_values_weight_each_event(loop):
    """Non-binary presynaptic values (e.g. dropout-scaled spikes) keep their factor."""
    s = _spikes(50, 20, 0.2, torch.float64) * torch.rand(50, 20, generator=GEN, dtype=torch.float64)
    w = torch.randn(9, 20, generator=GEN, dtype=torch.float64)
    g = torch.randn(50, 9, generator=GEN, dtype=torch.float64)
    events = ev.events_of(s)
    assert events.values is not None
    assert rel_rms(s @ w.t(), ev.product(s, events, w)) <= TOL["float64"]
    assert rel_rms(g.t() @ s, ev.weight_grad(g, s, events)) <= TOL["float64"]


@pytest.mark.parametrize("density", DENSITIES)
def test_spike_linear_values_and_gradients(density, loop):
    x = _spikes(3 * 40, 30, density, torch.float64).reshape(3, 40, 30).requires_grad_()
    lin = nn.Linear(30, 12).double()
    g = torch.randn(3, 40, 12, generator=GEN, dtype=torch.float64)
    runs = {}
    for mode in ("dense", "events"):
        with ev.product_path(mode), paths.collect() as seen:
            y = ev.spike_linear(x, lin.weight, lin.bias)
            gx, gw, gb = torch.autograd.grad(y, (x, lin.weight, lin.bias), g)
        assert seen["product"] == {mode}
        runs[mode] = (y, gx, gw, gb)
    for ref, got in zip(runs["dense"], runs["events"]):
        assert rel_rms(ref, got) <= TOL["float64"] or torch.equal(ref, got)


@pytest.mark.parametrize("loop", ("compiled", "eager"))
def test_auto_chooses_by_measured_density(loop):
    sparse, dense = _spikes(400, 64, 0.01), _spikes(400, 64, 0.5)
    with native.cpu_loop("auto" if loop == "compiled" else "eager"):
        assert ev.choose(sparse) is not None
        assert ev.choose(dense) is None
        with ev.product_path("events"):
            assert ev.choose(dense) is not None
        with ev.product_path("dense"):
            assert ev.choose(sparse) is None
        # a hot path that must not read values on the host (value checks off): no count, dense
        assert ev.choose(sparse, may_read=False) is None


def test_row_blocked_matmul_equals_the_gemm():
    a = torch.randint(0, 2, (1000, 10), generator=GEN).float()
    b = torch.randint(-63, 64, (10, 246), generator=GEN).float()
    assert torch.equal(ev.rows_matmul(a, b), a @ b)         # exact sums: identical
    a64, b64 = torch.randn(777, 33, dtype=torch.float64), torch.randn(33, 5, dtype=torch.float64)
    assert rel_rms(a64 @ b64, ev.rows_matmul(a64, b64)) <= TOL["float64"]


def test_non_cpu_tensors_keep_the_dense_product_without_a_count():
    """On another device auto never counts (a count would synchronise a GPU's host): a meta
    tensor has no values to count, so reaching the count would fail here."""
    s = torch.empty(100, 8, device="meta")
    assert ev.choose(s) is None
    with ev.product_path("events"), pytest.raises(ValueError, match="CPU tensors only"):
        ev.choose(s)
    with pytest.raises(ValueError, match="product must be one of"):
        ev.product_path("sparse")


def _layer_run(chip, spikes, mode, dtype):
    torch.manual_seed(3)
    hidden = LIFLayer(chip, spikes.shape[-1], 24).to(dtype)
    readout = LILayer(chip, 24, 5).to(dtype)
    with ev.product_path(mode), paths.collect() as seen:
        z, u = hidden(spikes)
        out = readout(z)
        (out.square().sum() + (u * z).sum()).backward()
    assert seen["product"] >= {mode}
    return {"z": z.detach(), "u": u.detach(), "out": out.detach(),
            "g_w_in": hidden.weight.grad, "g_w_out": readout.weight.grad}


@pytest.mark.parametrize("density", (0.0, 0.01, 0.5))
def test_chip_layers_exact_codes_bit_identical(density):
    """Quantised chip without gain spread: the forward sums integer codes (exact either way)."""
    spikes = _spikes(30 * 6, 40, density).reshape(30, 6, 40)
    chip = lambda: Chip(mismatch="none", noise=False, quantise=True)
    dense, events = (_layer_run(chip(), spikes, m, torch.float32) for m in ("dense", "events"))
    for name in ("z", "u", "out"):
        assert torch.equal(dense[name], events[name]), name
    for name in ("g_w_in", "g_w_out"):
        assert rel_rms(dense[name], events[name]) <= TOL["grad"], name


@pytest.mark.parametrize("ideal", (True, False))
def test_chip_layers_float64(ideal):
    """Float weights (ideal chip) and two synaptic streams with gain spread (calibrated chip)."""
    spikes = _spikes(30 * 6, 40, 0.05, torch.float64).reshape(30, 6, 40)
    chip = (lambda: Chip.ideal()) if ideal else (lambda: Chip(seed=2, noise=False))
    dense, events = (_layer_run(chip(), spikes, m, torch.float64) for m in ("dense", "events"))
    assert torch.equal(dense["z"], events["z"])
    for name in ("u", "out", "g_w_in", "g_w_out"):
        assert rel_rms(dense[name], events[name]) <= TOL["float64"], name


def test_forward_pass_events_match_dense():
    pytest.importorskip("snntorch")
    import snntorch as snn
    from bss2_backend.integrations.snntorch import convert, forward_pass

    def run(mode):
        torch.manual_seed(0)
        net = convert(nn.Sequential(nn.Linear(64, 32), snn.Leaky(0.9, init_hidden=True),
                                    nn.Linear(32, 10),
                                    snn.Leaky(0.9, init_hidden=True, output=True)))
        data = (torch.rand(25, 8, 64, generator=torch.Generator().manual_seed(1)) < 0.02).float()
        with ev.product_path(mode), paths.collect() as seen:
            spk, mem = forward_pass(net, 25, data)
            mem.square().sum().backward()
        assert mode in seen["product"]
        return spk, mem, [p.grad for p in net.parameters()]

    (spk, mem, grads), (spk_e, mem_e, grads_e) = run("dense"), run("events")
    assert torch.equal(spk, spk_e)
    assert rel_rms(mem, mem_e) <= TOL["membrane"]
    for g, g_e in zip(grads, grads_e):
        assert rel_rms(g, g_e) <= TOL["grad"]
