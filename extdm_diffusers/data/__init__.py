"""Video datasets for ExtDM: the shared 🤗 datasets schema and the clip loaders that training and evaluation use."""

from .clips import FramePairDataset, StreamingVideoClipDataset, VideoClipDataset, load_video_dataset
from .presets import clip_dataset, frame_pair_dataset
from .sampling import ClipAugmentation, evaluation_video_indices
from .video_schema import decode_frames, encode_frames, video_features

__all__ = [
    "ClipAugmentation",
    "FramePairDataset",
    "StreamingVideoClipDataset",
    "VideoClipDataset",
    "clip_dataset",
    "decode_frames",
    "encode_frames",
    "evaluation_video_indices",
    "frame_pair_dataset",
    "load_video_dataset",
    "video_features",
]
