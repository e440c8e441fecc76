"""Shared plumbing of the dataset builders: CLI, checked downloads, resumable split writing.

A builder describes its splits as generators of rows; ``write_splits`` streams
each generator through ``datasets.Dataset.from_generator`` into a temporary
folder and renames it into place only once complete. A split folder therefore
either holds a whole split or does not exist, so a re-run skips finished splits
(when they were built with the same settings) and never duplicates rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import datasets
import numpy as np
from tqdm.auto import tqdm

BUILD_INFO_FILE = "extdm_build.json"


class BuildError(RuntimeError):
    """A problem the user can fix (missing/corrupt raw file, bad argument); printed without a traceback."""


# --------------------------------------------------------------------------- CLI


def base_parser(description: str, default_image_size: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--raw_dir", type=Path, help="folder with (or to receive, with --download) the raw files")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the DatasetDict is saved")
    parser.add_argument("--image_size", type=int, default=default_image_size, help="frame height (and width) in pixels")
    parser.add_argument("--download", action="store_true", help="download missing raw files into --raw_dir first")
    parser.add_argument("--mirror_url", default=None, help="base URL to download from instead of the official one")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="also push the DatasetDict to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create a private repo")
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild splits that exist but were built with other settings"
    )
    parser.add_argument("--writer_batch_size", type=int, default=None, help="rows per Arrow record batch")
    return parser


def require_raw_dir(args: argparse.Namespace) -> Path:
    if args.raw_dir is None:
        raise BuildError("--raw_dir is required: the folder that holds (or, with --download, will hold) the raw files")
    if args.image_size <= 0:
        raise BuildError(f"--image_size must be a positive number of pixels, got {args.image_size}")
    if args.download:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
    if not args.raw_dir.is_dir():
        raise BuildError(f"--raw_dir {args.raw_dir} does not exist (pass --download to fetch the raw files)")
    return args.raw_dir


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a builder's ``main``; a ``BuildError`` becomes a one-line message and exit status 2."""
    try:
        main(argv)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# --------------------------------------------------------------------- downloads


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    destination: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``destination`` (resuming a ``.part`` file), verify the checksum, rename atomically.

    An existing ``destination`` whose checksum matches is kept as is. Without a
    published checksum (``md5``/``sha256`` both None) the caller must check the
    file's own integrity (zip CRCs, TFRecord CRCs).
    """
    expected = ("sha256", sha256) if sha256 else ("md5", md5) if md5 else None

    def verify(path: Path) -> bool:
        return expected is None or file_digest(path, expected[0]) == expected[1].lower()

    if destination.exists():
        if verify(destination):
            return destination
        raise BuildError(
            f"{destination} exists but its {expected[0]} does not match {expected[1]}: it is corrupt or a different "
            "file; delete it and run again"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is already complete
            response = None
        else:
            raise BuildError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise BuildError(f"download of {url} failed: {error}") from error
    if response is not None:
        with response:
            resumed = offset and response.status == 206
            mode = "ab" if resumed else "wb"  # a server that ignores Range sends the whole file again
            start = offset if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with open(partial, mode) as handle, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=f"download {destination.name}"
            ) as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    progress.update(len(block))
    if not verify(partial):
        partial.unlink()
        raise BuildError(
            f"download of {url} is corrupt: its {expected[0]} is not the published {expected[1]} (the partial file was "
            "deleted; run again)"
        )
    os.replace(partial, destination)
    return destination


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


# ------------------------------------------------------------------ split writing


def _generate_rows(make_rows: Callable[..., Iterator[dict]], kwargs: dict) -> Iterator[dict]:
    yield from make_rows(**kwargs)


def write_splits(
    output_dir: Path,
    splits: Mapping[str, tuple[Callable[..., Iterator[dict]], dict]],
    features: datasets.Features,
    *,
    writer_batch_size: int = 64,
    overwrite: bool = False,
) -> datasets.DatasetDict:
    """Build each split as ``output_dir/<split>`` and write ``dataset_dict.json``: a ``load_from_disk``-able DatasetDict.

    ``splits`` maps a split name to ``(row_generator, kwargs)``. The kwargs and the
    features are stored with the split as its settings; a finished split with the
    same settings is skipped, one with other settings is an error unless ``overwrite``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, (make_rows, kwargs) in splits.items():
        settings = json.loads(
            json.dumps({"generator": make_rows.__name__, "kwargs": kwargs, "features": features.to_dict()}, default=str)
        )
        split_dir = output_dir / split
        info_path = split_dir / BUILD_INFO_FILE
        if split_dir.exists():
            previous = json.loads(info_path.read_text()) if info_path.exists() else None
            if previous == settings:
                print(f"{split}: already built in {split_dir}, skipping")
                continue
            if not overwrite:
                raise BuildError(
                    f"{split_dir} already holds a {split} split built with other settings ({previous}); pass "
                    "--overwrite to rebuild it or choose another --output_dir"
                )
            shutil.rmtree(split_dir)
        staging = output_dir / f".{split}.incomplete"
        cache = output_dir / f".{split}.cache"
        for leftover in (staging, cache):  # an interrupted earlier run
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            dataset = datasets.Dataset.from_generator(
                _generate_rows,
                features=features,
                gen_kwargs={"make_rows": make_rows, "kwargs": kwargs},
                cache_dir=str(cache),
                writer_batch_size=writer_batch_size,
                split=datasets.NamedSplit(split),
            )
        except datasets.exceptions.DatasetGenerationError as error:
            # the builder's own BuildError arrives wrapped; surface its message
            cause = error.__cause__ or error.__context__
            if isinstance(cause, BuildError):
                raise cause from None
            raise
        dataset.save_to_disk(str(staging))
        (staging / BUILD_INFO_FILE).write_text(json.dumps(settings, indent=2))
        del dataset
        os.replace(staging, split_dir)
        shutil.rmtree(cache, ignore_errors=True)
    (output_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return datasets.load_from_disk(str(output_dir))


def maybe_push(dataset: datasets.DatasetDict, repo: str | None, private: bool = False) -> None:
    if repo:
        dataset.push_to_hub(repo, private=private)


def summarize(dataset: datasets.DatasetDict, output_dir: Path) -> None:
    sizes = {split: len(part) for split, part in dataset.items()}
    print(f"saved {sizes} to {output_dir}")


# ------------------------------------------------------------------------ videos


def read_video_frames(path: Path) -> Iterator[np.ndarray]:
    """Decode a video file (AVI, ...) frame by frame as H x W x 3 uint8 RGB, with ffmpeg via imageio.

    Raises ``BuildError`` naming the file when it is missing, unreadable or has no frame.
    """
    import imageio.v2 as imageio

    if not path.is_file():
        raise BuildError(f"missing video file {path}")
    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
    except Exception as error:  # imageio raises assorted types for undecodable input
        raise BuildError(f"cannot decode video {path}: {error}".strip()) from None
    count = 0
    try:
        for frame in reader:  # (len(reader) may be inf: iterate, never list())
            count += 1
            yield frame
    except Exception as error:
        raise BuildError(f"video {path} is corrupt after {count} frames: {error}") from None
    finally:
        reader.close()
    if count == 0:
        raise BuildError(f"video {path} has no decodable frame; it is corrupt, download it again")


def extract_zip(archive: Path, destination: Path) -> None:
    """Check every member's CRC, then extract ``archive`` into ``destination`` via a temporary folder (atomic)."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
            if broken is not None:
                raise BuildError(f"{archive} is corrupt (bad CRC in {broken}); delete it and download it again")
            staging = destination.with_name(destination.name + ".incomplete")
            shutil.rmtree(staging, ignore_errors=True)
            zipped.extractall(staging)
    except zipfile.BadZipFile as error:
        raise BuildError(f"{archive} is not a valid zip file ({error}); delete it and download it again") from None
    os.replace(staging, destination)
