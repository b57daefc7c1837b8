"""Failed neurons (the paper's Fig. 4C): a given fraction of a chip's spiking neurons silent
(dead) or always firing (leak above threshold), drawn per chip, layer and seed, exactly as many
as asked; the readout is untouched."""
import pytest
import torch

from bss2_backend import Chip, Chips, LIFLayer, LILayer


def _layer(chip, n=40):
    torch.manual_seed(0)
    layer = LIFLayer(chip, 8, n)
    with torch.no_grad():
        layer.weight.fill_(0.6)          # every healthy neuron fires under this drive
    return layer


def _drive(T=60, B=2):
    return (torch.rand(T, B, 8, generator=torch.Generator().manual_seed(3)) < 0.5).float()


def _rates(layer, x):
    z, _ = layer(x)
    return z.sum((0, 1))


def test_exactly_the_requested_neurons_fail():
    chip = Chip(seed=4, mismatch="none", noise=False)
    layer = _layer(chip)
    healthy = _rates(layer, _drive())
    assert bool((healthy > 0).all())
    chip.set_failures(dead=0.25, firing=0.1, seed=7)
    dead, firing = chip.failure_masks(layer.placement)
    assert int(dead.sum()) == 10 and int(firing.sum()) == 4 and not bool((dead & firing).any())
    rates = _rates(layer, _drive())
    assert bool((rates[dead] == 0).all())
    silent = _rates(layer, torch.zeros(60, 2, 8))          # no input at all
    assert bool((silent[firing] > 0).all()) and bool((silent[~firing] == 0).all())
    assert torch.equal(rates[~dead & ~firing], healthy[~dead & ~firing])
    chip.set_failures()
    assert torch.equal(_rates(layer, _drive()), healthy)


def test_failures_are_drawn_per_chip_and_seed_and_spare_the_readout():
    a, b = Chip(seed=1, noise=False), Chip(seed=2, noise=False)
    la, lb = _layer(a), _layer(b)
    for chip in (a, b):
        chip.set_failures(dead=0.3, seed=5)
    da, db = a.failure_masks(la.placement)[0], b.failure_masks(lb.placement)[0]
    assert not torch.equal(da, db)
    a.set_failures(dead=0.3, seed=6)
    assert not torch.equal(a.failure_masks(la.placement)[0], da)
    a.set_failures(dead=0.3, seed=5)
    assert torch.equal(a.failure_masks(la.placement)[0], da)
    readout = LILayer(a, 8, 6)
    ref = Chip(seed=1, noise=False)
    _layer(ref)
    r_ref = LILayer(ref, 8, 6)
    r_ref.load_state_dict(readout.state_dict())
    x = _drive()
    assert torch.equal(readout(x), r_ref(x))


def test_a_population_fails_each_chip_its_own_way():
    pop = Chips([1, 2, 3], mismatch="none", noise=False)
    layer = _layer(pop)
    pop.set_failures(dead=0.5, seed=0)
    dead, _ = pop.failure_masks(layer.placement)
    z, _ = layer(_drive())
    rates = z.sum((1, 2))                                   # [C, N]
    assert bool((rates.flatten()[dead] == 0).all())
    per_chip = dead.reshape(3, -1)
    assert not torch.equal(per_chip[0], per_chip[1])
    assert per_chip.sum(1).tolist() == [20, 20, 20]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dead=1.5), "dead"), (dict(firing=-0.1), "firing"), (dict(dead=0.6, firing=0.5), "<= 1")])
def test_bad_failure_fractions_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Chip(seed=0).set_failures(**kwargs)


def test_tonic_neurons_can_be_switched_off():
    """Strong detuning leaves some leaks or resets above threshold: those neurons fire without
    input; disable_tonic silences exactly them."""
    chip = Chip(seed=0, mismatch=0.5, noise=False, integration="exact")
    layer = _layer(chip, n=64)
    tonic = chip.tonic_mask(layer.placement)
    assert 0 < int(tonic.sum()) < 64
    silent = _rates(layer, torch.zeros(60, 2, 8))
    assert bool((silent[tonic] > 0).any())
    chip.disable_tonic()
    silent_after = _rates(layer, torch.zeros(60, 2, 8))
    assert bool((silent_after[tonic] == 0).all())
    assert torch.equal(silent_after[~tonic], silent[~tonic])
    chip.disable_tonic(False)
    assert torch.equal(_rates(layer, torch.zeros(60, 2, 8)), silent)
