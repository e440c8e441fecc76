"""Per-benchmark data settings of the original ExtDM configs (``config/DM/*.yaml``, ``config/AE/*.yaml``).

``clip_dataset(name, path, split)`` gives the clips that the original DM training
or evaluation reads. Note what the original does and does not augment: DM
training clips (``VideoDataset``) are *not* augmented; the flip/jitter
``augmentation`` below is what the flow autoencoder's frame pairs
(``TwoFramesDataset``) get -- use it with ``FramePairDataset``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import datasets

from .clips import FramePairDataset, VideoClipDataset, load_video_dataset
from .sampling import ClipAugmentation

_JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}


@dataclass(frozen=True)
class BenchmarkPreset:
    image_size: int
    cond_frames: int
    train_pred_frames: int  # DM config train_params.pred_frames
    eval_pred_frames: int  # DM config valid_params.pred_frames
    eval_split: str
    augmentation: ClipAugmentation
    ae_min_distance: int  # AE config min/max_frame_distance
    ae_max_distance: int
    num_eval_videos: int = 256
    eval_video_stride: int = 1
    crop_width: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: dict[str, BenchmarkPreset] = {
    "smmnist": BenchmarkPreset(64, 10, 5, 10, "test", ClipAugmentation(time_flip=True, **_JITTER), 0, 10),
    # the original calls KTH's held-out persons 21-25 "valid"; the builder names that split "test"
    "kth": BenchmarkPreset(64, 10, 20, 40, "test", ClipAugmentation(horizontal_flip=True, **_JITTER), 0, 20),
    "bair": BenchmarkPreset(64, 2, 10, 28, "test", ClipAugmentation(**_JITTER), 10, 30),
    "cityscapes": BenchmarkPreset(128, 2, 5, 28, "test", ClipAugmentation(horizontal_flip=True, **_JITTER), 0, 30),
    # UCF-101 frames are stored 64 x 85 (4:3); clips are cropped to 64 x 64, test uses every 10th video
    "ucf101": BenchmarkPreset(64, 4, 8, 16, "test", ClipAugmentation(horizontal_flip=True, **_JITTER), 0, 20,
                              eval_video_stride=10, crop_width=64),
}


def _preset(name: str) -> BenchmarkPreset:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def clip_dataset(
    name: str, path_or_repo: str | os.PathLike | datasets.Dataset, split: str, **overrides: Any
) -> VideoClipDataset:
    """The original's DM clips: ``split == "train"`` random cond+train_pred clips, else the 256 evaluation clips."""
    preset = _preset(name)
    dataset = path_or_repo if isinstance(path_or_repo, datasets.Dataset) else load_video_dataset(path_or_repo, split)
    train = split == "train"
    kwargs: dict[str, Any] = {
        "num_frames": preset.cond_frames + (preset.train_pred_frames if train else preset.eval_pred_frames),
        "train": train,
        "crop_width": preset.crop_width,
    }
    if not train:
        kwargs.update(num_videos=preset.num_eval_videos, video_stride=preset.eval_video_stride)
    kwargs.update(overrides)
    return VideoClipDataset(dataset, **kwargs)


def frame_pair_dataset(
    name: str, path_or_repo: str | os.PathLike | datasets.Dataset, split: str = "train", **overrides: Any
) -> FramePairDataset:
    """The original's flow-autoencoder training pairs, with its augmentations and frame distances."""
    preset = _preset(name)
    dataset = path_or_repo if isinstance(path_or_repo, datasets.Dataset) else load_video_dataset(path_or_repo, split)
    kwargs: dict[str, Any] = {
        "min_distance": preset.ae_min_distance,
        "max_distance": preset.ae_max_distance,
        "augmentation": preset.augmentation,
        "crop_width": preset.crop_width,
    }
    kwargs.update(overrides)
    return FramePairDataset(dataset, **kwargs)
