"""The reference dynamics: hand-written reverse sweep vs autograd, gradcheck, ideal chip = nominal."""
import pytest
import torch

import bss2_backend as bb
from bss2_backend.dynamics import lif_forward
from bss2_backend.surrogates import KINDS, Surrogate

from reference import lif_reference

f64 = torch.float64


def grads(loss, params):
    """Gradients of loss, zeros where it does not depend on a parameter (e.g. T=1: no input yet)."""
    loss = loss + 0.0 * sum(q.sum() for q in params)
    return torch.autograd.grad(loss, params)


def random_params(n, seed=0, ref_steps=2, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)
    return bb.LIFParams(v_leak=r(-0.1, 0.1), v_reset=r(-0.3, 0.0), v_th=r(0.9, 1.1),
                        a_mem=r(0.05, 0.3), a_syn_exc=r(0.05, 0.3), a_syn_inh=r(0.1, 0.4),
                        ref_steps=torch.randint(0, ref_steps + 1, (n,), generator=g, dtype=torch.int32))


def inputs(T, B, N, scale=0.6, seed=1, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    xe = (scale * torch.rand(T, B, N, generator=g, dtype=dtype)).requires_grad_()
    xi = (0.5 * scale * torch.rand(T, B, N, generator=g, dtype=dtype)).requires_grad_()
    return xe, xi


@pytest.mark.parametrize("shape", [(1, 1, 1), (12, 7, 5), (30, 3, 17)])
@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_reverse_sweep_equals_autograd_of_nominal_model(shape, recurrent, kind):
    T, B, N = shape
    p = random_params(N)
    sur = Surrogate(kind, 5.0)
    xe, xi = inputs(T, B, N)
    w = (0.8 * torch.randn(N, N, dtype=f64)).requires_grad_() if recurrent else None
    rec = bb.Recurrence(w, w.detach().clamp(min=0), (-w.detach()).clamp(min=0)) if recurrent else None
    z, u = bb.cuba_lif(xe, xi, params=p, recurrence=rec, surrogate=sur, backend="torch")
    z_ref, u_ref = lif_reference(xe, xi, p, sur, w_rec=w)
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


def test_li_equals_autograd_reference():
    p = random_params(6)
    xe, xi = inputs(20, 4, 6)
    u = bb.li(xe, xi, params=p, backend="torch")
    _, u_ref = lif_reference(xe, xi, p, None, spiking=False)
    assert torch.allclose(u, u_ref, atol=1e-12)
    gu = torch.randn_like(u)
    got = grads((u * gu).sum(), [xe, xi])
    want = grads((u_ref * gu).sum(), [xe, xi])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)


def test_gradcheck_subthreshold_dynamics():
    """Below threshold the model is linear and smooth: gradcheck the whole reverse sweep."""
    p = random_params(4, ref_steps=0)
    xe, xi = inputs(8, 2, 4, scale=0.05)
    f = lambda a, b: bb.cuba_lif(a, b, params=p, backend="torch")[1]
    assert not bb.cuba_lif(xe, xi, params=p, backend="torch")[0].any()
    assert torch.autograd.gradcheck(f, (xe, xi))
    assert torch.autograd.gradcheck(lambda a, b: bb.li(a, b, params=p, backend="torch"), (xe, xi))


@pytest.mark.parametrize("kind", KINDS)
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
    chip = bb.Chip(seed=3, mismatch=0.3, noise=bb.Noise(2.0, 1.0))
    layer = chip.place("l", 20, 9)
    lp = chip.layer_params(layer, dtype=f64)
    xe, xi = inputs(25, 3, 9, scale=0.5)
    sur = Surrogate("superspike", 10.0)
    z, u = bb.cuba_lif(xe, xi, params=lp.params, nominal=lp.nominal, readout=lp.readout,
                       membrane_noise_lsb=1.0, seed=11, surrogate=sur, backend="torch")
    assert 0 < z.sum() < z.numel()
    assert not torch.allclose(lp.params.a_mem, lp.nominal.a_mem)
    nominal_with_chip_clamp = lp.nominal._replace(ref_steps=lp.params.ref_steps)
    _, u_ref = lif_reference(xe, xi, nominal_with_chip_clamp, sur, observed=(z.detach(), u.detach()))
    z_ref, _ = lif_reference(xe, xi, nominal_with_chip_clamp, sur, observed=(z.detach(), u.detach()))
    gz, gu = torch.randn_like(z), torch.randn_like(u)
    got = grads((z * gz).sum() + (u * gu).sum(), [xe, xi])
    want = grads((z_ref * gz).sum() + (u_ref * gu).sum(), [xe, xi])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_ideal_chip_equals_nominal_model():
    chip = bb.Chip.ideal(seed=0)
    layer = bb.LIFLayer(chip, 30, 12).double()
    with torch.no_grad():
        layer.weight.mul_(6.0)
    spikes = (torch.rand(40, 5, 30, dtype=f64) < 0.1).to(f64)
    z, u = layer(spikes)
    lp = chip.layer_params(layer.placement, dtype=f64)
    assert torch.equal(lp.params.v_th, lp.nominal.v_th) and torch.equal(lp.params.a_mem, lp.nominal.a_mem)
    w = layer.weight
    x_e = spikes @ w.clamp(min=0).t()
    x_i = spikes @ (-w).clamp(min=0).t()
    z_ref, u_ref = lif_reference(x_e, x_i, lp.nominal, chip.surrogate)
    assert 0 < z.sum() < z.numel()
    assert torch.equal(z, z_ref)
    assert torch.allclose(u, u_ref, atol=1e-12)
    g = torch.randn_like(u)
    got = grads((u * g).sum() + z.sum(), w)[0]
    want = grads((u_ref * g).sum() + z_ref.sum(), w)[0]
    assert torch.allclose(got, want, atol=1e-10)


def test_refractory_holds_membrane_at_reset():
    p = bb.LIFParams.uniform(1, v_reset=-0.2, a_mem=0.5, a_syn_exc=1.0, ref_steps=3, dtype=f64)
    x = torch.zeros(12, 1, 1, dtype=f64)
    x[0] = 5.0
    z, u = bb.cuba_lif(x, params=p, backend="torch")
    first = int(z[:, 0, 0].nonzero()[0])
    assert torch.all(u[first + 1:first + 4, 0, 0] == -0.2)
    assert z[first + 1:first + 4].sum() == 0


def test_no_grad_graph_per_step():
    """The torch path records one autograd node for the whole time loop."""
    p = bb.LIFParams.uniform(3)
    x = torch.rand(50, 2, 3, requires_grad=True)
    z, u = bb.cuba_lif(x, params=p, backend="torch")
    assert u.grad_fn.next_functions[0][0].variable is x


def test_half_precision_inputs_compute_in_float32():
    p = bb.LIFParams.uniform(4)
    x = torch.rand(10, 2, 4)
    z32, u32 = bb.cuba_lif(x, params=p, backend="torch")
    z16, u16 = bb.cuba_lif(x.to(torch.bfloat16), params=p, backend="torch")
    assert u16.dtype == torch.bfloat16
    assert torch.allclose(u16.float(), lif_forward(x.to(torch.bfloat16), None, p,
                                                   bb.ReadoutParams.ideal(4))[1].to(torch.bfloat16).float())


@pytest.mark.parametrize("recurrent", [False, True])
def test_mirrored_inhibitory_adjoint_equals_autograd(recurrent):
    """Equal nominal exc/inh decays take the mirrored path (g_inh = -g_exc, one recurrent GEMM)."""
    T, B, N = 15, 4, 9
    p = random_params(N)
    p = p._replace(a_syn_inh=p.a_syn_exc.clone())
    sur = Surrogate("superspike", 5.0)
    xe, xi = inputs(T, B, N)
    w = (0.8 * torch.randn(N, N, dtype=f64)).requires_grad_() if recurrent else None
    rec = bb.Recurrence(w, w.detach().clamp(min=0), (-w.detach()).clamp(min=0)) if recurrent else None
    z, u = bb.cuba_lif(xe, xi, params=p, recurrence=rec, surrogate=sur, backend="torch")
    z_ref, u_ref = lif_reference(xe, xi, p, sur, w_rec=w)
    assert torch.equal(z, z_ref) and 0 < z.sum() < z.numel()
    gz, gu = torch.randn_like(z), torch.randn_like(u)
    params = [xe, xi] + ([w] if recurrent else [])
    got = grads((z * gz).sum() + (u * gu).sum(), params)
    want = grads((z_ref * gz).sum() + (u_ref * gu).sum(), params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
