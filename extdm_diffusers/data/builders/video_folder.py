"""Your own videos for ExtDM: a folder of video files and frame folders -> the benchmarks' dataset schema.

Raw input (``--raw_dir``), searched recursively: video files (``.mp4 .avi .mov .mkv .webm .gif``, any letter
case) and frame folders (a folder directly holding ``.png/.jpg/.jpeg`` frames, read in natural order:
``frame_2`` before ``frame_10``). Each file or frame folder is one video; its ``id`` is its path relative to
``--raw_dir``. Other files are not read and are listed in the summary.

Splits: from ``train/`` and ``test/`` (or ``val/``) sub-folders of ``--raw_dir`` when present (``val/`` is its own
split when ``test/`` exists too); otherwise a split by video seeded by ``--seed``: ``round(--test_fraction x
videos)`` test videos (Python's ``round``), at least one in each split when there are two or more. Videos are
ordered by relative path first, so the same files give the same split on any machine.

Frames: the shorter side is scaled to ``--image_size`` (Lanczos, antialiased), then the longer one is
centre-cropped to a square; colour converted to ``--channels`` (1: luminance, 3: RGB); ``--frame_stride`` keeps
every n-th frame and ``--max_frames`` caps a video's length (counted after the stride).

Bad input: an unreadable or corrupt video stops the build (exit 2) with one line naming the file; with
``--skip_invalid`` it is skipped. Videos with fewer than ``--min_frames`` frames are skipped. Both are counted in
the summary and listed in ``OUT/extdm_build.json`` and the dataset card ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import datasets
import numpy as np
from tqdm.auto import tqdm

from ...file_io import atomic_write_text
from ..video_files import FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, read_video, scan_folder
from ..video_schema import encode_frames, video_features
from . import BuildError
from .cli import base_parser, require_raw_dir, write_and_publish
from .splits import BUILD_INFO_FILE

SPLIT_FOLDERS = ("train", "test", "val")
FRAME_RULE = ("the shorter side is scaled to --image_size (Lanczos, antialiased), then the longer one is "
              "centre-cropped to a square; colour is converted to --channels (1: luminance, 3: RGB)")


def relative_name(path: Path, raw_dir: Path) -> str:
    """A video's id: its path relative to ``raw_dir``, with ``/`` on every system (``.``: raw_dir's own frames)."""
    return path.relative_to(raw_dir).as_posix()


def plan_splits(videos: list[str], raw_dir: Path, test_fraction: float, seed: int) -> tuple[str, dict[str, list[str]]]:
    """(how the split was made, {split: video ids}) from the ids in natural path order (see the module doc)."""
    present = [name for name in SPLIT_FOLDERS if (raw_dir / name).is_dir()]
    if present:
        if "train" not in present or len(present) == 1:
            raise BuildError(f"--raw_dir {raw_dir} has a {present[0]}/ sub-folder but not both train/ and test/ "
                             "(or val/): add the missing one, or rename it to get a seeded split")
        by_folder = {name: [v for v in videos if v.split("/", 1)[0] == name] for name in present}
        outside = [v for v in videos if v.split("/", 1)[0] not in present]
        if outside:
            raise BuildError(f"--raw_dir {raw_dir} splits into {'/, '.join(present)}/ sub-folders, but "
                             f"{len(outside)} video(s) lie outside them, e.g. {', '.join(outside[:3])}: move them "
                             "into a split folder")
        empty = [name for name, names in by_folder.items() if not names]
        if empty:
            raise BuildError(f"{raw_dir / empty[0]} holds no video ({', '.join(VIDEO_EXTENSIONS)} files or "
                             f"folders of {', '.join(FRAME_EXTENSIONS)} frames)")
        if "test" not in by_folder:
            by_folder["test"] = by_folder.pop("val")  # val/ stands in for test/
        order = [name for name in ("train", "val", "test") if name in by_folder]
        return f"from the {'/, '.join(present)}/ sub-folders", {name: by_folder[name] for name in order}
    count = len(videos)
    num_test = round(test_fraction * count)
    if count >= 2:
        num_test = min(max(num_test, 1), count - 1)
    test_indices = set(np.random.default_rng(seed).permutation(count)[:num_test].tolist())
    plan = {"train": [v for i, v in enumerate(videos) if i not in test_indices],
            "test": [v for i, v in enumerate(videos) if i in test_indices]}
    return f"seeded by video (--seed {seed}, --test_fraction {test_fraction})", plan


def row_generator(reports: dict[str, dict]) -> Callable[..., Iterator[dict]]:
    """The rows of a split. What it skips goes to ``reports[split]``: through a closure, because the generator's
    arguments are the split's stored settings (compared on a re-run) and must not carry state."""

    def video_rows(raw_dir: str, videos: list[str], image_size: int, channels: int, frame_stride: int,
                   max_frames: int | None, min_frames: int, skip_invalid: bool, split: str) -> Iterator[dict]:
        root = Path(raw_dir)
        report = reports[split] = {"skipped_invalid": [], "skipped_short": []}
        written = 0
        progress = tqdm(videos, desc=f"video_folder {split}", unit="video")
        for name in progress:
            try:
                video = read_video(root / name, frame_stride, max_frames, image_size=image_size, channels=channels)
            except VideoReadError as error:
                if not skip_invalid:
                    raise BuildError(f"{error} (pass --skip_invalid to skip such files)") from None
                report["skipped_invalid"].append({"path": name, "reason": error.reason})
                continue
            if video.num_frames < min_frames:
                report["skipped_short"].append({"path": name, "num_frames": video.num_frames})
                continue
            written += 1
            yield {"video": encode_frames(video.frames), "num_frames": video.num_frames, "id": name,
                   "fps": video.fps, "source_height": video.source_size[0], "source_width": video.source_size[1]}
        if not written:
            raise BuildError(f"every video of the {split} split was skipped ({len(report['skipped_invalid'])} "
                             f"invalid, {len(report['skipped_short'])} shorter than --min_frames {min_frames}): "
                             "nothing to write")

    return video_rows


def features() -> datasets.Features:
    return video_features({
        "fps": datasets.Value("float32"),  # of the stored frames (the source's / --frame_stride); null if unknown
        "source_height": datasets.Value("int32"),  # the source frames' size, before the frame rule
        "source_width": datasets.Value("int32"),
    })


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary_lines(build: dict[str, Any]) -> list[str]:
    """What the build read, wrote and left out, for the terminal and the dataset card."""
    lines = [f"split {build['split_rule']}"]
    lines += [f"{split}: {_plural(part['videos'], 'video')}, {_plural(part['frames'], 'frame')}"
              for split, part in build["splits"].items()]
    if build["empty_splits"]:
        lines.append(f"not written (no video for them): {', '.join(build['empty_splits'])}")
    invalid = [item for part in build["splits"].values() for item in part["skipped_invalid"]]
    short = [item for part in build["splits"].values() for item in part["skipped_short"]]
    if invalid:
        lines.append(f"skipped {_plural(len(invalid), 'invalid video')} (--skip_invalid): "
                     + "; ".join(f"{item['path']} ({item['reason']})" for item in invalid))
    if short:
        lines.append(f"skipped {_plural(len(short), 'video')} shorter than --min_frames "
                     f"{build['settings']['min_frames']}: "
                     + ", ".join(f"{item['path']} ({item['num_frames']} frames)" for item in short))
    if build["ignored_files"]:
        shown = build["ignored_files"][:5]
        lines.append(f"not read ({_plural(len(build['ignored_files']), 'file')} neither a video nor a frame image): "
                     + ", ".join(shown) + (", ..." if len(build["ignored_files"]) > len(shown) else ""))
    return lines


def dataset_card(build: dict[str, Any]) -> str:
    settings = build["settings"]
    return "\n".join([
        f"# {Path(build['raw_dir']).name} (ExtDM video_folder dataset)",
        "",
        f"Built by `extdm-build-dataset video_folder` from `{build['raw_dir']}`: one row per video, the columns of "
        "the ExtDM benchmark schema (`video` PNG frames, `num_frames`, `id` = the path relative to the raw folder) "
        "plus `fps`, `source_height`, `source_width`.",
        "",
        f"Frames ({settings['image_size']}x{settings['image_size']}x{settings['channels']}): {FRAME_RULE}. "
        f"--frame_stride {settings['frame_stride']}, --max_frames {settings['max_frames']}, "
        f"--min_frames {settings['min_frames']}.",
        "",
        *[f"- {line}" for line in summary_lines(build)],
        "",
    ])


def previous_build(output_dir: Path) -> dict[str, Any]:
    path = output_dir / BUILD_INFO_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def main(argv: Sequence[str] | None = None) -> datasets.DatasetDict:
    parser = base_parser(__doc__.split("\n")[0], default_image_size=64)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1].replace("``", "")  # the rules, the frame rule included
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1: grey (luminance), 3: RGB")
    parser.add_argument("--test_fraction", type=float, default=0.1,
                        help="without train/ + test/ sub-folders: the share of videos for test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split by video")
    parser.add_argument("--frame_stride", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--max_frames", type=int, default=None, help="keep at most this many frames of a video")
    parser.add_argument("--min_frames", type=int, default=1, help="skip (and count) videos with fewer frames")
    parser.add_argument("--skip_invalid", action="store_true",
                        help="skip (and list) unreadable or corrupt videos instead of stopping")
    args = parser.parse_args(argv)
    if args.download or args.mirror_url:
        raise BuildError("video_folder reads your local files: --download and --mirror_url do not apply")
    raw_dir = require_raw_dir(args).resolve()
    if not 0 <= args.test_fraction <= 1:
        raise BuildError(f"--test_fraction must be between 0 and 1, got {args.test_fraction}")
    if args.seed < 0:
        raise BuildError(f"--seed must be a non-negative integer, got {args.seed}")
    for flag in ("frame_stride", "min_frames", "max_frames"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BuildError(f"--{flag} must be a positive number of frames, got {value}")
    if args.max_frames is not None and args.max_frames < args.min_frames:
        raise BuildError(f"--max_frames {args.max_frames} is below --min_frames {args.min_frames}: every video "
                         "would be skipped")

    found, others = scan_folder(raw_dir)
    if not found:
        what = "is empty" if not any(raw_dir.iterdir()) else f"holds no video ({_plural(len(others), 'other file')})"
        raise BuildError(f"--raw_dir {raw_dir} {what}: expected {', '.join(VIDEO_EXTENSIONS)} files (any letter "
                         f"case) or folders of {', '.join(FRAME_EXTENSIONS)} frames, searched recursively")
    videos = [relative_name(path, raw_dir) for path in found]
    split_rule, plan = plan_splits(videos, raw_dir, args.test_fraction, args.seed)
    settings = {"image_size": args.image_size, "channels": args.channels, "frame_stride": args.frame_stride,
                "max_frames": args.max_frames, "min_frames": args.min_frames, "skip_invalid": args.skip_invalid}
    reports: dict[str, dict] = {}
    rows = row_generator(reports)
    splits = {split: (rows, {"raw_dir": str(raw_dir), "videos": names, **settings, "split": split})
              for split, names in plan.items() if names}
    dataset = write_and_publish(args, splits, features(), default_writer_batch_size=8)

    previous = previous_build(args.output_dir).get("splits", {})
    build = {"builder": "video_folder", "raw_dir": str(raw_dir), "settings": settings, "split_rule": split_rule,
             "splits": {}, "empty_splits": [split for split, names in plan.items() if not names],
             "ignored_files": [relative_name(path, raw_dir) for path in others]}
    for split, part in dataset.items():
        # a split finished by an earlier run was skipped now: its skip lists come from that run's record
        skipped = reports.get(split) or {key: previous.get(split, {}).get(key, []) for key in
                                         ("skipped_invalid", "skipped_short")}
        build["splits"][split] = {"videos": len(part), "frames": int(sum(part["num_frames"])), **skipped}
    atomic_write_text(args.output_dir / BUILD_INFO_FILE, json.dumps(build, indent=2) + "\n")
    atomic_write_text(args.output_dir / "README.md", dataset_card(build))
    for line in summary_lines(build):
        print(line)
    return dataset
