"""Getting and reading the builders' raw files: checked, resumable downloads, zip extraction, video decoding."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from . import BuildError


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


def read_video_frames(path: Path) -> Iterator[np.ndarray]:
    """Decode a video file (AVI, ...) frame by frame as H x W x 3 uint8 RGB, with the ffmpeg reader every builder
    shares (``data.video_files.video_file_frames``).

    Raises ``BuildError`` naming the file when it is missing, unreadable or has no frame.
    """
    from ..video_files import VideoReadError, video_file_frames

    if not path.is_file():
        raise BuildError(f"missing video file {path}")
    frames = video_file_frames(path)
    count = 0
    try:
        next(frames)  # the frame rate
        for frame in frames:
            count += 1
            yield frame
    except VideoReadError as error:
        if count == 0:
            raise BuildError(f"cannot decode video {path}: {error.reason}") from None
        raise BuildError(f"video {path} is corrupt after {count} frames: {error.reason}") from None
    finally:
        frames.close()
    if count == 0:
        raise BuildError(f"video {path} has no decodable frame; it is corrupt, download it again")
