"""The train-time augmentations of the original ExtDM loaders: random time flip, horizontal flip, color jitter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


@dataclass(frozen=True)
class ClipAugmentation:
    """The original's ``augmentation_params``: random time flip, horizontal flip and color jitter.

    One draw per clip: every frame gets the same flip and the same jitter. Works on
    float clips ``(T, C, H, W)`` in [0, 1]; hue and saturation need C == 3.
    """

    time_flip: bool = False
    horizontal_flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    @classmethod
    def from_config(cls, augmentation_params: Mapping[str, Any] | None) -> "ClipAugmentation":
        """From the ``dataset_params.augmentation_params`` block of an original ExtDM yaml config."""
        params = dict(augmentation_params or {})
        unknown = set(params) - {"flip_param", "jitter_param"}
        if unknown:
            raise ValueError(f"augmentation_params: unsupported keys {sorted(unknown)} (expected flip_param, jitter_param)")
        flips = params.get("flip_param") or {}
        jitter = params.get("jitter_param") or {}
        return cls(
            time_flip=bool(flips.get("time_flip", False)),
            horizontal_flip=bool(flips.get("horizontal_flip", False)),
            brightness=float(jitter.get("brightness", 0.0)),
            contrast=float(jitter.get("contrast", 0.0)),
            saturation=float(jitter.get("saturation", 0.0)),
            hue=float(jitter.get("hue", 0.0)),
        )

    @property
    def has_jitter(self) -> bool:
        return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.ndim != 4:
            raise ValueError(f"expected a (T, C, H, W) clip, got shape {tuple(clip.shape)}")
        # independent coin flips (the original skips the horizontal flip whenever it time-flips;
        # no ExtDM config enables both, so the two agree on every benchmark)
        if self.time_flip and torch.rand(()) < 0.5:
            clip = clip.flip(0)
        if self.horizontal_flip and torch.rand(()) < 0.5:
            clip = clip.flip(-1)
        if self.has_jitter:
            if (self.hue > 0 or self.saturation > 0) and clip.shape[1] != 3:
                raise ValueError("hue/saturation jitter needs 3-channel clips; load them with rgb=True")
            from torchvision.transforms import ColorJitter

            # ColorJitter draws its factors (and the order of the four ops) once per call,
            # so the whole clip shares them, as in the original
            clip = ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)(clip)
        return clip
