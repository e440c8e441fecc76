"""Video datasets for ExtDM: the shared 🤗 datasets schema, the clip loaders that training and evaluation use
(a benchmark's own clips: ``get_benchmark(name).clip_dataset(...)`` / ``.frame_pairs(...)``) and, in
``builders``, the dataset builders behind ``extdm-build-dataset``."""

from .augmentation import ClipAugmentation
from .clips import FramePairDataset, StreamingVideoClipDataset, VideoClipDataset, evaluation_video_indices, load_video_dataset
from .video_schema import decode_frames, encode_frames, video_features

__all__ = [
    "ClipAugmentation",
    "FramePairDataset",
    "StreamingVideoClipDataset",
    "VideoClipDataset",
    "decode_frames",
    "encode_frames",
    "evaluation_video_indices",
    "load_video_dataset",
    "video_features",
]
