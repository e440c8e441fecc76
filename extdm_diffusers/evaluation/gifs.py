"""Labelled GIF grids: the evaluation's clip GIF (condition | truth | best sample (by PSNR) | a random sample) and
the quick start's ``predictions.gif`` (condition | truth | prediction, a row per video) share the drawing."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from diffusers.utils import export_to_gif

from ..file_io import atomic_path

#: panels are upscaled (nearest) to at least this width so that the default font's labels fit above them
MIN_PANEL_WIDTH = 96
GAP = 2  # pixels between panels
BACKGROUND = (64, 64, 64)  # grey, so that the black frames of MNIST-like videos stand out from each other
FONT_SIZE = 12
OBSERVED_COLOUR = (255, 255, 255)
PREDICTED_COLOUR = (255, 64, 64)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) in [0, 1] -> (..., H, W, 3) uint8."""
    frames = frames.float().clamp(0, 1).mul(255).round().byte().cpu()
    if frames.shape[-3] == 1:
        frames = frames.expand(*frames.shape[:-3], 3, *frames.shape[-2:])
    return frames.movedim(-3, -1).numpy()


def _font():
    """Pillow's default font at ``FONT_SIZE`` (Pillow >= 10.1), else its fixed-size bitmap default."""
    try:
        return PIL.ImageFont.load_default(size=FONT_SIZE)
    except TypeError:
        return PIL.ImageFont.load_default()


def _centred(draw: PIL.ImageDraw.ImageDraw, x: float, y: float, text: str, font, fill) -> None:
    """``text`` centred on ``x`` from ``y`` down (no ``anchor``: older Pillow's bitmap default font lacks it)."""
    draw.text((round(x - draw.textlength(text, font=font) / 2), y), text, fill=fill, font=font)


def labelled_frames(columns: Sequence[Tuple[str, torch.Tensor]], num_observed: int) -> List[PIL.Image.Image]:
    """One image per time step: the ``columns`` (label, frames (T, C, H, W) or rows of them (R, T, C, H, W), in
    [0, 1]) side by side, upscaled, their labels above and a frame counter below ("observed t/C" in white,
    "predicted t/P" in red from frame ``num_observed`` on)."""
    if not columns:
        raise ValueError("`columns` must hold at least one (label, frames) pair")
    videos = [frames[None] if frames.ndim == 4 else frames for _, frames in columns]
    shapes = {tuple(v.shape[:2]) + tuple(v.shape[-2:]) for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"every column of `columns` must have the same rows, frames and frame size, got {sorted(shapes)}")
    rows, steps, height, width = shapes.pop()
    if not 0 <= num_observed <= steps:
        raise ValueError(f"`num_observed` must lie in [0, {steps}] (the frames per column), got {num_observed}")
    scale = max(1, -(-MIN_PANEL_WIDTH // width))
    panel_w, panel_h = width * scale, height * scale
    font = _font()
    bottom = font.getbbox("Ag")[3]
    line = bottom + 4  # the text's height plus a margin
    canvas_w = len(columns) * panel_w + (len(columns) - 1) * GAP
    canvas_h = line + rows * panel_h + (rows - 1) * GAP + line
    # (T, rows, H, W, 3) per column, upscaled once
    pixels = [np.repeat(np.repeat(_to_uint8(v).swapaxes(0, 1), scale, axis=2), scale, axis=3) for v in videos]
    images = []
    for t in range(steps):
        canvas = PIL.Image.new("RGB", (canvas_w, canvas_h), BACKGROUND)
        draw = PIL.ImageDraw.Draw(canvas)
        for c, ((label, _), column) in enumerate(zip(columns, pixels)):
            x = c * (panel_w + GAP)
            _centred(draw, x + panel_w / 2, 2, label, font, OBSERVED_COLOUR)
            for r in range(rows):
                canvas.paste(PIL.Image.fromarray(column[t, r]), (x, line + r * (panel_h + GAP)))
        predicted = t >= num_observed
        counter = (f"predicted {t - num_observed + 1}/{steps - num_observed}" if predicted
                   else f"observed {t + 1}/{num_observed}")
        _centred(draw, canvas_w / 2, canvas_h - line + 2, counter, font,
                 PREDICTED_COLOUR if predicted else OBSERVED_COLOUR)
        images.append(canvas)
    return images


def write_labelled_gif(path: Path, columns: Sequence[Tuple[str, torch.Tensor]], num_observed: int, fps: int = 4) -> None:
    """:func:`labelled_frames` as a GIF at ``path`` (atomically, mode ``0o666 & ~umask``)."""
    images = labelled_frames(columns, num_observed)
    with atomic_path(path) as tmp:
        export_to_gif(images, str(tmp), fps=fps)


def write_gif(path: Path, cond: torch.Tensor, truth: torch.Tensor, best: torch.Tensor, rand: torch.Tensor) -> None:
    """The four panels side by side over time, labelled; the condition panel holds its last frame while the
    others predict, and the counter below turns red on the predicted frames."""
    held = torch.cat([cond, cond[-1:].expand(truth.shape[0], -1, -1, -1)])
    columns = [("condition", held), ("truth", torch.cat([cond, truth])), ("best (PSNR)", torch.cat([cond, best])),
               ("random sample", torch.cat([cond, rand]))]
    write_labelled_gif(path, columns, cond.shape[0])
