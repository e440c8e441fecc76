"""The GIF grid of an evaluated clip: condition | truth | best sample (by PSNR) | a random sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import export_to_gif

from ..file_io import atomic_path


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) in [0, 1] -> (T, H, W, 3) uint8."""
    frames = frames.float().clamp(0, 1).mul(255).round().byte().cpu()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return frames.permute(0, 2, 3, 1).numpy()


def write_gif(path: Path, cond: torch.Tensor, truth: torch.Tensor, best: torch.Tensor, rand: torch.Tensor) -> None:
    """The four panels side by side over time; the condition panel holds its last frame while the others
    predict, and a red bar marks the predicted frames."""
    c = cond.shape[0]
    held = torch.cat([cond, cond[-1:].expand(truth.shape[0], -1, -1, -1)])
    panels = [held, torch.cat([cond, truth]), torch.cat([cond, best]), torch.cat([cond, rand])]
    grid = np.concatenate([_to_uint8(p) for p in panels], axis=2)
    images = []
    for t, frame in enumerate(grid):
        frame = frame.copy()
        if t >= c:
            frame[:2, frame.shape[1] // 4 :] = (255, 0, 0)
        images.append(PIL.Image.fromarray(frame))
    with atomic_path(path) as tmp:
        export_to_gif(images, str(tmp), fps=4)
