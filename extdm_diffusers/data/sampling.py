"""Which videos and frames the original ExtDM evaluation uses, and the train-time augmentations.

Evaluation clip selection (``data/video_dataset.py`` + ``scripts/DM/valid.py`` of the original):

* ``total_videos`` (256 in every config) clips are taken; clip ``i`` comes from video
  ``round(i / (total_videos - 1) * (M - 1))`` where ``M`` is the number of candidate
  videos: "sample to 256" spreads 256 clips evenly over the split, repeating videos
  when the split is smaller (KTH: 120 videos) and skipping some when it is larger
  (Cityscapes: 1,525). Python's ``round`` (ties to even) as in the original.
* UCF-101 candidates are every 10th test video (``M = num_test // 10``, video ``10 * k``).
* Clips start at frame 0 (``random_time=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch


def evaluation_video_indices(num_available: int, num_videos: int | None = None, stride: int = 1) -> list[int]:
    """Row indices of the videos behind evaluation clips ``0 .. num_videos - 1``.

    ``num_available`` videos are in the split; every ``stride``-th one is a
    candidate (``M = num_available // stride``). ``num_videos=None`` takes each
    candidate once.
    """
    if num_available <= 0:
        raise ValueError(f"num_available must be positive, got {num_available}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    num_candidates = num_available // stride
    if num_candidates == 0:
        raise ValueError(f"no candidate videos: {num_available} videos with stride {stride}")
    if num_videos is None:
        return [k * stride for k in range(num_candidates)]
    if num_videos <= 0:
        raise ValueError(f"num_videos must be positive, got {num_videos}")
    if num_videos == 1:  # the original divides by zero here
        return [0]
    return [round(i / (num_videos - 1) * (num_candidates - 1)) * stride for i in range(num_videos)]


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
