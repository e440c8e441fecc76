"""Reading your own videos: video files, GIFs and folders of frame images, and THE frame rule that turns any of
them into a model's square frames (``fit_frames``, shared by the ``video_folder`` builder and ``extdm-predict``).

    frames = read_video(Path("clip.mp4"), image_size=64, channels=3).frames  # (T, 64, 64, 3) uint8

Video files are decoded by ffmpeg (the binary that ``imageio-ffmpeg`` ships), GIFs and frame images by Pillow
through ``imageio.v3``; frames arrive one at a time, so memory holds one video's frames (its *fitted* frames when
``read_video`` is given ``image_size``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")

__all__ = [
    "FRAME_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "VideoFrames",
    "VideoReadError",
    "find_videos",
    "fit_frames",
    "natural_sort_key",
    "read_video",
]


class VideoReadError(ValueError):
    """A video that cannot be read; the message names the file and what failed."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the decoder printed
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class VideoFrames:
    """The frames read from one video.

    ``frames``: (T, H, W, C) uint8, C = 1 (grey) or 3 (RGB), alpha dropped; ``fps``: the rate of these frames
    (the source's divided by ``frame_stride``), None when the source has none (frame folders); ``source_size``:
    (height, width) of the source frames, before any fitting.
    """

    frames: np.ndarray
    fps: float | None
    source_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def natural_sort_key(name: str) -> tuple:
    """Sort key putting ``frame_2`` before ``frame_10``: digit runs compare as numbers, the rest case-folded (the
    name itself breaks ties, so the order is total)."""
    parts = re.split(r"(\d+)", name)  # text, number, text, ...: numbers always at odd positions
    return tuple(int(part) if i % 2 else part.casefold() for i, part in enumerate(parts)), name


def _path_key(path: Path, root: Path) -> tuple:
    return tuple(natural_sort_key(part) for part in path.relative_to(root).parts)


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def scan_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """(videos, other files) under ``root``, both in natural path order: ``find_videos`` plus every file that is
    neither a video nor a frame image, so a caller can say what it did not read."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    videos, others = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()  # a fixed walk order; the result is sorted anyway
        folder = Path(folder)
        if any(_has_suffix(name, FRAME_EXTENSIONS) for name in files):
            videos.append(folder)  # a frame folder is one video
        for name in files:
            if _has_suffix(name, VIDEO_EXTENSIONS):
                videos.append(folder / name)
            elif not _has_suffix(name, FRAME_EXTENSIONS):
                others.append(folder / name)
    return sorted(videos, key=lambda p: _path_key(p, root)), sorted(others, key=lambda p: _path_key(p, root))


def find_videos(root: Path) -> list[Path]:
    """The videos under ``root``, recursively, in natural path order: files ending in ``VIDEO_EXTENSIONS`` and
    frame folders (folders directly holding ``FRAME_EXTENSIONS`` images, one video each); any letter case."""
    return scan_folder(root)[0]


def _as_frame(array: np.ndarray) -> np.ndarray:
    """A decoded image as H x W x C uint8 with C in {1, 3}: grey gets a channel axis, alpha is dropped, 16-bit
    samples keep their top 8 bits."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {array.dtype} (expected 8- or 16-bit grey or RGB)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {array.shape} (expected grey, grey+alpha, RGB or RGBA)")
    return array[..., :1] if array.shape[-1] == 2 else array[..., :3]


def _ffmpeg_reason(error: Exception) -> str:
    """ffmpeg's own complaints (its ``[component @ 0x..] message`` lines, e.g. 'moov atom not found'), not the
    whole log that imageio-ffmpeg attaches to the error."""
    text = str(error)
    log = text.split("=== stderr ===", 1)[1] if "=== stderr ===" in text else ""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    messages = [re.sub(r"^\[[^\]]*\]\s*", "", line) for line in lines if line.startswith("[")]
    details = "; ".join(dict.fromkeys(messages[-3:])) or (lines[-1] if lines else text.split("\n", 1)[0])
    return f"ffmpeg cannot decode it ({details or type(error).__name__})"


def video_file_frames(path: Path) -> Iterator:
    """Yields the fps (None when unknown), then the frames, H x W x 3 RGB."""
    import imageio_ffmpeg

    # one ffmpeg process gives the header first, then raw RGB frames; closing the generator stops ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
            width, height = meta["size"]
        except Exception as error:  # StopIteration included: ffmpeg printed no header
            raise VideoReadError(path, _ffmpeg_reason(error)) from None
        yield float(meta["fps"]) or None
        try:
            for buffer in reader:
                yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
        except RuntimeError as error:  # a stream that breaks off mid-way
            raise VideoReadError(path, _ffmpeg_reason(error)) from None
    finally:
        reader.close()


def _gif_frames(path: Path) -> Iterator:
    """Yields the fps (from the first frame's duration), then the frames, H x W x 3 RGB."""
    import imageio.v3 as iio

    duration_ms = iio.immeta(path, plugin="pillow").get("duration") or 0
    yield 1000.0 / duration_ms if duration_ms > 0 else None
    # mode="RGB": every frame composited to RGB (GIF frames otherwise switch between palette, RGB and RGBA)
    yield from iio.imiter(path, plugin="pillow", mode="RGB")


def _frame_folder_frames(folder: Path, frame_stride: int, max_frames: int | None) -> Iterator:
    """Yields None (a folder has no frame rate), then its images in natural order, only the ones kept."""
    import imageio.v3 as iio

    names = sorted((f.name for f in folder.iterdir() if f.is_file() and _has_suffix(f.name, FRAME_EXTENSIONS)),
                   key=natural_sort_key)
    if not names:
        raise VideoReadError(folder, f"the folder holds no frame image ({', '.join(FRAME_EXTENSIONS)})")
    yield None
    for name in names[::frame_stride][:max_frames]:  # only the frames kept are decoded
        try:
            yield iio.imread(folder / name, plugin="pillow")
        except Exception as error:  # Pillow raises assorted types for a broken image
            raise VideoReadError(folder / name, f"cannot decode this frame ({type(error).__name__}: {error})") from None


def read_video(
    path: Path,
    frame_stride: int = 1,
    max_frames: int | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
) -> VideoFrames:
    """Read a video file (``VIDEO_EXTENSIONS``), a GIF or a frame folder (its images in natural order).

    ``frame_stride`` keeps every n-th frame; ``max_frames`` stops after that many kept frames (the rest is not
    decoded). With ``image_size`` and ``channels`` every frame goes through ``fit_frames`` as it is decoded, so
    memory holds only fitted frames. Raises ``VideoReadError`` (naming the file and what failed) for a missing,
    unreadable or corrupt video, one with no frame, or frames of differing sizes.
    """
    path = Path(path)
    if not isinstance(frame_stride, int) or frame_stride < 1:
        raise ValueError(f"frame_stride must be a positive integer, got {frame_stride!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    if (image_size is None) != (channels is None):
        raise ValueError("read_video: pass image_size and channels together (both or neither)")
    if image_size is not None:
        _check_fit_arguments(image_size, channels)

    if path.is_dir():
        source, stride_in_loop = _frame_folder_frames(path, frame_stride, max_frames), 1  # strided by file name
    elif path.is_file():
        if not _has_suffix(path.name, VIDEO_EXTENSIONS):
            raise VideoReadError(path, f"not a video file (expected one of {', '.join(VIDEO_EXTENSIONS)}, any "
                                       "letter case, or a folder of frame images)")
        source = (_gif_frames if path.suffix.lower() == ".gif" else video_file_frames)(path)
        stride_in_loop = frame_stride
    else:
        raise VideoReadError(path, "no such file or folder")

    kept: list[np.ndarray] = []
    source_size: tuple[int, int] | None = None
    try:
        fps = next(source)
        for index, frame in enumerate(source):
            if index % stride_in_loop:
                continue
            frame = _as_frame(np.asarray(frame))
            if source_size is None:
                source_size = frame.shape[:2]
            elif frame.shape[:2] != source_size:
                raise ValueError(f"frame {len(kept)} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                                 f"{source_size[1]}x{source_size[0]}")
            kept.append(frame if image_size is None else fit_frames(frame[None], image_size, channels)[0])
            if max_frames is not None and len(kept) == max_frames:
                break
    except VideoReadError:
        raise
    except Exception as error:  # Pillow / numpy raise assorted types for a broken file
        raise VideoReadError(path, f"cannot decode it ({type(error).__name__}: {error})") from None
    finally:
        source.close()  # stops ffmpeg when max_frames ended the read early
    if not kept:
        raise VideoReadError(path, "no decodable frame")
    if image_size is None and len({f.shape[-1] for f in kept}) > 1:  # grey and colour images in one folder
        kept = [np.repeat(f, 3, axis=-1) if f.shape[-1] == 1 else f for f in kept]
    return VideoFrames(frames=np.stack(kept), fps=fps / frame_stride if fps else None, source_size=source_size)


def _check_fit_arguments(image_size: int, channels: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def fit_frames(frames: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """THE frame rule: (T, H, W, C) uint8 (C = 1 or 3) -> (T, image_size, image_size, channels) uint8.

    The shorter side is scaled to ``image_size`` (Lanczos, antialiased, up or down) and the longer one
    centre-cropped to a square -- done as one resampling of the centred square, which is the same thing without
    an intermediate rounding. Colour: ``channels=1`` is luminance (ITU-R 601, Pillow's ``L``), ``channels=3`` RGB
    (grey input repeated).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, C) uint8 array with C = 1 or 3, got shape {frames.shape} "
                         f"dtype {frames.dtype}")
    _check_fit_arguments(image_size, channels)
    height, width = frames.shape[1:3]
    side = min(height, width)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    fitted = np.empty((len(frames), image_size, image_size, channels), np.uint8)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
        if channels == 1 and image.mode != "L":
            image = image.convert("L")  # before resampling: one channel to resample, not three
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS, box=box)
        array = np.asarray(image)
        fitted[index] = array[..., None] if array.ndim == 2 else array
    return fitted
