"""The clips and frame pairs of each benchmark, as the benchmark registry (``extdm_diffusers.benchmarks``) says.

``clip_dataset(name, path, split)`` gives the clips that the original DM training
or evaluation reads. Note what the original does and does not augment: DM
training clips (``VideoDataset``) are *not* augmented; the flip/jitter
``augmentation`` below is what the flow autoencoder's frame pairs
(``TwoFramesDataset``) get -- use it with ``FramePairDataset``.
"""

from __future__ import annotations

import os
from typing import Any

import datasets

from .clips import FramePairDataset, VideoClipDataset, load_video_dataset


def _benchmark(name: str):
    from ..benchmarks import get_benchmark  # the registry imports this package: resolve it at call time

    return get_benchmark(name)


def clip_dataset(
    name: str, path_or_repo: str | os.PathLike | datasets.Dataset, split: str, **overrides: Any
) -> VideoClipDataset:
    """The original's DM clips: ``split == "train"`` random cond+train_pred clips, else the 256 evaluation clips."""
    benchmark = _benchmark(name)
    dataset = path_or_repo if isinstance(path_or_repo, datasets.Dataset) else load_video_dataset(path_or_repo, split)
    train = split == "train"
    protocol = benchmark.evaluation
    kwargs: dict[str, Any] = {
        "num_frames": (benchmark.train_cond_frames + benchmark.train_pred_frames) if train
        else (protocol.cond_frames + protocol.pred_frames),
        "train": train,
        "crop_width": benchmark.crop_width,
    }
    if not train:
        kwargs.update(num_videos=protocol.num_videos, video_stride=protocol.video_stride)
    kwargs.update(overrides)
    return VideoClipDataset(dataset, **kwargs)


def frame_pair_dataset(
    name: str, path_or_repo: str | os.PathLike | datasets.Dataset, split: str = "train", **overrides: Any
) -> FramePairDataset:
    """The original's flow-autoencoder training pairs, with its augmentations and frame distances."""
    benchmark = _benchmark(name)
    training = benchmark.autoencoder_training
    dataset = path_or_repo if isinstance(path_or_repo, datasets.Dataset) else load_video_dataset(path_or_repo, split)
    kwargs: dict[str, Any] = {
        "min_distance": training.min_frame_distance,
        "max_distance": training.max_frame_distance,
        "augmentation": training.augmentation,
        "crop_width": benchmark.crop_width,
    }
    kwargs.update(overrides)
    return FramePairDataset(dataset, **kwargs)
