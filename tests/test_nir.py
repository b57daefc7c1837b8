"""NIR in and out (bss2_backend.nir): snntorch interop both ways, round trips, chip mode, the
hxtorch import check and bad input. Every comparison asserts that something spiked."""
import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")
snn = pytest.importorskip("snntorch")
from snntorch.export_nir import _extract_snntorch_module, export_to_nir  # noqa: E402
from snntorch.import_nir import import_from_nir  # noqa: E402

import bss2_backend as bss2  # noqa: E402
import bss2_backend.nir as bn  # noqa: E402
from bss2_backend.nir import NIRError  # noqa: E402

T, B = 30, 5


def _spikes(n, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n, generator=g) < p).float()


def _stock(net, x):
    """snntorch's own run: the tutorial loop, the last layer's spikes and membrane."""
    for m in net.modules():
        if isinstance(m, snn.SpikingNeuron):
            m.reset_mem()
    spk, mem = [], []
    for t in range(x.shape[0]):
        out = net(x[t])
        spk.append(out[0])
        mem.append(out[-1])
    return torch.stack(spk), torch.stack(mem)


def _as_exporter_means_it(net, n_in):
    """snntorch 1.0.0's export_to_nir fails nir 1.0.8's type inference even for Linear + Leaky;
    this is its graph as meant: snntorch's own per-module conversion, chained Input -> Output."""
    nodes = {"input": nir.Input(input_type=np.array([n_in]))}
    for i, m in enumerate(net):
        nodes[str(i)] = _extract_snntorch_module(m)
    nodes["output"] = nir.Output(output_type=np.array([1]))
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), type_check=False)


def _feedforward(reset="zero", delay=False, seed=0):
    torch.manual_seed(seed)
    kw = dict(init_hidden=True, reset_mechanism=reset, reset_delay=delay)
    net = nn.Sequential(nn.Linear(12, 9, bias=False), snn.Synaptic(alpha=0.8, beta=0.9, **kw),
                        nn.Linear(9, 4, bias=True), snn.Leaky(beta=0.85, output=True, **kw))
    with torch.no_grad():
        net[0].weight.mul_(2.5)
        net[2].weight.mul_(2.0)
    return net


def test_snntorch_export_to_nir_still_fails_with_nir_1_0_8():
    # the reason the interop tests build the exporter's graph themselves; when snntorch fixes
    # it, this fails and the tests should use export_to_nir directly
    with pytest.raises(ValueError, match="type"):
        export_to_nir(_feedforward(), torch.zeros(1, 12))


def test_snntorch_graph_reproduces_stock_snntorch_hard_reset():
    net = _feedforward()
    x = _spikes(12)
    spk, _ = _stock(net, x)
    model = bn.load(_as_exporter_means_it(net, 12), time_base="snntorch")
    out = model(x)
    assert spk.sum() > 10 and (spk == 0).sum() > 10
    assert torch.equal(out, spk)


def test_snntorch_default_subtract_reset_with_reset_subtract():
    # snntorch's exporter writes v_reset = 0 for its default subtractive (delayed) reset
    net = _feedforward(reset="subtract", delay=True, seed=1)
    x = _spikes(12, seed=1)
    spk, _ = _stock(net, x)
    graph = _as_exporter_means_it(net, 12)
    assert torch.equal(bn.load(graph, time_base="snntorch", reset="subtract")(x), spk)
    assert not torch.equal(bn.load(graph, time_base="snntorch")(x), spk)   # hard reset differs


def test_snntorch_li_readout_membrane():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(12, 5, bias=False),
                        snn.Synaptic(alpha=0.7, beta=0.9, init_hidden=True, output=True,
                                     reset_mechanism="none"))
    x = _spikes(12, seed=2)
    _, mem = _stock(net, x)
    lin = _extract_snntorch_module(net[0])
    li = nir.CubaLI(tau_syn=np.full(5, 1e-4 / 0.3), tau_mem=np.full(5, 1e-4 / 0.1),
                    r=np.full(5, 10.0), v_leak=np.zeros(5), w_in=np.full(5, 1 / 0.3))
    graph = nir.NIRGraph.from_list(nir.Input(input_type=np.array([12])), lin, li,
                                   nir.Output(output_type=np.array([5])))
    out = bn.load(graph, time_base="snntorch")(x)
    assert mem.abs().max() > 0.5
    assert (out - mem).abs().max() < 1e-5


def test_snntorch_recurrent_subgraph():
    torch.manual_seed(3)
    rec = snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=6, init_hidden=True, output=True)
    with torch.no_grad():
        rec.recurrent.weight.mul_(2.0)
    net = nn.Sequential(nn.Linear(10, 6, bias=False), rec)
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    x = _spikes(10, seed=3)
    spk, _ = _stock(net, x)
    graph = _as_exporter_means_it(net, 10)
    assert isinstance(graph.nodes["1"], nir.NIRGraph)          # snntorch's recurrent subgraph
    model = bn.load(graph, time_base="snntorch", reset="subtract")
    assert model.layers["1"].recurrent is not None and model.layers["1"].recurrent.bias is not None
    assert spk.sum() > 10
    assert torch.equal(model(x), spk)


def _ideal_model(path=None):
    torch.manual_seed(4)
    net = _feedforward(seed=4)
    model = bn.load(_as_exporter_means_it(net, 12), time_base="snntorch")
    return model


def test_round_trip_identity_and_nir_read(tmp_path):
    model = _ideal_model()
    x = _spikes(12, seed=4)
    out = model(x)
    graph = bn.save(model, tmp_path / "m.nir", time_base="nir")
    assert graph.metadata["time_base"] == "nir" and graph.metadata["dt"] == 1.0
    read = nir.read(tmp_path / "m.nir")                       # nir's own reader, type-checked
    assert {type(n).__name__ for n in read.nodes.values()} >= {"Linear", "Affine", "CubaLIF", "LIF"}
    again = bn.load(tmp_path / "m.nir")
    assert again.time_base == "nir" and out.sum() > 0
    assert torch.equal(again(x), out)
    # another time base: the same steps, so the same outputs
    bn.save(again, tmp_path / "s.nir", time_base="snntorch")
    assert torch.equal(bn.load(tmp_path / "s.nir")(x), out)


def test_our_export_runs_in_snntorch_import_nir(tmp_path):
    model = _ideal_model()
    x = _spikes(12, seed=5)
    out = model(x)
    bn.save(model, tmp_path / "m.nir", time_base="snntorch")
    imported = import_from_nir(nir.read(tmp_path / "m.nir"))
    steps = []
    for t in range(T):
        o, _ = imported(x[t])
        steps.append(o[0] if isinstance(o, tuple) else o)
    assert out.sum() > 5
    assert torch.equal(torch.stack(steps), out)


def test_per_neuron_parameters_refused_unless_asked(tmp_path):
    lif = nir.LIF(tau=np.array([5.0, 8.0, 12.0]), r=np.ones(3), v_leak=np.array([0.0, 0.1, 0.2]),
                  v_threshold=np.array([0.5, 0.6, 0.7]), v_reset=np.array([-0.1, 0.0, 0.1]))
    graph = nir.NIRGraph.from_list(nir.Input(input_type=np.array([4])),
                                   nir.Linear(weight=np.full((3, 4), 0.8)), lif,
                                   nir.Output(output_type=np.array([3])))
    model = bn.load(graph)
    x = _spikes(4, seed=6, p=0.5)
    out = model(x)
    assert out.sum() > 5
    with pytest.raises(NIRError, match="per_neuron=True"):
        bn.save(model, tmp_path / "m.nir")
    bn.save(model, tmp_path / "m.nir", per_neuron=True)
    assert torch.equal(bn.load(tmp_path / "m.nir")(x), out)


def test_conv_and_pooling_in_ideal_mode():
    torch.manual_seed(7)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    w = conv.weight.detach().numpy() * 3
    graph = nir.NIRGraph.from_list(
        nir.Input(input_type=np.array([1, 6, 6])),
        nir.Conv2d(input_shape=(6, 6), weight=w, stride=1, padding=1, dilation=1, groups=1,
                   bias=conv.bias.detach().numpy()),
        nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                      padding=np.array([0, 0])),
        nir.Flatten(input_type={"input": np.array([2, 3, 3])}, start_dim=0, end_dim=-1),
        nir.IF(r=np.ones(18), v_threshold=np.ones(18)),
        nir.Output(output_type=np.array([18])), type_check=False)
    x = _spikes(36, seed=7).reshape(T, B, 1, 6, 6)
    out = bn.load(graph)(x)
    # reference: the same maths in plain torch
    y = torch.nn.functional.conv2d(x.reshape(-1, 1, 6, 6), torch.as_tensor(w), conv.bias, padding=1)
    y = torch.nn.functional.avg_pool2d(y, 2, divisor_override=1).reshape(T, B, 18)
    v, ref = torch.zeros(B, 18), []
    for t in range(T):
        v = v + y[t]
        z = (v - 1 > 0).float()
        v = torch.where(z.bool(), torch.zeros(()), v)
        ref.append(z)
    assert out.sum() > 5
    assert torch.equal(out, torch.stack(ref))


# --- chip mode ---------------------------------------------------------------------------------
def _trained_like(chip, recurrent=False):
    from bss2_backend.train.model import Network
    torch.manual_seed(8)
    return Network(chip, 20, 12, 4, recurrent=recurrent, hidden_init=(0.0, 0.05),
                   readout_init=(-0.05, 0.05))


@pytest.mark.parametrize("recurrent", [False, True])
def test_chip_mode_round_trip(tmp_path, recurrent):
    x = _spikes(20, seed=9)
    net = _trained_like(bss2.Chip(seed=5), recurrent)
    hidden, readout = net(x)
    assert hidden.sum() > 10
    bn.save(net, tmp_path / "c.nir", time_base="hxtorch")
    loaded = bn.load(tmp_path / "c.nir", chip=bss2.Chip(seed=5))     # the same chip, afresh
    assert torch.equal(loaded(x), readout)


def test_chip_export_weights_are_the_realised_codes(tmp_path):
    chip = bss2.Chip(seed=6)
    net = _trained_like(chip)
    graph = bn.save(net, tmp_path / "c.nir", time_base="hxtorch")
    w = [np.asarray(n.weight) for n in graph.nodes.values() if isinstance(n, nir.Linear)]
    codes = [v * chip.weight_scale for v in w]
    assert all(np.array_equal(c, np.round(c)) and np.abs(c).max() <= 63 for c in codes)
    lif = next(n for n in graph.nodes.values() if isinstance(n, nir.CubaLIF))
    assert np.allclose(lif.v_threshold, 1) and np.allclose(lif.v_reset, -10 / 45)
    assert np.allclose(lif.tau_mem, 0.01)               # 10 us of chip time, in ms


def test_chip_export_passes_hxtorch_check_and_the_check_can_fail(tmp_path):
    net = _trained_like(bss2.Chip(seed=7))
    ok = bn.save(net, tmp_path / "h.nir", time_base="hxtorch")
    cfg = bn.check_hxtorch_compatible(tmp_path / "h.nir")
    assert cfg["weight_scale"] == 64 and abs(cfg["trace_scale"] - 1 / 45) < 1e-12
    bn.save(net, tmp_path / "n.nir", time_base="nir")      # 10 ms: hxtorch would set 10000 us
    with pytest.raises(NIRError, match="tau_mem"):
        bn.check_hxtorch_compatible(tmp_path / "n.nir")
    with pytest.raises(NIRError, match="Affine"):
        bn.check_hxtorch_compatible(_as_exporter_means_it(_feedforward(), 12))
    lif = next(k for k, n in ok.nodes.items() if isinstance(n, nir.CubaLIF))
    ok.nodes[lif].tau_syn = ok.nodes[lif].tau_syn * np.linspace(1, 1.5, len(ok.nodes[lif].tau_syn))
    with pytest.raises(NIRError, match="tau_syn differs"):
        bn.check_hxtorch_compatible(ok)
    with pytest.raises(NIRError, match="recurren"):
        bn.check_hxtorch_compatible(bn.save(_trained_like(bss2.Chip(seed=7), True),
                                            tmp_path / "r.nir", time_base="hxtorch"))


def test_population_of_chips(tmp_path):
    graph = bn.save(_trained_like(bss2.Chip(seed=1)), tmp_path / "p.nir", time_base="hxtorch")
    x = _spikes(20, seed=10)
    out = bn.load(graph, chip=bss2.Chips([1, 2, 3]))(x)
    assert out.shape == (3, T, B, 4)
    alone = bn.load(graph, chip=bss2.Chip(seed=2, noise=False))
    pop = bn.load(graph, chip=bss2.Chips([1, 2], noise=False))(x)
    assert torch.allclose(pop[1], alone(x), atol=1e-5)


def _graph(*nodes, n_in=6):
    return nir.NIRGraph.from_list(nir.Input(input_type=np.array([n_in])), *nodes,
                                  nir.Output(output_type=np.array([3])), type_check=False)


def _cuba(n=3, **over):
    p = dict(tau_syn=np.full(n, 5.0), tau_mem=np.full(n, 10.0), r=np.ones(n), v_leak=np.zeros(n),
             v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.full(n, 5.0))
    p.update(over)
    return nir.CubaLIF(**p)


@pytest.mark.parametrize("graph, message", [
    (lambda: _graph(nir.Affine(weight=np.ones((3, 6)), bias=np.ones(3)), _cuba()), "no biases"),
    (lambda: _graph(nir.Linear(weight=np.ones((3, 6))), nir.IF(r=np.ones(3), v_threshold=np.ones(3))),
     "IF"),
    (lambda: _graph(nir.Linear(weight=np.ones((3, 6))), _cuba(tau_mem=np.array([9.0, 10, 11]))),
     "one tau_mem per layer"),
    (lambda: _graph(nir.Linear(weight=np.ones((3, 6))), _cuba(v_reset=np.full(3, 0.5))), "v_reset"),
    (lambda: _graph(_cuba(6), n_in=6), "must follow a Linear"),
])
def test_chip_mode_refuses_what_the_chip_cannot_do_but_ideal_runs_it(graph, message):
    g = graph()
    with pytest.raises(NIRError, match=message):
        bn.load(g, chip=bss2.Chip(seed=0))
    assert bn.load(g)(_spikes(6)).shape[-1] in (3, 6)


def test_chip_mode_subtract_and_capacity():
    g = _graph(nir.Linear(weight=np.ones((3, 6))), _cuba())
    with pytest.raises(NIRError, match="subtract"):
        bn.load(g, chip=bss2.Chip(seed=0), reset="subtract")
    big = nir.NIRGraph.from_list(nir.Input(input_type=np.array([6])),
                                 nir.Linear(weight=np.ones((600, 6))), _cuba(600),
                                 nir.Output(output_type=np.array([600])), type_check=False)
    with pytest.raises(bss2.PlacementError):
        bn.load(big, chip=bss2.Chip(seed=0))
    bn.load(big, chip=bss2.Chip(seed=0, strict=False))


# --- bad input ---------------------------------------------------------------------------------
def _bad(name):
    lin = nir.Linear(weight=np.ones((3, 6)))
    if name == "unknown":
        return _graph(lin, nir.Delay(delay=np.ones(3)))
    if name == "shape":
        return _graph(nir.Linear(weight=np.ones((3, 5))), _cuba())
    if name == "nan":
        return _graph(lin, _cuba(tau_mem=np.array([10.0, np.nan, 10.0])))
    if name == "cycle":
        g = _graph(lin, _cuba(), nir.Linear(weight=np.ones((3, 3))), _cuba())
        names = [k for k in g.nodes if k not in ("input", "output")]
        g.edges.append((names[3], names[0]))
        return g
    if name == "self":
        g = _graph(lin, _cuba())
        cuba = [k for k, n in g.nodes.items() if isinstance(n, nir.CubaLIF)][0]
        g.edges.append((cuba, cuba))
        return g
    if name == "branch":
        g = _graph(lin, _cuba())
        g.edges.append(("input", "output"))
        return g
    raise AssertionError(name)


@pytest.mark.parametrize("name, message", [
    ("unknown", "is a Delay"), ("shape", "do not chain"), ("nan", "tau_mem.*NaN"),
    ("cycle", "cycle"), ("self", "edge to itself"), ("branch", "branches"),
])
def test_bad_graphs_are_one_line_errors_naming_the_node(name, message):
    with pytest.raises(NIRError, match=message) as e:
        bn.load(_bad(name))
    assert "\n" not in str(e.value) and "node" in str(e.value) or "cycle" in str(e.value)


def test_files_that_are_not_nir(tmp_path):
    (tmp_path / "x.nir").write_text("not hdf5")
    with pytest.raises(NIRError, match="is not a NIR file"):
        bn.load(tmp_path / "x.nir")
    with pytest.raises(NIRError, match="is not a file"):
        bn.load(tmp_path / "missing.nir")
    with pytest.raises(TypeError, match="path_or_graph"):
        bn.load(42)
    with pytest.raises(ValueError, match="time_base"):
        bn.load(_graph(nir.Linear(weight=np.ones((3, 6))), _cuba()), time_base="weeks")
    with pytest.raises(NIRError, match="shorter than the step"):
        bn.load(_graph(nir.Linear(weight=np.ones((3, 6))), _cuba()), dt=50.0)
