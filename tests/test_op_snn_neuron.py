"""The snntorch neuron op (kernels/snn_neuron) three ways: naive (step-by-step autograd),
reference (the hand-written twin, impl "torch") and fused (Triton): values and gradients with
NaN-poisoned outputs; then the op as registered (opcheck, torch.compile) and through the snntorch
integration. Without a GPU the kernels run in the Triton interpreter (tests/conftest.py), so
shapes stay small."""
import os

import pytest
import torch

import bss2_backend.kernels.snn_neuron as op
from bss2_backend.kernels import surrogate as sg
from bss2_backend.kernels.op import flatten
from bss2_backend.kernels.snn_neuron import REC_DENSE, REC_EXTERNAL, REC_NONE, REC_ONE_TO_ONE, \
    RESET_NONE, RESET_SUB, RESET_ZERO, NeuronSpec, naive, snn_neuron

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs CUDA or the Triton interpreter")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)
# snntorch's surrogates (kernels.surrogate ids) and a parameter for each
SURROGATES = (sg.ZERO, sg.ATAN, sg.SUPERSPIKE, sg.SNNTORCH_SIGMOID, sg.STRAIGHT_THROUGH,
              sg.SNNTORCH_TRIANGULAR)
SURROGATE_PARAM = {sg.ZERO: 0.0, sg.ATAN: 2.0, sg.SUPERSPIKE: 5.0, sg.SNNTORCH_SIGMOID: 5.0,
                   sg.STRAIGHT_THROUGH: 0.0, sg.SNNTORCH_TRIANGULAR: 0.7}


def _inputs(spec, T, S, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(DEVICE).requires_grad_()
    n = S[-1]
    return dict(
        x=rnd(T, *S, scale=1.2), u0=rnd(*S),
        i0=rnd(*S) if spec.synaptic else None,
        s0=(torch.rand(*S, generator=g) > 0.5).float().to(DEVICE).requires_grad_()
        if spec.rec in (REC_ONE_TO_ONE, REC_DENSE) else None,
        beta=torch.rand(n, generator=g).mul(0.9).to(DEVICE).requires_grad_(),
        alpha=torch.tensor(0.7, device=DEVICE, requires_grad=True) if spec.synaptic else None,
        theta=torch.rand(n, generator=g).add(0.5).to(DEVICE).requires_grad_(),
        g=torch.tensor(1.5, device=DEVICE, requires_grad=True),
        r=rnd(T, *S) if spec.rec == REC_EXTERNAL else None,
        v=rnd(n) if spec.rec == REC_ONE_TO_ONE else None,
        w=rnd(n, n, scale=0.3) if spec.rec == REC_DENSE else None,
        bias=rnd(n) if spec.rec == REC_DENSE else None)


def _run(spec, form, T, S, seed=0):
    kw = _inputs(spec, T, S, seed)
    x, u0, i0, s0 = kw.pop("x"), kw.pop("u0"), kw.pop("i0"), kw.pop("s0")
    if form == "naive":
        spk, syn, mem = naive.snn_neuron(spec, x, u0, i0, s0, **kw)
    else:
        spk, syn, mem = snn_neuron(spec, x, u0, i0, s0, impl=form, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    cot = lambda t: torch.randn(t.shape, generator=gen).to(DEVICE)
    loss = (spk * cot(spk)).sum() + (mem * cot(mem)).sum()
    if syn is not None:
        loss = loss + (syn * cot(syn)).sum()
    leaves = [t for t in (x, u0, i0, s0, *kw.values()) if t is not None]
    return (spk, syn, mem), torch.autograd.grad(loss + 0.0 * sum(t.sum() for t in leaves), leaves)


def _spec(synaptic, rec, reset, delay, late, surrogate):
    kind = SURROGATES[surrogate]
    return NeuronSpec(synaptic=synaptic, rec=rec, reset=reset,
                      zero_before_decay=not synaptic and rec == REC_NONE, delay=delay,
                      late_reset=late, surrogate=kind, surrogate_param=SURROGATE_PARAM[kind])


CASES = [  # (synaptic, rec, reset, delay, late_reset, surrogate index), T, step shape
    ((False, REC_NONE, RESET_SUB, True, RESET_SUB, 1), 5, (7, 6)),
    ((False, REC_NONE, RESET_ZERO, False, RESET_ZERO, 2), 4, (3, 5)),
    ((False, REC_NONE, RESET_NONE, False, RESET_SUB, 3), 1, (1,)),
    ((True, REC_NONE, RESET_SUB, False, RESET_SUB, 4), 6, (7, 3)),
    ((True, REC_NONE, RESET_ZERO, True, RESET_ZERO, 5), 3, (2, 3, 4)),
    ((False, REC_EXTERNAL, RESET_ZERO, False, RESET_ZERO, 1), 4, (5, 7)),
    ((True, REC_EXTERNAL, RESET_NONE, True, RESET_NONE, 0), 3, (4, 4)),
    ((False, REC_ONE_TO_ONE, RESET_SUB, False, RESET_SUB, 2), 5, (7, 9)),
    ((True, REC_ONE_TO_ONE, RESET_ZERO, True, RESET_ZERO, 1), 4, (3, 5)),
    ((False, REC_DENSE, RESET_SUB, True, RESET_SUB, 1), 5, (7, 9)),
    ((True, REC_DENSE, RESET_ZERO, False, RESET_ZERO, 3), 4, (3, 20)),
    ((True, REC_DENSE, RESET_NONE, True, RESET_NONE, 5), 1, (1, 1)),
]


def _compare(spec, ref, other):
    (out_a, grads_a), (out_b, grads_b) = ref, other
    for a, b in zip(out_a, out_b):
        if a is None:
            assert b is None
            continue
        assert not torch.isnan(b).any()
        if spec.rec == REC_DENSE:   # tl.dot and F.linear sum in other orders
            torch.testing.assert_close(b, a, **VALUE_TOL)
        else:
            assert torch.equal(a, b)
    for a, b in zip(grads_a, grads_b):
        assert not torch.isnan(b).any()
        torch.testing.assert_close(b, a, **GRAD_TOL)


# snntorch's sigmoid surrogate overflows exp() for u < -88/slope; every form follows its formula
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("case,T,S", CASES)
def test_three_ways(case, T, S, poisoned):
    spec = _spec(*case)
    ref = _run(spec, "torch", T, S)
    _compare(spec, ref, _run(spec, "triton", T, S))
    _compare(spec, ref, _run(spec, "naive", T, S))


def test_bad_arguments():
    spec = NeuronSpec()
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="u0 must have the shape"):
        snn_neuron(spec, x, torch.zeros(2, 5), beta=0.9, theta=1.0, g=1.0)
    with pytest.raises(ValueError, match="T >= 1"):
        snn_neuron(spec, x[:0], torch.zeros(2, 4), beta=0.9, theta=1.0, g=1.0)
    with pytest.raises(ValueError, match="beta of shape"):
        snn_neuron(spec, x, torch.zeros(2, 4), beta=torch.ones(3), theta=1.0, g=1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        snn_neuron(spec, x.half(), torch.zeros(2, 4), beta=0.9, theta=1.0, g=1.0)


@pytest.mark.parametrize("dense_max", [128, 4])   # 4: the recurrent GEMM runs step by step
def test_forward_pass_on_the_triton_backend_matches_snntorch(poisoned, monkeypatch, dense_max):
    import copy

    import snntorch as snn
    from snntorch import utils
    from torch import nn

    from bss2_backend.integrations.snntorch import convert, forward_pass, fused
    monkeypatch.setattr(fused, "DENSE_MAX_FEATURES", dense_max)
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Linear(6, 5), snn.RLeaky(0.9, linear_features=5, init_hidden=True),
                          nn.Linear(5, 3), snn.Synaptic(0.8, 0.9, init_hidden=True, output=True))
    ours = convert(copy.deepcopy(stock).to(DEVICE), backend="triton")
    data = torch.rand(4, 3, 6) * 2
    utils.reset(stock)
    outs = [stock(data[t]) for t in range(4)]
    spk_a, mem_a = torch.stack([o[0] for o in outs]), torch.stack([o[-1] for o in outs])
    spk_b, mem_b = forward_pass(ours, 4, data.to(DEVICE))
    assert torch.equal(spk_a, spk_b.cpu())
    torch.testing.assert_close(mem_b.cpu(), mem_a, **VALUE_TOL)
    mem_a.sum().backward()
    mem_b.sum().backward()
    for p, q in zip(stock.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, **GRAD_TOL)


def _op_args(spec, impl, T=3, S=(2, 5)):
    kw = _inputs(spec, T, S, 7)
    expand = lambda t: None if t is None else t.detach().expand(S).contiguous().requires_grad_()
    args = (kw["x"], kw["u0"], kw["i0"], kw["s0"], expand(kw["beta"]), expand(kw["alpha"]),
            expand(kw["theta"]), expand(kw["g"]), kw["r"], expand(kw["v"]), kw["w"], kw["bias"],
            *flatten(spec), impl)
    return op.OP.fwd, args


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("case", [CASES[1][0], CASES[8][0], CASES[9][0]])
def test_op_passes_opcheck(impl, case):
    fwd, args = _op_args(_spec(*case), impl)
    torch.library.opcheck(fwd, args)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_backward_op_passes_opcheck(impl):
    spec = _spec(*CASES[8][0])._replace(need_beta=True, need_alpha=True, need_theta=True,
                                        need_g=True)
    fwd, args = _op_args(spec, impl)
    spk, syn, mem, pre = fwd(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    x, u0, i0, s0, beta, alpha, theta, g, r, v, w, bias = (
        None if a is None else a.detach() for a in args[:12])
    cot = torch.randn_like(mem)
    torch.library.opcheck(op.OP.bwd, (spk, syn, mem, pre, u0, i0, s0, beta, alpha, theta, g, v, w,
                                      cot, cot, cot, *flatten(spec), impl))


def test_op_compiles_fullgraph():
    spec = _spec(*CASES[3][0])
    fwd, args = _op_args(spec, "torch")
    eager = fwd(*args)
    compiled = torch.compile(lambda *a: fwd(*a), backend="aot_eager", fullgraph=True)(*args)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_entry_point_compiles_fullgraph_with_gradients():
    torch._dynamo.reset()
    spec = _spec(*CASES[8][0])

    def f(x, u0, i0, s0, beta, alpha, theta, g, v):
        spk, syn, mem = snn_neuron(spec, x, u0, i0, s0, beta=beta, alpha=alpha, theta=theta, g=g,
                                   v=v, impl="torch")
        return (spk * 0.5 + mem).sum() + syn.sum()
    kw = _inputs(spec, 4, (3, 5), 3)
    args = [kw[k] for k in ("x", "u0", "i0", "s0", "beta", "alpha", "theta", "g", "v")]
    results = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        loss = fn(*args)
        results.append((loss.detach(), *torch.autograd.grad(loss, args)))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **GRAD_TOL)


def test_single_steps_on_the_triton_backend_match_snntorch(poisoned):
    import copy

    import snntorch as snn
    from torch import nn

    from bss2_backend.integrations.snntorch import convert
    torch.manual_seed(0)
    stock = snn.RLeaky(0.9, linear_features=5, reset_mechanism="zero", reset_delay=False,
                       learn_threshold=True)
    ours = convert(nn.Sequential(copy.deepcopy(stock)).to(DEVICE), backend="triton")[0]
    stock = stock.to(DEVICE)    # same device: the recurrent Linear must round alike (cuBLAS != CPU)
    x = torch.randn(3, 4, 5, device=DEVICE) * 2
    out_a = [stock(x[t]) for t in range(3)]
    out_b = [ours(x[t]) for t in range(3)]
    for (sa, ma), (sb, mb) in zip(out_a, out_b):
        assert torch.equal(sa, sb) and torch.equal(ma, mb)
    sum(m.sum() + s.sum() for s, m in out_a).backward()
    sum(m.sum() + s.sum() for s, m in out_b).backward()
    for p, q in zip(stock.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **GRAD_TOL)


AOT_CODE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bss2_backend.kernels.snn_neuron import triton as k
from bss2_backend.kernels import surrogate as sg
f = "*fp32"
def build(fn, cx):
    sig = {n: ("i32" if n in ("T", "M", "N") else "fp32" if n == "surrogate_param" else f)
           for n in fn.arg_names}
    sig.update({c: "constexpr" for c in cx})
    ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": 4, "enable_fp_fusion": False})
    assert ck.metadata.shared <= 227 * 1024, (fn.__name__, ck.metadata.shared)
for syn, rec, reset, delay, late, sur in ((False, 0, 1, True, 1, sg.ATAN),
                                          (True, 1, 0, False, 0, sg.SUPERSPIKE),
                                          (False, 2, 1, False, 1, sg.SNNTORCH_SIGMOID),
                                          (True, 3, 0, True, 0, sg.STRAIGHT_THROUGH),
                                          (False, 3, 2, False, 0, sg.SNNTORCH_TRIANGULAR)):
    bb, bn = (16, 128) if rec == 3 else (4, 256)
    flags = dict(SYNAPTIC=syn, REC=rec, RESET=reset, ZERO_PRE=reset == 1 and not syn and rec == 0,
                 DELAY=delay, LATE_RESET=late, BB=bb, BN=bn)
    build(k.snn_neuron_fwd_kernel, flags)
    build(k.snn_neuron_bwd_kernel, dict(flags, SURROGATE=sur, HAS_GSPK=True, HAS_GSYN=syn,
          HAS_GMEM=True, NEED_BETA=True, NEED_ALPHA=syn, NEED_THETA=True, NEED_G=True))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Ahead-of-time compilation for an H100 (no GPU needed): the interpreter accepts code the
    compiler refuses (dot shapes, constexpr branches, loop-carried types)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT_CODE], env=env, capture_output=True, text=True)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("no ptxas for the sm_90 target on this machine")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
