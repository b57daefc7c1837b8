"""The benchmark harness end to end at a tiny size: registry, checks, CSV, plot, and the gate that
refuses a speedup to an implementation whose numbers are wrong."""
import csv
import dataclasses

import pytest
import torch

from bss2_backend.bench import checks, impls, metrics, registry, results
from bss2_backend.bench.run import Options, run
from bss2_backend.cli import main as bss2_main

CPU = torch.device("cpu")


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return tuple(reader.fieldnames), list(reader)


def _broken_build(w, device, dtype=torch.float32):
    """The eager model with its threshold moved: plausible-looking, wrong spikes."""
    net = impls.build_eager(w, device, dtype)
    net.hidden_params = net.hidden_params._replace(v_th=net.hidden_params.v_th * 0.5)
    return net


def _impl(name, build, **kw):
    check = lambda w, device: checks.against_eager(build, impls.build_eager, w, device)
    return impls.Impl(name, "chip", build, check, **kw)


def test_tiny_registry_end_to_end(tmp_path):
    lines = []
    rows, csv_path, png = run(Options(device="cpu", tiny=True, out_dir=tmp_path), say=lines.append)
    header, written = _rows(csv_path)
    assert header == results.COLUMNS
    assert len(written) == len(rows) > 0
    assert png is not None and png.stat().st_size > 0
    assert {r["workload"] for r in written} == {w.name for w in registry.WORKLOADS}
    assert {r["size"] for r in written} == {"tiny"}
    assert any("torch path" in line for line in lines)
    ok = [r for r in written if r["status"] == "ok"]
    assert {r["mode"] for r in ok} == {"fwd", "fwd+bwd"}
    for r in ok:
        assert float(r["median_ms"]) > 0 and float(r["q20_ms"]) <= float(r["q80_ms"])
        assert r["device"] and r["torch"] == torch.__version__ and r["git_commit"]
    timed = {r["impl"] for r in ok if r["workload"] == "A"}
    assert {"bss2.ideal[torch]", "bss2.chip[torch]", "snntorch", "eager"} <= timed
    for r in written:
        assert r["status"] in ("ok", "skipped", "not available", "not timed", "error")
        if r["status"] != "ok":
            assert r["note"], r
    # every chip-layer implementation that was timed passed its check against the eager model
    for r in ok:
        if r["impl"] in ("bss2.steps[chip]", "bss2.chips[sequential]"):   # others' references
            assert r["correctness"] == "reference"
        elif r["impl"].startswith("bss2."):
            assert r["correctness"] == "pass", r["correctness_detail"]
            assert float(r["speedup_vs_snntorch"]) > 0


def test_gate_refuses_speedup_of_failing_impl(tmp_path):
    a = registry.get(["A"])[0]
    assert checks.against_eager(_broken_build, impls.build_eager, a, CPU).status == "fail"
    honest = checks.against_eager(impls.build_eager, impls.build_eager, a, CPU)
    assert honest.status == "pass", honest.detail
    baseline = [i for i in impls.default_impls(CPU) if i.name == "snntorch" and i.kind == "chip"]
    injected = [_impl("broken", _broken_build), _impl("honest", impls.build_eager)]
    lines = []
    rows, csv_path, _ = run(Options(device="cpu", tiny=True, workloads=["A"], out_dir=tmp_path,
                                    plot=False), impls=baseline + injected, say=lines.append)
    _, written = _rows(csv_path)
    broken = [r for r in written if r["impl"] == "broken"]
    honest = [r for r in written if r["impl"] == "honest"]
    assert len(broken) == len(honest) == 2
    for r in broken:
        assert r["status"] == "ok" and r["correctness"] == "fail"
        assert r["speedup_vs_snntorch"] == "" and "refused" in r["note"]
    for r in honest:
        assert r["correctness"] == "pass" and float(r["speedup_vs_snntorch"]) > 0
    printed = [line for line in "\n".join(lines).splitlines() if line.split()[:2] == ["A", "broken"]]
    assert len(printed) == 2 and all("refused" in line for line in printed)


def test_missing_and_crashing_impls_are_recorded(tmp_path):
    def explode(w, device, dtype=torch.float32):
        raise RuntimeError("kernel exploded")
    injected = [_impl("absent", impls.build_eager, unavailable=lambda d: "not built here"),
                impls.Impl("crashing", "chip", explode,
                           lambda w, d: checks.Check("reference", "not checked"))]
    rows, csv_path, _ = run(Options(device="cpu", tiny=True, workloads=["A"], out_dir=tmp_path,
                                    plot=False, modes=("fwd",)), impls=injected, say=lambda s: None)
    by_impl = {r["impl"]: r for r in _rows(csv_path)[1]}
    assert by_impl["absent"]["status"] == "not available"
    assert by_impl["absent"]["note"] == "not built here" and by_impl["absent"]["median_ms"] == ""
    assert by_impl["crashing"]["status"] == "error" and "kernel exploded" in by_impl["crashing"]["note"]


def test_check_errors_instead_of_raising():
    def explode(w, device, dtype=torch.float32):
        raise RuntimeError("boom")
    result = checks.against_eager(explode, impls.build_eager, registry.get(["B"])[0], CPU)
    assert result.status == "error" and "boom" in result.detail


def test_flops_match_the_performance_anchors():
    # the published FLOP count of the reference workload: B256 T100 256 -> 256 recurrent -> 10
    anchor = registry.Workload("anchor-A", "", 256, 256, 10, True, 100, 256)
    assert metrics.flops(anchor, "fwd") / 1e9 == pytest.approx(6.84, rel=2e-3)
    assert metrics.flops(anchor, "fwd+bwd") / 1e9 == pytest.approx(17.2, rel=2e-3)


def test_cpu_skips_large_workloads_with_a_reason():
    from bss2_backend.bench.run import _skip_reason
    c16 = registry.get(["C-16384"])[0]
    assert "GFLOP" in _skip_reason(c16, CPU, run_all=False)
    assert _skip_reason(c16, CPU, run_all=True) is None
    assert _skip_reason(registry.get(["A"])[0], CPU, run_all=False) is None


def test_bad_input():
    with pytest.raises(ValueError, match="unknown workload"):
        registry.get(["Z"])
    with pytest.raises(ValueError, match="n_hidden"):
        dataclasses.replace(registry.WORKLOADS[0], n_hidden=0)
    with pytest.raises(ValueError, match="unknown implementation"):
        run(Options(device="cpu", tiny=True, impls=["nope"], plot=False))
    assert bss2_main(["bench", "--workloads", "Z", "--tiny", "--no-plot"]) == 2


def test_csv_refuses_foreign_columns(tmp_path):
    path = tmp_path / results.CSV_NAME
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        results.append(path, [{}])


def test_a_csv_from_before_the_precision_column_is_upgraded_when_appended_to(tmp_path):
    path = tmp_path / results.CSV_NAME
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=results.PREVIOUS_COLUMNS)
        writer.writeheader()
        writer.writerow({k: "old" for k in results.PREVIOUS_COLUMNS})
    results.prepare(tmp_path)
    results.append(path, [{"impl": "new", "precision": "fp32 matmul highest"}])
    header, written = _rows(path)
    assert header == results.COLUMNS
    assert [r["impl"] for r in written] == ["old", "new"]
    assert written[0]["precision"] == "" and written[0]["median_ms"] == "old"
    assert written[1]["precision"] == "fp32 matmul highest"


def test_spikingjelly_peer_runs_the_paper_network_like_stock_snntorch():
    """The SpikingJelly peer on workload A: outputs shaped like stock snntorch's, most spikes equal
    on the same weights (update orders differ), a gradient for both weight matrices."""
    pytest.importorskip("spikingjelly", reason="SpikingJelly is an optional peer, not installed")
    from bss2_backend.bench.peers import SpikingJellyCubaNet
    w = registry.get(["A"])[0].check_size()
    peer, stock = SpikingJellyCubaNet(w), impls.SnnTorchNet(w)
    with torch.no_grad():
        peer.weights()["w_in"].copy_(stock.weights()["w_in"])
        peer.weights()["w_out"].copy_(stock.weights()["w_out"])
    x, _ = registry.make_inputs(w, "cpu", seed=4)
    z, out = peer(x * 4.0)
    z_ref, out_ref = stock(x * 4.0)
    assert z.shape == z_ref.shape and out.shape == out_ref.shape
    assert float((z == z_ref).float().mean()) > 0.8 and float(z.sum()) > 0
    out.sum().backward()
    assert all(p.grad is not None and bool(p.grad.ne(0).any()) for p in peer.weights().values())
