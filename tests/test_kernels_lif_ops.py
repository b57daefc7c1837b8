"""The kernels as torch.library ops (opcheck, torch.compile), backend dispatch and bad input."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bss2_backend import LIFParams, ReadoutParams, Recurrence, Surrogate
from bss2_backend.kernels import cuba_lif as kcl
from bss2_backend.kernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N = 5


def params(n=N, **kw):
    return LIFParams.uniform(n, a_mem=0.2, a_syn_exc=0.3, ref_steps=1, device=DEVICE, **kw)


def fwd_args(recurrent, spiking=True, x_inh=True):
    p = params()
    par, ref = kcl.pack_params(p, torch.float32)
    x = (torch.rand(4, 3, N, device=DEVICE) * 2).requires_grad_()
    xi = torch.rand(4, 3, N, device=DEVICE).requires_grad_() if x_inh else None
    w = torch.randn(N, N, device=DEVICE, requires_grad=True) if recurrent else None
    we = torch.rand(N, N, device=DEVICE) if recurrent else None
    wi = torch.rand(N, N, device=DEVICE) if recurrent else None
    return (x, xi, par, ref, torch.randn(N, device=DEVICE), kcl.pack_nominal(p, torch.float32),
            w, we, wi, 0.0, 0.0, True, 45.0, 80.0, 3, spiking, "atan", 4.0)


@pytest.mark.parametrize("recurrent,spiking,x_inh", [
    (False, True, True), (True, True, False), (False, False, True)])
def test_forward_op_passes_opcheck(recurrent, spiking, x_inh):
    torch.library.opcheck(kcl._fwd_op, fwd_args(recurrent, spiking, x_inh))


def test_backward_op_passes_opcheck():
    x, xi, par, ref, off, nom, w, we, wi, *scalars = fwd_args(True)
    z, u, free = kcl._fwd_op(x.detach(), xi.detach(), par, ref, off, nom, None, we, wi, *scalars)
    g = torch.randn_like(u)
    torch.library.opcheck(kcl._bwd_op, (g, g, z, u, free, nom, w.detach(), True, True, "atan", 4.0))


def _loss(x, xi, w):
    p = params()
    rec = Recurrence(w, torch.full((N, N), 0.25, device=DEVICE),
                     torch.full((N, N), 0.125, device=DEVICE))
    ro = ReadoutParams(torch.zeros(N, device=DEVICE), 0.0, True)
    z, u = dispatch.run_lif(x, xi, p, p, ro, rec, 0.0, 3, Surrogate(), True)
    return (z * 2 + u).sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiles_with_fullgraph(backend):
    torch._dynamo.reset()
    x = (torch.rand(4, 3, N, device=DEVICE) * 2).requires_grad_()
    xi = torch.rand(4, 3, N, device=DEVICE).requires_grad_()
    w = torch.randn(N, N, device=DEVICE, requires_grad=True)
    compiled = torch.compile(_loss, fullgraph=True, backend=backend)
    grads = []
    for fn in (_loss, compiled):
        loss = fn(x, xi, w)
        grads.append((loss.detach(),) + torch.autograd.grad(loss, (x, xi, w)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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
        assert "bss2_backend.kernels.dispatch" not in sys.modules
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


def test_run_lif_without_interpreter_raises_clearly():
    code = """
        import torch
        from bss2_backend import LIFParams, ReadoutParams, Surrogate
        from bss2_backend.kernels import dispatch
        p = LIFParams.uniform(3)
        try:
            dispatch.run_lif(torch.rand(4, 2, 3), None, p, p, ReadoutParams.ideal(3), None, 0.0,
                             0, Surrogate(), True)
        except ValueError as e:
            print("ERROR:", e)
    """
    r = _python(code, _env_without_interpreter())
    assert r.returncode == 0, r.stderr
    assert "ERROR:" in r.stdout and "TRITON_INTERPRET=1" in r.stdout


def run(x_exc, x_inh=None, p=None, nominal=None, readout=None, recurrence=None, surrogate=None):
    n = x_exc.shape[-1] if isinstance(x_exc, torch.Tensor) and x_exc.dim() == 3 else N
    p = params(n) if p is None else p
    readout = ReadoutParams.ideal(n, device=DEVICE) if readout is None else readout
    return dispatch.run_lif(x_exc, x_inh, p, p if nominal is None else nominal, readout,
                            recurrence, 0.0, 0, Surrogate() if surrogate is None else surrogate,
                            True)


@pytest.mark.parametrize("make,error,match", [
    (lambda: run(torch.rand(0, 2, N, device=DEVICE)), ValueError, "T, B, N >= 1"),
    (lambda: run(torch.rand(2, N, device=DEVICE)), ValueError, r"\[T, B, N\]"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), torch.rand(3, 2, N + 1, device=DEVICE)),
     ValueError, "x_inh must have shape"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), torch.rand(3, 2, N, device=DEVICE).double()),
     TypeError, "x_inh has dtype"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), torch.rand(3, 2, N, device="meta")),
     ValueError, "x_inh is on meta"),
    (lambda: run(torch.randint(0, 2, (3, 2, N), device=DEVICE)), TypeError, "floating-point"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), p=params(N + 1)), ValueError,
     r"params.v_leak must be a tensor of shape \(5,\)"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), p=params().to(device="meta")), ValueError,
     "params.v_leak is on meta"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), p=params()._replace(
        ref_steps=torch.ones(N, device=DEVICE))), TypeError, "params.ref_steps must have an integer"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), readout=ReadoutParams.ideal(N + 2)),
     ValueError, "readout.offset_lsb must have shape"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), recurrence=Recurrence(
        *(torch.rand(N, N - 1, device=DEVICE),) * 3)), ValueError, "recurrence.weight must have"),
    (lambda: run(torch.rand(3, 2, N, device=DEVICE), surrogate="atan"), TypeError,
     "surrogate must be"),
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
        from bss2_backend.kernels import cuba_lif as k
        def build(fn, sig, cx, recurrent, warps):
            sig = dict(sig, **{c: "constexpr" for c in cx})
            ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx),
                                target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps, "enable_fp_fusion": False,
                                         "num_stages": k._stages(recurrent)})
            assert ck.metadata.shared <= 227 * 1024, (fn.__name__, ck.metadata.shared)
        f = "*fp32"
        fwd = {"x_exc": f, "x_inh": f, "par": f, "ref_steps": "*i32", "offset": f, "w_exc_t": f,
               "w_inh_t": f, "z": f, "u": f, "free": "*u8", "seed": "i32", "sigma_mem": "fp32",
               "sigma_read": "fp32", "unit": "fp32", "zero": "fp32", "inv_unit": "fp32",
               "T": "i32", "B": "i32", "N": "i32"}
        bwd = {"g_z": f, "g_u": f, "z": f, "u": f, "free": "*u8", "nom": f, "w": f, "g_exc": f,
               "g_inh": f, "alpha": "fp32", "T": "i32", "B": "i32", "N": "i32"}
        for n, recurrent in ((246, False), (1024, True)):
            # feed-forward tiles are autotuned on a GPU: the largest config is the one to check
            bb, bn, bk, warps = k._blocks(256, n, True) if recurrent else (*k.FF_CONFIGS[-1][:2], 16, k.FF_CONFIGS[-1][2])
            blocks = dict(BB=bb, BN=bn, BK=bk, PRECISION="tf32x3")
            build(k.cuba_lif_fwd_kernel, fwd, dict(HAS_INH=True, HAS_REC=recurrent, SPIKING=True,
                  QUANTISE=True, MEM_NOISE=True, READ_NOISE=True, **blocks), recurrent, warps)
            build(k.cuba_lif_bwd_kernel, bwd, dict(HAS_GZ=True, HAS_GU=True, HAS_INH=True,
                  HAS_REC=recurrent, SPIKING=True, KIND=0, **blocks), recurrent, warps)
        print("compiled")
    """
    r = _python(code, _env_without_interpreter())
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("no ptxas for the sm_90 target on this machine")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_packed_parameters_are_reused_until_modified():
    p = params(5)
    a = kcl._packed_params(p, torch.float32)
    assert kcl._packed_params(p, torch.float32) is a
    assert kcl._packed_params(p, torch.float64) is not a
    p.v_th.add_(0.5)                       # an in-place change must not be served stale
    b = kcl._packed_params(p, torch.float32)
    assert b is not a and torch.equal(b[0][2], p.v_th)
    q = p._replace(a_mem=p.a_mem.clone())  # another tensor in one field: packed anew
    assert kcl._packed_params(q, torch.float32) is not b
