"""The chip LIF op (kernels/chip_lif) three ways: naive (step-by-step autograd), reference (the
hand-written twin, backend "torch") and fused (Triton, backend "triton"), values and gradients;
then the op as registered (opcheck, torch.compile) and its front (bss2_backend.cuba_lif / li).

Without a GPU the Triton kernels run in the interpreter (tests/conftest.py); with one, compiled.
Every buffer the implementations allocate is NaN-poisoned (conftest.poisoned)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bss2_backend as bb
from bss2_backend import (Chip, LIFLayer, LILayer, LIFParams, ReadoutParams, Recurrence, Surrogate,
                          cuba_lif, li)
from bss2_backend.dynamics import config as op_config, pack
import bss2_backend.kernels.chip_lif as op
from bss2_backend.kernels.chip_lif import naive
from bss2_backend.kernels.op import flatten
from bss2_backend.surrogates import KIND_IDS
from op_testing import DEVICE, TOL, compare, cuda_only

f64 = torch.float64


@pytest.fixture(autouse=True)
def _poison(poisoned):
    yield


# --- inputs -------------------------------------------------------------------------------------
def random_params(n, mismatch, dtype=torch.float32, device=DEVICE):
    """Chip parameters with per-neuron spread (mismatch) or uniform ones, and the nominal model."""
    nominal = LIFParams.uniform(n, v_reset=-0.1, a_mem=0.2, a_syn_exc=0.3, a_syn_inh=0.25,
                                ref_steps=1, dtype=dtype, device=device)
    if not mismatch:
        return nominal, nominal
    r = lambda lo, hi: torch.empty(n, dtype=dtype, device=device).uniform_(lo, hi)
    params = LIFParams(r(-0.1, 0.1), r(-0.3, 0.0), r(0.85, 1.15), r(0.05, 0.4), r(0.1, 0.6),
                       r(0.1, 0.6), torch.randint(0, 4, (n,), dtype=torch.int32, device=device))
    return params, nominal


def float64_params(n, seed=0, ref_steps=2):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=f64)
    return LIFParams(v_leak=r(-0.1, 0.1), v_reset=r(-0.3, 0.0), v_th=r(0.9, 1.1),
                     a_mem=r(0.05, 0.3), a_syn_exc=r(0.05, 0.3), a_syn_inh=r(0.1, 0.4),
                     ref_steps=torch.randint(0, ref_steps + 1, (n,), generator=g, dtype=torch.int32))


def float64_inputs(T, B, N, scale=0.6, seed=1):
    g = torch.Generator().manual_seed(seed)
    xe = (scale * torch.rand(T, B, N, generator=g, dtype=f64)).requires_grad_()
    xi = (0.5 * scale * torch.rand(T, B, N, generator=g, dtype=f64)).requires_grad_()
    return xe, xi


def dyadic(shape, hi=8, scale=32.0):
    """Non-negative weights k/scale: sums of them are exact in any order, so spikes stay exact."""
    return torch.randint(0, hi, shape, device=DEVICE).float() / scale


def inputs(T, B, N, inh=True, dtype=torch.float32):
    x_exc = (torch.rand(T, B, N, device=DEVICE) * 2.5).to(dtype)
    x_inh = (torch.rand(T, B, N, device=DEVICE) * 0.8).to(dtype) if inh else None
    return x_exc, x_inh


def readout_for(n, quantise):
    if not quantise:
        return ReadoutParams.ideal(n, device=DEVICE)
    return ReadoutParams(torch.randn(n, device=DEVICE) * 3.0, 0.0, True)


def grads(loss, params):
    """Gradients of loss, zeros where it does not depend on a parameter (e.g. T=1: no input yet)."""
    loss = loss + 0.0 * sum(q.sum() for q in params)
    return torch.autograd.grad(loss, params)


# --- the three forms run alike ------------------------------------------------------------------
def run(form, x_exc, x_inh, params, nominal, readout, recurrence=None, surrogate=Surrogate(),
        spiking=True):
    """Forward + backward of one fixed random cotangent through `form`: "naive" (the nominal model
    with the chip's observables injected: the in-the-loop rule by autograd), "torch" or "triton".
    Returns {z, u, g_exc, g_inh, g_w}."""
    g = torch.Generator(device="cpu").manual_seed(1)
    g_z = torch.randn(x_exc.shape, generator=g).to(DEVICE)
    g_u = torch.randn(x_exc.shape, generator=g).to(DEVICE)
    xe = x_exc.detach().clone().requires_grad_()
    xi = None if x_inh is None else x_inh.detach().clone().requires_grad_()
    rec = None
    if recurrence is not None:
        rec = recurrence._replace(weight=recurrence.weight.detach().clone().requires_grad_())
    if form == "naive":
        # the chip's observables, then the nominal model's graph at them
        chip_z, chip_u = run_forward(x_exc, x_inh, params, nominal, readout, recurrence,
                                     surrogate, spiking)
        held_from = nominal._replace(ref_steps=params.ref_steps)
        w = None if rec is None else rec.weight
        z, u = naive.chip_lif(xe.float() if xe.dtype != f64 else xe,
                              None if xi is None else (xi.float() if xi.dtype != f64 else xi),
                              held_from, surrogate=surrogate.id, alpha=surrogate.alpha,
                              recurrence=w, spiking=spiking, observed=(chip_z, chip_u))
    elif spiking:
        z, u = cuba_lif(xe, xi, params=params, nominal=nominal, readout=readout, recurrence=rec,
                        surrogate=surrogate, backend=form)
    else:
        z, u = None, li(xe, xi, params=params, nominal=nominal, readout=readout, backend=form)
    loss = (u.float() * g_u).sum() + ((z.float() * g_z).sum() if spiking else 0)
    # zero where the loss does not depend on an input (T = 1: no input has reached v yet)
    leaves = [t for t in (xe, xi, None if rec is None else rec.weight) if t is not None]
    (loss + 0.0 * sum(t.sum() for t in leaves)).backward()
    return {"z": None if not spiking else z.detach().to(x_exc.dtype), "u": u.detach().to(x_exc.dtype),
            "g_exc": xe.grad, "g_inh": None if xi is None else xi.grad,
            "g_w": None if rec is None else rec.weight.grad}


def run_forward(x_exc, x_inh, params, nominal, readout, recurrence, surrogate, spiking):
    with torch.no_grad():
        if spiking:
            z, u = cuba_lif(x_exc.float() if x_exc.dtype != f64 else x_exc,
                            None if x_inh is None else x_inh.to(x_exc.float().dtype if x_exc.dtype != f64 else f64),
                            params=params, nominal=nominal, readout=readout,
                            recurrence=recurrence, surrogate=surrogate, backend="torch")
        else:
            u = li(x_exc, x_inh, params=params, nominal=nominal, readout=readout, backend="torch")
            z = torch.zeros_like(u)
    return z, u


def three_ways(*args, grad_tol=TOL["grad"], mem_tol=TOL["membrane"], naive_too=True, **kwargs):
    ref = run("torch", *args, **kwargs)
    compare(ref, run("triton", *args, **kwargs), values=mem_tol, grads=grad_tol, exact=("z",))
    if naive_too:
        compare(ref, run("naive", *args, **kwargs), values=mem_tol, grads=grad_tol, exact=("z",))
    return ref


@pytest.mark.parametrize("T,B,N,mismatch,quantise,inh", [
    (1, 1, 1, False, False, False),
    (5, 7, 13, True, True, True),
    (12, 3, 37, False, True, True),
    (9, 7, 1, True, False, True),
    (7, 2, 130, True, True, False),
])
def test_feedforward_three_ways(T, B, N, mismatch, quantise, inh):
    params, nominal = random_params(N, mismatch)
    x_exc, x_inh = inputs(T, B, N, inh)
    ref = three_ways(x_exc, x_inh, params, nominal, readout_for(N, quantise))
    assert ref["z"].sum() > 0 or T == 1


@pytest.mark.parametrize("T,B,N,mismatch,quantise,inh", [
    (1, 2, 3, False, False, True),
    (6, 7, 20, True, True, True),
    (10, 3, 33, False, True, False),
    (5, 7, 70, True, True, True),
    (3, 17, 300, True, False, True),
])
def test_recurrent_three_ways(T, B, N, mismatch, quantise, inh):
    params, nominal = random_params(N, mismatch)
    x_exc, x_inh = inputs(T, B, N, inh)
    rec = Recurrence(torch.randn(N, N, device=DEVICE) * 0.3, dyadic((N, N)), dyadic((N, N)))
    ref = three_ways(x_exc * 0.6, x_inh, params, nominal, readout_for(N, quantise), rec,
                     grad_tol=TOL["grad_recurrent"], naive_too=N <= 70)
    assert ref["z"].sum() > 0 or T == 1


@pytest.mark.parametrize("kind", sorted(KIND_IDS))
def test_every_surrogate_three_ways(kind):
    params, nominal = random_params(11, True)
    x_exc, x_inh = inputs(8, 5, 11)
    three_ways(x_exc, x_inh, params, nominal, readout_for(11, True),
               surrogate=Surrogate(kind, 7.0))


@pytest.mark.parametrize("quantise", [False, True])
def test_li_readout_three_ways(quantise):
    params, nominal = random_params(10, True)
    x_exc, x_inh = inputs(9, 7, 10)
    three_ways(x_exc, x_inh, params, nominal, readout_for(10, quantise), spiking=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_state_in_float32(dtype):
    params, nominal = random_params(9, True)
    x_exc, x_inh = inputs(6, 3, 9, dtype=dtype)
    readout = readout_for(9, True)
    ref, tri = (run(f, x_exc, x_inh, params, nominal, readout) for f in ("torch", "triton"))
    compare(ref, tri, values=TOL["grad_half"], grads=TOL["grad_half"], exact=("z",))
    z, u = cuba_lif(x_exc, x_inh, params=params, nominal=nominal, backend="triton")
    assert z.dtype == u.dtype == dtype
    # the twin computes in float32 too: bf16 in, float32 state, bf16 out
    u32 = cuba_lif(x_exc.float(), x_inh.float(), params=params, nominal=nominal, backend="torch")[1]
    u16 = cuba_lif(x_exc, x_inh, params=params, nominal=nominal, backend="torch")[1]
    assert torch.equal(u16, u32.to(dtype))


def test_float64_inputs_run_in_float64():
    params, nominal = random_params(6, True, f64)
    x_exc, x_inh = inputs(5, 3, 6, dtype=f64)
    three_ways(x_exc, x_inh, params, nominal, readout_for(6, False).to(dtype=f64),
               mem_tol=TOL["float64"], grad_tol=1e-10)
    assert cuba_lif(x_exc, params=params, backend="triton")[1].dtype == f64


# --- reference (twin) against autograd, float64 ---------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (12, 7, 5), (30, 3, 17)])
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("kind", sorted(KIND_IDS))
def test_reverse_sweep_equals_autograd_of_nominal_model(shape, recurrent, kind):
    T, B, N = shape
    p = float64_params(N)
    sur = Surrogate(kind, 5.0)
    xe, xi = float64_inputs(T, B, N)
    w = (0.8 * torch.randn(N, N, dtype=f64)).requires_grad_() if recurrent else None
    rec = Recurrence(w, w.detach().clamp(min=0), (-w.detach()).clamp(min=0)) if recurrent else None
    z, u = cuba_lif(xe, xi, params=p, recurrence=rec, surrogate=sur, backend="torch")
    z_ref, u_ref = naive.chip_lif(xe, xi, p, surrogate=sur.id, alpha=sur.alpha, recurrence=w)
    assert torch.equal(z, z_ref)
    assert torch.allclose(u, u_ref, rtol=0, atol=1e-12)
    if T * B * N > 10:
        assert 0 < z.sum() < z.numel(), "inputs must make some but not all neurons spike"
    gz, gu = torch.randn_like(z), torch.randn_like(u)
    params = [xe, xi] + ([w] if recurrent else [])
    got = grads((z * gz).sum() + (u * gu).sum(), params)
    want = grads((z_ref * gz).sum() + (u_ref * gu).sum(), params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("recurrent", [False, True])
def test_mirrored_inhibitory_adjoint_equals_autograd(recurrent):
    """Equal nominal exc/inh decays take the mirrored path (g_inh = -g_exc, one recurrent GEMM)."""
    T, B, N = 15, 4, 9
    p = float64_params(N)
    p = p._replace(a_syn_inh=p.a_syn_exc.clone())
    sur = Surrogate("superspike", 5.0)
    xe, xi = float64_inputs(T, B, N)
    w = (0.8 * torch.randn(N, N, dtype=f64)).requires_grad_() if recurrent else None
    rec = Recurrence(w, w.detach().clamp(min=0), (-w.detach()).clamp(min=0)) if recurrent else None
    z, u = cuba_lif(xe, xi, params=p, recurrence=rec, surrogate=sur, backend="torch")
    z_ref, u_ref = naive.chip_lif(xe, xi, p, surrogate=sur.id, alpha=sur.alpha, recurrence=w)
    assert torch.equal(z, z_ref) and 0 < z.sum() < z.numel()
    gz, gu = torch.randn_like(z), torch.randn_like(u)
    params = [xe, xi] + ([w] if recurrent else [])
    got = grads((z * gz).sum() + (u * gu).sum(), params)
    want = grads((z_ref * gz).sum() + (u_ref * gu).sum(), params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_li_equals_autograd_reference():
    p = float64_params(6)
    xe, xi = float64_inputs(20, 4, 6)
    u = li(xe, xi, params=p, backend="torch")
    _, u_ref = naive.chip_lif(xe, xi, p, spiking=False)
    assert torch.allclose(u, u_ref, atol=1e-12)
    gu = torch.randn_like(u)
    got = grads((u * gu).sum(), [xe, xi])
    want = grads((u_ref * gu).sum(), [xe, xi])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)


def test_gradcheck_subthreshold_dynamics():
    """Below threshold the model is linear and smooth: gradcheck the whole reverse sweep."""
    p = float64_params(4, ref_steps=0)
    xe, xi = float64_inputs(8, 2, 4, scale=0.05)
    f = lambda a, b: cuba_lif(a, b, params=p, backend="torch")[1]
    assert not cuba_lif(xe, xi, params=p, backend="torch")[0].any()
    assert torch.autograd.gradcheck(f, (xe, xi))
    assert torch.autograd.gradcheck(lambda a, b: li(a, b, params=p, backend="torch"), (xe, xi))


@pytest.mark.parametrize("kind", sorted(KIND_IDS))
def test_gradcheck_surrogate_against_its_primitive(kind):
    """grad(u) is the true derivative of primitive(u): validates each surrogate formula."""
    sur = Surrogate(kind, 3.0)

    class Smooth(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            ctx.save_for_backward(u)
            return sur.primitive(u)

        @staticmethod
        def backward(ctx, g):
            return g * sur.grad(ctx.saved_tensors[0])

    u = (torch.linspace(-1.3, 1.1, 41, dtype=f64) + 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(Smooth.apply, (u,))


def test_superspike_formula():
    s = Surrogate("superspike", 50.0)
    u = torch.tensor([0.0, 0.02, -0.02, 1.0], dtype=f64)
    assert torch.allclose(s.grad(u), 1 / (50 * u.abs() + 1) ** 2)
    assert s.grad(torch.tensor(0.0)) == 1.0


def test_in_the_loop_backward_uses_nominal_model_at_observed_membrane():
    """Mismatched, noisy, quantised chip: the gradient equals the nominal model's graph with the
    chip's spikes and read membrane injected (hxtorch's rule), never the chip's true parameters."""
    chip = Chip(seed=3, mismatch=0.3, noise=bb.Noise(2.0, 1.0))
    layer = chip.place("l", 20, 9)
    lp = chip.layer_params(layer, dtype=f64)
    xe, xi = float64_inputs(25, 3, 9, scale=0.5)
    sur = Surrogate("superspike", 10.0)
    z, u = cuba_lif(xe, xi, params=lp.params, nominal=lp.nominal, readout=lp.readout,
                    membrane_noise_lsb=1.0, seed=11, surrogate=sur, backend="torch")
    assert 0 < z.sum() < z.numel()
    assert not torch.allclose(lp.params.a_mem, lp.nominal.a_mem)
    nominal_with_chip_clamp = lp.nominal._replace(ref_steps=lp.params.ref_steps)
    z_ref, u_ref = naive.chip_lif(xe, xi, nominal_with_chip_clamp, surrogate=sur.id,
                                  alpha=sur.alpha, observed=(z.detach(), u.detach()))
    gz, gu = torch.randn_like(z), torch.randn_like(u)
    got = grads((z * gz).sum() + (u * gu).sum(), [xe, xi])
    want = grads((z_ref * gz).sum() + (u_ref * gu).sum(), [xe, xi])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_ideal_chip_equals_nominal_model():
    chip = Chip.ideal(seed=0)
    layer = LIFLayer(chip, 30, 12).double()
    with torch.no_grad():
        layer.weight.mul_(6.0)
    spikes = (torch.rand(40, 5, 30, dtype=f64) < 0.1).to(f64)
    z, u = layer(spikes)
    lp = chip.layer_params(layer.placement, dtype=f64)
    assert torch.equal(lp.params.v_th, lp.nominal.v_th) and torch.equal(lp.params.a_mem, lp.nominal.a_mem)
    w = layer.weight
    x_e = spikes @ w.clamp(min=0).t()
    x_i = spikes @ (-w).clamp(min=0).t()
    sur = chip.surrogate
    z_ref, u_ref = naive.chip_lif(x_e, x_i, lp.nominal, surrogate=sur.id, alpha=sur.alpha)
    assert 0 < z.sum() < z.numel()
    assert torch.equal(z, z_ref)
    assert torch.allclose(u, u_ref, atol=1e-12)
    g = torch.randn_like(u)
    got = grads((u * g).sum() + z.sum(), w)[0]
    want = grads((u_ref * g).sum() + z_ref.sum(), w)[0]
    assert torch.allclose(got, want, atol=1e-10)


def test_refractory_holds_membrane_at_reset():
    p = LIFParams.uniform(1, v_reset=-0.2, a_mem=0.5, a_syn_exc=1.0, ref_steps=3, dtype=f64)
    x = torch.zeros(12, 1, 1, dtype=f64)
    x[0] = 5.0
    for backend in ("torch", "triton"):
        z, u = cuba_lif(x.to(DEVICE), params=p.to(DEVICE), backend=backend)
        first = int(z[:, 0, 0].nonzero()[0])
        assert torch.all(u[first + 1:first + 4, 0, 0] == -0.2)
        assert z[first + 1:first + 4].sum() == 0


def test_no_grad_graph_per_step():
    """The torch path records one autograd node for the whole time loop."""
    p = LIFParams.uniform(3)
    x = torch.rand(50, 2, 3, requires_grad=True)
    z, u = cuba_lif(x, params=p, backend="torch")
    node = u.grad_fn
    assert type(node).__name__ == "chip_lif_eagerBackward", type(node).__name__
    assert any(getattr(f, "variable", None) is x for f, _ in node.next_functions)


# --- the fused kernels: tiling, layers, chip-sized shapes ----------------------------------------
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
        outs.append({"z": z, "u": u, **{f"g_{n}": p.grad for n, p in layer.named_parameters()}})
    assert outs[0]["z"].sum() > 0
    compare(*outs, grads=TOL["grad_recurrent"], exact=("z",))


def test_li_layer_triton_equals_torch():
    spikes = (torch.rand(6, 4, 12, device=DEVICE) < 0.5).float()
    outs = []
    for layer in _layer_pair(LILayer, weight_init=4.0):
        u = layer(spikes)
        u.pow(2).sum().backward()
        outs.append({"u": u, "g_w": layer.weight.grad})
    compare(*outs)


def test_chip_layer_params_three_ways():
    chip = Chip(seed=2, noise=False)
    lp = chip.layer_params(chip.place("h", 4, 25), DEVICE)
    assert not torch.equal(lp.params.v_th, lp.nominal.v_th)
    x_exc, x_inh = inputs(8, 7, 25)
    three_ways(x_exc, x_inh, lp.params, lp.nominal, lp.readout)


@pytest.mark.parametrize("recurrent", [False, True])
def test_small_tiles_give_the_same_result(monkeypatch, recurrent):
    """Many programs and many K tiles (the GPU's tiling) equal one wide block: bit for bit, except
    the recurrent gradient, whose K-tile sums of float weights are ordered differently."""
    from bss2_backend.kernels.chip_lif import triton as fused
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
            monkeypatch.setattr(fused, "_blocks", lambda *_: blocks)
        xe = x_exc.clone().requires_grad_()
        z, u = cuba_lif(xe, x_inh, params=params, nominal=nominal, readout=readout,
                        recurrence=rec, backend="triton")
        (z.sum() + u.sum()).backward()
        results.append({"z": z, "u": u, "g_exc": xe.grad})
    exact = ("z", "u") if recurrent else ("z", "u", "g_exc")
    compare(*results, grads=TOL["grad_recurrent"], exact=exact)


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
    ref = three_ways(x_exc, x_inh, params, nominal, readout_for(N, True), rec,
                     grad_tol=TOL["grad_recurrent"], naive_too=False)
    assert ref["z"].sum() > 0


# --- the registered op ----------------------------------------------------------------------------
N = 5


def _op_args(impl, recurrent, spiking=True, x_inh=True, state=False):
    p = LIFParams.uniform(N, a_mem=0.2, a_syn_exc=0.3, ref_steps=1, device=DEVICE)
    packed = pack(p, p, ReadoutParams(torch.randn(N, device=DEVICE), 0.0, True), torch.float32,
                  DEVICE)
    x = (torch.rand(4, 3, N, device=DEVICE) * 2).requires_grad_()
    xi = torch.rand(4, 3, N, device=DEVICE).requires_grad_() if x_inh else None
    w = torch.randn(N, N, device=DEVICE, requires_grad=True) if recurrent else None
    we = torch.rand(N, N, device=DEVICE) if recurrent else None
    wi = torch.rand(N, N, device=DEVICE) if recurrent else None
    cfg = op_config(ReadoutParams(torch.zeros(N), 0.0, True), 0.0, Surrogate("atan", 4.0),
                    spiking, False)._replace(has_inh=x_inh or recurrent, has_state=state)
    s0 = [None] * 5
    if state:
        rnd = lambda: torch.rand(3, N, device=DEVICE).requires_grad_()
        s0 = [rnd(), rnd(), rnd(), torch.randint(0, 2, (3, N), dtype=torch.int32, device=DEVICE),
              (torch.rand(3, N, device=DEVICE) < 0.5).float().requires_grad_()]
    return (x, xi, *packed, w, we, wi, torch.tensor(3), torch.tensor(7), *s0, *flatten(cfg),
            impl), cfg


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("recurrent,spiking,x_inh,state", [
    (False, True, True, False), (True, True, False, False), (False, False, True, False),
    (True, True, True, True), (False, False, False, True)])
def test_forward_op_passes_opcheck(impl, recurrent, spiking, x_inh, state):
    args, _ = _op_args(impl, recurrent, spiking, x_inh, state)
    torch.library.opcheck(op.OP.fwd, args)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("state", [False, True])
def test_backward_op_passes_opcheck(impl, state):
    args, cfg = _op_args(impl, True, state=state)
    z, u, v, ie, ii, free, ref = op.OP.fwd(
        *(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    g = torch.randn_like(u)
    g_state = [torch.randn_like(v) for _ in range(3)] if state else [None] * 3
    nom, w, z0 = args[5], args[6].detach(), None if args[15] is None else args[15].detach()
    torch.library.opcheck(op.OP.bwd, (z, u, free, nom, w, z0, g, g, *g_state, *flatten(cfg),
                                      impl))


def _loss(x, xi, w):
    p = LIFParams.uniform(N, a_mem=0.2, a_syn_exc=0.3, ref_steps=1, device=DEVICE)
    rec = Recurrence(w, torch.full((N, N), 0.25, device=DEVICE),
                     torch.full((N, N), 0.125, device=DEVICE))
    ro = ReadoutParams(torch.zeros(N, device=DEVICE), 0.0, True)
    z, u = cuba_lif(x, xi, params=p, readout=ro, recurrence=rec, seed=3, backend="triton")
    return (z * 2 + u).sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiles_with_fullgraph(backend):
    torch._dynamo.reset()
    x = (torch.rand(4, 3, N, device=DEVICE) * 2).requires_grad_()
    xi = torch.rand(4, 3, N, device=DEVICE).requires_grad_()
    w = torch.randn(N, N, device=DEVICE, requires_grad=True)
    compiled = torch.compile(_loss, fullgraph=True, backend=backend)
    results = []
    for fn in (_loss, compiled):
        loss = fn(x, xi, w)
        results.append(dict(zip(("loss", "g_x", "g_xi", "g_w"),
                                (loss.detach(),) + torch.autograd.grad(loss, (x, xi, w)))))
    compare(*results, values=1e-5, grads=1e-5)


def _python(code, env, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _env_without_interpreter():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def test_torch_and_auto_backends_never_import_triton():
    code = """
        import sys
        import torch
        from bss2_backend import Chip, LIFLayer, LILayer, LIFParams, cuba_lif, li
        x = torch.rand(4, 2, 3)
        p = LIFParams.uniform(3)
        for backend in ("torch", "auto"):
            cuba_lif(x, params=p, backend=backend)[1].sum()
            li(x, params=p, backend=backend)
        chip = Chip(seed=0)
        z, u = LIFLayer(chip, 3, 4, recurrent=True)(x)
        LILayer(chip, 4, 2)(z).sum().backward()
        assert "triton" not in sys.modules, "triton was imported"
        assert "bss2_backend.kernels.chip_lif.triton" not in sys.modules
        print("clean")
    """
    r = _python(code, _env_without_interpreter())
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


def test_triton_backend_on_cpu_without_interpreter_raises_clearly():
    code = """
        import torch
        from bss2_backend import LIFParams, cuba_lif
        try:
            cuba_lif(torch.rand(4, 2, 3), params=LIFParams.uniform(3), backend="triton")
        except ValueError as e:
            print("ERROR:", e)
    """
    r = _python(code, _env_without_interpreter())
    assert r.returncode == 0, r.stderr
    assert "ERROR:" in r.stdout and "TRITON_INTERPRET=1" in r.stdout and "cpu" in r.stdout


@pytest.mark.parametrize("make,error,match", [
    (lambda: cuba_lif(torch.rand(0, 2, N, device=DEVICE), params=LIFParams.uniform(N),
                      backend="triton"), ValueError, "T, B, N >= 1"),
    (lambda: cuba_lif(torch.rand(2, N, device=DEVICE), params=LIFParams.uniform(N),
                      backend="triton"), ValueError, "x_exc must have 3 dimensions"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), torch.rand(3, 2, N + 1, device=DEVICE),
                      params=LIFParams.uniform(N), backend="triton"), ValueError,
     "x_inh must have shape"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), torch.rand(3, 2, N, device="meta"),
                      params=LIFParams.uniform(N), backend="triton"), ValueError, "meta"),
    (lambda: cuba_lif(torch.randint(0, 2, (3, 2, N), device=DEVICE), params=LIFParams.uniform(N),
                      backend="triton"), TypeError, "floating-point"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N + 1),
                      backend="triton"), ValueError, r"params.v_leak must be a tensor of shape \(5,\)"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N).to("meta"),
                      backend="triton"), ValueError, "params.v_leak is on the meta device"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N)._replace(
        ref_steps=torch.ones(N)), backend="triton"), TypeError, "params.ref_steps must have an integer"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N),
                      readout=ReadoutParams.ideal(N + 2), backend="triton"),
     ValueError, "readout.offset_lsb must have shape"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N),
                      recurrence=Recurrence(*(torch.rand(N, N - 1),) * 3), backend="triton"),
     ValueError, "recurrence.weight must have"),
    (lambda: cuba_lif(torch.rand(3, 2, N, device=DEVICE), params=LIFParams.uniform(N),
                      surrogate=42, backend="triton"), TypeError, "surrogate must be"),
    (lambda: op.chip_lif(torch.rand(3, 2, N), None, *[None] * 4, None, 0, impl="cuda"),
     ValueError, "impl='cuda'; choose one of"),
])
def test_bad_input_raises_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_kernels_compile_for_sm90_within_shared_memory():
    """Ahead-of-time compilation for an H100 (no GPU needed): catches what the interpreter
    accepts but the compiler refuses (dot shapes, layouts) and shared memory over 227 KB."""
    code = """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from bss2_backend.kernels.chip_lif import triton as k
        from bss2_backend.kernels import surrogate as sg
        def build(fn, sig, cx, recurrent, warps):
            sig = dict(sig, **{c: "constexpr" for c in cx})
            ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx),
                                target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps, "enable_fp_fusion": False,
                                         "num_stages": k._stages(recurrent)})
            assert ck.metadata.shared <= 227 * 1024, (fn.__name__, ck.metadata.shared)
        f = "*fp32"
        fwd = {"x_exc": f, "x_inh": f, "par": f, "ref_steps": "*i32", "offset": f, "w_exc_t": f,
               "w_inh_t": f, "v0": f, "ie0": f, "ii0": f, "ref0": "*i32", "z0": f, "z": f, "u": f,
               "free": "*u8", "v_out": f, "ie_out": f, "ii_out": f, "ref_out": "*i32",
               "seed": "i64", "seed_ptr": "*i64", "noise_base": "i64", "sigma_mem": "fp32", "sigma_read": "fp32",
               "unit": "fp32", "zero": "fp32", "inv_unit": "fp32", "T": "i32", "B": "i32",
               "N": "i32"}
        bwd = {"g_z": f, "g_u": f, "z": f, "u": f, "free": "*u8", "nom": f, "w": f, "g_vT": f,
               "g_ieT": f, "g_iiT": f, "g_exc": f, "g_inh": f, "g_v0": f, "g_ie0": f, "g_ii0": f,
               "g_z0": f, "alpha": "fp32", "T": "i32", "B": "i32", "N": "i32"}
        for n, recurrent in ((246, False), (1024, True)):
            # feed-forward tiles are autotuned on a GPU: the largest config is the one to check
            bb, bn, bk, warps = k._blocks(256, n, True) if recurrent else (*k.FF_CONFIGS[-1][:2], 16, k.FF_CONFIGS[-1][2])
            blocks = dict(BB=bb, BN=bn, BK=bk, PRECISION="tf32x3")
            for state in (False, True):
                build(k.chip_lif_fwd_kernel, fwd, dict(HAS_INH=True, HAS_REC=recurrent,
                      SPIKING=True, QUANTISE=True, MEM_NOISE=True, READ_NOISE=True,
                      HAS_STATE=state, SEED_PTR=state, **blocks), recurrent, warps)
            for kind in range(len(sg.NAMES)):
                build(k.chip_lif_bwd_kernel, bwd, dict(HAS_GZ=True, HAS_GU=True, HAS_INH=True,
                      HAS_REC=recurrent, SPIKING=True, KIND=kind, HAS_GSTATE=kind == 1,
                      STATE_GRADS=kind == 1, **blocks), recurrent, warps)
        print("compiled")
    """
    r = _python(code, _env_without_interpreter())
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("no ptxas for the sm_90 target on this machine")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_a_chip_packs_each_layer_once():
    chip = Chip(seed=1)
    layer = LIFLayer(chip, 6, 4)
    a = chip.packed(layer.placement, DEVICE, torch.float32)
    assert chip.packed(layer.placement, DEVICE, torch.float32) is a
    assert chip.packed(layer.placement, DEVICE, f64) is not a
    lp = chip.layer_params(layer.placement, DEVICE)
    assert torch.equal(a.par[op.PARAM_ROWS.index("v_th")], lp.params.v_th)
    assert torch.equal(a.nom[op.NOMINAL_ROWS.index("a_mem")], lp.nominal.a_mem)
    assert a.ref.dtype == torch.int32 and torch.equal(a.offset, lp.readout.offset_lsb)


def test_the_kernels_cadc_range_is_the_chips():
    assert (op.CADC_MIN, op.CADC_MAX) == (bb.constants.CADC_MIN, bb.constants.CADC_MAX)


# --- a run in pieces: the state carried from call to call ----------------------------------------
def _run_pieces(impl, x_exc, x_inh, packed, cfg, rec, pieces, seed=5):
    state, step, zs, us = None, 0, [], []
    for n in pieces:
        z, u, state = op.chip_lif(x_exc[step:step + n], None if x_inh is None else x_inh[step:step + n],
                                  *packed, cfg, seed, recurrence=rec, impl=impl, state=state,
                                  step=step)
        zs.append(z)
        us.append(u)
        step += n
    return torch.cat(zs), torch.cat(us)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("recurrent,spiking,pieces", [
    (False, True, (1, 1, 1, 1, 1, 1, 1, 1)), (False, True, (3, 5)), (True, True, (1,) * 8),
    (True, True, (2, 1, 5)), (False, False, (4, 1, 3))])
def test_a_run_in_pieces_equals_the_run_whole(impl, recurrent, spiking, pieces):
    """Noise on: the same seed gives the same noise per (step, neuron) however the run is split,
    so spikes and membranes are equal bit for bit, and so are the gradients of the inputs (the
    recurrent weight's sums are grouped differently)."""
    T, B, N = sum(pieces), 5, 12
    params, nominal = random_params(N, True)
    readout = ReadoutParams(torch.randn(N, device=DEVICE) * 3.0, 2.0, True)
    packed = pack(params, nominal, readout, torch.float32, DEVICE)
    cfg = op_config(readout, 1.5, Surrogate("superspike", 8.0), spiking, False)
    x_exc, x_inh = inputs(T, B, N)
    if recurrent:
        x_exc = x_exc * 0.6
    results = []
    for split in ((T,), pieces):
        xe, xi = x_exc.clone().requires_grad_(), x_inh.clone().requires_grad_()
        w = rec = None
        if recurrent:
            torch.manual_seed(3)
            w = (torch.randn(N, N, device=DEVICE) * 0.3).requires_grad_()
            rec = (w, torch.full((N, N), 0.125, device=DEVICE),
                   torch.full((N, N), 0.0625, device=DEVICE))
        z, u = _run_pieces(impl, xe, xi, packed, cfg, rec, split)
        g = torch.Generator().manual_seed(9)
        loss = (u * torch.randn(u.shape, generator=g).to(DEVICE)).sum() + \
            (z * torch.randn(z.shape, generator=g).to(DEVICE)).sum()
        leaves = [xe, xi] + ([w] if recurrent else [])
        grads = torch.autograd.grad(loss, leaves)
        results.append({"z": z, "u": u, "g_exc": grads[0], "g_inh": grads[1],
                        "g_w": grads[2] if recurrent else None})
    assert results[0]["z"].sum() > 0 or not spiking
    compare(*results, grads=TOL["grad_recurrent"], exact=("z", "u"))
    torch.testing.assert_close(results[1]["g_exc"], results[0]["g_exc"], rtol=1e-6, atol=1e-7)
