"""One emulated BrainScaleS-2 chip: drawn mismatch, temporal noise, readout, weight path, placement."""
import weakref
from typing import NamedTuple

import torch

from . import constants as C
from . import dynamics
from .dynamics import Recurrence, pack
from .mismatch import Mismatch, draw_circuits, draw_rows
from .noise import Noise, layer_key, layer_seed, layer_seed_tensor, run_seed
from .parameters import INTEGRATIONS, Calibration, CircuitParams, LIFParams
from .placement import MAX_VIRTUAL_CIRCUITS, Allocator, Placement, PlacementError
from .readout import ReadoutParams
from .surrogates import Surrogate, as_surrogate
from .validation import check_choice, check_number
from .weights import are_spikes, mark_spikes, Saturation, input_currents, weight_path

STATE_VERSION = 1
STATE_KEYS = ("version", "config", "runs", "placements", "neurons", "synapse_rows")
CONFIG_KEYS = ("seed", "mismatch", "noise", "strict", "quantise", "calibration", "weight_scale",
               "saturation", "dt_us", "integration", "surrogate")


def _rebuild(cls, fields):
    """cls(**fields) for a saved config entry; TypeError naming the class when it is no dict."""
    if not isinstance(fields, dict):
        raise TypeError(f"{cls.__name__} must be saved as a dict, got {type(fields).__name__}")
    return cls(**fields)


# what was drawn for every neuron circuit, hardware units (float64 tensors [circuits]): the analog
# parameters of CircuitParams, the circuit's synaptic gain and its CADC channel offset
CircuitNeurons = NamedTuple("CircuitNeurons", [(f, torch.Tensor) for f in CircuitParams._fields]
                            + [("syn_gain", torch.Tensor), ("cadc_offset_lsb", torch.Tensor)])


class LayerParams(NamedTuple):
    """Everything a layer placed on the chip needs, per logical neuron (model units)."""
    params: LIFParams           # what the chip integrates (mismatch included)
    nominal: LIFParams          # the nominal model the gradient sees
    readout: ReadoutParams
    gain_exc: torch.Tensor      # [n_out, n_in] fixed-pattern gain of each excitatory synapse
    gain_inh: torch.Tensor

    def to(self, device=None, dtype=None):
        return LayerParams(self.params.to(device, dtype), self.nominal.to(device, dtype),
                           self.readout.to(device, dtype), self.gain_exc.to(device, dtype),
                           self.gain_inh.to(device, dtype))


class Run(NamedTuple):
    """Where a layer's run stands between calls: its noise seed, the steps done, the chip state
    after them (kernels.chip_lif.ChipState, None before the first step)."""
    seed: int
    step: int
    state: object


def synapse_decays(layer_params):
    """(alike, nominal_alike): do a layer's excitatory and inhibitory synapses decay alike on the
    chip and in the nominal model (then one signed input current is exact), and in the nominal
    model alone (then the inhibitory gradient mirrors the excitatory one)."""
    lp = layer_params
    nominal_alike = bool(torch.equal(lp.nominal.a_syn_exc, lp.nominal.a_syn_inh))
    alike = nominal_alike and bool(torch.equal(lp.params.a_syn_exc, lp.params.a_syn_inh))
    return alike, nominal_alike


class Chip:
    """One emulated BSS-2 chip.

    Args:
        seed: fixes the drawn mismatch (the same chip on every machine and device) and, with the run
            counter, the temporal noise of every run.
        mismatch: "calibrated" | "uncalibrated" | "none" | float sigma_d (every neuron parameter
            p -> p (1 + sigma_d xi)) | bss2_backend.Mismatch.
        noise: True (defaults of bss2_backend.Noise) | False | bss2_backend.Noise.
        strict: True enforces the real chip's limits (512 circuits, 256 signed inputs per neuron);
            False emulates a larger BSS-2-like substrate with the same per-circuit statistics.
        quantise: 6-bit weights and 8-bit CADC readout (False only for the ideal model).
        calibration: calibration targets (bss2_backend.Calibration).
        weight_scale: software -> hardware weight scale (hardware LSB per model unit).
        saturation: None or bss2_backend.Saturation for sublinear synaptic input.
        dt_us: integration step in us of chip time. integration: "euler" | "exact".
        surrogate: surrogate of the backward (SuperSpike, alpha 50, by default).
    """

    def __init__(self, seed=0, mismatch="calibrated", noise=True, strict=True, *, quantise=True,
                 calibration=None, weight_scale=C.DEFAULT_WEIGHT_SCALE, saturation=None,
                 dt_us=C.DT_US, integration="euler", surrogate=Surrogate()):
        check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
        if not isinstance(strict, bool) or not isinstance(quantise, bool):
            raise TypeError(f"strict and quantise must be bool, got {strict!r}, {quantise!r}")
        check_number("weight_scale", weight_scale, low=0.0, low_open=True)
        check_number("dt_us", dt_us, low=0.0, low_open=True)
        check_choice("integration", integration, INTEGRATIONS)
        if saturation is not None and not isinstance(saturation, Saturation):
            raise TypeError(f"saturation must be None or a bss2_backend.Saturation, got {saturation!r}")
        calibration = Calibration() if calibration is None else calibration
        if not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a bss2_backend.Calibration, got {calibration!r}")
        self.seed = int(seed)
        self.mismatch = Mismatch.from_spec(mismatch)
        self.noise = Noise.from_spec(noise)
        self.strict = strict
        self.quantise = quantise
        self.calibration = calibration
        self.weight_scale = float(weight_scale)
        self.saturation = saturation
        self.dt_us = float(dt_us)
        self.integration = integration
        self.surrogate = as_surrogate(surrogate)
        self.runs = 0
        self._layer_runs = {}         # first circuit of a placed layer -> its runs so far: an
                                      # int, or an int64 tensor [1] on the device it runs on
        self._keys = {}               # (circuit, device) -> the layer's seed key on that device
        # where layers' run counters live: None = on the device a layer runs on unless that is
        # the CPU; True = as tensors always (CPU too: for torch.compile / tracing); False = host
        self.device_counters = None
        self._failures = None          # (dead, firing, seed) fractions of failed spiking neurons
        self._tonic_disabled = False   # spike output of tonic circuits switched off
        self._allocator = Allocator(strict)
        self._placements = {}
        self._owners = {}             # placement name -> weakref to the layer that claimed it
        self._networks = []           # weakrefs to the networks placed here, in placement order
        self._circuits = None
        self._rows = None
        self._cache = {}
        self._grow(C.NEURON_CIRCUITS, C.SYNAPSE_ARRAYS * C.SYNAPSE_ROWS)

    @classmethod
    def ideal(cls, **kwargs):
        """No mismatch, no noise, no quantisation: the nominal model (hxtorch's "mock" mode)."""
        kwargs.setdefault("strict", False)
        return cls(mismatch="none", noise=False, quantise=False, **kwargs)

    @property
    def is_ideal(self):
        return self.mismatch.is_zero and self.noise.is_zero and not self.quantise

    # --- drawn fixed pattern ---------------------------------------------------------------------
    def _grow(self, circuits, rows):
        have = 0 if self._circuits is None else len(self._circuits.leak_lsb)
        if circuits > have:
            d = draw_circuits(self.seed, self.mismatch, self.calibration, circuits - have, start=have)
            new = CircuitNeurons(d["leak"], d["reset"], d["threshold"], d["tau_mem"],
                                 d["tau_syn_exc"], d["tau_syn_inh"], d["refractory"],
                                 d["syn_gain"], d["cadc_offset"])
            self._circuits = new if self._circuits is None else CircuitNeurons(
                *(torch.cat([a, b]) for a, b in zip(self._circuits, new)))
        have_rows = 0 if self._rows is None else len(self._rows)
        if rows > have_rows:
            new = draw_rows(self.seed, self.mismatch, rows - have_rows, start=have_rows)
            self._rows = new if self._rows is None else torch.cat([self._rows, new])

    @property
    def neurons(self):
        """CircuitNeurons: the drawn parameters of every circuit, hardware units (for plotting)."""
        return self._circuits

    @property
    def synapse_rows(self):
        """Relative strength of every synapse row (driver), float64 [rows]."""
        return self._rows

    @property
    def placements(self):
        return dict(self._placements)

    # --- placement -------------------------------------------------------------------------------
    def place(self, name, n_in, n_out, circuits_per_neuron=None, *, owner=None):
        """Place a layer of n_out logical neurons with n_in signed inputs under `name`.

        A name is one set of circuits. `owner` (the layer object) claims the placement: placing the
        name again returns it to the same owner, to anyone while it is unclaimed (its owner gone,
        or a restored chip), and to owner=None (an explicit request by name); another live owner
        gets a PlacementError, so two layers never share circuits silently."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if name in self._placements:
            p = self._placements[name]
            if (p.n_in, p.n_out) != (n_in, n_out) or \
                    circuits_per_neuron not in (None, p.circuits_per_neuron):
                raise PlacementError(
                    f"layer {name!r} is already placed with n_in={p.n_in}, n_out={p.n_out}, "
                    f"circuits_per_neuron={p.circuits_per_neuron}; got n_in={n_in}, n_out={n_out}: "
                    f"give the new layer another name")
            holder = self._owners.get(name)
            holder = holder() if holder is not None else None
            if owner is not None and holder is not None and holder is not owner:
                raise PlacementError(
                    f"layer name {name!r} is already placed on this chip by another layer "
                    f"({type(holder).__name__}); two layers never share circuits: give this one "
                    f"another name, or use another Chip")
            if owner is not None:
                self._owners[name] = weakref.ref(owner)
            return p
        p = self._allocator.allocate(name, n_in, n_out, circuits_per_neuron)
        self._placements[name] = p
        if owner is not None:
            self._owners[name] = weakref.ref(owner)
        self._grow(max(max(c) for c in p.circuits) + 1, int(p.rows()[1].max()) + 1)
        return p

    def release(self, name):
        """Free a placement's circuits (the layer is gone or was converted back); its name and
        circuits can be placed again."""
        p = self._placements.pop(name, None)
        if p is None:
            return
        self._allocator.release(p)
        self._owners.pop(name, None)
        for key in [k for k in self._cache if k[0] == name]:
            del self._cache[key]

    def restore(self, placement, owner=None):
        """Put back a released placement on its own circuits (undoing a failed re-placement)."""
        self._allocator.claim(placement)
        self._placements[placement.name] = placement
        if owner is not None:
            self._owners[placement.name] = weakref.ref(owner)

    def network_index(self, network):
        """A small integer per network placed on this chip, in the order they were first placed:
        the same in every process that builds and converts its networks in the same order, so
        placement names (and a resumed run's circuits) stay the same."""
        for i, ref in enumerate(self._networks):
            if ref() is network:
                return i
        self._networks.append(weakref.ref(network))
        return len(self._networks) - 1

    def free_name(self, prefix):
        """The first name prefix0, prefix1, ... (from the number of placements on) not yet placed."""
        i = len(self._placements)
        while f"{prefix}{i}" in self._placements:
            i += 1
        return f"{prefix}{i}"

    def layer_params(self, placement, device=None, dtype=torch.float32):
        """LayerParams for a placed layer, cached per device and dtype."""
        key = (placement.name, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._layer_params(placement).to(device, dtype)
        return self._cache[key]

    def packed(self, placement, device=None, dtype=torch.float32):
        """The placed layer's parameters as the op takes them (bss2_backend.dynamics.Packed), in
        compute dtype `dtype`: packed once per layer, device and dtype."""
        key = (placement.name, "packed", str(device), dtype)
        if key not in self._cache:
            lp = self.layer_params(placement, "cpu", torch.float64)
            self._cache[key] = pack(lp.params, lp.nominal, lp.readout, dtype, device)
        return self._cache[key]

    def synapse_decays(self, placement):
        """(alike, nominal_alike) of a placed layer (see synapse_decays), decided once per layer on
        the host copy, so a forward on a GPU never syncs for it."""
        key = (placement.name, "decays")
        if key not in self._cache:
            self._cache[key] = synapse_decays(self.layer_params(placement, "cpu", torch.float64))
        return self._cache[key]

    def unit_gains(self, placement):
        """Whether every synapse of a placed layer has gain exactly 1 (no fixed-pattern spread):
        then the effective signed weight of an unquantised chip is the float weight itself.
        Decided once per layer on the host copy, like synapse_decays."""
        key = (placement.name, "unit_gains")
        if key not in self._cache:
            lp = self.layer_params(placement, "cpu", torch.float64)
            self._cache[key] = bool((lp.gain_exc == 1).all() and (lp.gain_inh == 1).all())
        return self._cache[key]

    def neuron_gains(self, placement, device, dtype):
        """[n_out] when every synapse of each neuron of a placed layer has one gain (exc and inh
        rows alike: no row-gain spread), else None: then the quantised product is exact
        (weights.code_product). Decided once per layer on the host copy."""
        key = (placement.name, "neuron_gains")
        if key not in self._cache:
            lp = self.layer_params(placement, "cpu", torch.float64)
            g = lp.gain_exc
            uniform = bool(torch.equal(g, lp.gain_inh) and (g == g[:, :1]).all())
            self._cache[key] = g[:, 0].clone() if uniform else None
        gains = self._cache[key]
        if gains is None:
            return None
        key = (placement.name, "neuron_gains", str(device), dtype)
        if key not in self._cache:
            self._cache[key] = gains.to(device=device, dtype=dtype)
        return self._cache[key]

    def input_currents(self, placement, spikes, weight, columns, decays=None, binary=None):
        """(x_exc, x_inh) of a placed layer for presynaptic spikes [T, B, n] through the synapse
        columns `columns` of its placement, with float weights [n_out, n] (model units): the
        chip's 6-bit weight path, fixed-pattern gains and saturation (weights.input_currents).
        decays: (alike, nominal_alike), default this chip's for the layer. binary: the spikes
        hold only 0/1 (default: whether they are marked so, weights.mark_spikes)."""
        lp = self.layer_params(placement, weight.device, weight.dtype)
        return input_currents(spikes, weight, lp.gain_exc[:, columns], lp.gain_inh[:, columns],
                              scale=self.weight_scale, quantise=self.quantise,
                              saturation=self.saturation,
                              decays=self.synapse_decays(placement) if decays is None else decays,
                              unit_gains=self.unit_gains(placement),
                              neuron_gain=self.neuron_gains(placement, weight.device, spikes.dtype),
                              binary=are_spikes(spikes) if binary is None else binary)

    def recurrence(self, placement, weight, columns):
        """Recurrence of a placed layer's recurrent synapses (columns of its placement) for the
        float weight [n_out, n_out] the gradient sees."""
        lp = self.layer_params(placement, weight.device, weight.dtype)
        return Recurrence(*weight_path(weight, lp.gain_exc[:, columns], lp.gain_inh[:, columns],
                                       self.weight_scale, self.quantise))

    # --- failed neurons (Fig. 4C) ----------------------------------------------------------------
    def set_failures(self, dead=0.0, firing=0.0, seed=0):
        """Emulate failed neurons in every spiking layer: a fraction `dead` that never spike
        (threshold out of reach) and a fraction `firing` whose leak sits above the threshold
        (they fire whenever not refractory), drawn per chip, layer and `seed`
        (failure_masks). The readout's leaky integrators are not affected. set_failures() undoes
        it."""
        check_number("dead", dead, low=0.0, high=1.0)
        check_number("firing", firing, low=0.0, high=1.0)
        check_number("seed", seed, low=0, high=2**63 - 1, integer=True)
        if dead + firing > 1.0:
            raise ValueError(f"dead + firing = {dead + firing:g} must be <= 1 (fractions of the "
                             f"same neurons)")
        self._failures = (float(dead), float(firing), int(seed)) if dead or firing else None
        for key in [k for k in self._cache if len(k) > 1 and k[1] == "failed"]:
            del self._cache[key]

    @property
    def failures(self):
        """(dead, firing, seed) set by set_failures, or None."""
        return self._failures

    def disable_tonic(self, disabled=True):
        """Switch off the spike output of every spiking neuron that fires without input: its leak
        or its reset potential at or above its threshold (a failure state of strong mismatch).
        On BSS-2 an experimenter finds them in a run without input and disables their firing;
        here the drawn parameters say which. They then act like dead neurons."""
        if not isinstance(disabled, bool):
            raise TypeError(f"disabled must be True or False, got {disabled!r}")
        self._tonic_disabled = disabled
        for key in [k for k in self._cache if len(k) > 1 and k[1] == "failed"]:
            del self._cache[key]

    def tonic_mask(self, placement):
        """bool [n_out]: the placed layer's neurons whose leak or reset is at/above threshold."""
        p = self._layer_params(placement).params
        return (p.v_leak >= p.v_th) | (p.v_reset >= p.v_th)

    def failure_masks(self, placement):
        """(dead, firing): bool [n_out] of a placed layer's failed neurons: exactly
        round(fraction x n_out) of each, drawn from (chip seed, failure seed, first circuit)."""
        n = placement.n_out
        dead = self.tonic_mask(placement) if self._tonic_disabled else \
            torch.zeros(n, dtype=torch.bool)
        firing = torch.zeros(n, dtype=torch.bool)
        if self._failures is None:
            return dead, firing
        f_dead, f_firing, seed = self._failures
        g = torch.Generator().manual_seed(layer_seed(self.seed ^ seed, placement.circuits[0][0],
                                                     0x5EED))
        order = torch.randperm(n, generator=g)
        n_dead, n_firing = round(f_dead * n), round(f_firing * n)
        dead[order[:n_dead]] = True
        firing[order[n_dead:n_dead + n_firing]] = True & ~dead[order[n_dead:n_dead + n_firing]]
        return dead, firing

    def _failed(self, placement, packed):
        """packed with the failed neurons' parameters: dead ones' threshold at +inf, firing ones'
        leak one model unit above their threshold."""
        key = (placement.name, "failed", packed.par.data_ptr(), str(packed.par.device),
               packed.par.dtype)
        if key not in self._cache:
            dead, firing = (m.to(packed.par.device) for m in self.failure_masks(placement))
            par = packed.par.clone()
            rows = dynamics.PARAM_ROWS
            v_leak, v_th = rows.index("v_leak"), rows.index("v_th")
            par[v_leak] = torch.where(firing, par[v_th] + 1.0, par[v_leak])
            par[v_th] = torch.where(dead, torch.full_like(par[v_th], float("inf")), par[v_th])
            self._cache[key] = packed._replace(par=par)
        return self._cache[key]

    def run(self, placement, packed, readout, decays, x_exc, x_inh=None, *, spiking=True,
            recurrence=None, backend="auto", continuing=None):
        """Run a placed layer's neurons on its input currents with this chip's noise and
        surrogate. packed, readout: the layer's (Chip.packed, LayerParams.readout); decays:
        (alike, nominal_alike). A new run of the layer (its noise is new on every run), or, with
        `continuing` (the Run an earlier call returned), the next steps of that run.
        Returns (spikes, read membrane, Run)."""
        cfg = dynamics.config(readout, self.noise.membrane_lsb, self.surrogate, spiking, decays[1])
        if spiking and (self._failures is not None or self._tonic_disabled):
            packed = self._failed(placement, packed)
        run = Run(self.next_seed(placement, x_exc.device), 0, None) if continuing is None \
            else continuing
        z, u, state = dynamics.execute(x_exc, x_inh, packed, cfg, run.seed, recurrence, backend,
                                       run.state, run.step)
        return mark_spikes(z), u, Run(run.seed, run.step + x_exc.shape[0], state)

    def _layer_params(self, p):
        circ = p.circuit_matrix()                       # [n_out, k]
        c, first = self._circuits, circ[:, 0]
        tau = lambda x: p.circuits_per_neuron / (1.0 / x[circ]).sum(1)
        physical = CircuitParams(
            leak_lsb=c.leak_lsb[circ].mean(1), reset_lsb=c.reset_lsb[first],
            threshold_lsb=c.threshold_lsb[first], tau_mem_us=tau(c.tau_mem_us),
            tau_syn_exc_us=tau(c.tau_syn_exc_us), tau_syn_inh_us=tau(c.tau_syn_inh_us),
            refractory_us=c.refractory_us[first])
        chip = physical.discretize(self.calibration, self.dt_us, self.integration)
        nominal = CircuitParams.nominal(p.n_out, self.calibration).discretize(
            self.calibration, self.dt_us, self.integration)
        readout = ReadoutParams(c.cadc_offset_lsb[first], self.noise.readout_lsb, self.quantise,
                                self.calibration.unit_lsb, self.calibration.leak_lsb)
        serving = p.serving_circuit()
        row_exc, row_inh = p.rows()
        gain = c.syn_gain[serving]
        return LayerParams(chip, nominal, readout, gain * self._rows[row_exc],
                           gain * self._rows[row_inh])

    # --- temporal noise --------------------------------------------------------------------------
    def next_seed(self, placement=None, device=None):
        """Seed for the next run of a layer; advances the run counters (runs: all runs). With the
        layer's placement, the seed is keyed by where the layer sits (its first circuit) and by
        that layer's own run count, so a layer's noise depends neither on other layers' runs nor
        on the order layers run in; without, by the chip-wide count.

        With a placement and a `device` where counters live (device_counters: by default any
        but the CPU), the layer's run counter is an int64 tensor on that device and the seed an
        int64 tensor [1] computed there by tensor ops (no host synchronisation): a captured CUDA
        graph or a compiled graph advances the counter and draws new noise on every replay. The
        same run count gives the same seed on the host and on the device."""
        if placement is None:
            self.runs += 1
            return run_seed(self.seed, self.runs - 1)
        where = placement.circuits[0][0]
        on_device = device is not None and (
            self.device_counters if self.device_counters is not None
            else torch.device(device).type != "cpu")
        if on_device:
            device = torch.device(device)
            counter = self._layer_runs.get(where, 0)
            if not isinstance(counter, torch.Tensor) or counter.device != device:
                counter = torch.tensor([int(counter)], dtype=torch.int64, device=device)
                self._layer_runs[where] = counter
            key = self._keys.get((where, device))
            if key is None:
                key = torch.tensor([layer_key(self.seed, where)], dtype=torch.int64,
                                   device=device)
                self._keys[(where, device)] = key
            seed = layer_seed_tensor(key, counter)
            counter.add_(1)
            return seed
        self.runs += 1
        run = int(self._layer_runs.get(where, 0))
        self._layer_runs[where] = run + 1
        return layer_seed(self.seed, where, run)

    @property
    def layer_runs(self):
        """{first circuit of a layer: its runs so far} (reads the counters kept on a device)."""
        return {k: int(v) for k, v in self._layer_runs.items()}

    @layer_runs.setter
    def layer_runs(self, value):
        self._layer_runs = {int(k): int(v) for k, v in dict(value).items()}

    # --- save / load -----------------------------------------------------------------------------
    def config(self):
        return {"seed": self.seed, "mismatch": self.mismatch.as_dict(),
                "noise": {"readout_lsb": self.noise.readout_lsb,
                          "membrane_lsb": self.noise.membrane_lsb},
                "strict": self.strict, "quantise": self.quantise,
                "calibration": self.calibration.as_dict(), "weight_scale": self.weight_scale,
                "saturation": None if self.saturation is None else
                {"exc": self.saturation.exc, "inh": self.saturation.inh},
                "dt_us": self.dt_us, "integration": self.integration,
                "surrogate": {"kind": self.surrogate.kind, "alpha": self.surrogate.alpha}}

    def state_dict(self):
        return {"version": STATE_VERSION, "config": self.config(), "runs": self.runs,
                "layer_runs": dict(self.layer_runs),
                "placements": [p.as_dict() for p in self._placements.values()],
                "neurons": self._circuits._asdict(), "synapse_rows": self._rows}

    @staticmethod
    def config_kwargs(cfg):
        """The constructor's arguments but the seed, from a config() dict: the same kind of chip
        with other seeds (a population to evaluate a trained network on)."""
        return dict(mismatch=_rebuild(Mismatch, cfg["mismatch"]),
                    noise=_rebuild(Noise, cfg["noise"]), strict=cfg["strict"],
                    quantise=cfg["quantise"], calibration=_rebuild(Calibration, cfg["calibration"]),
                    weight_scale=cfg["weight_scale"],
                    saturation=None if cfg["saturation"] is None else
                    _rebuild(Saturation, cfg["saturation"]),
                    dt_us=cfg["dt_us"], integration=cfg["integration"],
                    surrogate=_rebuild(Surrogate, cfg["surrogate"]))

    @classmethod
    def from_state_dict(cls, state):
        """The chip that state_dict() described. Everything is checked before it is used: a damaged
        or foreign state raises ValueError/TypeError (a PlacementError for placements the chip
        cannot hold) naming the field; the drawn circuits and rows must be what the seed draws."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a bss2_backend chip state (expected a dict with version "
                             f"{STATE_VERSION}, got {got!r})")
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"chip state is missing {missing}")
        cfg = state["config"]
        if not isinstance(cfg, dict):
            raise TypeError(f"chip state: config must be a dict, got {type(cfg).__name__}")
        missing = [k for k in CONFIG_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"chip state: config is missing {missing}")
        try:
            chip = cls(seed=cfg["seed"], **cls.config_kwargs(cfg))
        except (TypeError, ValueError) as e:
            raise ValueError(f"chip state: config is invalid ({e})") from None
        check_number("chip state: runs", state["runs"], low=0, high=2**63 - 1, integer=True)
        if not isinstance(state["placements"], (list, tuple)):
            raise TypeError(f"chip state: placements must be a list, got "
                            f"{type(state['placements']).__name__}")
        for d in state["placements"]:
            p = Placement.from_dict(d)
            if p.name in chip._placements:
                raise ValueError(f"chip state: placement {p.name!r} appears twice")
            chip._allocator.claim(p)
            chip._placements[p.name] = p
            chip._grow(max(max(c) for c in p.circuits) + 1, int(p.rows()[1].max()) + 1)
        chip.runs = int(state["runs"])
        # saved by this version; older states have none (a layer's noise then restarts)
        layer_runs = state.get("layer_runs", {})
        if not isinstance(layer_runs, dict) or not all(
                isinstance(k, int) and not isinstance(v, bool) and isinstance(v, int) and v >= 0
                and 0 <= k < MAX_VIRTUAL_CIRCUITS for k, v in layer_runs.items()):
            raise ValueError("chip state: layer_runs must map circuit indices to run counts >= 0")
        chip.layer_runs = dict(layer_runs)
        neurons = state["neurons"]
        if not isinstance(neurons, dict) or set(neurons) != set(CircuitNeurons._fields):
            got = sorted(neurons) if isinstance(neurons, dict) else type(neurons).__name__
            raise ValueError(f"chip state: neurons must be a dict of {list(CircuitNeurons._fields)}, "
                             f"got {got}")
        saved = list(neurons.items()) + [("synapse_rows", state["synapse_rows"])]
        for name, t in saved:
            drawn = chip._rows if name == "synapse_rows" else getattr(chip._circuits, name)
            where = name if name == "synapse_rows" else f"neurons.{name}"
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.float64 \
                    or t.device.type == "meta" or t.layout != torch.strided:
                got = (t.dtype, tuple(t.shape), t.device.type, t.layout) \
                    if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"chip state: {where} must be a dense float64 tensor [n] with "
                                f"data, got {got}")
            t = t.cpu()
            # the placements decide how much a chip has drawn: a saved length that differs is a
            # state of another chip (or a tampered one)
            if len(t) != len(drawn) or not torch.equal(drawn, t):
                raise ValueError(f"chip state is inconsistent: {where} differs from what seed "
                                 f"{chip.seed} draws (saved by another version?)")
        return chip

    def load_state_dict(self, state):
        other = Chip.from_state_dict(state)
        self.__dict__.update(other.__dict__)

    def __eq__(self, other):
        return isinstance(other, Chip) and self.config() == other.config() and \
            torch.equal(self._rows[:C.SYNAPSE_ARRAYS * C.SYNAPSE_ROWS],
                        other._rows[:C.SYNAPSE_ARRAYS * C.SYNAPSE_ROWS])

    __hash__ = object.__hash__

    def __getstate__(self):
        # which layer claimed a placement is a fact of this process (weak references to live
        # modules): a pickled or copied chip starts with its placements unclaimed
        state = self.__dict__.copy()
        state["_owners"] = {}
        state["_networks"] = []
        return state

    def __repr__(self):
        kind = "ideal" if self.is_ideal else f"mismatch={self.mismatch_label()}"
        return (f"Chip(seed={self.seed}, {kind}, noise={not self.noise.is_zero}, "
                f"strict={self.strict}, placed={sum(p.n_out * p.circuits_per_neuron for p in self._placements.values())} circuits)")

    def mismatch_label(self):
        m = self.mismatch
        for name in ("calibrated", "uncalibrated", "none"):
            if m == Mismatch.preset(name):
                return name
        vals = set(getattr(m, f) for f in ("leak", "reset", "threshold", "tau_mem", "tau_syn_exc",
                                            "tau_syn_inh", "syn_gain"))
        if len(vals) == 1 and m.refractory == m.row_gain == m.cadc_offset_lsb == 0:
            return f"sigma_d={vals.pop():g}"
        return "custom"

    def summary(self):
        """Per-parameter statistics of the drawn circuits (the first chip's 512)."""
        n = C.NEURON_CIRCUITS
        out = {}
        for name, t in self._circuits._asdict().items():
            t = t[:n]
            out[name] = {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()),
                         "max": float(t.max())}
        r = self._rows[:C.SYNAPSE_ARRAYS * C.SYNAPSE_ROWS]
        out["row_gain"] = {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
                           "max": float(r.max())}
        lif = CircuitParams(*(getattr(self._circuits, f)[:n] for f in CircuitParams._fields))
        v_leak = (lif.leak_lsb - self.calibration.leak_lsb) / self.calibration.unit_lsb
        v_th = (lif.threshold_lsb - self.calibration.leak_lsb) / self.calibration.unit_lsb
        out["tonic_circuits"] = int((v_leak > v_th).sum())   # leak above threshold: fires on its own
        return out
