"""Fused chip CUBA-LIF kernels against the plain-PyTorch twin (bss2_backend.dynamics).

Without a GPU these run the Triton interpreter (tests/conftest.py); with one, the compiled kernels.
Every buffer the launchers allocate is NaN-poisoned, so an element a kernel forgets to write fails.
"""
import pytest
import torch

from bss2_backend import (Chip, LIFLayer, LILayer, LIFParams, ReadoutParams, Recurrence, Surrogate,
                          cuba_lif, li)
from bss2_backend.surrogates import KINDS
from bss2_backend.kernels import cuba_lif as kcl
from bss2_backend.kernels import dispatch, utils

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="chip-sized shapes run compiled on a GPU only; the "
                                      "interpreter covers the same code paths on small shapes")

# Relative RMS error ||ref - tri|| / ||ref||; spikes are compared exactly (noise off, no FMA).
TOL = {
    "membrane": 1e-6,
    "grad": 1e-5,
    "grad_recurrent": 1e-4,
    "grad_half": 1e-2,
}


def rel_rms(ref, tri):
    assert torch.isfinite(tri).all(), "kernel output holds NaN/inf (an unwritten poisoned element?)"
    ref, tri = ref.detach().double(), tri.detach().double()
    return float((ref - tri).norm() / ref.norm().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """NaN-fill (0xFF for integers) every output buffer the launchers allocate."""
    def alloc(shape, dtype, device):
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(255)
    monkeypatch.setattr(utils, "alloc", alloc)


def random_params(n, mismatch, dtype=torch.float32):
    """Chip parameters with per-neuron spread (mismatch) or uniform ones, and the nominal model."""
    nominal = LIFParams.uniform(n, v_reset=-0.1, a_mem=0.2, a_syn_exc=0.3, a_syn_inh=0.25,
                                ref_steps=1, dtype=dtype, device=DEVICE)
    if not mismatch:
        return nominal, nominal
    r = lambda lo, hi: torch.empty(n, dtype=dtype, device=DEVICE).uniform_(lo, hi)
    params = LIFParams(r(-0.1, 0.1), r(-0.3, 0.0), r(0.85, 1.15), r(0.05, 0.4), r(0.1, 0.6),
                       r(0.1, 0.6), torch.randint(0, 4, (n,), dtype=torch.int32, device=DEVICE))
    return params, nominal


def dyadic(shape, hi=8, scale=32.0):
    """Non-negative weights k/scale: sums of them are exact in any order, so spikes stay exact."""
    return torch.randint(0, hi, shape, device=DEVICE).float() / scale


def inputs(T, B, N, inh=True, dtype=torch.float32):
    x_exc = (torch.rand(T, B, N, device=DEVICE) * 2.5).to(dtype)
    x_inh = (torch.rand(T, B, N, device=DEVICE) * 0.8).to(dtype) if inh else None
    return x_exc, x_inh


def run_both(x_exc, x_inh, params, nominal, readout, recurrence=None, surrogate=Surrogate(),
             spiking=True):
    """Forward + backward of one random cotangent through backend torch and triton."""
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = x_exc.shape
    g_z = torch.randn(shape, generator=g).to(DEVICE)
    g_u = torch.randn(shape, generator=g).to(DEVICE)
    out = {}
    for backend in ("torch", "triton"):
        xe = x_exc.detach().clone().requires_grad_()
        xi = None if x_inh is None else x_inh.detach().clone().requires_grad_()
        rec = None
        if recurrence is not None:
            rec = recurrence._replace(weight=recurrence.weight.detach().clone().requires_grad_())
        if spiking:
            z, u = cuba_lif(xe, xi, params=params, nominal=nominal, readout=readout,
                            recurrence=rec, surrogate=surrogate, backend=backend)
            loss = (z.float() * g_z).sum() + (u.float() * g_u).sum()
        else:
            z, u = None, li(xe, xi, params=params, nominal=nominal, readout=readout,
                            backend=backend)
            loss = (u.float() * g_u).sum()
        loss.backward()
        out[backend] = (z, u, xe.grad, None if xi is None else xi.grad,
                        None if rec is None else rec.weight.grad)
    return out["torch"], out["triton"]


def check(ref, tri, grad_tol=TOL["grad"], mem_tol=TOL["membrane"]):
    (z0, u0, ge0, gi0, gw0), (z1, u1, ge1, gi1, gw1) = ref, tri
    if z0 is not None:
        assert torch.equal(z0, z1), f"{int((z0 != z1).sum())} spikes differ"
    assert rel_rms(u0, u1) <= mem_tol
    assert rel_rms(ge0, ge1) <= grad_tol
    if gi0 is not None:
        assert rel_rms(gi0, gi1) <= grad_tol
    if gw0 is not None:
        assert rel_rms(gw0, gw1) <= grad_tol


def readout_for(n, quantise):
    if not quantise:
        return ReadoutParams.ideal(n, device=DEVICE)
    return ReadoutParams(torch.randn(n, device=DEVICE) * 3.0, 0.0, True)


@pytest.mark.parametrize("T,B,N,mismatch,quantise,inh", [
    (1, 1, 1, False, False, False),
    (5, 7, 13, True, True, True),
    (12, 3, 37, False, True, True),
    (9, 7, 1, True, False, True),
    (7, 2, 130, True, True, False),
])
def test_feedforward_matches_twin(T, B, N, mismatch, quantise, inh):
    params, nominal = random_params(N, mismatch)
    x_exc, x_inh = inputs(T, B, N, inh)
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(N, quantise))
    assert ref[0].sum() > 0 or T == 1
    check(ref, tri)


@pytest.mark.parametrize("T,B,N,mismatch,quantise,inh", [
    (1, 2, 3, False, False, True),
    (6, 7, 20, True, True, True),
    (10, 3, 33, False, True, False),
    (5, 7, 70, True, True, True),
    (3, 17, 300, True, False, True),
])
def test_recurrent_matches_twin(T, B, N, mismatch, quantise, inh):
    params, nominal = random_params(N, mismatch)
    x_exc, x_inh = inputs(T, B, N, inh)
    rec = Recurrence(torch.randn(N, N, device=DEVICE) * 0.3, dyadic((N, N)), dyadic((N, N)))
    ref, tri = run_both(x_exc * 0.6, x_inh, params, nominal, readout_for(N, quantise), rec)
    assert ref[0].sum() > 0 or T == 1
    check(ref, tri, grad_tol=TOL["grad_recurrent"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_surrogate_matches_twin(kind):
    params, nominal = random_params(11, True)
    x_exc, x_inh = inputs(8, 5, 11)
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(11, True),
                        surrogate=Surrogate(kind, 7.0))
    check(ref, tri)


@pytest.mark.parametrize("quantise", [False, True])
def test_li_readout_matches_twin(quantise):
    params, nominal = random_params(10, True)
    x_exc, x_inh = inputs(9, 7, 10)
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(10, quantise), spiking=False)
    check(ref, tri)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_state_in_float32(dtype):
    params, nominal = random_params(9, True)
    x_exc, x_inh = inputs(6, 3, 9, dtype=dtype)
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(9, True))
    assert tri[0].dtype == tri[1].dtype == tri[2].dtype == dtype
    check(ref, tri, grad_tol=TOL["grad_half"], mem_tol=TOL["grad_half"])


def test_float64_inputs_run_in_float64():
    params, nominal = random_params(6, True, torch.float64)
    x_exc, x_inh = inputs(5, 3, 6, dtype=torch.float64)
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(6, False))
    assert tri[1].dtype == torch.float64
    check(ref, tri)


def test_noncontiguous_inputs_are_made_contiguous():
    params, nominal = random_params(8, True)
    x = torch.rand(3, 8, 6, device=DEVICE).permute(2, 0, 1) * 2.5
    assert not x.is_contiguous()
    z0, u0 = cuba_lif(x.contiguous(), params=params, nominal=nominal, backend="triton")
    z1, u1 = cuba_lif(x, params=params, nominal=nominal, backend="triton")
    assert torch.equal(z0, z1) and torch.equal(u0, u1)


def _layer_pair(cls, recurrent=False, **kwargs):
    chips = [Chip(seed=5, noise=False) for _ in range(2)]
    extra = {"recurrent": recurrent} if recurrent else {}
    layers = [cls(c, 12, 9, backend=b, **extra, **kwargs).to(DEVICE)
              for c, b in zip(chips, ("torch", "triton"))]
    layers[1].load_state_dict(layers[0].state_dict())
    return layers


@pytest.mark.parametrize("recurrent", [False, True])
def test_lif_layer_triton_equals_torch(recurrent):
    spikes = (torch.rand(7, 5, 12, device=DEVICE) < 0.5).float()
    outs = []
    for layer in _layer_pair(LIFLayer, recurrent, weight_init=6.0):
        z, u = layer(spikes)
        (z.sum() + (u * torch.linspace(-1, 1, 9, device=DEVICE)).sum()).backward()
        grads = [p.grad for p in layer.parameters()]
        outs.append((z, u, grads))
    (z0, u0, g0), (z1, u1, g1) = outs
    assert z0.sum() > 0
    assert torch.equal(z0, z1)
    assert rel_rms(u0, u1) <= TOL["membrane"]
    for a, b in zip(g0, g1):
        assert rel_rms(a, b) <= TOL["grad_recurrent"]


def test_li_layer_triton_equals_torch():
    spikes = (torch.rand(6, 4, 12, device=DEVICE) < 0.5).float()
    outs = []
    for layer in _layer_pair(LILayer, weight_init=4.0):
        u = layer(spikes)
        u.pow(2).sum().backward()
        outs.append((u, layer.weight.grad))
    assert rel_rms(outs[0][0], outs[1][0]) <= TOL["membrane"]
    assert rel_rms(outs[0][1], outs[1][1]) <= TOL["grad"]


def test_chip_layer_params_match_twin():
    chip = Chip(seed=2, noise=False)
    lp = chip.layer_params(chip.place("h", 4, 25), DEVICE)
    assert not torch.equal(lp.params.v_th, lp.nominal.v_th)
    x_exc, x_inh = inputs(8, 7, 25)
    ref, tri = run_both(x_exc, x_inh, lp.params, lp.nominal, lp.readout)
    check(ref, tri)


@pytest.mark.parametrize("recurrent", [False, True])
def test_small_tiles_give_the_same_result(monkeypatch, recurrent):
    """Many programs and many K tiles (the GPU's tiling) equal one wide block: bit for bit, except
    the recurrent gradient, whose K-tile sums of float weights are ordered differently."""
    T, B, N = 6, 21, 40
    params, nominal = random_params(N, True)
    x_exc, x_inh = inputs(T, B, N)
    rec = None
    if recurrent:
        rec = Recurrence(torch.randn(N, N, device=DEVICE) * 0.3, dyadic((N, N)), dyadic((N, N)))
        x_exc = x_exc * 0.6
    readout = readout_for(N, True)
    results = []
    for blocks in (None, (16, 64, 16, 4) if recurrent else (4, 16, 16, 4)):
        if blocks is not None:
            monkeypatch.setattr(kcl, "_blocks", lambda *_: blocks)
        xe = x_exc.clone().requires_grad_()
        z, u = kcl.fused_cuba_lif(xe, x_inh, params, nominal, readout, rec, 0.0, 0)
        (z.sum() + u.sum()).backward()
        results.append((z, u, xe.grad))
    (z0, u0, g0), (z1, u1, g1) = results
    assert torch.equal(z0, z1) and torch.equal(u0, u1)
    if recurrent:
        assert rel_rms(g0, g1) <= TOL["grad_recurrent"]
    else:
        assert torch.equal(g0, g1)


@cuda_only
@pytest.mark.parametrize("N,recurrent", [(246, False), (4096, False), (186, True), (512, True),
                                         (1024, True)])
def test_compiled_chip_sized_shapes_match_twin(N, recurrent):
    T, B = 50, 37
    params, nominal = random_params(N, True)
    x_exc, x_inh = inputs(T, B, N)
    rec = None
    if recurrent:
        rec = Recurrence(torch.randn(N, N, device=DEVICE) / N ** 0.5, dyadic((N, N), 4, 256.0),
                         dyadic((N, N), 4, 256.0))
        x_exc = x_exc * 0.5
    ref, tri = run_both(x_exc, x_inh, params, nominal, readout_for(N, True), rec)
    assert ref[0].sum() > 0
    check(ref, tri, grad_tol=TOL["grad_recurrent"])
