"""Training-set augmentation for images: random translations.

The MNIST network overfits (99.4 % train vs 97.5 % test after 30 epochs); shifting each training
image by a few pixels shows it the small displacements the test set has. The shifts are drawn
from (seed, epoch, batch), so a resumed run sees the same images as an uninterrupted one.
"""
import torch


def shift_images(x, max_shift, generator):
    """x [B, H, W] -> each image moved by (dy, dx) uniform in [-max_shift, max_shift], the
    uncovered border filled with 0 (no spike)."""
    if max_shift == 0:
        return x
    b, h, w = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    dy, dx = torch.randint(0, 2 * s + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h)).unsqueeze(2)                    # [B, H, 1]
    cols = (dx + torch.arange(w)).unsqueeze(1)                    # [B, 1, W]
    return padded[torch.arange(b).view(b, 1, 1), rows, cols]


def batch_generator(seed, epoch, batch):
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + batch)
