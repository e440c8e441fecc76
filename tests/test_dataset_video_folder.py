"""Your own videos: reading video files / GIFs / frame folders, THE frame rule (fit_frames), and the
video_folder builder (splits, skipping, errors, resuming) on a folder of generated files."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from datasets_helpers import REPO, load_builder

from extdm_diffusers.data.builders import BuildError
from extdm_diffusers.data.builders.cli import main as build_dataset
from extdm_diffusers.data.video_files import (
    VideoReadError,
    find_videos,
    fit_frames,
    natural_sort_key,
    read_video,
)

video_folder = load_builder("video_folder")
MP4_TOLERANCE = 6  # H.264 (yuv420p) is lossy: uniform frames come back within a few grey levels


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """An H.264 .mp4 written by ffmpeg through imageio-ffmpeg."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                                ffmpeg_log_level="error")
    for frame in frames:
        writer.append_data(np.ascontiguousarray(frame))
    writer.close()
    return path


def write_gif(path: Path, frames: np.ndarray, duration_ms: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def write_frame_folder(folder: Path, count: int, size=(24, 32)) -> Path:
    """frame_1.png .. frame_<count>.png, grey value 10 * k: the natural order is checkable from the pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count, 0, -1):  # written in reverse, so the file system order is no help
        Image.fromarray(np.full(size, 10 * k, np.uint8)).save(folder / f"frame_{k}.png")
    return folder


def uniform(num_frames: int, height: int, width: int, step: int = 20, offset: int = 10) -> np.ndarray:
    return np.stack([np.full((height, width, 3), offset + step * t, np.uint8) for t in range(num_frames)])


def banded(height: int, width: int) -> np.ndarray:
    """Red | green | blue bands along the longer side, the green one exactly the centred square."""
    frame = np.zeros((height, width, 3), np.uint8)
    long_side, side = max(height, width), min(height, width)
    start, stop = (long_side - side) // 2, (long_side + side) // 2
    bands = [(0, start, 0), (start, stop, 1), (stop, long_side, 2)]
    for first, last, channel in bands:
        if height >= width:
            frame[first:last, :, channel] = 255
        else:
            frame[:, first:last, channel] = 255
    return frame


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """train/: an .mp4, a .GIF, a PNG frame folder, a portrait .mp4, a too-short .mp4, a corrupt .mp4, a text
    file; test/: an .mp4."""
    root = tmp_path_factory.mktemp("videos") / "raw"
    write_mp4(root / "train" / "walk.mp4", uniform(10, 48, 64))
    write_gif(root / "train" / "Jump.GIF", uniform(8, 40, 40, step=25))
    write_frame_folder(root / "train" / "clips" / "frames_a", 12)
    write_mp4(root / "train" / "portrait.mp4", np.stack([banded(64, 32)] * 6))
    write_mp4(root / "train" / "short.mp4", uniform(2, 32, 32))
    (root / "train" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "train" / "notes.txt").write_text("not a video")
    write_mp4(root / "test" / "run.mp4", uniform(7, 32, 48))
    return root


# --- the frame reader -------------------------------------------------------------------------------------------

def test_natural_sort_key_orders_numbers_as_numbers():
    names = ["frame_10.png", "frame_2.png", "Frame_1.png", "frame_1b.png"]
    assert sorted(names, key=natural_sort_key) == ["Frame_1.png", "frame_1b.png", "frame_2.png", "frame_10.png"]


def test_find_videos_lists_files_and_frame_folders_recursively_in_natural_order(raw):
    found = [path.relative_to(raw).as_posix() for path in find_videos(raw)]
    assert found == ["test/run.mp4", "train/broken.mp4", "train/clips/frames_a", "train/Jump.GIF",
                     "train/portrait.mp4", "train/short.mp4", "train/walk.mp4"]


def test_read_video_frame_folder_natural_order_stride_and_max_frames(raw):
    folder = raw / "train" / "clips" / "frames_a"
    video = read_video(folder)
    assert video.frames.shape == (12, 24, 32, 1) and video.fps is None and video.source_size == (24, 32)
    assert video.frames[:, 0, 0, 0].tolist() == [10 * k for k in range(1, 13)]  # frame_2 before frame_10
    strided = read_video(folder, frame_stride=2, max_frames=3)
    assert strided.frames[:, 0, 0, 0].tolist() == [10, 30, 50]


def test_read_video_mp4_stride_max_frames_and_fps(raw):
    video = read_video(raw / "train" / "walk.mp4")
    assert video.frames.shape == (10, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(10.0) and video.source_size == (48, 64)
    expected = np.array([10 + 20 * t for t in range(10)])
    assert np.abs(video.frames[:, 24, 32].astype(int) - expected[:, None]).max() <= MP4_TOLERANCE
    strided = read_video(raw / "train" / "walk.mp4", frame_stride=3)
    assert len(strided.frames) == 4 and strided.fps == pytest.approx(10 / 3)
    assert np.abs(strided.frames[:, 24, 32, 0].astype(int) - expected[::3]).max() <= MP4_TOLERANCE
    assert read_video(raw / "train" / "walk.mp4", frame_stride=3, max_frames=2).num_frames == 2


def test_read_video_gif_any_case_and_fitting_while_reading(raw):
    video = read_video(raw / "train" / "Jump.GIF")
    assert video.frames.shape == (8, 40, 40, 3) and video.fps == pytest.approx(10.0)
    assert video.frames[:, 20, 20, 0].tolist() == [10 + 25 * t for t in range(8)]
    fitted = read_video(raw / "train" / "Jump.GIF", image_size=16, channels=1)
    assert fitted.frames.shape == (8, 16, 16, 1) and fitted.source_size == (40, 40)
    assert fitted.frames[:, 8, 8, 0].tolist() == [10 + 25 * t for t in range(8)]  # grey in, same luminance


def test_read_video_errors_name_the_file_and_what_failed(raw, tmp_path):
    with pytest.raises(VideoReadError, match=r"broken\.mp4: ffmpeg cannot decode it") as caught:
        read_video(raw / "train" / "broken.mp4")
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    with pytest.raises(VideoReadError, match=r"notes\.txt: not a video file \(expected one of \.mp4"):
        read_video(raw / "train" / "notes.txt")
    with pytest.raises(VideoReadError, match=r"missing\.mp4: no such file or folder"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match=r"bad\.png: cannot decode this frame"):
        read_video(tmp_path)
    with pytest.raises(ValueError, match="frame_stride must be a positive integer, got 0"):
        read_video(raw / "train" / "walk.mp4", frame_stride=0)


def test_read_video_refuses_frames_of_differing_sizes(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "f1.png")
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "f2.png")
    with pytest.raises(VideoReadError, match="frame 1 is 10x8 but the first frame is 8x8"):
        read_video(tmp_path)


# --- the frame rule ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(40, 80), (80, 40)])
def test_fit_frames_scales_the_shorter_side_and_centre_crops(height, width):
    fitted = fit_frames(banded(height, width)[None], 20, 3)
    assert fitted.shape == (1, 20, 20, 3) and fitted.dtype == np.uint8
    # away from the crop edges (Lanczos' support reaches past them) only the centre band remains
    assert (fitted[0, 4:16, 4:16] == [0, 255, 0]).all()
    assert fitted[0, ..., 0].max() < 64 and fitted[0, ..., 2].max() < 64


def test_fit_frames_colour_rules_and_identity():
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(fit_frames(frames, 16, 3), frames)  # already square at the size: untouched
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert fit_frames(red, 8, 1).shape == (1, 8, 8, 1) and (fit_frames(red, 8, 1) == 76).all()  # BT.601 luma
    grey = np.full((1, 8, 12, 1), 90, np.uint8)
    rgb = fit_frames(grey, 4, 3)
    assert rgb.shape == (1, 4, 4, 3) and (rgb == 90).all()


def test_fit_frames_rejects_bad_arguments():
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frames must be a \(T, H, W, C\) uint8 array.*float32"):
        fit_frames(frames.astype(np.float32), 8, 3)
    with pytest.raises(ValueError, match="channels must be 1 .* or 3 .*, got 2"):
        fit_frames(frames, 8, 2)
    with pytest.raises(ValueError, match="image_size must be a positive number of pixels, got 0"):
        fit_frames(frames, 0, 3)


# --- the seeded split -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count,fraction,num_test", [(1, 0.1, 0), (2, 0.1, 1), (2, 0.9, 1), (10, 0.1, 1),
                                                     (25, 0.1, 2), (25, 0.3, 8), (40, 0.0, 1), (40, 1.0, 39)])
def test_seeded_split_counts(tmp_path, count, fraction, num_test):
    videos = [f"v{i}.mp4" for i in range(count)]
    _, plan = video_folder.plan_splits(videos, tmp_path, fraction, seed=0)
    assert len(plan["test"]) == num_test and sorted(plan["train"] + plan["test"]) == sorted(videos)
    assert not set(plan["train"]) & set(plan["test"])


def test_seeded_split_is_deterministic_and_seeded(tmp_path):
    videos = [f"clip{i}.mp4" for i in range(50)]
    _, first = video_folder.plan_splits(videos, tmp_path, 0.2, seed=0)
    _, again = video_folder.plan_splits(list(videos), tmp_path, 0.2, seed=0)
    _, other = video_folder.plan_splits(videos, tmp_path, 0.2, seed=1)
    assert first == again and first["test"] != other["test"] and len(other["test"]) == 10
    # pinned: the same files give this split on any machine (numpy's PCG64 permutation), kept in path order
    assert first["test"] == [f"clip{i}.mp4" for i in (2, 3, 4, 18, 20, 23, 24, 26, 34, 36)]


# --- the builder ------------------------------------------------------------------------------------------------

def _args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["--raw_dir", str(raw), "--output_dir", str(out), "--image_size", "32", *extra]


def test_a_corrupt_file_stops_the_build_with_one_line_and_exit_2(raw, tmp_path, monkeypatch, capsys):
    # the thin CLI in dataset_builders/, run in this process (a fresh interpreter would spend seconds on imports)
    monkeypatch.setattr(sys, "argv", ["video_folder.py", *_args(raw, tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "dataset_builders" / "video_folder.py"), run_name="__main__")
    stderr = capsys.readouterr().err  # (progress bars go to stderr too)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert exited.value.code == 2 and "Traceback" not in stderr
    assert len(errors) == 1 and "train/broken.mp4: ffmpeg cannot decode it (moov atom not found" in errors[0], stderr
    assert errors[0].endswith("(pass --skip_invalid to skip such files)")
    assert not (tmp_path / "out" / "train").exists()  # the failed split was not renamed into place


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "out"
    dataset = video_folder.main(_args(raw, out, "--skip_invalid", "--min_frames", "4"))
    return out, dataset


def test_skip_invalid_builds_the_sub_folder_splits_and_lists_what_it_skipped(built):
    out, dataset = built
    assert set(dataset) == {"train", "test"}
    assert sorted(dataset["train"]["id"]) == ["train/Jump.GIF", "train/clips/frames_a", "train/portrait.mp4",
                                              "train/walk.mp4"]
    assert dataset["test"]["id"] == ["test/run.mp4"]
    info = json.loads((out / "extdm_build.json").read_text())
    train = info["splits"]["train"]
    assert [item["path"] for item in train["skipped_invalid"]] == ["train/broken.mp4"]
    assert "ffmpeg cannot decode it" in train["skipped_invalid"][0]["reason"]
    assert train["skipped_short"] == [{"path": "train/short.mp4", "num_frames": 2}]
    assert (train["videos"], train["frames"]) == (4, 10 + 8 + 12 + 6)
    assert info["ignored_files"] == ["train/notes.txt"]
    card = (out / "README.md").read_text()
    assert "shorter side is scaled to --image_size" in card and "centre-cropped" in card
    assert "train/broken.mp4" in card and "train/short.mp4 (2 frames)" in card
    assert json.loads((out / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}


def test_frames_are_square_at_image_size_in_the_chosen_channels(built):
    _, dataset = built
    rows = {row["id"]: row for row in dataset["train"]}
    for name, frames in (("train/walk.mp4", 10), ("train/portrait.mp4", 6), ("train/clips/frames_a", 12)):
        video = np.stack([np.asarray(frame.convert("RGB")) for frame in rows[name]["video"]])
        assert video.shape == (frames, 32, 32, 3) and rows[name]["num_frames"] == frames
    portrait = np.asarray(rows["train/portrait.mp4"]["video"][0].convert("RGB")).astype(int)
    assert np.abs(portrait[8:24, 8:24] - [0, 255, 0]).max() <= 3 * MP4_TOLERANCE  # the centre band only
    assert (rows["train/portrait.mp4"]["source_height"], rows["train/portrait.mp4"]["source_width"]) == (64, 32)
    assert rows["train/walk.mp4"]["fps"] == pytest.approx(10.0) and rows["train/clips/frames_a"]["fps"] is None


def test_rerun_skips_finished_splits_and_keeps_the_skip_lists(raw, built, capsys):
    out, _ = built
    mtime = (out / "train" / "state.json").stat().st_mtime_ns
    dataset = video_folder.main(_args(raw, out, "--skip_invalid", "--min_frames", "4"))
    printed = capsys.readouterr().out
    assert "train: already built" in printed and "test: already built" in printed
    assert (out / "train" / "state.json").stat().st_mtime_ns == mtime and len(dataset["train"]) == 4
    assert "skipped 1 invalid video (--skip_invalid): train/broken.mp4" in printed
    info = json.loads((out / "extdm_build.json").read_text())
    assert info["splits"]["train"]["skipped_short"] == [{"path": "train/short.mp4", "num_frames": 2}]
    with pytest.raises(BuildError, match="other settings.*--overwrite"):
        video_folder.main(_args(raw, out, "--skip_invalid", "--min_frames", "5"))


def test_seeded_split_build_with_stride_max_frames_and_grey(tmp_path, capsys):
    raw = tmp_path / "raw"
    for index in range(5):
        write_gif(raw / f"gifs/clip{index}.gif", uniform(9, 20, 30, step=20, offset=index))
    assert build_dataset(["video_folder", "--raw_dir", str(raw), "--output_dir", str(tmp_path / "out"),
                          "--image_size", "16", "--channels", "1", "--frame_stride", "2", "--max_frames", "3",
                          "--test_fraction", "0.4", "--seed", "3"]) == 0
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    _, plan = video_folder.plan_splits([f"gifs/clip{i}.gif" for i in range(5)], raw, 0.4, seed=3)
    assert dataset["train"]["id"] == plan["train"] and dataset["test"]["id"] == plan["test"]
    assert len(plan["test"]) == 2
    row = dataset["test"][0]
    video = np.stack([np.asarray(frame) for frame in row["video"]])
    offset = int(row["id"][len("gifs/clip")])
    assert video.shape == (3, 16, 16) and video[:, 8, 8].tolist() == [offset + 20 * t for t in (0, 2, 4)]
    assert row["fps"] == pytest.approx(5.0)  # 10 fps, every 2nd frame
    assert "split seeded by video (--seed 3, --test_fraction 0.4)" in capsys.readouterr().out


def test_help_states_the_frame_rule(capsys):
    with pytest.raises(SystemExit):
        video_folder.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the shorter side is scaled to --image_size" in text and "centre-cropped to a square" in text
    for flag in ("--channels", "--test_fraction", "--seed", "--frame_stride", "--max_frames", "--min_frames",
                 "--skip_invalid"):
        assert flag in text


@pytest.mark.parametrize("layout,extra,message", [
    ({}, [], r"raw is empty: expected \.mp4"),
    ({"notes.txt": "x"}, [], r"raw holds no video \(1 other file\)"),
    ({"train/a.gif": None}, [], r"has a train/ sub-folder but not both train/ and test/"),
    ({"train/a.gif": None, "test/b.gif": None, "c.gif": None}, [], r"1 video\(s\) lie outside them, e.g. c.gif"),
    ({"train/a.gif": None, "test/notes.txt": "x"}, [], r"test holds no video"),
    ({"a.gif": None}, ["--max_frames", "2", "--min_frames", "3"], "--max_frames 2 is below --min_frames 3"),
    ({"a.gif": None}, ["--test_fraction", "1.5"], "--test_fraction must be between 0 and 1, got 1.5"),
    ({"a.gif": None}, ["--frame_stride", "0"], "--frame_stride must be a positive number of frames, got 0"),
    ({"a.gif": None}, ["--download"], "--download and --mirror_url do not apply"),
])
def test_bad_folders_and_arguments_are_refused_before_writing(tmp_path, layout, extra, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, text in layout.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            write_gif(raw / name, uniform(2, 8, 8))
        else:
            (raw / name).write_text(text)
    with pytest.raises(BuildError, match=message):
        video_folder.main(_args(raw, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_val_folder_stands_in_for_test(tmp_path):
    raw = tmp_path / "raw"
    write_gif(raw / "train" / "a.gif", uniform(3, 8, 8))
    write_gif(raw / "val" / "b.gif", uniform(3, 8, 8))
    dataset = video_folder.main(_args(raw, tmp_path / "out"))
    assert dataset["train"]["id"] == ["train/a.gif"] and dataset["test"]["id"] == ["val/b.gif"]
