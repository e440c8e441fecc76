"""BAIR builder on real TFRecord files (protobuf-serialized tf.train.Example), from a tar and from a folder."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from datasets_helpers import bair_example_bytes, load_builder, serve_directory, tf_example_class

bair = load_builder("bair")
tfrecord = load_builder("tfrecord")


def _trajectory(value: int) -> np.ndarray:
    rng = np.random.default_rng(value)
    frames = rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = value  # traceable
    return frames


def _tfrecord(first: int, count: int) -> bytes:
    example_class = tf_example_class()
    stream = io.BytesIO()
    for value in range(first, first + count):
        tfrecord.write_record(stream, bair_example_bytes(example_class, _trajectory(value), seed=value))
    return stream.getvalue()


@pytest.fixture(scope="module")
def bair_tar(tmp_path_factory):
    """bair_robot_pushing_dataset_v0.tar with 2 train files (in non-lexicographic order) and 1 test file."""
    root = tmp_path_factory.mktemp("bair") / "srv"
    root.mkdir()
    files = {"softmotion30_44k/train/traj_256_to_511.tfrecords": _tfrecord(10, 2),
             "softmotion30_44k/train/traj_1024_to_1279.tfrecords": _tfrecord(20, 1),
             "softmotion30_44k/test/traj_0_to_255.tfrecords": _tfrecord(0, 3)}
    with tarfile.open(root / bair.TAR_NAME, "w") as archive:
        for name in ["softmotion30_44k/train/traj_1024_to_1279.tfrecords", *sorted(files)]:
            if name in [m.name for m in archive.getmembers()]:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            archive.addfile(info, io.BytesIO(files[name]))
    return root


def test_crc32c_matches_the_standard_check_value():
    assert tfrecord._crc32c_python(b"123456789") == 0xE3069283


def test_decoder_reads_protobuf_serialized_examples():
    example_class = tf_example_class()
    frames = _trajectory(7)
    parsed = tfrecord.parse_example_bytes_features(bair_example_bytes(example_class, frames))
    assert parsed["29/image_aux1/encoded"] == [frames[29].tobytes()]
    assert "0/action" not in parsed  # float features are skipped


def test_builds_from_the_downloaded_tar(bair_tar, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serve_directory(bair_tar) as (url, seen):
        dataset = bair.main(["--raw_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out"),
                             "--download", "--mirror_url", url])
    assert seen == [("/" + bair.TAR_NAME, None)]
    assert (len(dataset["train"]), len(dataset["test"])) == (3, 3)
    # train files in trajectory order: traj_256 (values 10, 11) before traj_1024 (value 20)
    assert dataset["train"]["id"] == ["traj_256_to_511/0", "traj_256_to_511/1", "traj_1024_to_1279/0"]
    row = dataset["test"][2]
    video = np.stack([np.asarray(f) for f in row["video"]])
    assert video.shape == (30, 64, 64, 3) and video.dtype == np.uint8 and row["num_frames"] == 30
    assert np.array_equal(video, _trajectory(2))  # image_aux1, bit-exact
    assert row["source_file"] == "traj_0_to_255.tfrecords" and row["record_index"] == 2


def test_builds_from_an_extracted_folder(bair_tar, tmp_path):
    with tarfile.open(bair_tar / bair.TAR_NAME) as archive:
        archive.extractall(tmp_path / "raw", filter="data")
    dataset = bair.main(["--raw_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out")])
    assert dataset["test"]["id"] == ["traj_0_to_255/0", "traj_0_to_255/1", "traj_0_to_255/2"]


def test_corrupt_and_missing_inputs_are_reported(bair_tar, tmp_path):
    with pytest.raises(bair.BuildError, match="neither bair_robot_pushing_dataset_v0.tar nor"):
        bair.main(["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    (tmp_path / bair.TAR_NAME).write_bytes(b"\x00garbage" * 100)
    with pytest.raises(bair.BuildError, match="tar"):
        bair.main(["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    # a TFRecord cut in the middle of a record
    folder = tmp_path / "cut" / "softmotion30_44k"
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        (folder / split / "traj_0_to_255.tfrecords").write_bytes(_tfrecord(0, 2)[:-100])
    with pytest.raises(bair.BuildError, match="traj_0_to_255.tfrecords: record 1 is truncated"):
        bair.main(["--raw_dir", str(tmp_path / "cut"), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(bair.BuildError, match="--image_size must be 64"):
        bair.main(["--raw_dir", str(tmp_path / "cut"), "--output_dir", str(tmp_path / "o"), "--image_size", "128"])


def test_data_checksum_catches_flipped_bytes():
    data = bytearray(_tfrecord(0, 1))
    data[5000] ^= 0xFF
    with pytest.raises(tfrecord.TFRecordError, match="bad data checksum"):
        list(tfrecord.read_records(io.BytesIO(bytes(data)), "x", check_data_crc=True))
