"""Training-time augmentation: random translations of image inputs.

``train.augment_shift = s`` moves every training image by a whole number of pixels, ``dy`` down and ``dx``
right, each drawn uniformly from ``{-s, ..., s}`` per example and epoch; pixels moved in from outside the
image are zero (the background of MNIST-like images, "no spike" of encoded ones).  The shifts are drawn
from the run's data generator, so a seed fixes them and a resumed run draws the same ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_DIMS = 3   # an image input is (C, H, W) per time step


def check_shift_input(max_shift: int, input_shape: tuple[int, ...]) -> str | None:
    """Why ``augment_shift = max_shift`` cannot apply to inputs of ``input_shape`` (None: it can)."""
    if max_shift == 0:
        return None
    if len(input_shape) != IMAGE_DIMS:
        return f"shifts images, but the input shape {input_shape} is not (channels, height, width)"
    if max_shift >= min(input_shape[1:]):
        return f"{max_shift} pixels would move the {input_shape[1]}x{input_shape[2]} image out of view"
    return None


def draw_shifts(count: int, max_shift: int, generator: torch.Generator) -> Tensor:
    """(count, 2) int64 shifts ``(dy, dx)``, each uniform on ``{-max_shift, ..., max_shift}``."""
    return torch.randint(-max_shift, max_shift + 1, (count, 2), generator=generator)


def shift_images(images: Tensor, shifts: Tensor, max_shift: int) -> Tensor:
    """``images`` (B, ..., H, W) with example ``b`` moved ``shifts[b] = (dy, dx)`` pixels, zero-filled.

    ``out[b, ..., i, j] = images[b, ..., i - dy, j - dx]`` where that lies inside the image, else 0; the
    dtype and shape are kept.  ``|dy|, |dx| <= max_shift``.
    """
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    flat = images.reshape(batch, -1, height, width)
    padded = F.pad(flat, (max_shift, max_shift, max_shift, max_shift))
    shifts = shifts.to(images.device)
    rows = torch.arange(height, device=images.device) + max_shift - shifts[:, :1]   # (B, H)
    cols = torch.arange(width, device=images.device) + max_shift - shifts[:, 1:]    # (B, W)
    channels = flat.shape[1]
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * max_shift))
    out = out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))
    return out.reshape(images.shape)


__all__ = ["check_shift_input", "draw_shifts", "shift_images"]
