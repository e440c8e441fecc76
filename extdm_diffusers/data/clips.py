"""PyTorch datasets of clips over the 🤗 datasets that the dataset builders write (``extdm-build-dataset``).

* ``VideoClipDataset``  -- map-style, ``cond + pred`` frames per item: random start
  (and optional augmentation) for training, the original's deterministic clips for
  evaluation (see ``evaluation_video_indices``).
* ``FramePairDataset``  -- two frames of one video at a bounded distance, with the
  original's augmentations: what the flow autoencoder trains on.
* ``StreamingVideoClipDataset`` -- iterable version of ``VideoClipDataset`` over a
  streaming ``datasets.IterableDataset`` (UCF-101 from the Hub without a local copy).

Items are dicts of tensors/ints/strings that the default ``collate_fn`` batches;
clips are float32 ``(T, C, H, W)`` in [0, 1]. The datasets hold only a
memory-mapped Arrow table, so they pickle cheaply into ``num_workers > 0`` workers,
and all randomness comes from torch's RNG, which PyTorch seeds per worker.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .augmentation import ClipAugmentation
from .video_schema import ID_COLUMN, NUM_FRAMES_COLUMN, VIDEO_COLUMN, decode_frame, decode_frames, without_frame_decoding


def load_video_dataset(
    path_or_repo: str | os.PathLike, split: str, *, streaming: bool = False, **load_kwargs: Any
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of a builder's output: a local ``save_to_disk`` folder or a Hub repo id."""
    if os.path.isdir(path_or_repo):
        if streaming:
            raise ValueError(f"{path_or_repo} is a local folder; streaming is for Hub repos")
        loaded = datasets.load_from_disk(str(path_or_repo))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise KeyError(f"{path_or_repo} has no split {split!r}; it has {sorted(loaded)}")
            return loaded[split]
        return loaded
    return datasets.load_dataset(str(path_or_repo), split=split, streaming=streaming, **load_kwargs)


def evaluation_video_indices(num_available: int, num_videos: int | None = None, stride: int = 1) -> list[int]:
    """Row indices of the videos behind evaluation clips ``0 .. num_videos - 1``, as the original ExtDM
    evaluation picks them (``data/video_dataset.py`` + ``scripts/DM/valid.py``).

    ``num_available`` videos are in the split; every ``stride``-th one is a candidate (``M = num_available //
    stride``; UCF-101: every 10th test video). Clip ``i`` comes from candidate ``round(i / (num_videos - 1) *
    (M - 1))``: "sample to 256" spreads the clips evenly over the split, repeating videos when the split is
    smaller (KTH: 120 videos) and skipping some when it is larger (Cityscapes: 1,525); Python's ``round`` (ties
    to even) as in the original. ``num_videos=None`` takes each candidate once. Clips start at frame 0.
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


def _frames_to_clip(frames: np.ndarray, rgb: bool) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (T, C, H, W) float32 in [0, 1]; grey repeated to 3 channels when ``rgb``."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255)
    if rgb and clip.shape[1] == 1:
        clip = clip.expand(-1, 3, -1, -1).contiguous()
    return clip


def _crop_offset(width: int, crop_width: int, random_offset: bool) -> int:
    if crop_width > width:
        raise ValueError(f"crop_width {crop_width} is wider than the frames ({width} pixels)")
    if random_offset:
        return int(torch.randint(0, width - crop_width + 1, ()).item())
    return (width - crop_width) // 2  # the original's centre: int((W - crop) / 2)


class _ClipReader:
    """Shared logic: which frames, how to decode, crop and augment them."""

    def __init__(
        self,
        num_frames: int,
        train: bool,
        random_start: bool | None,
        start_frame: int,
        augmentation: ClipAugmentation | None,
        rgb: bool,
        crop_width: int | None,
    ) -> None:
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        self.num_frames = num_frames
        self.train = train
        self.random_start = train if random_start is None else random_start
        self.start_frame = start_frame
        self.augmentation = augmentation
        self.rgb = rgb
        self.crop_width = crop_width

    def pick_start(self, total: int, video_id: str) -> int:
        if total < self.num_frames + (0 if self.random_start else self.start_frame):
            raise ValueError(
                f"video {video_id!r} has {total} frames; a clip needs {self.num_frames}"
                + ("" if self.random_start else f" from frame {self.start_frame}")
            )
        if self.random_start:
            # every valid start, the last one included (the original's np.random.choice(total - n) never picks it)
            return int(torch.randint(0, total - self.num_frames + 1, ()).item())
        return self.start_frame

    def finish(self, frames: np.ndarray) -> torch.Tensor:
        if self.crop_width is not None:
            offset = _crop_offset(frames.shape[2], self.crop_width, random_offset=self.train)
            frames = frames[:, :, offset:offset + self.crop_width]
        clip = _frames_to_clip(frames, self.rgb)
        if self.augmentation is not None:
            clip = self.augmentation(clip)
        return clip


class VideoClipDataset(Dataset):
    """Clips of ``num_frames`` (= cond + pred) consecutive frames from a video dataset.

    Training (``train=True``): item ``i`` is video ``i`` with a uniformly random
    start frame, optionally augmented, random crop when ``crop_width`` is set.
    Evaluation (``train=False``): the original's deterministic clips -- videos per
    ``evaluation_video_indices(len(dataset), num_videos, video_stride)``, start at
    ``start_frame`` (0), centre crop.

    Args:
        dataset: a split as ``datasets.Dataset`` (or a folder written by ``save_to_disk``).
        num_frames: frames per clip, cond + pred.
        train: training (random) or evaluation (deterministic) clips.
        num_videos: the original's ``total_videos`` (256 for every benchmark's test set);
            None = each candidate video once.
        video_stride: only every ``video_stride``-th video is a candidate (UCF-101 test: 10).
        random_start: override the start policy (default: random when training).
        start_frame: first frame of non-random clips.
        augmentation: a ``ClipAugmentation`` applied per clip.
        rgb: repeat grey frames to 3 channels (the ExtDM models take 3).
        crop_width: crop frames to this width (UCF-101 stores 4:3 frames and crops a square).
    """

    def __init__(
        self,
        dataset: datasets.Dataset | str | os.PathLike,
        num_frames: int,
        *,
        train: bool,
        num_videos: int | None = None,
        video_stride: int = 1,
        random_start: bool | None = None,
        start_frame: int = 0,
        augmentation: ClipAugmentation | None = None,
        rgb: bool = True,
        crop_width: int | None = None,
    ) -> None:
        if not isinstance(dataset, datasets.Dataset):
            loaded = datasets.load_from_disk(str(dataset))
            if not isinstance(loaded, datasets.Dataset):
                raise TypeError(f"{dataset} holds a DatasetDict; pass one split (e.g. its 'train' folder)")
            dataset = loaded
        missing = {VIDEO_COLUMN, NUM_FRAMES_COLUMN, ID_COLUMN} - set(dataset.column_names)
        if missing:
            raise ValueError(f"dataset lacks the columns {sorted(missing)}; was it written by dataset_builders/?")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.reader = _ClipReader(num_frames, train, random_start, start_frame, augmentation, rgb, crop_width)
        # Arrow format: rows come back as tables, nothing is decoded until we ask
        self._rows = dataset.with_format("arrow")
        if train and num_videos is None and video_stride == 1:
            self.video_indices = None  # identity: item i is video i
            self._length = len(dataset)
        else:
            self.video_indices = evaluation_video_indices(len(dataset), num_videos, video_stride)
            self._length = len(self.video_indices)

    def __len__(self) -> int:
        return self._length

    def video_index(self, index: int) -> int:
        return index if self.video_indices is None else self.video_indices[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} clips")
        video_index = self.video_index(index)
        row = self._rows[video_index]
        total = row.column(NUM_FRAMES_COLUMN)[0].as_py()
        video_id = row.column(ID_COLUMN)[0].as_py()
        start = self.reader.pick_start(total, video_id)
        png_bytes = row.column(VIDEO_COLUMN)[0].values.field("bytes")
        frames = np.stack(
            [decode_frame(png_bytes[i].as_py()) for i in range(start, start + self.reader.num_frames)]
        )
        return {
            "video": self.reader.finish(frames),
            "video_index": video_index,
            "start_frame": start,
            "id": video_id,
        }


class FramePairDataset(Dataset):
    """Two frames of one video, ``min_distance <= b - a <= max_distance`` apart, for flow-autoencoder training.

    As the original's ``TwoFramesDataset``: two frame indices drawn uniformly with
    replacement and sorted, redrawn until their distance is in range; the pair is
    then augmented like a two-frame clip. Returns ``source`` and ``driving``
    ``(C, H, W)`` float tensors in [0, 1].
    """

    def __init__(
        self,
        dataset: datasets.Dataset | str | os.PathLike,
        *,
        min_distance: int = 0,
        max_distance: int = 1000,
        augmentation: ClipAugmentation | None = None,
        rgb: bool = True,
        crop_width: int | None = None,
        train: bool = True,
        max_draws: int = 10000,
    ) -> None:
        if not 0 <= min_distance <= max_distance:
            raise ValueError(f"need 0 <= min_distance <= max_distance, got {min_distance}, {max_distance}")
        self.clips = VideoClipDataset(dataset, 1, train=train, rgb=rgb, crop_width=crop_width)
        self.min_distance = min_distance
        self.max_distance = max_distance
        self.augmentation = augmentation
        self.max_draws = max_draws

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.clips._rows[index]
        total = row.column(NUM_FRAMES_COLUMN)[0].as_py()
        video_id = row.column(ID_COLUMN)[0].as_py()
        if total <= self.min_distance:
            raise ValueError(f"video {video_id!r} has {total} frames, too few for min_distance {self.min_distance}")
        for _ in range(self.max_draws):
            first, second = sorted(torch.randint(0, total, (2,)).tolist())
            if self.min_distance <= second - first <= self.max_distance:
                break
        else:
            raise RuntimeError(f"no frame pair of {video_id!r} within distance bounds after {self.max_draws} draws")
        png_bytes = row.column(VIDEO_COLUMN)[0].values.field("bytes")
        frames = np.stack([decode_frame(png_bytes[i].as_py()) for i in (first, second)])
        pair = self.clips.reader.finish(frames)
        if self.augmentation is not None:
            pair = self.augmentation(pair)
        return {
            "source": pair[0],
            "driving": pair[1],
            "frame_indices": torch.tensor([first, second]),
            "video_index": index,
            "id": video_id,
        }


class StreamingVideoClipDataset(IterableDataset):
    """``VideoClipDataset`` for a streaming ``datasets.IterableDataset`` (e.g. UCF-101 from the Hub).

    Training: every video once per pass (shuffle with ``shuffle_buffer``), random
    start; with ``num_workers > 0`` 🤗 datasets gives each worker its own shards (so
    the stream needs at least ``num_workers`` shards). Evaluation: the same clips as
    ``VideoClipDataset``, in the same order, from one ordered pass (``num_workers``
    0 or 1); the candidate count comes from ``num_available`` or the split info.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        num_frames: int,
        *,
        train: bool,
        num_videos: int | None = None,
        video_stride: int = 1,
        num_available: int | None = None,
        random_start: bool | None = None,
        start_frame: int = 0,
        augmentation: ClipAugmentation | None = None,
        rgb: bool = True,
        crop_width: int | None = None,
        shuffle_buffer: int | None = None,
        seed: int = 0,
    ) -> None:
        self.reader = _ClipReader(num_frames, train, random_start, start_frame, augmentation, rgb, crop_width)
        self.dataset = without_frame_decoding(dataset)
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.video_indices: list[int] | None = None
        if not train:
            if num_available is None:
                split_info = (dataset.info.splits or {}).get(str(dataset.split)) if dataset.split else None
                num_available = split_info.num_examples if split_info else None
            if num_available is None:
                raise ValueError("evaluation over a stream needs num_available (the split's number of videos)")
            self.video_indices = evaluation_video_indices(num_available, num_videos, video_stride)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently each epoch (when ``shuffle_buffer`` is set)."""
        self.epoch = epoch

    def _clip(self, example: dict[str, Any], video_index: int) -> dict[str, Any]:
        total = int(example[NUM_FRAMES_COLUMN])
        start = self.reader.pick_start(total, example[ID_COLUMN])
        frames = decode_frames(example[VIDEO_COLUMN], range(start, start + self.reader.num_frames))
        return {"video": self.reader.finish(frames), "video_index": video_index, "start_frame": start,
                "id": example[ID_COLUMN]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if self.train:
            stream = self.dataset
            if self.shuffle_buffer:
                stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
                stream.set_epoch(self.epoch)
            # inside DataLoader workers, 🤗 datasets hands each worker its own shards by itself
            for position, example in enumerate(stream):
                yield self._clip(example, position)
            return
        if worker is not None and worker.num_workers > 1:
            raise ValueError(
                "streaming evaluation needs one ordered pass over the stream: use num_workers <= 1 (or a local copy "
                "with VideoClipDataset)"
            )
        # evaluation: one ordered pass; the wanted indices are sorted, repeats give repeated clips
        wanted = self.video_indices
        clip_number, video_index = 0, -1
        for video_index, example in enumerate(self.dataset):
            while clip_number < len(wanted) and wanted[clip_number] == video_index:
                yield self._clip(example, video_index)
                clip_number += 1
            if clip_number == len(wanted):
                return
        if clip_number < len(wanted):
            raise ValueError(f"the stream ended after {video_index + 1} videos; clip {clip_number} needs video "
                             f"{wanted[clip_number]} (is num_available right?)")
