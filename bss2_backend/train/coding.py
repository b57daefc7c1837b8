"""Latency coding and the losses of the paper's tasks.

Latency code (one spike per pixel, earlier for brighter): a pixel of intensity x in [0, 1] above
`cutoff` spikes once at step t = round(t_first + (1 - x) (t_last - t_first)); darker pixels stay
silent. Spikes are time-major [T, B, pixels].
"""
import torch
import torch.nn.functional as F

from ..weights import mark_spikes
from ..validation import check_allocation, check_finite, check_number, check_tensor, nbytes


def latency_code(images, steps, *, t_first=0, t_last=None, cutoff=0.1):
    """images [B, ...] in [0, 1] -> spikes [steps, B, prod(...)] (float, 0/1)."""
    check_number("steps", steps, low=1, integer=True)
    t_last = steps // 2 if t_last is None else t_last
    check_number("t_first", t_first, low=0, high=steps - 1, integer=True)
    check_number("t_last", t_last, low=t_first, high=steps - 1, integer=True)
    check_number("cutoff", cutoff, low=0.0, high=1.0)
    check_tensor("images", images, finite=False)
    if images.dim() < 1 or images.shape[0] == 0:
        raise ValueError(f"images must be a batch [B, ...] with B >= 1, got shape {tuple(images.shape)}")
    check_allocation(f"latency-coded spikes of {steps} steps for {images.shape[0]} images",
                     nbytes((steps + 1, images.numel())), images.device)
    check_finite("images", images)
    x = images.reshape(images.shape[0], -1)
    t = torch.round(t_first + (1.0 - x) * (t_last - t_first)).long()
    t = torch.where(x > cutoff, t, torch.full_like(t, steps))      # silent: index past the end
    spikes = torch.zeros(steps + 1, *x.shape, dtype=torch.float32, device=images.device)
    spikes.scatter_(0, t.unsqueeze(0), 1.0)
    return mark_spikes(spikes[:steps])


def max_over_time_loss(readout, labels, *, scale=1.0):
    """Cross-entropy of the readout membranes' maxima over time: readout [T, B, C], labels [B].
    amax shares the gradient among tied maxima: a noise-free readout that has not moved yet
    (exactly 0 at every step) then passes gradient to all steps; max(0) sent it to step 0,
    which no input can reach, and a network silent at initialisation never learned."""
    return F.cross_entropy(scale * readout.amax(0), labels)


def sum_over_time_loss(readout, labels, *, scale=1.0):
    """Cross-entropy of the readout membranes integrated over time (the SHD task); taken as the
    mean over time, i.e. the sum / T, so `scale` does not depend on the number of steps."""
    return F.cross_entropy(scale * readout.mean(0), labels)


def spike_regulariser(hidden_spikes, strength, target=0.0):
    """strength * mean over neurons of (spikes per neuron and sample - target)_+^2: keeps rates low."""
    if strength == 0:
        return hidden_spikes.new_zeros(())
    per_neuron = hidden_spikes.sum(-3)                # over time: [B, H] (or [chips, B, H])
    return strength * torch.clamp(per_neuron - target, min=0).pow(2).mean()
