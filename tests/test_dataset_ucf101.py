"""UCF-101 builder on an extracted UCF-101/ folder of real AVIs plus the official split lists.

A real UCF101.rar cannot be made here (creating RAR needs the non-free ``rar``), so the rar
step is covered only by its missing-tool error; the split zip is downloaded from a local server.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from datasets_helpers import load_builder, serve_directory, write_avi

ucf = load_builder("ucf101")
CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]


def _video(value: int, frames: int = 5) -> np.ndarray:
    return np.stack([np.full((24, 32, 3), (value, 10 * t, 7), np.uint8) for t in range(frames)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    train, test = [], []
    for label, cls in enumerate(CLASSES):
        file_cls = "HandStandPushups" if cls == "HandstandPushups" else cls  # UCF's own spelling mismatch
        for group in (1, 2, 8):
            name = f"{cls}/v_{file_cls}_g{group:02d}_c01.avi"
            write_avi(root / "raw" / "UCF-101" / name, _video(40 * label + group))
            (test if group < 8 else train).append(name)
    lists = root / "srv" / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, start=1)))
    (lists / "trainlist01.txt").write_text("".join(f"{n} {CLASSES.index(n.split('/')[0]) + 1}\r\n" for n in train))
    (lists / "testlist01.txt").write_text("".join(f"{n}\r\n" for n in test))
    with zipfile.ZipFile(root / "srv" / ucf.SPLITS_ZIP, "w") as archive:
        for path in lists.iterdir():
            archive.write(path, arcname=f"ucfTrainTestlist/{path.name}")
    return root


@pytest.fixture(scope="module")
def built(raw):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        with serve_directory(raw / "srv") as (url, seen):
            dataset = ucf.main(["--raw_dir", str(raw / "raw"), "--output_dir", str(raw / "out"), "--download",
                                "--mirror_url", url, "--split_index", "1", "--image_size", "12"])
    return dataset, seen


def test_split_lists_are_downloaded_and_define_the_splits(built, raw):
    dataset, seen = built
    assert [path for path, _ in seen] == ["/" + ucf.SPLITS_ZIP]  # UCF-101/ exists, so no rar download
    assert (raw / "raw" / "ucfTrainTestlist" / "testlist01.txt").is_file()
    assert (len(dataset["train"]), len(dataset["test"])) == (3, 6)
    assert dataset["test"]["id"][:2] == ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g02_c01"]
    assert dataset["train"].features["label"].names == CLASSES


def test_frames_are_resized_to_4_3_at_the_requested_height(built):
    dataset, _ = built
    row = dataset["test"][5]  # HandstandPushups g02
    assert row["id"] == "v_HandStandPushups_g02_c01" and row["label"] == 2 and row["group"] == 2
    video = np.stack([np.asarray(f) for f in row["video"]])
    assert video.shape == (5, 12, 16, 3) and video.dtype == np.uint8  # int(12 / 240 * 320) = 16
    assert video[:, 6, 8, 0].tolist() == [82] * 5 and video[:, 6, 8, 1].tolist() == [0, 10, 20, 30, 40]


def test_missing_videos_split_files_and_rar_tool_are_reported(raw, tmp_path, monkeypatch):
    with pytest.raises(ucf.BuildError, match="missing split file .*trainlist02.txt"):
        ucf.main(["--raw_dir", str(raw / "raw"), "--output_dir", str(tmp_path / "o"), "--split_index", "2"])
    broken = tmp_path / "raw"
    (broken / "ucfTrainTestlist").mkdir(parents=True)
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        (broken / "ucfTrainTestlist" / name).write_bytes((raw / "raw" / "ucfTrainTestlist" / name).read_bytes())
    (broken / "UCF-101").mkdir()
    with pytest.raises(ucf.BuildError, match="9 video\\(s\\) of the split lists are missing"):
        ucf.main(["--raw_dir", str(broken), "--output_dir", str(tmp_path / "o"), "--split_index", "1"])
    (broken / "UCF-101").rmdir()
    (broken / ucf.RAR_NAME).write_bytes(b"Rar!\x1a\x07\x00 not really")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ucf.BuildError, match="needs one of: unrar, unar, 7z, bsdtar on PATH.*apt-get install unar"):
        ucf.main(["--raw_dir", str(broken), "--output_dir", str(tmp_path / "o"), "--split_index", "1"])


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as the rar tool")
def test_rar_is_extracted_with_the_tool_found_on_path(raw, tmp_path, monkeypatch):
    # a stand-in `unar` proves the command line and the atomic move of UCF-101/ (a real .rar cannot be made here)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    source = raw / "raw" / "UCF-101"
    (bin_dir / "unar").write_text(f'#!/bin/sh\n[ "$1" = "-q" ] && [ "$2" = "-f" ] && [ "$3" = "-o" ] || exit 9\n'
                                  f'exec /bin/cp -r "{source}" "$4/UCF-101"\n')
    (bin_dir / "unar").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # only the stand-in, even where a real unrar is installed
    target = tmp_path / "raw"
    target.mkdir()
    (target / ucf.RAR_NAME).write_bytes(b"Rar!")
    ucf.extract_rar(target / ucf.RAR_NAME, target)
    assert sorted(p.name for p in (target / "UCF-101").iterdir()) == CLASSES
    assert not (target / ".rar.incomplete").exists()
