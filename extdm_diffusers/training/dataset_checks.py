"""What the training scripts check of ``--dataset_dir`` before training: both splits load, every video is long
enough, the frames have the size and channels the models take."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from diffusers.utils import logging

from .arguments import TrainingArgumentError

if TYPE_CHECKING:
    import datasets

    from ..benchmarks import Benchmark

logger = logging.get_logger("extdm_diffusers.training")


def load_splits(dataset_dir: str, without_test: str) -> Tuple["datasets.Dataset", Optional["datasets.Dataset"]]:
    """The ``train`` split (an error naming --dataset_dir if it cannot be loaded) and the ``test`` split, or
    None with a warning that validation then only ``without_test`` (e.g. "saves the pipeline")."""
    from ..data import load_video_dataset

    try:
        train = load_video_dataset(dataset_dir, "train")
    except Exception as error:  # noqa: BLE001 - name the argument whatever went wrong
        raise TrainingArgumentError(f"--dataset_dir: cannot load the 'train' split of {dataset_dir!r}: {error}") from error
    try:
        test = load_video_dataset(dataset_dir, "test")
    except Exception:  # noqa: BLE001 - a dataset without a test split still trains
        logger.warning(f"--dataset_dir {dataset_dir} has no 'test' split: validation only {without_test}")
        test = None
    return train, test


def dataset_video_lengths(dataset: "datasets.Dataset") -> List[int]:
    from ..data.video_schema import NUM_FRAMES_COLUMN

    return [int(n) for n in dataset[NUM_FRAMES_COLUMN]] if NUM_FRAMES_COLUMN in dataset.column_names else []


def check_clip_lengths(dataset: "datasets.Dataset", needed: int, split: str, what: str) -> None:
    """Every video of ``dataset`` holds at least ``needed`` frames, else an error naming --dataset_dir."""
    lengths = dataset_video_lengths(dataset)
    if not lengths:
        raise TrainingArgumentError(f"--dataset_dir: the {split!r} split has no videos (or no num_frames column)")
    short = [i for i, n in enumerate(lengths) if n < needed]
    if short:
        raise TrainingArgumentError(
            f"--dataset_dir: {len(short)} of {len(lengths)} {split!r} videos have fewer than the {needed} frames "
            f"{what} needs (e.g. video {short[0]} has {lengths[short[0]]})"
        )


def first_frame_shape(dataset: "datasets.Dataset") -> Tuple[int, int, int]:
    """(H, W, C) of the first stored frame."""
    from ..data.video_schema import VIDEO_COLUMN, decode_frame

    row = dataset.with_format("arrow")[0]
    frame = decode_frame(row.column(VIDEO_COLUMN)[0].values[0].as_py())
    return tuple(frame.shape)  # type: ignore[return-value]


def check_frame_shape(dataset: "datasets.Dataset", benchmark: "Benchmark", size: Optional[int], channels: int, model_arg: str) -> None:
    """The frames the models will see (after the benchmark's crop) must match the autoencoder's size and channels."""
    h, w, c = first_frame_shape(dataset)
    if benchmark.crop_width is not None:
        w = min(w, benchmark.crop_width)
    if size is not None and (h, w) != (size, size):
        raise TrainingArgumentError(
            f"{model_arg}: the autoencoder takes {size}x{size} frames (sample_size) but --dataset_dir holds {h}x{w} "
            "frames; rebuild the dataset at that size or set sample_size to match"
        )
    if c not in (1, channels) and not (c == 1 and channels == 3):
        raise TrainingArgumentError(f"{model_arg}: the autoencoder takes {channels} channels but --dataset_dir frames have {c}")
