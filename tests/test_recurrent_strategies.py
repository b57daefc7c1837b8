"""Wide recurrent layers on the fused kernels run per step (a recurrent GEMM of the last spikes,
then the fused neuron update of that step) instead of one launch whose program holds all N
neurons: the same dynamics, noise and in-the-loop gradients as the one-launch kernel (checked
here in the Triton interpreter), chosen by width ("auto") or by hand."""
import pytest
import torch

from bss2_backend import Chip, LIFLayer, Noise
from bss2_backend import dynamics


def _run(strategy, noise=True, B=3, T=14, n_in=10, n=24):
    chip = Chip(seed=5, noise=Noise(readout_lsb=2.0, membrane_lsb=1.0) if noise else False)
    torch.manual_seed(0)
    layer = LIFLayer(chip, n_in, n, recurrent=True, backend="triton")
    with torch.no_grad():
        layer.weight.mul_(4.0)
        layer.weight_rec.mul_(3.0)
    x = (torch.rand(T, B, n_in, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    with dynamics.recurrent_strategy(strategy):
        z, u = layer(x)
    (u * torch.linspace(-1, 1, u.numel()).reshape(u.shape)).sum().backward()
    return z.detach(), u.detach(), layer.weight.grad, layer.weight_rec.grad


@pytest.mark.parametrize("noise", [False, True])
def test_per_step_equals_the_one_launch_kernel(noise):
    z0, u0, g0, r0 = _run("fused", noise)
    z1, u1, g1, r1 = _run("per_step", noise)
    assert float(z0.sum()) > 0
    assert torch.equal(z0, z1)
    torch.testing.assert_close(u1, u0, rtol=0, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=1e-6)


def test_auto_runs_wide_layers_per_step(monkeypatch):
    calls = []
    original = dynamics._recurrent_by_steps
    monkeypatch.setattr(dynamics, "_recurrent_by_steps",
                        lambda *a: calls.append(a[0].shape[-1]) or original(*a))
    monkeypatch.setattr(dynamics, "RECURRENT_FUSED_MAX", 16)
    _run("auto", n=24)
    _run("auto", n=12)
    assert calls == [24]
    with pytest.raises(ValueError, match="strategy"):
        dynamics.recurrent_strategy("sideways")
