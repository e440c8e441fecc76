"""Cityscapes video sequences for ExtDM: 30-frame 128x128 RGB snippets.

Raw input (``--raw_dir``): the ``leftImg8bit_sequence`` folder of
``leftImg8bit_sequence_trainvaltest.zip`` (324 GB), i.e.
``leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``.
Cityscapes needs an account, so there is no ``--download``: log in at
https://www.cityscapes-dataset.com, download the zip (package id 14) and unzip it,
then point ``--raw_dir`` at ``leftImg8bit_sequence`` (or at the folder holding it).

Each snippet's 30 frames (frame numbers in order) are centre-cropped to a square and
resized with Lanczos to ``--image_size`` (128, the original config), as the original
(MCVD's ``cityscapes_convert.py``). Splits: train 2,975, val 500, test 1,525 videos;
ExtDM evaluates on ``test`` ("sample to 256").
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, require_raw_dir, write_and_publish

SPLITS = ("train", "val", "test")
FRAMES_PER_SNIPPET = 30
FRAME_NAME = re.compile(r"^(?P<city>[a-z_]+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")


def sequence_root(raw_dir: Path) -> Path:
    for candidate in (raw_dir / "leftImg8bit_sequence", raw_dir):
        if all((candidate / split).is_dir() for split in SPLITS):
            return candidate
    raise BuildError(
        f"--raw_dir {raw_dir} must be the leftImg8bit_sequence folder (with train/, val/, test/ inside) or hold it; "
        "download leftImg8bit_sequence_trainvaltest.zip from cityscapes-dataset.com and unzip it"
    )


def snippets(split_dir: Path) -> list[tuple[str, str, list[Path]]]:
    """(city, sequence number, 30 frame paths in frame order) of each snippet of one split."""
    grouped: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
    for path in split_dir.glob("*/*.png"):
        match = FRAME_NAME.match(path.name)
        if match is None:
            raise BuildError(f"unexpected file {path}: Cityscapes frames are named <city>_<seq>_<frame>_leftImg8bit.png")
        grouped[(match["city"], match["seq"])].append((int(match["frame"]), path))
    result = []
    for (city, seq), frames in sorted(grouped.items()):
        frames.sort()
        if len(frames) != FRAMES_PER_SNIPPET:
            raise BuildError(f"{split_dir}/{city}: snippet {city}_{seq} has {len(frames)} frames, expected "
                             f"{FRAMES_PER_SNIPPET}; the unzip is incomplete")
        result.append((city, seq, [path for _, path in frames]))
    return result


def centre_square(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    side = min(width, height)
    left, top = width // 2 - side // 2, height // 2 - side // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS))


def read_frame(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return centre_square(image.convert("RGB"), size)
    except (OSError, SyntaxError) as error:
        raise BuildError(f"cannot read frame {path}: {error}; the file is corrupt") from None


def cityscapes_rows(split_dir: str, image_size: int, split: str) -> Iterator[dict]:
    for city, seq, paths in tqdm(snippets(Path(split_dir)), desc=f"cityscapes {split}"):
        frames = np.stack([read_frame(p, image_size) for p in paths])
        first_frame = int(FRAME_NAME.match(paths[0].name)["frame"])
        yield {"video": encode_frames(frames), "num_frames": len(frames), "id": f"{city}_{seq}", "city": city,
               "first_frame": first_frame}


def features() -> datasets.Features:
    return video_features({"city": datasets.Value("string"), "first_frame": datasets.Value("int32")})


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=128)
    args = parser.parse_args(argv)
    if args.download:
        raise BuildError("Cityscapes cannot be downloaded without your account: download "
                         "leftImg8bit_sequence_trainvaltest.zip from cityscapes-dataset.com, unzip it and pass "
                         "--raw_dir path/to/leftImg8bit_sequence")
    root = sequence_root(require_raw_dir(args))
    for split in SPLITS:  # fail before writing anything
        if not snippets(root / split):
            raise BuildError(f"{root / split} holds no <city>/*.png frames")
    splits = {split: (cityscapes_rows, {"split_dir": str((root / split).resolve()), "image_size": args.image_size,
                                        "split": split}) for split in SPLITS}
    return write_and_publish(args, splits, features(), default_writer_batch_size=32)

