"""KTH builder on real AVI files and zips: person splits, frame ranges, grey 64x64, errors."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from datasets_helpers import load_builder, serve_directory, write_avi

kth = load_builder("kth")
PERSONS = ["01", "21"]
NUM_FRAMES = 6


def _video(person: str, action_index: int) -> np.ndarray:
    """Uniform grey frames whose value encodes (frame, person, action), so rows can be traced back."""
    values = [10 * t + int(person) + action_index for t in range(NUM_FRAMES)]
    return np.stack([np.full((24, 32, 3), v, np.uint8) for v in values])


@pytest.fixture(scope="module")
def kth_zips(tmp_path_factory):
    """The six action zips, as on the KTH site, for persons 01 and 21."""
    root = tmp_path_factory.mktemp("kth")
    avis = root / "avis"
    (root / "srv").mkdir()
    for action_index, action in enumerate(kth.ACTIONS):
        with zipfile.ZipFile(root / "srv" / f"{action}.zip", "w") as archive:
            for person in PERSONS:
                for setting in kth.SETTINGS:
                    name = f"person{person}_{action}_{setting}_uncomp.avi"
                    write_avi(avis / name, _video(person, action_index))
                    archive.write(avis / name, arcname=name)
    sequences = "".join(f"person{p}_{a}_{s}\t\tframes\t1-2, 4-6\n"
                        for p in PERSONS for a in kth.ACTIONS for s in kth.SETTINGS)
    (root / "srv" / kth.SEQUENCES_FILE).write_text("KTH header text\n\n" + sequences)
    return root / "srv"


@pytest.fixture(scope="module")
def built(kth_zips, tmp_path_factory):
    root = tmp_path_factory.mktemp("kth_build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        with serve_directory(kth_zips) as (url, seen):
            dataset = kth.main(["--raw_dir", str(root / "raw"), "--output_dir", str(root / "out"), "--download",
                                "--mirror_url", url, "--train_persons", "1", "--test_persons", "21"])
    return root, dataset, seen


def test_downloads_and_extracts_the_action_zips(built):
    root, _, seen = built
    assert sorted(path for path, _ in seen) == sorted(f"/{a}.zip" for a in kth.ACTIONS)
    assert (root / "raw" / "boxing" / "person21_boxing_d4_uncomp.avi").is_file()


def test_person_splits_full_videos_grey_64(built):
    _, dataset, _ = built
    assert set(dataset) == {"train", "test"}
    assert len(dataset["train"]) == 24 and len(dataset["test"]) == 24  # 6 actions x 4 settings each
    assert set(dataset["train"]["person"]) == {1} and set(dataset["test"]["person"]) == {21}
    row = dataset["test"].filter(lambda r: r["id"] == "person21_jogging_d2")[0]
    assert row["num_frames"] == NUM_FRAMES and row["start_frame"] == 0
    assert dataset["test"].features["action"].int2str(row["action"]) == "jogging" and row["setting"] == "d2"
    video = np.stack([np.asarray(f) for f in row["video"]])
    assert video.shape == (NUM_FRAMES, 64, 64) and video.dtype == np.uint8
    expected = [10 * t + 21 + kth.ACTIONS.index("jogging") for t in range(NUM_FRAMES)]
    assert video[:, 32, 32].tolist() == expected  # every frame, in order, grey value preserved


def test_rerun_skips_finished_splits(built, capsys):
    root, _, _ = built
    dataset = kth.main(["--raw_dir", str(root / "raw"), "--output_dir", str(root / "out"),
                        "--train_persons", "1", "--test_persons", "21"])
    assert "already built" in capsys.readouterr().out and len(dataset["train"]) == 24


def test_sequences_mode_uses_the_annotated_frame_ranges(built, kth_zips, tmp_path):
    root, _, _ = built
    shutil.copy(kth_zips / kth.SEQUENCES_FILE, root / "raw" / kth.SEQUENCES_FILE)
    dataset = kth.main(["--raw_dir", str(root / "raw"), "--output_dir", str(tmp_path / "seq"), "--clips",
                        "sequences", "--train_persons", "1", "--test_persons", "21"])
    assert len(dataset["test"]) == 48  # two annotated sequences per video
    first, second = (dataset["test"].filter(lambda r: r["id"] == f"person21_boxing_d1_seq{n}")[0] for n in (1, 2))
    base = 21 + kth.ACTIONS.index("boxing")
    assert [np.asarray(f)[0, 0] for f in first["video"]] == [base, 10 + base]  # frames 1-2 -> [0, 2)
    assert second["start_frame"] == 3 and second["num_frames"] == 3  # frames 4-6 -> [3, 6)


def test_greyscale_uses_bt601_luma_and_bilinear_resize():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 200, 100, 50
    grey = kth.to_grey_square(frame, 64)
    assert grey.shape == (64, 64, 1) and int(grey[10, 10, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)


def test_missing_and_corrupt_raw_files_are_named(built, tmp_path):
    root, _, _ = built
    raw = tmp_path / "raw"
    shutil.copytree(root / "raw", raw)
    (raw / "walking" / "person21_walking_d3_uncomp.avi").unlink()
    with pytest.raises(kth.BuildError, match="1 KTH video.*person21_walking_d3_uncomp.avi"):
        kth.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "o"), "--train_persons", "1",
                  "--test_persons", "21"])
    (raw / "walking" / "person21_walking_d3_uncomp.avi").write_bytes(b"RIFF\x00\x00 not really an avi")
    with pytest.raises(kth.BuildError, match="person21_walking_d3_uncomp.avi"):
        kth.main(["--raw_dir", str(raw), "--output_dir", str(tmp_path / "o"), "--train_persons", "1",
                  "--test_persons", "21"])
    assert not (tmp_path / "o" / "test").exists()


def test_corrupt_zip_and_bad_arguments(tmp_path):
    (tmp_path / "boxing.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(kth.BuildError, match="boxing.zip is not a valid zip"):
        kth.main(["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(kth.BuildError, match="--train_persons: KTH persons are 1..25"):
        kth.main(["--raw_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--train_persons", "30"])
    with pytest.raises(kth.BuildError, match="--raw_dir .* does not exist"):
        kth.main(["--raw_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])
