"""The emulated chip's time and energy per classification: the model's numbers follow from its
documented constants, and the time to decision is read off the readout traces."""
import math

import pytest
import torch

from bss2_backend import energy


def test_figures_follow_from_the_documented_constants():
    f = energy.figures(40, 1.0, time_to_decision_us=7.5, spikes_per_sample=12.0)
    busy_s = (40 * 1.0 + energy.RESET_US) * 1e-6
    assert f.chip_time_per_sample_us == 40.0
    assert math.isclose(f.classifications_per_s, 1.0 / busy_s)
    assert math.isclose(f.energy_per_classification_uj, energy.CHIP_POWER_W * busy_s * 1e6)
    assert f.estimate.startswith("modelled")
    assert "estimate" in f.line() and "85,000" in f.line()
    # the paper's three numbers agree with each other (200 mW / 85,000 per s ~ 2.4 uJ)
    assert abs(energy.CHIP_POWER_W / energy.PAPER_RATE_PER_S - energy.PAPER_ENERGY_J) \
        < 0.05 * energy.PAPER_ENERGY_J
    # faster presentations, fewer microjoules: linear in the chip time per sample
    assert energy.figures(10, 1.0, reset_us=0).energy_per_classification_uj == pytest.approx(2.0)


def test_time_to_decision_from_the_readout():
    r = torch.zeros(6, 3, 4)
    r[1, 0, 2] = 1.0
    r[3, 0, 1] = 2.0          # sample 0 changes its mind at step 3 and keeps it
    r[0, 1, 3] = 1.0          # sample 1 decides at step 0
    r[5, 2, 2] = 1.0          # sample 2 only at the last step
    assert energy.decision_steps(r).tolist() == [3, 0, 5]
    assert energy.decision_steps(torch.stack([r, r])).shape == (2, 3)


def test_another_networks_checkpoint_is_refused_by_name():
    from bss2_backend.train import transfer
    from bss2_backend.train.data import Dataset
    state = {"network": {"task": "mnist", "n_in": 784, "n_out": 10}}
    data = Dataset("digits", torch.zeros(2, 16, 16), torch.zeros(2), torch.zeros(2, 16, 16),
                   torch.zeros(2), 10)
    with pytest.raises(ValueError, match="takes 784 inputs"):
        transfer.check_data(state, data)
