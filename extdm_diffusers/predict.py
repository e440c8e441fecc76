"""``extdm-predict``: predict the frames that follow a video file, a GIF or a folder of frames.

    extdm-predict --pipeline runs/my-dm --video clip.mp4 --output predicted.mp4 --num_frames 16 --side_by_side

The observed frames are the pipeline's ``num_cond_frames`` frames just before ``--start_frame`` (default: the
video's last ones), fitted with the dataset builder's own frame rule (``data.video_files.fit_frames``: the shorter
side scaled to the pipeline's frame size, then centre-cropped square; colour converted to its channels). The
output is written by its extension: ``.mp4`` (ffmpeg through imageio-ffmpeg), ``.gif``, or no extension: a folder
of PNG frames. Occlusion, the steps and DDIM eta follow the benchmark the pipeline records (or ``--benchmark``);
``--scheduler``, ``--num_inference_steps``, ``--eta`` or ``--sampler_preset`` choose another sampler (the names of
``schedulers.SCHEDULER_NAMES`` and ``schedulers.SAMPLER_PRESETS``, as ``training_scripts/evaluate.py``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, NoReturn, Optional, Sequence

import numpy as np

from .cpu_memory import reuse_freed_cpu_memory
from .schedulers.by_name import SCHEDULER_NAMES
from .schedulers.sampler_presets import SAMPLER_PRESETS

OUTPUT_SUFFIXES = (".mp4", ".gif")
DTYPES = ("float32", "float16", "bfloat16")
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PredictInputError(ValueError):
    """Bad input to ``extdm-predict``; the message names the argument (printed as one line, exit 2)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``prog: error: ...``), like every other bad input of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="extdm-predict", description="Predict the frames that follow a video file, a GIF or a "
                            "folder of frames, with an ExtDM pipeline.")
    parser.add_argument("--pipeline", required=True, metavar="DIR_OR_REPO", help="an ExtDMPipeline folder or Hub repo id")
    parser.add_argument("--video", required=True, metavar="IN", help="a video file (.mp4 .avi .mov .mkv .webm), a .gif or a folder of frames")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="OUT.mp4, OUT.gif, or OUT without extension: a folder of PNG frames")
    parser.add_argument("--num_frames", type=int, default=None, help="frames to predict (default: one window of the pipeline)")
    parser.add_argument("--num_samples", type=int, default=1,
                        help="independent predictions (default 1); K > 1 writes OUT-sample{k} for k = 0..K-1")
    parser.add_argument("--start_frame", type=int, default=None,
                        help="index of the first predicted frame: the observed frames are the num_cond_frames before it "
                             "(default: the video's length, i.e. observe its last frames)")
    parser.add_argument("--side_by_side", action="store_true",
                        help="write observed (last frame held) | observed + predicted | the real video, where it continues")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="denoising steps per window (default: the benchmark's, 10)")
    parser.add_argument("--scheduler", default=None, choices=SCHEDULER_NAMES,
                        help="ddim_original (default): the original ExtDM sampler; the others are diffusers' schedulers")
    parser.add_argument("--eta", type=float, default=None,
                        help="DDIM noise, for ddim_original and ddim only (default: the benchmark's, 1.0)")
    parser.add_argument("--sampler_preset", default=None, choices=tuple(SAMPLER_PRESETS),
                        help="scheduler, steps and eta together: " + "; ".join(
                            f"{name}: {preset.description}" for name, preset in SAMPLER_PRESETS.items()))
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="default float32")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the input's, else 10)")
    parser.add_argument("--benchmark", default=None, metavar="NAME_OR_FILE",
                        help="default: the benchmark the pipeline records (occlusion, eta, steps); an explicit one wins")
    return parser


@dataclass
class OutputTarget:
    """Where the frames go: ``kind`` is ``"mp4"``, ``"gif"`` or ``"png"`` (a folder)."""

    path: Path
    kind: str

    def for_sample(self, k: int, num_samples: int) -> "OutputTarget":
        """``OUT`` itself for a single sample, else ``OUT-sample{k}`` (before the extension)."""
        if num_samples == 1:
            return self
        suffix = self.path.suffix if self.kind != "png" else ""
        stem = self.path.name[: len(self.path.name) - len(suffix)] if suffix else self.path.name
        return OutputTarget(self.path.with_name(f"{stem}-sample{k}{suffix}"), self.kind)


def output_target(output: str) -> OutputTarget:
    """``--output`` by its extension: .mp4, .gif, or none (a folder of PNGs); anything else is refused."""
    path = Path(output)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == "":
        return OutputTarget(path, "png")
    if suffix not in OUTPUT_SUFFIXES:
        raise PredictInputError(f"--output: cannot write {suffix!r} files; use .mp4, .gif or a path without extension "
                                "(a folder of PNG frames)")
    return OutputTarget(path, suffix[1:])


def check_arguments(args: argparse.Namespace) -> OutputTarget:
    """Every check that needs neither the pipeline nor the video."""
    for name in ("num_frames", "num_samples", "num_inference_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PredictInputError(f"--{name} must be >= 1, got {value}")
    if args.start_frame is not None and args.start_frame < 0:
        raise PredictInputError(f"--start_frame must be >= 0, got {args.start_frame}")
    if args.fps is not None and not args.fps > 0:
        raise PredictInputError(f"--fps must be > 0, got {args.fps}")
    if not Path(args.video).exists():
        raise PredictInputError(f"--video: no such file or folder: {args.video}")
    target = output_target(args.output)
    if not target.path.parent.is_dir():
        raise PredictInputError(f"--output: the folder {target.path.parent} does not exist")
    return target


def load_pipeline(name_or_path: str, device: str, dtype: str):
    """The pipeline of ``--pipeline``: a local folder, or a Hub repo id (``owner/name``)."""
    import torch
    from diffusers.utils import logging

    from .cpu_features import warn_if_slow_cpu_bf16
    from .pipelines import ExtDMPipeline

    local = Path(name_or_path)
    if not local.is_dir() and not _HUB_REPO_ID.match(name_or_path):
        raise PredictInputError(f"--pipeline: no such folder: {name_or_path} (nor an owner/name Hub repo id)")
    if local.is_dir() and not (local / "model_index.json").is_file():
        raise PredictInputError(f"--pipeline: {name_or_path} holds no model_index.json: not a pipeline folder")
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # the command prints what it read; stderr stays for errors
    try:
        pipe = ExtDMPipeline.from_pretrained(name_or_path)
    except Exception as error:  # noqa: BLE001 - a missing repo, a network error, a broken folder: name the argument
        raise PredictInputError(f"--pipeline: cannot load {name_or_path}: {str(error).splitlines()[0]}") from None
    finally:
        if bars:
            logging.enable_progress_bar()
    try:
        pipe = pipe.to(torch.device(device))
    except (RuntimeError, AssertionError) as error:
        raise PredictInputError(f"--device {device}: {str(error).splitlines()[0]}") from None
    if getattr(torch, dtype) != pipe.unet.dtype:
        pipe = pipe.to(dtype=getattr(torch, dtype))
    warn_if_slow_cpu_bf16(pipe.device, pipe.unet.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_start_frame(start_frame: Optional[int], num_cond: int) -> None:
    if start_frame is not None and start_frame < num_cond:
        raise PredictInputError(f"--start_frame {start_frame} leaves {start_frame} frames to observe; the pipeline "
                                f"observes {num_cond}")


def observed_window(num_video_frames: int, num_cond: int, start_frame: Optional[int], video: str) -> int:
    """The first predicted frame's index, checked: at least ``num_cond`` frames before it, inside the video."""
    if num_video_frames < num_cond:
        raise PredictInputError(f"--video: {video} has {num_video_frames} frames; the pipeline observes {num_cond}")
    start = num_video_frames if start_frame is None else start_frame
    check_start_frame(start, num_cond)
    if start > num_video_frames:
        raise PredictInputError(f"--start_frame {start} is beyond the video's {num_video_frames} frames")
    return start


def side_by_side(observed: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8 panels over cond + pred frames: observed (its last frame held) | observed + predicted |
    observed + the real continuation (black where the video ends), the last only when the video continues."""
    pred = len(predicted)
    panels = [np.concatenate([observed, np.repeat(observed[-1:], pred, axis=0)]), np.concatenate([observed, predicted])]
    if len(truth):
        ended = np.zeros((pred - len(truth),) + observed.shape[1:], np.uint8)
        panels.append(np.concatenate([observed, truth, ended]))
    return np.concatenate(panels, axis=2)


def write_frames(target: OutputTarget, frames: np.ndarray, fps: float) -> None:
    """``frames`` (T, H, W, C) uint8 to ``target``, atomically per file, with the umask's permissions."""
    import PIL.Image
    from diffusers.utils import export_to_gif, export_to_video

    from .file_io import atomic_path

    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    images = [PIL.Image.fromarray(frame) for frame in frames]
    if target.kind == "png":
        target.path.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            with atomic_path(target.path / f"frame_{index:05d}.png") as tmp:
                image.save(tmp)
        return
    with atomic_path(target.path) as tmp:
        if target.kind == "gif":
            export_to_gif(images, str(tmp), fps=fps)
        else:  # macro_block_size 1: ffmpeg gets the frames at their own size, never resized to a multiple of 16
            export_to_video(images, str(tmp), fps=fps, macro_block_size=1)


def predict(args: argparse.Namespace, log=print) -> List[Path]:
    """Run ``extdm-predict``; returns the files or folders written."""
    import torch

    from .benchmarks import BenchmarkDefinitionError, pipeline_benchmark
    from .data.video_files import VideoReadError, read_video
    from .schedulers.by_name import make_scheduler
    from .schedulers.sampler_presets import resolve_sampler

    target = check_arguments(args)
    try:  # the sampler's flags are checked before anything loads; the benchmark's values come below
        resolve_sampler(args.scheduler, args.num_inference_steps, args.eta, args.sampler_preset)
    except ValueError as error:
        raise PredictInputError(str(error)) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.pipeline, device, args.dtype)
    recorded = pipe.config.get("benchmark")
    benchmark = None
    if args.benchmark is not None or recorded is not None:
        try:
            benchmark = pipeline_benchmark(args.benchmark, recorded)
        except BenchmarkDefinitionError as error:
            raise PredictInputError(str(error)) from None
    ae = pipe.flow_autoencoder.config
    size = ae.sample_size or (benchmark.frame_size if benchmark else None)
    if size is None:
        raise PredictInputError("--benchmark is needed: the pipeline records neither its frame size nor a benchmark")
    num_cond = pipe.num_cond_frames
    check_start_frame(args.start_frame, num_cond)
    num_frames = args.num_frames or pipe.num_pred_frames
    # frames past the first predicted one are only read as truth for --side_by_side
    max_frames = None if args.start_frame is None else args.start_frame + (num_frames if args.side_by_side else 0)
    try:
        video = read_video(Path(args.video), max_frames=max_frames, image_size=size, channels=ae.num_channels)
    except VideoReadError as error:
        raise PredictInputError(f"--video: {error}") from None
    start = observed_window(video.num_frames, num_cond, args.start_frame, args.video)
    observed = video.frames[start - num_cond:start]
    truth = video.frames[start:start + num_frames]
    fps = args.fps or video.fps or 10.0
    log(f"read {args.video}: {video.num_frames} frames of {video.source_size[1]}x{video.source_size[0]}"
        + (f" at {video.fps:g} fps" if video.fps else "") + f"; observing frames {start - num_cond}..{start - 1} "
        f"at {size}x{size}, {ae.num_channels} channel{'s' if ae.num_channels > 1 else ''}")

    evaluation = benchmark.evaluation if benchmark is not None else None
    sampler = resolve_sampler(args.scheduler, args.num_inference_steps, args.eta, args.sampler_preset,
                              protocol_steps=evaluation.num_inference_steps if evaluation else 10,
                              protocol_eta=evaluation.eta if evaluation else 1.0)
    pipe.scheduler = make_scheduler(sampler.scheduler, pipe.scheduler.config)
    use_occlusion = evaluation.decodes_with_occlusion(pipe.flow_autoencoder.estimates_occlusion) if evaluation else None
    log(f"sampler: {sampler.describe()}")
    output = pipe(observed, num_frames=num_frames, num_inference_steps=sampler.num_inference_steps,
                  eta=1.0 if sampler.eta is None else sampler.eta,
                  generator=torch.Generator(device="cpu").manual_seed(args.seed), num_samples_per_video=args.num_samples,
                  use_occlusion=use_occlusion, output_type="np").frames
    predicted = (np.asarray(output) * 255).round().clip(0, 255).astype(np.uint8)

    written = []
    for k, sample in enumerate(predicted):
        frames_out = side_by_side(observed, sample, truth) if args.side_by_side else sample
        destination = target.for_sample(k, args.num_samples)
        write_frames(destination, frames_out, fps)
        height, width = frames_out.shape[1:3]
        log(f"wrote {destination.path}: {len(frames_out)} frames of {width}x{height} at {fps:g} fps"
            + (" (observed | predicted" + (" | truth)" if len(truth) else ")") if args.side_by_side else ""))
        written.append(destination.path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    reuse_freed_cpu_memory()
    try:
        predict(args)
    except PredictInputError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
