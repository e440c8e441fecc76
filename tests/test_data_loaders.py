"""Clip loaders: the original's evaluation clips, random training clips, augmentations, workers, streaming."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from extdm_diffusers.benchmarks import get_benchmark
from extdm_diffusers.data import (
    ClipAugmentation,
    FramePairDataset,
    StreamingVideoClipDataset,
    VideoClipDataset,
    encode_frames,
    evaluation_video_indices,
    video_features,
)


def _video(index: int, frames: int, height: int = 8, width: int = 8, channels: int = 1) -> np.ndarray:
    """Frame t of video i is uniform with value i * 10 + t (channel c adds c), so clips are traceable."""
    video = np.zeros((frames, height, width, channels), np.uint8)
    for t in range(frames):
        for c in range(channels):
            video[t, ..., c] = index * 10 + t + c
    return video


def _dataset(lengths, width: int = 8, channels: int = 1) -> datasets.Dataset:
    rows = [{"video": encode_frames(_video(i, n, 8, width, channels)), "num_frames": n, "id": f"v{i}"}
            for i, n in enumerate(lengths)]
    return datasets.Dataset.from_list(rows, features=video_features())


def _values(clip: torch.Tensor) -> list[int]:
    return (clip[:, 0, 0, 0] * 255).round().int().tolist()


# ------------------------------------------------------------- evaluation selection


def test_sample_to_256_matches_the_original_formula():
    kth = evaluation_video_indices(120, 256)  # KTH: 120 test videos spread over 256 clips
    assert len(kth) == 256 and kth[0] == 0 and kth[-1] == 119 and sorted(kth) == kth
    assert kth == [round(i / 255 * 119) for i in range(256)]
    assert set(kth) == set(range(120))  # every video used, some twice
    cityscapes = evaluation_video_indices(1525, 256)
    assert cityscapes[:4] == [0, 6, 12, 18] and cityscapes[-1] == 1524 and len(set(cityscapes)) == 256
    assert evaluation_video_indices(256, 256) == list(range(256))  # SMMNIST, BAIR: identity
    ucf = evaluation_video_indices(3783, 256, stride=10)  # every 10th test video, then sample to 256
    assert ucf[:3] == [0, 10, 30] and ucf[-1] == 3770 and all(i % 10 == 0 for i in ucf)
    assert evaluation_video_indices(5, None, stride=2) == [0, 2]
    assert evaluation_video_indices(7, 1) == [0]
    with pytest.raises(ValueError, match="num_videos must be positive"):
        evaluation_video_indices(7, 0)


def test_evaluation_clips_are_deterministic_and_start_at_frame_0():
    dataset = _dataset([12, 15, 20])
    clips = VideoClipDataset(dataset, 6, train=False, num_videos=5)
    assert len(clips) == 5
    first = [clips[i] for i in range(5)]
    assert [item["video_index"] for item in first] == [0, 0, 1, 2, 2]  # round(i / 4 * 2)
    assert all(item["start_frame"] == 0 for item in first)
    assert _values(first[3]["video"]) == [20, 21, 22, 23, 24, 25]
    again = VideoClipDataset(dataset, 6, train=False, num_videos=5)
    assert all(torch.equal(a["video"], again[i]["video"]) for i, a in enumerate(first))


def test_clip_tensor_format_rgb_and_crop():
    item = VideoClipDataset(_dataset([4]), 4, train=False)[0]
    assert item["video"].shape == (4, 3, 8, 8) and item["video"].dtype == torch.float32
    assert torch.equal(item["video"][:, 0], item["video"][:, 2])  # grey repeated to RGB
    assert 0.0 <= item["video"].min() and item["video"].max() <= 1.0
    grey = VideoClipDataset(_dataset([4]), 4, train=False, rgb=False)[0]["video"]
    assert grey.shape == (4, 1, 8, 8)
    wide = _dataset([4], width=11)
    centre = VideoClipDataset(wide, 2, train=False, crop_width=8)[0]["video"]
    assert centre.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="crop_width 12 is wider"):
        VideoClipDataset(wide, 2, train=False, crop_width=12)[0]


def test_ucf_preset_crops_column_10_of_85_and_strides_by_10():
    frames = np.zeros((20, 64, 85, 3), np.uint8)
    frames[:, :, 10] = 255  # the centre crop's first column
    rows = [{"video": encode_frames(frames if i == 0 else frames[:17]), "num_frames": 20 if i == 0 else 17,
             "id": f"v{i}"} for i in range(25)]
    dataset = datasets.Dataset.from_list(rows, features=video_features())
    clips = get_benchmark("ucf101").clip_dataset(dataset, "test")
    assert clips.video_indices[:3] == [0, 0, 0] and len(clips) == 256 and max(clips.video_indices) == 10
    item = clips[0]
    # the paper's 4 -> 12 (the original YAML's 16 is not what the paper reports)
    assert item["video"].shape == (16, 3, 64, 64) and (item["video"][:, :, :, 0] == 1).all()
    assert get_benchmark("UCF-101").evaluation.video_stride == 10


def test_training_clips_use_every_start_including_the_last():
    clips = VideoClipDataset(_dataset([8]), 6, train=True)
    torch.manual_seed(0)
    starts = {clips[0]["start_frame"] for _ in range(200)}
    assert starts == {0, 1, 2}
    item = clips[0]
    assert _values(item["video"]) == list(range(item["start_frame"], item["start_frame"] + 6))


def test_too_short_videos_raise_a_clear_error():
    with pytest.raises(ValueError, match="video 'v0' has 3 frames; a clip needs 5"):
        VideoClipDataset(_dataset([3]), 5, train=True)[0]
    with pytest.raises(ValueError, match="lacks the columns"):
        VideoClipDataset(datasets.Dataset.from_dict({"x": [1]}), 2, train=True)


# --------------------------------------------------------------------- augmentation


def test_augmentation_from_original_config_and_per_clip_flips():
    config = {"flip_param": {"horizontal_flip": True, "time_flip": False},
              "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}}
    augmentation = ClipAugmentation.from_config(config)
    assert augmentation == ClipAugmentation(horizontal_flip=True, brightness=0.1, contrast=0.1, saturation=0.1,
                                            hue=0.1)
    with pytest.raises(ValueError, match="unsupported keys"):
        ClipAugmentation.from_config({"crop_param": {}})
    clip = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone() / 10
    time_flip = ClipAugmentation(time_flip=True)
    torch.manual_seed(0)
    outcomes = {tuple(time_flip(clip)[:, 0, 0, 0].tolist()) for _ in range(50)}
    assert outcomes == {tuple(clip[:, 0, 0, 0].tolist()), tuple(clip.flip(0)[:, 0, 0, 0].tolist())}
    ramp = torch.linspace(0, 1, 4).view(1, 1, 1, 4).expand(3, 3, 4, 4).clone()
    flips = {tuple(ClipAugmentation(horizontal_flip=True)(ramp)[0, 0, 0].tolist()) for _ in range(50)}
    assert len(flips) == 2
    jittered = ClipAugmentation(brightness=0.5)(torch.full((5, 3, 2, 2), 0.5))
    assert torch.allclose(jittered, jittered[0].expand_as(jittered))  # same factor for every frame
    with pytest.raises(ValueError, match="needs 3-channel clips"):
        ClipAugmentation(hue=0.1)(torch.zeros(2, 1, 4, 4))


def test_frame_pairs_respect_the_distance_bounds():
    pairs = FramePairDataset(_dataset([40, 40]), min_distance=10, max_distance=12)
    torch.manual_seed(0)
    for _ in range(30):
        item = pairs[1]
        first, second = item["frame_indices"].tolist()
        assert 10 <= second - first <= 12
        assert item["source"].shape == (3, 8, 8)
        assert round(item["source"][0, 0, 0].item() * 255) == 10 + first
    with pytest.raises(ValueError, match="too few for min_distance"):
        FramePairDataset(_dataset([5]), min_distance=10)[0]


def test_benchmarks_give_the_original_clip_lengths(tmp_path):
    dataset = _dataset([60] * 3)
    dataset.save_to_disk(str(tmp_path / "kth" / "test"))
    (tmp_path / "kth" / "dataset_dict.json").write_text('{"splits": ["test"]}')
    kth = get_benchmark("kth")
    evaluation = kth.clip_dataset(tmp_path / "kth", "test")
    assert len(evaluation) == 256 and evaluation[0]["video"].shape[0] == 10 + 40
    training = kth.clip_dataset(dataset, "train")
    assert training[0]["video"].shape[0] == 10 + 20
    assert kth.clip_dataset(dataset, "train", num_frames=7)[0]["video"].shape[0] == 7  # overrides win
    pairs = get_benchmark("bair").frame_pairs(dataset)
    assert (pairs.min_distance, pairs.max_distance) == (10, 30)
    assert pairs.augmentation == get_benchmark("bair").autoencoder_training.augmentation


# -------------------------------------------------------------- workers, streaming


def test_dataloader_with_workers_and_pinned_memory():
    clips = VideoClipDataset(_dataset([10] * 8), 4, train=True, augmentation=ClipAugmentation(time_flip=True))
    loader = DataLoader(clips, batch_size=4, num_workers=2, pin_memory=torch.cuda.is_available(), shuffle=True)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (4, 4, 3, 8, 8)
    assert sorted(sum((b["video_index"].tolist() for b in batches), [])) == list(range(8))
    assert isinstance(batches[0]["id"], list)


def test_streaming_evaluation_matches_the_map_style_clips():
    dataset = _dataset([12, 13, 14, 15, 16, 17, 18], channels=3)
    stream = dataset.to_iterable_dataset(num_shards=1)
    mapped = VideoClipDataset(dataset, 5, train=False, num_videos=10, video_stride=2)
    streamed = StreamingVideoClipDataset(stream, 5, train=False, num_videos=10, video_stride=2, num_available=7)
    items = list(streamed)
    assert [i["video_index"] for i in items] == mapped.video_indices
    assert all(torch.equal(a["video"], mapped[k]["video"]) for k, a in enumerate(items))
    in_worker = list(DataLoader(streamed, batch_size=None, num_workers=1))
    assert [i["video_index"] for i in in_worker] == mapped.video_indices
    with pytest.raises(ValueError, match="one ordered pass"):
        list(DataLoader(streamed, batch_size=None, num_workers=2))
    with pytest.raises(ValueError, match="needs num_available"):
        StreamingVideoClipDataset(dataset.to_iterable_dataset(), 5, train=False)


def test_streaming_training_visits_each_video_once_per_worker_pass():
    dataset = _dataset([9] * 6)
    streamed = StreamingVideoClipDataset(dataset.to_iterable_dataset(num_shards=2), 3, train=True, shuffle_buffer=4)
    items = list(DataLoader(streamed, batch_size=None, num_workers=2))
    assert len(items) == 6 and {i["id"] for i in items} == {f"v{k}" for k in range(6)}
    assert all(i["video"].shape == (3, 3, 8, 8) for i in items)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_docs_quick_start_example_runs(tmp_path, monkeypatch):
    from extdm_diffusers.data.builders import smmnist

    monkeypatch.chdir(tmp_path)
    smmnist.main(["--source", "bundled", "--output_dir", "data/smmnist-mini", "--num_train", "16",
                  "--num_test", "4"])
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    block = re.findall(r"```python\n(.*?)```", docs, re.S)[0]
    scope: dict = {}
    exec(compile(block, "docs/datasets.md", "exec"), scope)
    assert tuple(scope["batch"]["video"].shape) == (8, 15, 3, 64, 64)
    assert len(scope["test"]) == 256
