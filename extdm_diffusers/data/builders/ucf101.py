"""UCF-101 for ExtDM: RGB videos resized to 64 pixels high (64x85), official train/test split.

Raw input (``--raw_dir``): ``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip``
from the UCF site, or what they extract to: ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and
``ucfTrainTestlist/{trainlist0N,testlist0N,classInd}.txt``. ``--download`` fetches both
(UCF publishes no checksums; the zip CRCs and the rar tool's own checks apply). The rar
is extracted with the first of ``unrar``, ``unar``, ``7z``, ``bsdtar`` found on PATH.

Like the original (MCVD's ``ucf101_convert.py``): every frame of the 320x240 videos is
resized with Lanczos to ``int(size / 240 * 320) x size`` (85 x 64 at size 64); the
square 64x64 crop happens in the loader (random when training, centre -- column 10 --
for evaluation), and evaluation uses every 10th test video (``video_stride=10``).

Split: ``--split_index`` 1, 2 or 3 of the official lists; the default is split 1 (the
standard benchmark split, 9,537 train / 3,783 test videos). The original's converter
defaults to 3 (ExtDM's code notes 9,624 / 3,696, split 3's counts): ``--split_index 3``
reproduces it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, require_raw_dir, write_and_publish
from .raw_files import download_file, extract_zip, join_url, read_video_frames

UCF_URL = "https://www.crcv.ucf.edu/data/UCF101/"
RAR_NAME = "UCF101.rar"
SPLITS_ZIP = "UCF101TrainTestSplits-RecognitionTask.zip"
VIDEOS_DIR = "UCF-101"
LISTS_DIR = "ucfTrainTestlist"
SOURCE_HEIGHT, SOURCE_WIDTH = 240, 320
VIDEO_NAME = re.compile(r"^v_(?P<cls>\w+?)_g(?P<group>\d+)_c(?P<clip>\d+)\.avi$", re.IGNORECASE)

# (tool, arguments to extract ARCHIVE into DEST) -- any of them reads UCF101.rar (RAR 4)
RAR_TOOLS = [
    ("unrar", ["x", "-o+", "-idq", "{archive}", "{dest}/"]),
    ("unar", ["-q", "-f", "-o", "{dest}", "{archive}"]),
    ("7z", ["x", "-y", "-o{dest}", "{archive}"]),
    ("bsdtar", ["-x", "-f", "{archive}", "-C", "{dest}"]),
]


def extract_rar(archive: Path, destination: Path) -> None:
    """Extract ``archive`` into ``destination`` with an external tool (Python has no RAR decoder)."""
    for tool, arguments in RAR_TOOLS:
        executable = shutil.which(tool)
        if executable is None:
            continue
        staging = destination / ".rar.incomplete"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        command = [executable] + [a.format(archive=archive, dest=staging) for a in arguments]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"{tool} could not extract {archive} (exit {result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-500:]}; the archive may be corrupt")
        extracted = staging / VIDEOS_DIR
        if not extracted.is_dir():
            raise BuildError(f"{archive} did not contain a {VIDEOS_DIR}/ folder; is it UCF101.rar?")
        extracted.replace(destination / VIDEOS_DIR)
        shutil.rmtree(staging, ignore_errors=True)
        return
    raise BuildError(
        f"extracting {archive} needs one of: {', '.join(t for t, _ in RAR_TOOLS)} on PATH (Debian/Ubuntu: "
        "apt-get install unar, or libarchive-tools for bsdtar, or p7zip-full for 7z); or extract it yourself into "
        f"{destination / VIDEOS_DIR}"
    )


def prepare_raw(raw_dir: Path, download: bool, base_url: str) -> None:
    if not (raw_dir / LISTS_DIR).is_dir():
        archive = raw_dir / SPLITS_ZIP
        if download and not archive.exists():
            download_file(join_url(base_url, SPLITS_ZIP), archive)
        if archive.exists():
            extract_zip(archive, raw_dir / ".splits")
            found = next((raw_dir / ".splits").rglob("classInd.txt"), None)
            if found is None:
                raise BuildError(f"{archive} holds no classInd.txt; is it {SPLITS_ZIP}?")
            found.parent.replace(raw_dir / LISTS_DIR)
            shutil.rmtree(raw_dir / ".splits", ignore_errors=True)
    if not (raw_dir / VIDEOS_DIR).is_dir():
        archive = raw_dir / RAR_NAME
        if download and not archive.exists():
            download_file(join_url(base_url, RAR_NAME), archive)
        if archive.exists():
            extract_rar(archive, raw_dir)


def read_lists(raw_dir: Path, split_index: int) -> tuple[list[str], dict[str, list[str]]]:
    """(class names in label order, {"train": [relative video paths], "test": [...]})."""
    lists = raw_dir / LISTS_DIR
    paths = {"classes": lists / "classInd.txt", "train": lists / f"trainlist0{split_index}.txt",
             "test": lists / f"testlist0{split_index}.txt"}
    for path in paths.values():
        if not path.is_file():
            raise BuildError(f"missing split file {path}: --raw_dir needs {LISTS_DIR}/ (from {SPLITS_ZIP}; "
                             "--download fetches it)")
    classes: dict[int, str] = {}
    for line in paths["classes"].read_text().splitlines():
        if line.strip():
            number, name = line.split()
            classes[int(number)] = name
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise BuildError(f"{paths['classes']}: class numbers must run 1..N")
    names = [classes[i] for i in range(1, len(classes) + 1)]
    videos = {split: [line.split()[0] for line in paths[split].read_text().splitlines() if line.strip()]
              for split in ("train", "test")}
    return names, videos


def resize_frame(frame: np.ndarray, height: int) -> np.ndarray:
    width = int(height / SOURCE_HEIGHT * SOURCE_WIDTH)  # the original's rule, from the nominal 320x240
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.LANCZOS))


def ucf_rows(raw_dir: str, videos: list[str], class_names: list[str], image_size: int, split: str) -> Iterator[dict]:
    labels = {name.lower(): index for index, name in enumerate(class_names)}
    for relative in tqdm(videos, desc=f"ucf101 {split}"):
        path = Path(raw_dir) / VIDEOS_DIR / relative
        class_dir = Path(relative).parent.name
        if class_dir.lower() not in labels:
            raise BuildError(f"{relative}: class folder {class_dir!r} is not in classInd.txt")
        match = VIDEO_NAME.match(path.name)
        frames = np.stack([resize_frame(frame, image_size) for frame in read_video_frames(path)])
        yield {"video": encode_frames(frames), "num_frames": len(frames), "id": path.stem,
               "label": labels[class_dir.lower()], "group": int(match["group"]) if match else -1}


def features(class_names: list[str]) -> datasets.Features:
    return video_features({"label": datasets.ClassLabel(names=class_names), "group": datasets.Value("int16")})


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=64)
    parser.add_argument("--split_index", type=int, choices=[1, 2, 3], default=1, help="official split (the original converter used 3)")
    args = parser.parse_args(argv)
    raw_dir = require_raw_dir(args)
    prepare_raw(raw_dir, args.download, args.mirror_url or UCF_URL)
    class_names, videos = read_lists(raw_dir, args.split_index)
    if not (raw_dir / VIDEOS_DIR).is_dir():
        raise BuildError(f"--raw_dir {raw_dir} lacks {VIDEOS_DIR}/ (extracted {RAR_NAME}); pass --download, or put "
                         f"{RAR_NAME} there")
    missing = [v for split_videos in videos.values() for v in split_videos
               if not (raw_dir / VIDEOS_DIR / v).is_file()]
    if missing:
        raise BuildError(f"{len(missing)} video(s) of the split lists are missing from {raw_dir / VIDEOS_DIR}, e.g. "
                         f"{', '.join(missing[:3])}")
    splits = {split: (ucf_rows, {"raw_dir": str(raw_dir.resolve()), "videos": videos[split],
                                 "class_names": class_names, "image_size": args.image_size, "split": split})
              for split in ("train", "test")}
    return write_and_publish(args, splits, features(class_names), default_writer_batch_size=16)

