"""Cityscapes builder on leftImg8bit_sequence-style PNG folders: 30-frame snippets, centre crop, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets_helpers import load_builder

cityscapes = load_builder("cityscapes")


def _write_snippet(root, split, city, seq, first_frame, value):
    for k in range(30):
        frame = np.zeros((16, 32, 3), np.uint8)  # 1:2 like Cityscapes' 1024x2048
        frame[:, 8:24] = (value, k, 255 - value)  # centre square is uniform; the sides are black
        Image.fromarray(frame).save(root / split / city / f"{city}_{seq:06d}_{first_frame + k:06d}_leftImg8bit.png")


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "leftImg8bit_sequence"
    layout = {"train": [("aachen", 0, 0), ("aachen", 1, 100), ("bochum", 0, 19)], "val": [("frankfurt", 0, 5)],
              "test": [("berlin", 2, 30), ("bonn", 0, 0)]}
    for split, snippets in layout.items():
        for index, (city, seq, first) in enumerate(snippets):
            (root / split / city).mkdir(parents=True, exist_ok=True)
            _write_snippet(root, split, city, seq, first, 40 * index + 10)
    return tmp_path


def test_snippets_become_30_frame_square_videos(raw, tmp_path):
    dataset = cityscapes.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "out"), "--image_size", "8"])
    assert {k: len(v) for k, v in dataset.items()} == {"train": 3, "val": 1, "test": 2}
    assert dataset["train"]["id"] == ["aachen_000000", "aachen_000001", "bochum_000000"]
    row = dataset["train"][1]
    video = np.stack([np.asarray(f) for f in row["video"]])
    assert video.shape == (30, 8, 8, 3) and video.dtype == np.uint8 and row["num_frames"] == 30
    assert row["city"] == "aachen" and row["first_frame"] == 100
    # centre crop keeps only the uniform middle square: no black border after resizing
    assert (video[:, :, :, 0] == 50).all() and video[:, 4, 4, 1].tolist() == list(range(30))


def test_accepts_the_parent_folder_and_rejects_download(raw, tmp_path):
    dataset = cityscapes.main(["--raw_dir", str(raw / "leftImg8bit_sequence"), "--output_dir", str(tmp_path / "o"),
                               "--image_size", "8"])
    assert len(dataset["test"]) == 2
    with pytest.raises(cityscapes.BuildError, match="cannot be downloaded without your account"):
        cityscapes.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "o2"), "--download"])


def test_incomplete_snippet_and_corrupt_frame_are_named(raw, tmp_path):
    victim = raw / "leftImg8bit_sequence" / "test" / "bonn" / "bonn_000000_000007_leftImg8bit.png"
    victim.write_bytes(b"\x89PNG broken")
    with pytest.raises(cityscapes.BuildError, match="bonn_000000_000007_leftImg8bit.png.*corrupt"):
        cityscapes.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "o"), "--image_size", "8"])
    victim.unlink()
    with pytest.raises(cityscapes.BuildError, match="snippet bonn_000000 has 29 frames, expected 30"):
        cityscapes.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "o"), "--image_size", "8"])
    with pytest.raises(cityscapes.BuildError, match="must be the leftImg8bit_sequence folder"):
        (tmp_path / "empty").mkdir()
        cityscapes.main(["--raw_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o3")])
