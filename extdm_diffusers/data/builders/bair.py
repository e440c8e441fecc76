"""BAIR robot pushing for ExtDM: 30-frame 64x64 RGB videos from the TFRecord release.

Raw input (``--raw_dir``): ``bair_robot_pushing_dataset_v0.tar`` (read in place, not
extracted) or its extracted ``softmotion30_44k/{train,test}/*.tfrecords``.
``--download`` fetches the tar (30 GB; Berkeley publishes no checksum, so every
record's TFRecord CRC is checked instead).

Each ``tf.train.Example`` holds one trajectory; frame ``i`` is the raw 64x64x3 RGB
bytes of feature ``"{i}/image_aux1/encoded"`` (as the original, after SVG), i = 0..29.
Splits: ``train`` 43,264 videos (the paper's table), ``test`` 256 videos.
"""

from __future__ import annotations

import re
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, require_raw_dir, write_and_publish
from .raw_files import download_file, join_url
from .tfrecord import FAST_CRC, TFRecordError, parse_example_bytes_features, read_records

BAIR_URL = "http://rail.eecs.berkeley.edu/datasets/"
TAR_NAME = "bair_robot_pushing_dataset_v0.tar"
SPLITS = ("train", "test")
NUM_FRAMES = 30
FRAME_SHAPE = (64, 64, 3)
FRAME_KEY = "{}/image_aux1/encoded"


def _file_order(name: str) -> tuple[int, str]:
    """traj_256_to_511.tfrecords sorts after traj_0_to_255 (numeric, not lexicographic)."""
    match = re.search(r"traj_(\d+)_to_\d+", name)
    return (int(match.group(1)) if match else -1, name)


@contextmanager
def open_source(raw_dir: Path) -> Iterator[dict[str, list[tuple[str, object]]]]:
    """{split: [(file name, opener)]} from the tar or the extracted folder, files in trajectory order."""
    extracted = raw_dir / "softmotion30_44k"
    tar_path = raw_dir / TAR_NAME
    if extracted.is_dir():
        listing = {split: sorted(((p.name, p) for p in (extracted / split).glob("*.tfrecords")),
                                 key=lambda item: _file_order(item[0])) for split in SPLITS}
        yield {split: [(name, lambda p=path: open(p, "rb")) for name, path in files]
               for split, files in listing.items()}
        return
    if not tar_path.is_file():
        raise BuildError(f"--raw_dir {raw_dir} holds neither {TAR_NAME} nor an extracted softmotion30_44k/ folder "
                         "(pass --download to fetch the tar)")
    try:
        archive = tarfile.open(tar_path)
        members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BuildError(f"{tar_path} is not a readable tar archive ({error}); delete it and download it again") from None
    with archive:
        listing = {}
        for split in SPLITS:
            chosen = [m for m in members if m.isfile() and f"softmotion30_44k/{split}/" in m.name
                      and m.name.endswith(".tfrecords")]
            chosen.sort(key=lambda m: _file_order(Path(m.name).name))
            listing[split] = [(Path(m.name).name, lambda m=m: archive.extractfile(m)) for m in chosen]
        yield listing


def trajectory_frames(record: bytes, source: str) -> np.ndarray:
    features = parse_example_bytes_features(record)
    frames = []
    for i in range(NUM_FRAMES):
        values = features.get(FRAME_KEY.format(i))
        if not values:
            raise BuildError(f"{source}: trajectory lacks feature {FRAME_KEY.format(i)!r}; is this BAIR's "
                             "softmotion30_44k?")
        if len(values[0]) != int(np.prod(FRAME_SHAPE)):
            raise BuildError(f"{source}: {FRAME_KEY.format(i)} has {len(values[0])} bytes, expected a raw "
                             f"{FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} RGB image ({int(np.prod(FRAME_SHAPE))} bytes)")
        frames.append(np.frombuffer(values[0], dtype=np.uint8).reshape(FRAME_SHAPE))
    return np.stack(frames)


def bair_rows(raw_dir: str, split: str) -> Iterator[dict]:
    with open_source(Path(raw_dir)) as listing:
        files = listing[split]
        if not files:
            raise BuildError(f"no softmotion30_44k/{split}/*.tfrecords in {raw_dir}")
        for name, opener in tqdm(files, desc=f"bair {split} files"):
            stem = name.removesuffix(".tfrecords")
            handle: BinaryIO = opener()
            try:
                for index, record in enumerate(read_records(handle, name)):
                    frames = trajectory_frames(record, f"{name} record {index}")
                    yield {"video": encode_frames(frames), "num_frames": NUM_FRAMES, "id": f"{stem}/{index}",
                           "source_file": name, "record_index": index}
            except TFRecordError as error:
                raise BuildError(f"{error}; delete the raw file and download it again") from None
            finally:
                handle.close()


def features() -> datasets.Features:
    return video_features({"source_file": datasets.Value("string"), "record_index": datasets.Value("int32")})


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=64)
    args = parser.parse_args(argv)
    raw_dir = require_raw_dir(args)
    if args.image_size != FRAME_SHAPE[0]:
        raise BuildError(f"--image_size must be {FRAME_SHAPE[0]}: BAIR frames are stored at 64x64 and the original "
                         "does not resize them")
    if args.download and not (raw_dir / "softmotion30_44k").is_dir():
        download_file(join_url(args.mirror_url or BAIR_URL, TAR_NAME), raw_dir / TAR_NAME)
    if not FAST_CRC:
        print("note: google-crc32c is not installed; TFRecord data checksums are skipped (lengths are still checked)")
    with open_source(raw_dir) as listing:  # fail early on a missing/corrupt source
        for split in SPLITS:
            if not listing[split]:
                raise BuildError(f"no softmotion30_44k/{split}/*.tfrecords found in {raw_dir}")
    splits = {split: (bair_rows, {"raw_dir": str(raw_dir.resolve()), "split": split}) for split in SPLITS}
    return write_and_publish(args, splits, features(), default_writer_batch_size=64)

