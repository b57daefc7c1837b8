"""A hostile user's corpus against the public API: every case ends in a clear error (naming the
argument and what is allowed) or a correct result, never a raw traceback from deep inside, a silent
NaN, a silent clip or silently shared circuits. Classes: tensors (rank, shape, dtype, device, size,
values), parameters, readout, layers, chip and placement, chip states, the snntorch integration,
autograd."""
import copy
import math
import warnings

import pytest
import snntorch as snn
import torch
from torch import nn

import bss2_backend as bb
from bss2_backend.integrations.snntorch import convert, forward_pass, patch
from bss2_backend.placement import MAX_VIRTUAL_CIRCUITS
from bss2_backend.validation import TooLargeError, check_values

NAN, INF = float("nan"), float("inf")
P4 = bb.LIFParams.uniform(4)


def x(*shape, value=None, dtype=torch.float32, device="cpu"):
    t = torch.rand(*shape, dtype=dtype, device=device) if value is None else \
        torch.full(shape, value, dtype=dtype, device=device)
    return t


def lif(*a, **k):
    return bb.LIFLayer(bb.Chip(), *a, **k)


def li_layer(*a, **k):
    return bb.LILayer(bb.Chip(), *a, **k)


def big_li():
    layer = bb.LILayer(bb.Chip.ideal(), 200, 2)
    with torch.no_grad():
        layer.weight.fill_(100.0)         # 200 inputs x 100: the membrane passes float16's 65504
    return layer


def seq(chip=None, n_in=8, n_out=6, **neuron):
    neuron.setdefault("init_hidden", True)
    neuron.setdefault("output", True)
    net = nn.Sequential(nn.Linear(n_in, n_out, bias=False), snn.Leaky(0.9, **neuron))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(net, chip)


def with_nan_weight(net):
    with torch.no_grad():
        net[0].weight[0, 0] = NAN
    return net


def with_nan_weight_layer(device):
    layer = bb.LIFLayer(bb.Chip(), 4, 3).to(device)
    with torch.no_grad():
        layer.weight[0, 0] = NAN
    return layer


def huge_view(n):
    """A [T, B, n] expanded view of ~10^13 elements that occupies no memory."""
    return torch.zeros(1, 1, n).expand(10**5, 10**5, n)


def damaged_chip_state(edit):
    chip = bb.Chip(seed=3)
    bb.LIFLayer(chip, 20, 8)
    state = copy.deepcopy(chip.state_dict())
    edit(state)
    return state


def _set(path, value):
    def edit(state):
        d = state
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _delete(path):
    def edit(state):
        d = state
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


def _overlap(state):
    p = dict(state["placements"][0], name="copy")
    state["placements"].append(p)


def _duplicate_name(state):
    state["placements"].append(dict(state["placements"][0]))


CASES = [
    # --- cuba_lif / li: tensors --------------------------------------------------------------------
    ("cuba_lif list input", lambda: bb.cuba_lif([[1.0]], params=P4), TypeError, "x_exc must be a torch.Tensor"),
    ("cuba_lif 2-d", lambda: bb.cuba_lif(x(3, 4), params=P4), ValueError, "x_exc must have 3 dimensions"),
    ("cuba_lif 4-d", lambda: bb.cuba_lif(x(3, 2, 2, 4), params=P4), ValueError, "x_exc must have 3 dimensions"),
    ("cuba_lif T=0", lambda: bb.cuba_lif(x(0, 2, 4), params=P4), ValueError, "T, B, N >= 1"),
    ("cuba_lif B=0", lambda: bb.cuba_lif(x(3, 0, 4), params=P4), ValueError, "T, B, N >= 1"),
    ("cuba_lif int32", lambda: bb.cuba_lif(torch.ones(3, 2, 4, dtype=torch.int32), params=P4), TypeError, "floating-point dtype"),
    ("cuba_lif bool", lambda: bb.cuba_lif(torch.ones(3, 2, 4, dtype=torch.bool), params=P4), TypeError, "floating-point dtype"),
    ("cuba_lif complex", lambda: bb.cuba_lif(x(3, 2, 4).to(torch.complex64), params=P4), TypeError, "floating-point dtype"),
    ("cuba_lif meta", lambda: bb.cuba_lif(x(3, 2, 4, device="meta"), params=P4), ValueError, "x_exc is on the meta device"),
    ("cuba_lif NaN", lambda: bb.cuba_lif(x(3, 2, 4, value=NAN), params=P4), ValueError, "x_exc contains NaN or inf"),
    ("cuba_lif -inf", lambda: bb.cuba_lif(x(3, 2, 4, value=-INF), params=P4), ValueError, "x_exc contains NaN or inf"),
    ("cuba_lif x_inh NaN", lambda: bb.cuba_lif(x(3, 2, 4), x(3, 2, 4, value=NAN), params=P4), ValueError, "x_inh contains NaN"),
    ("cuba_lif x_inh shape", lambda: bb.cuba_lif(x(3, 2, 4), x(3, 2, 5), params=P4), ValueError, r"x_inh must have shape \(3, 2, 4\)"),
    ("cuba_lif x_inh meta", lambda: bb.cuba_lif(x(3, 2, 4), x(3, 2, 4, device="meta"), params=P4), ValueError, "meta device"),
    ("cuba_lif huge view", lambda: bb.cuba_lif(huge_view(4), params=P4), TooLargeError, r"\[T=100000, B=100000, N=4\] would need"),
    ("li huge view", lambda: bb.li(huge_view(4), params=P4), TooLargeError, "would need"),
    ("cuba_lif finite 1e38 overflows", lambda: bb.cuba_lif(x(30, 2, 4, value=1e38), params=P4), FloatingPointError, "membrane overflowed"),
    ("li finite 1e38 overflows", lambda: bb.li(x(30, 2, 4, value=1e38), params=P4), FloatingPointError, "membrane overflowed"),
    ("li -3e38 overflows", lambda: bb.li(x(30, 2, 4, value=-3e38), params=P4), FloatingPointError, "membrane overflowed"),
    # --- cuba_lif: parameters and options --------------------------------------------------------
    ("params str", lambda: bb.cuba_lif(x(3, 2, 4), params="p"), TypeError, "params must be a bss2_backend.LIFParams"),
    ("params tuple", lambda: bb.cuba_lif(x(3, 2, 4), params=tuple(P4)), TypeError, "params must be a bss2_backend.LIFParams"),
    ("nominal str", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, nominal="x"), TypeError, "nominal must be a bss2_backend.LIFParams"),
    ("params wrong N", lambda: bb.cuba_lif(x(3, 2, 5), params=P4), ValueError, r"params.v_leak must be a tensor of shape \(5,\)"),
    ("params NaN v_th", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(v_th=torch.full((4,), NAN))), ValueError, "params.v_th contains NaN"),
    ("params inf v_th", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(v_th=torch.full((4,), INF))), ValueError, "params.v_th contains NaN or inf"),
    ("params a_mem 0", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(a_mem=torch.zeros(4))), ValueError, r"a_mem \(dt/tau\) must lie in \(0, 1\]"),
    ("params a_syn 2", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(a_syn_exc=torch.full((4,), 2.0))), ValueError, r"a_syn_exc \(dt/tau\)"),
    ("params v_leak int", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(v_leak=torch.zeros(4, dtype=torch.int64))), TypeError, "params.v_leak must have a real floating-point dtype"),
    ("params meta", lambda: bb.cuba_lif(x(3, 2, 4), params=P4.to("meta")), ValueError, "params.v_leak is on the meta device"),
    ("ref_steps float", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(ref_steps=torch.zeros(4))), TypeError, "ref_steps must have an integer dtype"),
    ("ref_steps bool", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(ref_steps=torch.zeros(4, dtype=torch.bool))), TypeError, "ref_steps must have an integer dtype"),
    ("ref_steps negative", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(ref_steps=-torch.ones(4, dtype=torch.int64))), ValueError, r"ref_steps must be whole steps in \[0, 2147483647\]"),
    ("ref_steps beyond int32", lambda: bb.cuba_lif(x(3, 2, 4), params=P4._replace(ref_steps=torch.full((4,), 2**40))), ValueError, "ref_steps must be whole steps"),
    ("readout str", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, readout="cadc"), TypeError, "readout must be a bss2_backend.ReadoutParams"),
    ("readout wrong N", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, readout=bb.ReadoutParams(torch.zeros(5))), ValueError, r"readout.offset_lsb must have shape \(4,\)"),
    ("readout NaN offset", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, readout=bb.ReadoutParams(torch.full((4,), NAN))), ValueError, "readout.offset_lsb contains NaN"),
    ("readout replaced unit 0", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, readout=bb.ReadoutParams(torch.zeros(4))._replace(unit_lsb=0.0)), ValueError, r"readout.unit_lsb=0.0 is out of range"),
    ("noise -1", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, membrane_noise_lsb=-1.0), ValueError, r"membrane_noise_lsb=-1.0 is out of range"),
    ("noise NaN", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, membrane_noise_lsb=NAN), ValueError, "membrane_noise_lsb must be finite"),
    ("noise str", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, membrane_noise_lsb="lots"), TypeError, "membrane_noise_lsb must be a number"),
    ("seed str", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, seed="abc"), TypeError, "seed must be an integer, got str 'abc'"),
    ("seed float", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, seed=1.5), TypeError, "seed must be an integer"),
    ("seed negative", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, seed=-1), ValueError, "seed=-1 is out of range"),
    ("seed 2^64", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, seed=2**64), ValueError, "seed=18446744073709551616 is out of range"),
    ("backend cuda", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, backend="cuda"), ValueError, "backend='cuda' is not supported"),
    ("backend list", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, backend=["torch"]), ValueError, "is not supported; choose one of"),
    ("surrogate bad", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, surrogate=42), TypeError, "surrogate must be a Surrogate"),
    ("recurrence tuple", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, recurrence=(1, 2, 3)), TypeError, "recurrence must be a bss2_backend.Recurrence"),
    ("recurrence shape", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, recurrence=bb.Recurrence(*(torch.zeros(3, 3),) * 3)), ValueError, r"recurrence.weight must have shape \(4, 4\)"),
    ("recurrence NaN", lambda: bb.cuba_lif(x(3, 2, 4), params=P4, recurrence=bb.Recurrence(torch.full((4, 4), NAN), torch.zeros(4, 4), torch.zeros(4, 4))), ValueError, "recurrence.weight contains NaN"),
    # --- small value types -----------------------------------------------------------------------
    ("ReadoutParams unit 0", lambda: bb.ReadoutParams(torch.zeros(4), unit_lsb=0), ValueError, r"ReadoutParams.unit_lsb=0 is out of range; allowed \(0.0, inf\]"),
    ("ReadoutParams unit NaN", lambda: bb.ReadoutParams(torch.zeros(4), unit_lsb=NAN), ValueError, "ReadoutParams.unit_lsb must be finite"),
    ("ReadoutParams noise -1", lambda: bb.ReadoutParams(torch.zeros(4), noise_lsb=-1), ValueError, r"ReadoutParams.noise_lsb=-1 is out of range"),
    ("ReadoutParams noise inf", lambda: bb.ReadoutParams(torch.zeros(4), noise_lsb=INF), ValueError, "noise_lsb must be finite"),
    ("ReadoutParams quantise str", lambda: bb.ReadoutParams(torch.zeros(4), quantise="yes"), TypeError, "quantise must be True or False"),
    ("ReadoutParams zero 300", lambda: bb.ReadoutParams(torch.zeros(4), zero_lsb=300.0), ValueError, r"zero_lsb=300.0 is out of range; allowed \[0, 255\]"),
    ("Noise NaN", lambda: bb.Noise(readout_lsb=NAN), ValueError, "Noise.readout_lsb must be finite"),
    ("Mismatch NaN", lambda: bb.Mismatch(leak=NAN), ValueError, "Mismatch.leak must be finite"),
    ("Mismatch str", lambda: bb.Mismatch(leak="0.1"), TypeError, "Mismatch.leak must be a number"),
    ("Calibration inf", lambda: bb.Calibration(tau_mem_us=INF), ValueError, "Calibration.tau_mem_us must be finite"),
    ("Saturation 0", lambda: bb.Saturation(exc=0.0), ValueError, "Saturation.exc=0.0 is out of range"),
    ("Surrogate NaN", lambda: bb.Surrogate("superspike", NAN), ValueError, "surrogate alpha must be finite"),
    ("Surrogate list kind", lambda: bb.Surrogate(["atan"]), ValueError, "surrogate kind=\\['atan'\\] is not supported"),
    # --- weights ---------------------------------------------------------------------------------
    ("to_hardware list", lambda: bb.to_hardware([1.0, 2.0]), TypeError, "w must be a torch.Tensor, got list"),
    ("to_hardware complex", lambda: bb.to_hardware(torch.ones(2, dtype=torch.complex64)), TypeError, "w must have a floating-point dtype"),
    ("to_hardware bool", lambda: bb.to_hardware(torch.ones(2, dtype=torch.bool)), TypeError, "w must have a floating-point dtype"),
    ("to_hardware int", lambda: bb.to_hardware(torch.ones(2, dtype=torch.int64)), TypeError, "w must have a floating-point dtype"),
    ("to_hardware NaN", lambda: bb.to_hardware(torch.tensor([NAN, 1.0])), ValueError, "w contains NaN or inf"),
    ("to_hardware meta", lambda: bb.to_hardware(torch.ones(2, device="meta")), ValueError, "w is on the meta device"),
    ("to_hardware scale NaN", lambda: bb.to_hardware(torch.ones(2), scale=NAN), ValueError, "scale must be finite"),
    ("quantise NaN", lambda: bb.quantise(torch.tensor([NAN, 1.0])), ValueError, "w contains NaN or inf"),
    ("quantise list", lambda: bb.quantise([NAN, 1.0]), TypeError, "w must be a torch.Tensor"),
    ("quantise inf", lambda: bb.quantise(torch.tensor([INF])), ValueError, "w contains NaN or inf"),
    # --- layers ----------------------------------------------------------------------------------
    ("layer in 2.5", lambda: lif(2.5, 3), TypeError, "in_features must be an integer, got float 2.5"),
    ("layer out '3'", lambda: lif(4, "3"), TypeError, "out_features must be an integer"),
    ("layer in 0", lambda: lif(0, 3), ValueError, r"in_features=0 is out of range; allowed \[1, inf\]"),
    ("layer out -1", lambda: li_layer(4, -1), ValueError, "out_features=-1 is out of range"),
    ("layer in bool", lambda: lif(True, 3), TypeError, "in_features must be an integer, got bool"),
    ("weight_init negative", lambda: lif(4, 3, weight_init=-1.0), ValueError, r"weight_init=-1.0 is out of range; allowed \[0.0, inf\]"),
    ("weight_init NaN", lambda: lif(4, 3, weight_init=NAN), ValueError, "weight_init must be finite"),
    ("weight_init str", lambda: lif(4, 3, weight_init="big"), TypeError, "weight_init must be a number"),
    ("layer name int", lambda: lif(4, 3, name=7), TypeError, "name must be a non-empty str"),
    ("layer backend bad", lambda: lif(4, 3, backend="gpu"), ValueError, "backend='gpu' is not supported"),
    ("layer recurrent str", lambda: lif(4, 3, recurrent="yes"), TypeError, "recurrent must be True or False"),
    ("layer cpn 3", lambda: lif(4, 3, circuits_per_neuron=3), ValueError, "circuits_per_neuron=3; allowed 1 or 2"),
    ("layer T=0", lambda: lif(8, 3)(x(0, 2, 8)), ValueError, r"spikes must have T, B >= 1"),
    ("layer B=0", lambda: lif(8, 3)(x(3, 0, 8)), ValueError, r"spikes must have T, B >= 1"),
    ("LI T=0", lambda: li_layer(8, 3)(x(0, 2, 8)), ValueError, r"spikes must have T, B >= 1"),
    ("layer meta input", lambda: lif(8, 3)(x(3, 2, 8, device="meta")), ValueError, "spikes is on the meta device"),
    ("layer meta weights", lambda: lif(8, 3).to("meta")(x(3, 2, 8)), ValueError, "lif0.weight is on the meta device"),
    ("layer wrong features", lambda: lif(8, 3)(x(3, 2, 9)), ValueError, "spikes must have 8 features"),
    ("layer complex input", lambda: lif(8, 3)(x(3, 2, 8).to(torch.complex64)), TypeError, "spikes must have a floating-point dtype"),
    ("layer int input", lambda: li_layer(8, 3)(torch.ones(3, 2, 8, dtype=torch.int32)), TypeError, "spikes must have a floating-point dtype"),
    ("layer NaN input", lambda: lif(8, 3)(x(3, 2, 8, value=NAN)), ValueError, "spikes contains NaN or inf"),
    ("layer huge view", lambda: lif(8, 3)(huge_view(8)), TooLargeError, "would need"),
    ("LI float16 overflow", lambda: big_li()(torch.ones(60, 2, 200, dtype=torch.float16)), FloatingPointError, "exceeds the range of torch.float16"),
    ("li float16 overflow", lambda: bb.li(x(60, 2, 4, value=30000.0, dtype=torch.float16), params=P4), FloatingPointError, "exceeds the range of torch.float16"),
    # --- chip and placement ----------------------------------------------------------------------
    ("Chip seed str", lambda: bb.Chip(seed="abc"), TypeError, "seed must be an integer, got str 'abc'"),
    ("Chip seed 2^63", lambda: bb.Chip(seed=2**63), ValueError, "seed=9223372036854775808 is out of range"),
    ("Chip strict str", lambda: bb.Chip(strict="no"), TypeError, "strict and quantise must be bool"),
    ("Chip dt inf", lambda: bb.Chip(dt_us=INF), ValueError, "dt_us must be finite"),
    ("Chip mismatch NaN", lambda: bb.Chip(mismatch=NAN), ValueError, "sigma_d must be finite"),
    ("Chip mismatch banana", lambda: bb.Chip(mismatch="banana"), ValueError, "mismatch preset 'banana' is unknown"),
    ("place huge strict=False", lambda: bb.Chip(strict=False).place("h", 10, 10**12), bb.PlacementError, f"holds at most {MAX_VIRTUAL_CIRCUITS}"),
    ("place huge inputs", lambda: bb.Chip(strict=False).place("h", 10**12, 10), TooLargeError, r"10 neurons x 1000000000000 inputs\) would need"),
    ("place huge strict", lambda: bb.Chip().place("h", 10, 10**12), bb.PlacementError, "only 512 of the chip's 512 are free"),
    ("place n_out 2.0", lambda: bb.Chip().place("h", 10, 2.0), TypeError, "n_out must be an integer"),
    ("place empty name", lambda: bb.Chip().place("", 10, 2), TypeError, "name must be a non-empty str"),
    ("place same name other shape", lambda: (lambda c: (c.place("h", 10, 4), c.place("h", 10, 5)))(bb.Chip()), bb.PlacementError, "already placed with n_in=10, n_out=4"),
    ("two layers one name", lambda: (lambda c: (bb.LIFLayer(c, 4, 3, name="x"), bb.LIFLayer(c, 4, 3, name="x")))(bb.Chip()), bb.PlacementError, "'x' is already placed on this chip by another layer"),
    ("two snntorch nets one strict chip", lambda: (lambda c: (seq(c, 8, 300), seq(c, 8, 300)))(bb.Chip()), bb.PlacementError, "but only 212 of the chip's 512 are free"),
    # --- chip states -----------------------------------------------------------------------------
    ("state not dict", lambda: bb.Chip.from_state_dict([1]), ValueError, "not a bss2_backend chip state"),
    ("state missing config", lambda: bb.Chip.from_state_dict(damaged_chip_state(_delete(["config"]))), ValueError, r"chip state is missing \['config'\]"),
    ("state config list", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["config"], [1, 2]))), TypeError, "config must be a dict"),
    ("state config seed str", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["config", "seed"], "x"))), ValueError, "config is invalid"),
    ("state mismatch list", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["config", "mismatch"], [0.1]))), ValueError, "Mismatch must be saved as a dict"),
    ("state mismatch unknown key", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["config", "mismatch", "bogus"], 1.0))), ValueError, "config is invalid"),
    ("state runs -5", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["runs"], -5))), ValueError, "runs=-5 is out of range"),
    ("state runs str", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["runs"], "5"))), TypeError, "runs must be an integer"),
    ("state circuit -1", lambda: bb.Chip.from_state_dict(damaged_chip_state(lambda s: s["placements"][0]["circuits"].__setitem__(0, [-1]))), ValueError, "circuit index=-1 is out of range"),
    ("state cpn 7", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["placements", 0, "circuits_per_neuron"], 7))), ValueError, "circuits_per_neuron=7; allowed 1 or 2"),
    ("state overlap", lambda: bb.Chip.from_state_dict(damaged_chip_state(_overlap)), bb.PlacementError, "never share circuits"),
    ("state duplicate name", lambda: bb.Chip.from_state_dict(damaged_chip_state(_duplicate_name)), ValueError, "appears twice"),
    ("state placements dict", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["placements"], {"a": 1}))), TypeError, "placements must be a list"),
    ("state neurons list", lambda: bb.Chip.from_state_dict(damaged_chip_state(_set(["neurons"], [1, 2]))), ValueError, "neurons must be a dict"),
    ("state neurons float32", lambda: bb.Chip.from_state_dict(damaged_chip_state(lambda s: s["neurons"].__setitem__("leak_lsb", s["neurons"]["leak_lsb"].float()))), TypeError, "neurons.leak_lsb must be a dense float64 tensor"),
    ("state rows tampered", lambda: bb.Chip.from_state_dict(damaged_chip_state(lambda s: s["synapse_rows"].mul_(2))), ValueError, "synapse_rows differs"),
    ("state strict too big", lambda: bb.Chip.from_state_dict(damaged_chip_state(lambda s: s["placements"].append({"name": "big", "n_in": 4, "n_out": 300, "circuits_per_neuron": 1, "circuits": [[600 + i] for i in range(300)]}))), bb.PlacementError, "beyond the 512 of a strict chip"),
    ("state meta draw", lambda: bb.Chip.from_state_dict(damaged_chip_state(lambda s: s["neurons"].__setitem__("reset_lsb", torch.zeros(512, dtype=torch.float64, device="meta")))), TypeError, "must be a dense float64 tensor"),
    ("LIFParams.uniform n=-1", lambda: bb.LIFParams.uniform(-1), ValueError, r"n=-1 is out of range; allowed \[1, inf\]"),
    ("LIFParams.uniform a_mem 0", lambda: bb.LIFParams.uniform(3, a_mem=0.0), ValueError, r"a_mem=0.0 is out of range; allowed \(0.0, 1.0\]"),
    ("LIFParams.uniform v_th NaN", lambda: bb.LIFParams.uniform(3, v_th=NAN), ValueError, "v_th must be finite"),
    ("CircuitParams.nominal n=0", lambda: bb.CircuitParams.nominal(0), ValueError, "n=0 is out of range"),
    # --- snntorch integration --------------------------------------------------------------------
    ("convert chip str", lambda: convert(nn.Sequential(nn.Linear(2, 2), snn.Leaky(0.9)), chip="chip"), TypeError, "chip must be a bss2_backend.Chip or None, got str"),
    ("convert model str", lambda: convert("model"), TypeError, "model must be a torch.nn.Module"),
    ("convert threshold NaN", lambda: seq(bb.Chip(), threshold=NAN), ValueError, "threshold=nan must be finite in chip mode"),
    ("convert threshold inf", lambda: seq(bb.Chip(), threshold=INF), ValueError, "threshold=inf must be finite in chip mode"),
    ("convert beta NaN", lambda: convert(nn.Sequential(nn.Linear(8, 6), snn.Leaky(NAN, init_hidden=True, output=True)), bb.Chip()), ValueError, "beta=nan must be finite"),
    ("forward_pass num_steps 0", lambda: forward_pass(seq(), 0, x(2, 8)), ValueError, "num_steps must be an int >= 1"),
    ("forward_pass num_steps float", lambda: forward_pass(seq(), 2.5, x(2, 8)), ValueError, "num_steps must be an int >= 1"),
    ("forward_pass data list", lambda: forward_pass(seq(), 3, [[1.0] * 8]), TypeError, "data must be a torch.Tensor"),
    ("ideal wrong features", lambda: forward_pass(seq(), 3, x(2, 9)), ValueError, "data has 9 features.*in_features=8"),
    ("ideal int32 data", lambda: forward_pass(seq(), 3, torch.ones(2, 8, dtype=torch.int32)), TypeError, "data must be a real floating-point tensor"),
    ("ideal float16 data", lambda: forward_pass(seq(), 3, x(2, 8, dtype=torch.float16)), TypeError, "data is torch.float16 but the net's parameters are torch.float32"),
    ("ideal complex data", lambda: forward_pass(seq(), 3, x(2, 8).to(torch.complex64)), TypeError, "real floating-point"),
    ("ideal NaN data", lambda: forward_pass(seq(), 3, x(2, 8, value=NAN)), ValueError, "data contains NaN or inf"),
    ("ideal NaN weights", lambda: forward_pass(with_nan_weight(seq()), 3, x(2, 8)), ValueError, "parameter 0.weight contains NaN or inf"),
    ("ideal empty batch", lambda: forward_pass(seq(), 3, x(0, 8)), ValueError, "at least one sample"),
    ("ideal meta data", lambda: forward_pass(seq(), 3, x(2, 8, device="meta")), ValueError, "data is on the meta device"),
    ("ideal meta net", lambda: forward_pass(seq().to("meta"), 3, x(2, 8)), ValueError, "parameter 0.weight is on the meta device"),
    ("ideal 10^12 steps", lambda: forward_pass(seq(), 10**12, x(2, 8)), TooLargeError, r"forward_pass\(num_steps=1000000000000\) on a batch of 2 would need"),
    ("ideal huge data view", lambda: forward_pass(seq(), 3, torch.zeros(1, 8).expand(10**12, 8)), TooLargeError, "data of shape"),
    ("chip wrong features", lambda: forward_pass(seq(bb.Chip()), 3, x(2, 9)), ValueError, "data has 9 features"),
    ("chip T=0", lambda: forward_pass(seq(bb.Chip()), 0, x(2, 8)), ValueError, "num_steps must be an int >= 1"),
    ("chip B=0", lambda: forward_pass(seq(bb.Chip()), 3, x(3, 0, 8)), ValueError, "at least one sample"),
    ("chip NaN data", lambda: forward_pass(seq(bb.Chip()), 3, x(2, 8, value=NAN)), ValueError, "data contains NaN"),
    ("chip NaN weights", lambda: forward_pass(with_nan_weight(seq(bb.Chip())), 3, x(2, 8)), ValueError, "parameter 0.weight contains NaN"),
    ("chip meta data", lambda: forward_pass(seq(bb.Chip()), 3, x(2, 8, device="meta")), ValueError, "meta device"),
    ("chip 10^12 steps", lambda: forward_pass(seq(bb.Chip()), 10**12, x(2, 8)), TooLargeError, "would need"),
    ("chip int data", lambda: forward_pass(seq(bb.Chip()), 3, torch.ones(2, 8, dtype=torch.int64)), TypeError, "real floating-point"),
    ("neuron step NaN input", lambda: convert(nn.Sequential(snn.Leaky(0.9)), backend="torch")[0](x(2, 3, value=NAN)), ValueError, "Leaky input contains NaN"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=match) as info:
            call()
    assert "\n" not in str(info.value)


# --- the silent cases: caught wherever value checks run, on CPU and (with BSS2_CHECK_VALUES=1) on
# a GPU; off, a GPU skips them (no device sync per call) --------------------------------------------
SILENT = {
    "1e38 input": lambda d: bb.cuba_lif(x(30, 2, 4, value=1e38, device=d), params=P4.to(d)),
    "NaN input": lambda d: bb.li(x(3, 2, 4, value=NAN, device=d), params=P4.to(d)),
    "NaN layer weight": lambda d: with_nan_weight_layer(d)(x(3, 2, 4, device=d)),
    "NaN forward_pass data": lambda d: forward_pass(seq().to(d), 3, x(2, 8, value=NAN, device=d)),
    "NaN quantise": lambda d: bb.quantise(torch.tensor([NAN, 1.0], device=d)),
    "NaN readout offset": lambda d: bb.li(x(3, 2, 4, device=d), params=P4.to(d), readout=bb.ReadoutParams(torch.full((4,), NAN, device=d))),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: the GPU value-check policy"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(SILENT))
def test_value_checks_catch_every_silent_case_when_on(case, device):
    previous = check_values(True)
    try:
        with pytest.raises((ValueError, FloatingPointError), match="NaN|inf|overflow"):
            SILENT[case](device)
    finally:
        check_values(previous)


# --- correct results where the input is fine but was mishandled ----------------------------------
def test_a_refused_convert_leaves_the_model_unconverted():
    from bss2_backend.integrations.snntorch.neurons import BACKEND

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(2, 2), snn.Leaky(0.9)
            self.fc2, self.lap = nn.Linear(2, 2), snn.Lapicque(beta=0.9)   # not on the chip
    for model, chip, error in ((Net(), bb.Chip(), ValueError),
                               (nn.Sequential(nn.Linear(2, 2), snn.Leaky(0.9)), "chip", TypeError)):
        with pytest.raises(error):
            convert(model, chip)
        assert not any(type(m) in BACKEND.values() for m in model.modules())
        assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


def test_a_bad_value_check_setting_is_an_error(monkeypatch):
    import bss2_backend.validation as v
    monkeypatch.setattr(v, "_value_checks", v._UNSET)
    monkeypatch.setenv("BSS2_CHECK_VALUES", "yes")
    with pytest.raises(ValueError, match="BSS2_CHECK_VALUES='yes': use 1"):
        bb.li(x(3, 2, 4), params=P4)


def test_weight_init_zero_is_zero():
    assert float(lif(4, 3, weight_init=0.0).weight.abs().sum()) == 0.0
    assert float(lif(4, 3).weight.abs().max()) > 0.0        # default gain 1


def test_ref_steps_of_any_integer_dtype_run_like_int32():
    p = bb.LIFParams.uniform(4, ref_steps=2)
    xin = x(12, 2, 4) * 0.8
    z32, u32 = bb.cuba_lif(xin, params=p)
    for dtype in (torch.int64, torch.int16, torch.uint8):
        z, u = bb.cuba_lif(xin, params=p._replace(ref_steps=p.ref_steps.to(dtype)))
        assert torch.equal(z, z32) and torch.equal(u, u32)


def test_auto_names_never_collide_with_manual_ones():
    chip = bb.Chip()
    manual = bb.LIFLayer(chip, 4, 3, name="lif1")
    auto = [bb.LIFLayer(chip, 4, 3) for _ in range(3)]
    names = [manual.name] + [a.name for a in auto]
    assert len(set(names)) == 4
    circuits = [c for layer in [manual, *auto] for g in layer.placement.circuits for c in g]
    assert len(circuits) == len(set(circuits))               # no circuit serves two layers


def test_a_placement_is_returned_to_its_own_layer_and_to_explicit_requests():
    chip = bb.Chip()
    net = seq(chip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(net, chip)                                  # converting again keeps the placement
    assert list(chip.placements) == ["snntorch:net0:1"]
    assert chip.place("snntorch:net0:1", 8, 6) is chip.placements["snntorch:net0:1"]
    restored = bb.Chip.from_state_dict(chip.state_dict())   # unclaimed after a restore
    layer_again = seq(restored)
    assert layer_again[1]._bss2_binding.placement == chip.placements["snntorch:net0:1"]


def test_nested_patches_undo_in_any_order():
    original = {name: getattr(snn, name) for name in ("Leaky", "Synaptic", "RLeaky")}
    for order in ((0, 1, 2), (2, 1, 0), (1, 0, 2), (0, 2, 1)):
        undos = [patch(), patch(bb.Chip(strict=False)), patch()]
        for i in order:
            undos[i]()
            undos[i]()                                       # undoing twice is harmless
        assert all(getattr(snn, n) is c for n, c in original.items()), order


def test_double_backward_is_refused_with_a_clear_message():
    layer = lif(4, 3)
    z, u = layer(x(3, 2, 4))
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        torch.autograd.grad(u.sum(), layer.weight, create_graph=True)
    net = convert(nn.Sequential(nn.Linear(4, 3), snn.Leaky(0.9, init_hidden=True, output=True)),
                  backend="torch")
    spk, mem = forward_pass(net, 3, x(2, 4))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(mem.sum(), net[0].weight, create_graph=True)
    z, u = lif(4, 3)(x(3, 2, 4))
    u.sum().backward()                                       # first order is unaffected


def test_flatten_first_nets_take_image_batches():
    net = convert(nn.Sequential(nn.Flatten(), nn.Linear(16, 4),
                                snn.Leaky(0.9, init_hidden=True, output=True)))
    images = torch.rand(5, 1, 4, 4)
    spk, mem = forward_pass(net, 3, images)
    assert mem.shape == (3, 5, 4) and bool(torch.isfinite(mem).all())
    with pytest.raises(ValueError, match="data has 15 features per sample"):
        forward_pass(net, 3, torch.rand(5, 3, 5))


def test_forward_pass_on_an_unconverted_net_runs_snntorchs_own_code():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), snn.Leaky(0.9, init_hidden=True, output=True))
    ours = copy.deepcopy(net)
    data = torch.rand(5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spk, mem = forward_pass(ours, 3, data)
    from snntorch import utils
    utils.reset(net)
    ref = torch.stack([net(data)[1] for _ in range(3)])
    assert torch.equal(mem, ref)


def test_memory_limit_can_be_set_and_is_named(monkeypatch):
    monkeypatch.setenv("BSS2_MEMORY_LIMIT", "1M")
    with pytest.raises(TooLargeError, match=r"BSS2_MEMORY_LIMIT \(1.0 MiB\)"):
        bb.cuba_lif(x(100, 100, 100), params=bb.LIFParams.uniform(100))
    bb.cuba_lif(x(3, 2, 4), params=P4)
    monkeypatch.setenv("BSS2_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="BSS2_MEMORY_LIMIT='lots' is not a size"):
        bb.cuba_lif(x(3, 2, 4), params=P4)


def test_chip_with_claimed_placements_pickles_and_copies():
    import io
    chip = bb.Chip()
    layer = bb.LIFLayer(chip, 4, 3)
    buf = io.BytesIO()
    torch.save(chip, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert back == chip and back.placements == chip.placements
    assert copy.deepcopy(layer).placement == layer.placement
    assert math.isfinite(float(layer(x(3, 2, 4))[1].sum()))
