"""KTH human actions for ExtDM: 64x64 greyscale videos, person-based splits.

Raw input (``--raw_dir``): the six action zips of the KTH site (``walking.zip`` ...
``handclapping.zip``), or their extracted ``<action>/personXX_<action>_dY_uncomp.avi``
folders (the original's ``raw/`` layout). ``--download`` fetches the zips.

Splits (``--split``):
  mcvd      (default, the paper's): train = persons 01-20 (479 videos: KTH has no
            person13_handclapping_d3), test = persons 21-25 (120 videos). The original
            names the held-out split ``valid``; it is ``test`` here.
  official  KTH's own: train 11-18, valid 19-21,23-25,01,04, test 02,03,05-10,22.
``--train_persons``/``--test_persons`` (comma lists) override the persons.

Frames (``--clips``):
  full       (default, the paper's ``train.txt``/``valid.txt``): the whole video, one row per AVI.
  sequences  one row per annotated sequence of KTH's ``00sequences.txt`` (frames a..b, 1-based,
             inclusive) -- what ``kth_actions_frames.py`` encodes.

Each frame: RGB -> grey (ITU-R 601 luma, as OpenCV's BGR2GRAY) -> bilinear resize to
``--image_size`` squared without antialiasing (as OpenCV's INTER_LINEAR; 160x120 is
squeezed to 64x64 like the original).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, require_raw_dir, write_and_publish
from .raw_files import download_file, extract_zip, join_url, read_video_frames

KTH_URL = "http://www.csc.kth.se/cvap/actions/"
SEQUENCES_FILE = "00sequences.txt"
ACTIONS = ["walking", "jogging", "running", "boxing", "handwaving", "handclapping"]
SETTINGS = ["d1", "d2", "d3", "d4"]
MISSING_FROM_KTH = {("13", "handclapping", "d3")}  # never recorded; absent from the zips and 00sequences.txt


def _persons(spec: str) -> list[str]:
    return [f"{int(p):02d}" for p in spec.split(",")]


SPLIT_PERSONS = {
    "mcvd": {"train": _persons(",".join(str(p) for p in range(1, 21))), "test": _persons("21,22,23,24,25")},
    "official": {
        "train": _persons("11,12,13,14,15,16,17,18"),
        "valid": _persons("19,20,21,23,24,25,1,4"),
        "test": _persons("22,2,3,5,6,7,8,9,10"),
    },
}


def video_name(person: str, action: str, setting: str) -> str:
    return f"person{person}_{action}_{setting}"


def parse_sequences(path: Path) -> dict[str, list[tuple[int, int]]]:
    """``00sequences.txt`` -> {"person01_boxing_d1": [(1, 95), ...]} (1-based inclusive ranges)."""
    if not path.is_file():
        raise BuildError(f"--clips sequences needs KTH's {SEQUENCES_FILE} in --raw_dir ({path} is missing; "
                         "--download fetches it)")
    sequences: dict[str, list[tuple[int, int]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"\s*(person\d\d_[a-z]+_d\d)\s+frames\s+(.*)", line)
        if match:
            ranges = [(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*-\s*(\d+)", match.group(2))]
            if not ranges or any(a < 1 or b < a for a, b in ranges):
                raise BuildError(f"{path}: cannot read the frame ranges of {match.group(1)!r}: {line.strip()!r}")
            sequences[match.group(1)] = ranges
    if not sequences:
        raise BuildError(f"{path} lists no 'personXX_action_dY frames a-b, ...' line; is it KTH's {SEQUENCES_FILE}?")
    return sequences


def to_grey_square(frame: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 RGB uint8 -> size x size x 1 uint8: BT.601 luma, then bilinear resize without antialiasing."""
    rgb = frame.astype(np.float32)
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    tensor = torch.from_numpy(np.round(grey))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=False)
    return resized[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()[..., None]


def prepare_raw(raw_dir: Path, download: bool, base_url: str, need_sequences: bool) -> None:
    for action in ACTIONS:
        folder, archive = raw_dir / action, raw_dir / f"{action}.zip"
        if folder.is_dir():
            continue
        if not archive.exists() and download:
            # KTH publishes no checksums; the zip's own CRCs are checked when extracting
            download_file(join_url(base_url, archive.name), archive)
        if archive.exists():
            print(f"extracting {archive}")
            extract_zip(archive, folder)
    if need_sequences and download and not (raw_dir / SEQUENCES_FILE).exists():
        download_file(join_url(base_url, SEQUENCES_FILE), raw_dir / SEQUENCES_FILE)


def planned_videos(raw_dir: Path, persons: list[str]) -> list[tuple[str, str, str, Path]]:
    """(person, action, setting, path) of every video of ``persons``; error listing the missing files."""
    planned, missing = [], []
    for person in persons:
        for action in ACTIONS:
            for setting in SETTINGS:
                if (person, action, setting) in MISSING_FROM_KTH:
                    continue
                path = raw_dir / action / f"{video_name(person, action, setting)}_uncomp.avi"
                (planned if path.is_file() else missing).append((person, action, setting, path))
    if missing:
        listed = ", ".join(str(m[3]) for m in missing[:5])
        raise BuildError(
            f"{len(missing)} KTH video(s) missing, e.g. {listed}. Expected --raw_dir to hold the action zips or the "
            f"extracted <action>/personXX_<action>_dY_uncomp.avi files (pass --download to fetch them)"
        )
    return planned


def kth_rows(raw_dir: str, persons: list[str], image_size: int, clips: str, split: str) -> Iterator[dict]:
    raw = Path(raw_dir)
    sequences = parse_sequences(raw / SEQUENCES_FILE) if clips == "sequences" else None
    for person, action, setting, path in tqdm(planned_videos(raw, persons), desc=f"kth {split}"):
        frames = np.stack([to_grey_square(frame, image_size) for frame in read_video_frames(path)])
        name = video_name(person, action, setting)
        base = {"person": int(person), "action": action, "setting": setting}
        if sequences is None:
            yield {"video": encode_frames(frames), "num_frames": len(frames), "id": name, "start_frame": 0, **base}
            continue
        if name not in sequences:
            raise BuildError(f"{SEQUENCES_FILE} has no frame ranges for {name}")
        for number, (first, last) in enumerate(sequences[name], start=1):
            if last > len(frames):
                raise BuildError(f"{path} has {len(frames)} frames but {SEQUENCES_FILE} names frames {first}-{last}")
            clip = frames[first - 1:last]  # 1-based inclusive -> [first - 1, last)
            yield {"video": encode_frames(clip), "num_frames": len(clip), "id": f"{name}_seq{number}",
                   "start_frame": first - 1, **base}


def features() -> datasets.Features:
    return video_features(
        {
            "person": datasets.Value("int8"),
            "action": datasets.ClassLabel(names=ACTIONS),
            "setting": datasets.Value("string"),
            "start_frame": datasets.Value("int32"),  # first frame in the original AVI
        }
    )


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=64)
    parser.add_argument("--split", choices=sorted(SPLIT_PERSONS), default="mcvd")
    parser.add_argument("--clips", choices=["full", "sequences"], default="full")
    parser.add_argument("--train_persons", help="comma-separated person numbers, overriding --split")
    parser.add_argument("--test_persons", help="comma-separated person numbers, overriding --split")
    args = parser.parse_args(argv)
    raw_dir = require_raw_dir(args)

    split_persons = dict(SPLIT_PERSONS[args.split])
    for split, spec in (("train", args.train_persons), ("test", args.test_persons)):
        if spec:
            try:
                persons = _persons(spec)
            except ValueError:
                raise BuildError(f"--{split}_persons must be comma-separated numbers, got {spec!r}") from None
            if any(not 1 <= int(p) <= 25 for p in persons):
                raise BuildError(f"--{split}_persons: KTH persons are 1..25, got {spec!r}")
            split_persons[split] = persons
    prepare_raw(raw_dir, args.download, args.mirror_url or KTH_URL, args.clips == "sequences")
    for persons in split_persons.values():  # fail before writing anything
        planned_videos(raw_dir, persons)
    if args.clips == "sequences":
        parse_sequences(raw_dir / SEQUENCES_FILE)

    splits = {
        split: (kth_rows, {"raw_dir": str(raw_dir.resolve()), "persons": persons, "image_size": args.image_size,
                           "clips": args.clips, "split": split})
        for split, persons in split_persons.items()
    }
    return write_and_publish(args, splits, features(), default_writer_batch_size=8)

