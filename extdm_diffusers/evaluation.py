"""ExtDM's evaluation protocol (the original ``scripts/DM/valid.py``), resumable and shardable.

    from extdm_diffusers.evaluation import EvaluationConfig, evaluate

    metrics = evaluate(EvaluationConfig(pipeline="extdm-kth", benchmark="kth", dataset_dir="kth_dataset",
                                        output_dir="eval_kth", i3d="i3d_torchscript.pt"))

or ``python training_scripts/evaluate.py --pipeline ... --benchmark kth --dataset_dir ...`` (``main``).

What happens (``docs/evaluation.md``, "Evaluation protocol", has the full story and every difference from the
original):

1. The benchmark registry (``extdm_diffusers.benchmarks``) gives the protocol: cond/pred frames, split, the
   256 test clips (``clip_dataset``: video ``round(i/255·(M−1))``, start frame 0), 100 samples per clip,
   seed 1000, 10 DDIM steps, eta 1, occlusion on or off.
2. Sample ``k`` of clip ``i`` is drawn with its own CPU generator seeded ``seed + i * num_samples + k``, so the
   numbers depend neither on the batch size nor on how clips are split over processes.
3. Per clip: PSNR, SSIM and LPIPS of every predicted frame of every sample; I3D features of every sample's
   full clip (GT condition + prediction) and of the real clip; the same for two baselines, ``copy_last_frame``
   and ``autoencoder`` (the flow autoencoder's reconstruction of the true future from its true motion).
4. Each finished clip is committed as ``features/clip_XXXXX.npz`` (atomic) and one line of
   ``per_video*.jsonl`` (append-only); a restarted run skips finished clips.
5. The final numbers (``metrics.json``) are computed from the committed files only, so one process, several
   processes and a resumed run give the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "EvaluationConfig",
    "evaluate",
    "main",
    "parse_args",
    "sample_seed",
    "summarize",
    "aggregate_frame_metric",
    "fvd_traj",
    "fvd_best",
    "aggregate",
    "update_model_card",
    "METHODS",
    "EvaluationError",
]

METHODS = ("extdm", "copy_last_frame", "autoencoder")
#: metric -> whether larger is better (the best-of-n pick: max for PSNR/SSIM, min for LPIPS, as the original)
FRAME_METRICS = {"psnr": True, "ssim": True, "lpips": False}
RUN_CONFIG = "run_config.json"
CARD_START = "<!-- extdm-evaluation-results-start -->"
CARD_END = "<!-- extdm-evaluation-results-end -->"

ORACLE_NOTE = (
    "best_of_n is an oracle: per video, the sample closest to the ground truth is picked using the ground truth, "
    "separately for each metric (max PSNR, max SSIM, min LPIPS of the mean over predicted frames), as the original "
    "valid.py does and as the paper reports. mean_of_samples averages over the samples instead (no oracle)."
)
FVD_NOTE = (
    "FVD uses the full clips (ground-truth condition + predicted frames) against the real clips. fvd_traj: mean, std "
    "and 95% CI of the num_samples FVDs 'sample k of every video vs the real videos' (no oracle). fvd_best: FVD after "
    "picking per video the sample whose I3D feature is L1-closest to the real clip's (an oracle). The paper most "
    "likely reports fvd_traj's mean (see docs/evaluation.md)."
)


class EvaluationError(RuntimeError):
    """A problem with the run's inputs or settings, reported by the CLI as one line (no traceback)."""


CI_NOTE = (
    "std is numpy's population std (ddof=0) over videos; ci95 is the half-width of the 95% normal interval, "
    "1.96 * scipy.stats.sem (ddof=1), as the original valid.py metric_stuff"
)


# ----------------------------------------------------------------------------------------------- configuration


@dataclass
class EvaluationConfig:
    """Everything an evaluation run needs. ``None`` takes the benchmark registry's protocol value."""

    pipeline: str
    benchmark: str
    dataset_dir: str
    output_dir: str = "evaluation"
    split: Optional[str] = None
    num_videos: Optional[int] = None
    num_samples: Optional[int] = None
    seed: Optional[int] = None
    num_inference_steps: Optional[int] = None
    eta: Optional[float] = None
    cond_frames: Optional[int] = None
    pred_frames: Optional[int] = None
    use_occlusion: Optional[bool] = None
    batch_size: int = 16
    i3d: Optional[str] = None
    no_fvd: bool = False
    lpips_weights: Optional[str] = None
    no_lpips: bool = False
    no_baselines: bool = False
    num_gifs: int = 4
    device: Optional[str] = None
    dtype: str = "float32"
    update_model_card: bool = False
    max_videos: Optional[int] = None  # stop after this many newly finished videos (per process): for tests

    def protocol(self) -> Dict[str, Any]:
        """The resolved protocol values: the registry's, with this config's overrides."""
        from .benchmarks import get_benchmark

        bench = get_benchmark(self.benchmark)
        ev = bench.evaluation

        def pick(value, default):
            return default if value is None else value

        return {
            "benchmark": bench.name,
            "split": pick(self.split, ev.split),
            "cond_frames": pick(self.cond_frames, ev.cond_frames),
            "pred_frames": pick(self.pred_frames, ev.pred_frames),
            "num_videos": pick(self.num_videos, ev.num_videos),
            "video_stride": ev.video_stride,
            "num_samples": pick(self.num_samples, ev.num_samples),
            "seed": pick(self.seed, ev.seed),
            "num_inference_steps": pick(self.num_inference_steps, ev.num_inference_steps),
            "eta": float(pick(self.eta, ev.eta)),
            "use_occlusion": bool(pick(self.use_occlusion, ev.use_occlusion)),
        }

    def run_settings(self) -> Dict[str, Any]:
        """What must match for a resumed run to continue an earlier one (batch size, device, processes do not)."""
        return {
            **self.protocol(),
            "pipeline": str(self.pipeline),
            "dataset_dir": str(self.dataset_dir),
            "dtype": self.dtype,
            "fvd": not self.no_fvd,
            "i3d": None if self.no_fvd else (str(self.i3d) if self.i3d else "download"),
            "lpips": not self.no_lpips,
            "lpips_weights": None if self.no_lpips else (str(self.lpips_weights) if self.lpips_weights else "torchvision"),
            "baselines": not self.no_baselines,
            "num_gifs": self.num_gifs,
        }


def sample_seed(seed: int, clip: int, sample: int, num_samples: int) -> int:
    """Seed of the CPU generator of sample ``sample`` of evaluation clip ``clip`` (0..num_videos−1)."""
    return seed + clip * num_samples + sample


# ------------------------------------------------------------------------------------------------- aggregation


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """mean, std and 95% CI half-width over ``values`` exactly as the original ``metric_stuff``:
    ``np.mean``, ``np.std`` (ddof=0) and ``mean − norm.interval(0.95, mean, sem)[0]`` = 1.96·sem (ddof=1)."""
    import scipy.stats as st

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    std = float(values.std())
    if len(values) > 1:
        sem = st.sem(values)
        ci = mean - float(st.norm.interval(confidence=0.95, loc=mean, scale=sem)[0]) if sem > 0 else 0.0
    else:
        ci = None  # one value: no interval (the original gets NaN)
    return {"mean": mean, "std": std, "ci95": ci, "n": int(len(values))}


def aggregate_frame_metric(values: np.ndarray, higher_is_better: bool) -> Dict[str, Any]:
    """``values`` (V videos, N samples, T frames) of one metric -> ``best_of_n`` and ``mean_of_samples``.

    Per sample the metric is the mean over its predicted frames. ``best_of_n`` (oracle): per video the best
    sample (max or min), its per-frame values make the per-frame curve. ``mean_of_samples``: per video the mean
    over samples. Each gets mean/std/ci95 over videos and ``per_frame`` (mean over videos per frame).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"`values` must be (videos, samples, frames), got shape {values.shape}")
    per_sample = values.mean(axis=2)  # (V, N)
    best = per_sample.argmax(axis=1) if higher_is_better else per_sample.argmin(axis=1)
    rows = np.arange(values.shape[0])
    best_curves = values[rows, best]  # (V, T)
    return {
        "best_of_n": {
            **summarize(per_sample[rows, best]),
            "per_frame": best_curves.mean(axis=0).tolist(),
            "selection": "max" if higher_is_better else "min",
        },
        "mean_of_samples": {**summarize(per_sample.mean(axis=1)), "per_frame": values.mean(axis=(0, 1)).tolist()},
    }


def fvd_traj(real: np.ndarray, generated: np.ndarray) -> Dict[str, Any]:
    """``real`` (V, D), ``generated`` (V, N, D): the N FVDs of sample index k of every video vs the real videos,
    summarized (mean/std/ci95) with the list of values."""
    from .metrics import frechet_distance

    values = [frechet_distance(real, generated[:, k]) for k in range(generated.shape[1])]
    return {**summarize(values), "values": values}


def fvd_best(real: np.ndarray, generated: np.ndarray) -> Dict[str, Any]:
    """Oracle FVD: per video the sample whose feature is L1-closest to the real clip's feature."""
    from .metrics import frechet_distance

    distance = np.abs(generated - real[:, None]).sum(axis=2)  # (V, N)
    selected = distance.argmin(axis=1)
    return {"value": frechet_distance(real, generated[np.arange(len(real)), selected]), "selected": selected.tolist()}


def aggregate(records: List[Dict[str, np.ndarray]], methods: Sequence[str] = METHODS) -> Dict[str, Any]:
    """Final numbers from the per-video arrays (``features/clip_*.npz`` contents, in clip order)."""
    out: Dict[str, Any] = {}
    for method in methods:
        section: Dict[str, Any] = {}
        for metric, higher in FRAME_METRICS.items():
            key = f"{method}/{metric}"
            if key not in records[0]:
                continue
            values = np.stack([r[key] for r in records])
            if method == "extdm":
                section[metric] = aggregate_frame_metric(values, higher)
            else:  # one "sample": best_of_n == mean_of_samples, reported once
                single = aggregate_frame_metric(values[:, None], higher)["mean_of_samples"]
                section[metric] = single
        fkey = f"{method}/i3d"
        if fkey in records[0] and "real/i3d" in records[0]:
            real = np.stack([r["real/i3d"] for r in records]).astype(np.float64)
            gen = np.stack([r[fkey] for r in records]).astype(np.float64)
            if method == "extdm":
                section["fvd_traj"] = fvd_traj(real, gen)
                best = fvd_best(real, gen)
                section["fvd_best"] = best["value"]
                section["fvd_best_selected_samples"] = best["selected"]
            else:
                from .metrics import frechet_distance

                section["fvd"] = frechet_distance(real, gen)
        if section:
            out[method] = section
    return out


# ----------------------------------------------------------------------------------------------- the run


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{k.replace("/", "__"): v for k, v in arrays.items()})
    _atomic_write_bytes(path, buffer.getvalue())


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k.replace("__", "/"): data[k] for k in data.files}


def _repair_jsonl(path: Path) -> None:
    """Drop a torn last line (a run killed while writing it), so appends start on a fresh line."""
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if good != data:
        _atomic_write_bytes(path, good)


def _read_records(out: Path) -> Dict[int, Dict[str, Any]]:
    done: Dict[int, Dict[str, Any]] = {}
    for name in sorted(glob.glob(str(out / "per_video*.jsonl"))):
        with open(name) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    done[record["clip"]] = record
    return done


def _versions() -> Dict[str, str]:
    import diffusers

    from . import __version__ as ours  # noqa

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "extdm_diffusers": ours}


def _load_metrics_models(config: EvaluationConfig, device: torch.device):
    from .metrics import LPIPS, I3DFeatureExtractor

    i3d = lpips_model = None
    if not config.no_fvd:
        try:
            i3d = I3DFeatureExtractor(config.i3d).to(device)
        except (RuntimeError, OSError) as e:
            raise EvaluationError(
                f"Could not load the I3D detector for FVD ({e}). Pass a local copy with --i3d PATH "
                f"(StyleGAN-V's i3d_torchscript.pt), or skip FVD with --no_fvd."
            ) from e
    if not config.no_lpips:
        try:
            lpips_model = LPIPS(backbone_weights=config.lpips_weights, batch_size=256).to(device)
        except ValueError:
            raise
        except Exception as e:  # torchvision's download raises URLError, HTTPError, RuntimeError ...
            raise EvaluationError(
                f"Could not load the AlexNet backbone for LPIPS ({type(e).__name__}: {e}). Offline, pass a local "
                f"torchvision AlexNet state dict with --lpips_weights PATH, or skip LPIPS with --no_lpips."
            ) from e
    return i3d, lpips_model


def _frame_metrics(pred: torch.Tensor, truth: torch.Tensor, lpips_model) -> Dict[str, np.ndarray]:
    from .metrics import psnr, ssim

    truth = truth.expand_as(pred)
    values = {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth)}
    if lpips_model is not None:
        values["lpips"] = lpips_model(pred, truth)
    return {k: v.double().cpu().numpy() for k, v in values.items()}


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) in [0, 1] -> (T, H, W, 3) uint8."""
    frames = frames.float().clamp(0, 1).mul(255).round().byte().cpu()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    return frames.permute(0, 2, 3, 1).numpy()


def _write_gif(path: Path, cond: torch.Tensor, truth: torch.Tensor, best: torch.Tensor, rand: torch.Tensor) -> None:
    """condition | truth | best sample (by PSNR) | a random sample, over time; the condition panel holds its last
    frame while the others predict."""
    import PIL.Image
    from diffusers.utils import export_to_gif

    c = cond.shape[0]
    held = torch.cat([cond, cond[-1:].expand(truth.shape[0], -1, -1, -1)])
    panels = [held, torch.cat([cond, truth]), torch.cat([cond, best]), torch.cat([cond, rand])]
    grid = np.concatenate([_to_uint8(p) for p in panels], axis=2)  # side by side
    # a red bar marks the predicted frames
    images = []
    for t, frame in enumerate(grid):
        frame = frame.copy()
        if t >= c:
            frame[:2, frame.shape[1] // 4 :] = (255, 0, 0)
        images.append(PIL.Image.fromarray(frame))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".gif")
    os.close(fd)
    export_to_gif(images, tmp, fps=4)
    os.replace(tmp, path)


def _evaluate_clip(pipe, item, position: int, protocol: Dict[str, Any], config: EvaluationConfig, i3d, lpips_model,
                   device: torch.device, progress) -> Dict[str, np.ndarray]:
    c, p, n = protocol["cond_frames"], protocol["pred_frames"], protocol["num_samples"]
    clip = item["video"].to(device)
    cond, truth = clip[:c], clip[c : c + p]
    arrays: Dict[str, np.ndarray] = {}
    per_metric: Dict[str, List[np.ndarray]] = {}
    feats: List[torch.Tensor] = []
    make_gif = position < config.num_gifs
    gif_random = int(np.random.default_rng(protocol["seed"] + position).integers(n)) if make_gif else -1
    best_psnr, best_frames, random_frames = -math.inf, None, None
    adtype = pipe.flow_autoencoder.dtype
    for start in range(0, n, config.batch_size):
        ks = list(range(start, min(n, start + config.batch_size)))
        generators = [torch.Generator("cpu").manual_seed(sample_seed(protocol["seed"], position, k, n)) for k in ks]
        frames = pipe(
            cond[None].to(adtype), num_frames=p, num_inference_steps=protocol["num_inference_steps"],
            eta=protocol["eta"], generator=generators, num_samples_per_video=len(ks),
            use_occlusion=protocol["use_occlusion"], output_type="pt",
        ).frames.float().clamp(0, 1)
        for name, value in _frame_metrics(frames, truth[None], lpips_model).items():
            per_metric.setdefault(name, []).append(value)
        if i3d is not None:
            feats.append(i3d(torch.cat([cond[None].expand(len(ks), -1, -1, -1, -1), frames], dim=1)))
        if make_gif:
            means = per_metric["psnr"][-1].mean(axis=1)
            if means.max() > best_psnr:
                best_psnr, best_frames = float(means.max()), frames[int(means.argmax())].cpu()
            if gif_random in ks:
                random_frames = frames[ks.index(gif_random)].cpu()
        del frames
        progress.update(len(ks))
    for name, chunks in per_metric.items():
        arrays[f"extdm/{name}"] = np.concatenate(chunks)
    if i3d is not None:
        arrays["extdm/i3d"] = torch.cat(feats).numpy()
        arrays["real/i3d"] = i3d(clip[None].float())[0].numpy()
    if not config.no_baselines:
        baselines = {"copy_last_frame": cond[-1:].expand(p, -1, -1, -1)}
        with torch.no_grad():
            ae = pipe.flow_autoencoder
            reference = cond[-1][None].to(adtype)
            encoded = ae.encode(truth[None].to(adtype), reference)
            occlusion = encoded.occlusion_map if protocol["use_occlusion"] else None
            baselines["autoencoder"] = ae.decode(reference, encoded.optical_flow, occlusion).sample[0].float().clamp(0, 1)
        for method, frames in baselines.items():
            for name, value in _frame_metrics(frames[None], truth[None], lpips_model).items():
                arrays[f"{method}/{name}"] = value[0]
            if i3d is not None:
                arrays[f"{method}/i3d"] = i3d(torch.cat([cond, frames])[None])[0].numpy()
    if make_gif:
        _write_gif(Path(config.output_dir) / "gifs" / f"clip_{position:05d}.gif", cond.cpu(), truth.cpu(),
                   best_frames, random_frames)
    return arrays


def _record_line(position: int, item, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    record: Dict[str, Any] = {"clip": position, "dataset_row": int(item["video_index"]), "id": item["id"],
                              "start_frame": int(item["start_frame"])}
    for method in METHODS:
        values = {}
        for metric in FRAME_METRICS:
            key = f"{method}/{metric}"
            if key in arrays:
                mean = arrays[key].mean(axis=-1)
                values[metric] = mean.tolist() if mean.ndim else float(mean)
        if values:
            record[method] = values
    record["features"] = f"features/clip_{position:05d}.npz"
    return record


def _check_run_config(path: Path, settings: Dict[str, Any]) -> None:
    saved = json.loads(path.read_text())
    diffs = [f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
             if saved.get(k) != settings.get(k)]
    if diffs:
        raise EvaluationError(
            f"{path.parent} holds an evaluation run with different settings; use another --output_dir or the same "
            "settings. Differences: " + "; ".join(diffs)
        )


def _resolve_device(config: EvaluationConfig, local_rank: int) -> torch.device:
    if config.device:
        device = torch.device(config.device)
        if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", local_rank)
        return device
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def evaluate(config: EvaluationConfig) -> Optional[Dict[str, Any]]:
    """Run (or resume) the evaluation; returns the metrics on rank 0 (None on the other ranks, or when
    ``max_videos`` stopped the run early)."""
    from tqdm.auto import tqdm

    from .data import clip_dataset
    from .pipelines import ExtDMPipeline

    started = time.time()
    try:
        protocol = config.protocol()
    except KeyError as e:
        raise EvaluationError(str(e.args[0] if e.args else e)) from e
    settings = config.run_settings()
    if config.batch_size < 1:
        raise EvaluationError(f"--batch_size must be >= 1, got {config.batch_size}")
    if config.update_model_card and not Path(config.pipeline).is_dir():
        raise EvaluationError(f"--update_model_card needs a local pipeline folder, got {config.pipeline!r}")
    if config.dtype not in ("float32", "float16", "bfloat16"):
        raise EvaluationError(f"--dtype must be float32, float16 or bfloat16, got {config.dtype!r}")
    world, rank, local_rank = _dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))
    out = Path(config.output_dir)
    device = _resolve_device(config, local_rank)

    # 1. The clips (first, so that a wrong dataset leaves nothing behind), then the run config: written once,
    # checked on every (re)start.
    try:
        clips = clip_dataset(protocol["benchmark"], config.dataset_dir, protocol["split"],
                             num_frames=protocol["cond_frames"] + protocol["pred_frames"], num_videos=protocol["num_videos"])
    except (KeyError, FileNotFoundError) as e:
        raise EvaluationError(f"cannot read split {protocol['split']!r} of {config.dataset_dir}: {e}") from e

    if rank == 0:
        (out / "features").mkdir(parents=True, exist_ok=True)
        (out / "gifs").mkdir(exist_ok=True)
        config_path = out / RUN_CONFIG
        if config_path.exists():
            _check_run_config(config_path, settings)
        else:
            _atomic_write_text(config_path, json.dumps(settings, indent=2) + "\n")
        for name in glob.glob(str(out / "per_video*.jsonl")):
            _repair_jsonl(Path(name))
    _barrier(world)
    if rank != 0:
        _check_run_config(out / RUN_CONFIG, settings)

    # 2. Models, for the clips still to do.
    done = _read_records(out)
    mine = [i for i in range(len(clips)) if i % world == rank and i not in done]
    dtype = getattr(torch, config.dtype)
    i3d = lpips_model = pipe = None
    if mine:
        i3d, lpips_model = _load_metrics_models(config, device)
        pipe = ExtDMPipeline.from_pretrained(config.pipeline).to(device)
        if dtype != pipe.unet.dtype:  # (diffusers warns on every dtype cast, even a no-op one)
            pipe = pipe.to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if pipe.num_cond_frames != protocol["cond_frames"]:
            raise EvaluationError(f"the pipeline conditions on {pipe.num_cond_frames} frames; the {protocol['benchmark']} "
                             f"protocol on {protocol['cond_frames']}")

    # 3. Clips, one at a time; each is committed (npz, then its jsonl line) as soon as it is finished.
    jsonl = out / ("per_video.jsonl" if world == 1 else f"per_video.rank{rank}.jsonl")
    stopped = False
    with tqdm(total=len(mine) * protocol["num_samples"], desc=f"evaluating (rank {rank})" if world > 1 else "evaluating",
              unit="sample", disable=None, position=rank) as progress:
        for count, position in enumerate(mine):
            if config.max_videos is not None and count >= config.max_videos:
                stopped = True
                break
            item = clips[position]
            arrays = _evaluate_clip(pipe, item, position, protocol, config, i3d, lpips_model, device, progress)
            _save_npz(out / "features" / f"clip_{position:05d}.npz", arrays)
            with open(jsonl, "a") as f:
                f.write(json.dumps(_record_line(position, item, arrays)) + "\n")
                f.flush()
                os.fsync(f.fileno())
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([int(stopped)])
        dist.all_reduce(flag)
        stopped = bool(flag.item())
    _barrier(world)
    if stopped:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
        return None

    # 4. Rank 0 gathers everything that was committed and computes the numbers.
    result = None
    if rank == 0:
        done = _read_records(out)
        missing = [i for i in range(len(clips)) if i not in done]
        if missing:
            raise RuntimeError(f"clips {missing[:10]}... were not evaluated")
        merged = "".join(json.dumps(done[i]) + "\n" for i in range(len(clips)))
        _atomic_write_text(out / "per_video.jsonl", merged)
        for name in glob.glob(str(out / "per_video.rank*.jsonl")):
            os.remove(name)
        records = [_load_npz(out / done[i]["features"]) for i in range(len(clips))]
        result = _final_metrics(config, protocol, records, clips, world, started)
        _atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        if config.update_model_card:
            update_model_card(config.pipeline, result)
    _barrier(world)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def _final_metrics(config, protocol, records, clips, world, started) -> Dict[str, Any]:
    from .benchmarks import get_benchmark

    bench = get_benchmark(protocol["benchmark"])
    methods = ("extdm",) if config.no_baselines else METHODS
    result: Dict[str, Any] = {
        "metadata": {
            "benchmark": bench.name,
            "benchmark_display_name": bench.display_name,
            "protocol": protocol,
            "registry_protocol": dataclasses.asdict(bench.evaluation),
            "num_videos": len(records),
            "num_samples": protocol["num_samples"],
            "seed": protocol["seed"],
            "sample_seed_rule": "torch.Generator('cpu').manual_seed(seed + clip * num_samples + sample)",
            "pipeline": str(config.pipeline),
            "dataset_dir": str(config.dataset_dir),
            "dataset_rows": [int(i) for i in clips.video_indices],
            "dtype": config.dtype,
            "metrics": {"fvd": not config.no_fvd, "i3d": config.i3d, "lpips": not config.no_lpips,
                        "lpips_weights": config.lpips_weights},
            "frames": {"psnr_ssim_lpips": "predicted frames only", "fvd": "ground-truth condition + predicted frames"},
            "versions": _versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "processes": world,
            "elapsed_seconds_last_session": round(time.time() - started, 1),
        },
        "notes": {"best_of_n": ORACLE_NOTE, "fvd": FVD_NOTE, "std_ci95": CI_NOTE,
                  "copy_last_frame": "baseline: the last observed frame repeated",
                  "autoencoder": "baseline: the flow autoencoder's reconstruction of the true future frames from their "
                                 "true motion w.r.t. the last observed frame (the ceiling of the motion representation); "
                                 "same use_occlusion"},
        "paper_results": dict(bench.paper_results),
    }
    result.update(aggregate(records, methods))
    return result


# ------------------------------------------------------------------------------------------------- model card


def _results_table(result: Dict[str, Any]) -> str:
    meta = result["metadata"]
    proto = meta["protocol"]
    lines = [
        CARD_START,
        f"## Evaluation results: {meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}",
        "",
        f"{meta['num_videos']} test clips, {meta['num_samples']} samples each, {proto['num_inference_steps']} DDIM steps, "
        f"eta {proto['eta']}, seed {proto['seed']}, occlusion {'on' if proto['use_occlusion'] else 'off'} "
        "(`extdm_diffusers.evaluation`, see docs/evaluation.md). best-of-N is an oracle (the sample closest to "
        "the ground truth, per metric); ± is the 95% CI over videos.",
        "",
        "| method | FVD | PSNR | SSIM | LPIPS |",
        "| --- | --- | --- | --- | --- |",
    ]

    def fmt(d, digits):
        if d is None:
            return "–"
        if isinstance(d, dict):
            ci = d.get("ci95")
            return f"{d['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")
        return f"{d:.{digits}f}"

    ext = result.get("extdm", {})
    for label, key in (("ExtDM, best of N (oracle)", "best_of_n"), ("ExtDM, mean of samples", "mean_of_samples")):
        fvd = ext.get("fvd_traj") if key == "mean_of_samples" else ext.get("fvd_best")
        row = [label, fmt(fvd, 1) + (" (fvd_traj)" if key == "mean_of_samples" and fvd else " (fvd_best)" if fvd else "")]
        row += [fmt(ext.get(m, {}).get(key), d) for m, d in (("psnr", 2), ("ssim", 3), ("lpips", 3))]
        lines.append("| " + " | ".join(row) + " |")
    for method in ("copy_last_frame", "autoencoder"):
        if method in result:
            sec = result[method]
            row = [method, fmt(sec.get("fvd"), 1)] + [fmt(sec.get(m), d) for m, d in (("psnr", 2), ("ssim", 3), ("lpips", 3))]
            lines.append("| " + " | ".join(row) + " |")
    if result.get("paper_results"):
        pr = result["paper_results"]
        lines.append("| paper | " + " | ".join(fmt(pr.get(m), d) for m, d in (("fvd", 1), ("psnr", 2), ("ssim", 3), ("lpips", 3))) + " |")
    lines += ["", CARD_END]
    return "\n".join(lines)


def update_model_card(pipeline_dir: str, result: Dict[str, Any]) -> Path:
    """Write the results table (between markers) and ``model-index`` metadata into ``pipeline_dir/README.md``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(pipeline_dir)
    if not folder.is_dir():
        raise ValueError(f"--update_model_card needs a local pipeline folder, got {pipeline_dir!r}")
    path = folder / "README.md"
    meta = result["metadata"]
    proto = meta["protocol"]
    dataset_type = meta["benchmark"]
    dataset_name = f"{meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}"
    ext = result.get("extdm", {})
    evals = []

    def add(metric_type, name, value):
        evals.append(EvalResult(task_type="video-prediction", task_name="Video prediction", dataset_type=dataset_type,
                                dataset_name=dataset_name, dataset_split=proto["split"], metric_type=metric_type,
                                metric_name=name, metric_value=round(float(value), 4)))

    if "fvd_traj" in ext:
        add("fvd", f"FVD (mean over {meta['num_samples']} samples, fvd_traj)", ext["fvd_traj"]["mean"])
        add("fvd", "FVD (oracle best sample, fvd_best)", ext["fvd_best"])
    for metric in FRAME_METRICS:
        if metric in ext:
            add(metric, f"{metric.upper()} (oracle best of {meta['num_samples']})", ext[metric]["best_of_n"]["mean"])
            add(metric, f"{metric.upper()} (mean of samples)", ext[metric]["mean_of_samples"]["mean"])
    table = _results_table(result)
    if path.exists():
        card = ModelCard.load(path)
        data = card.data
        kept = [e for e in (data.eval_results or []) if e.dataset_type != dataset_type]
        data.eval_results = kept + evals
        data.model_name = data.model_name or folder.resolve().name
        text = card.text
        if CARD_START in text and CARD_END in text:
            head, rest = text.split(CARD_START, 1)
            text = head + table + rest.split(CARD_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    else:
        data = ModelCardData(model_name=folder.resolve().name, library_name="diffusers",
                             tags=["video-prediction", "extdm"], eval_results=evals)
        text = f"# {folder.resolve().name}\n\nAn ExtDM video prediction pipeline (`extdm_diffusers.ExtDMPipeline`).\n\n{table}\n"
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    _atomic_write_text(path, str(card))
    return path


# ------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> EvaluationConfig:
    parser = argparse.ArgumentParser(
        description="Evaluate an ExtDM pipeline with the paper's protocol (resumable; shard with accelerate launch "
                    "or torchrun). Protocol values default to the benchmark registry's.")
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub repo id")
    parser.add_argument("--benchmark", required=True, help="smmnist, kth, bair, cityscapes or ucf101")
    parser.add_argument("--dataset_dir", required=True, help="a dataset_builders/ output (save_to_disk folder) or Hub repo")
    parser.add_argument("--output_dir", default="evaluation")
    parser.add_argument("--split", default=None)
    parser.add_argument("--num_videos", type=int, default=None, help="test clips (protocol: 256)")
    parser.add_argument("--num_samples", type=int, default=None, help="samples per clip (protocol: 100)")
    parser.add_argument("--seed", type=int, default=None, help="protocol: 1000")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="protocol: 10")
    parser.add_argument("--eta", type=float, default=None, help="protocol: 1.0")
    parser.add_argument("--cond_frames", type=int, default=None, help="override the observed frames (not the protocol)")
    parser.add_argument("--pred_frames", type=int, default=None, help="override the horizon (not the protocol)")
    occ = parser.add_mutually_exclusive_group()
    occ.add_argument("--use_occlusion", dest="use_occlusion", action="store_true", default=None)
    occ.add_argument("--no_occlusion", dest="use_occlusion", action="store_false")
    parser.add_argument("--batch_size", type=int, default=16, help="(clip, sample) pairs per pipeline call")
    parser.add_argument("--i3d", default=None, help="local i3d_torchscript.pt (default: download it once)")
    parser.add_argument("--no_fvd", action="store_true")
    parser.add_argument("--lpips_weights", default=None, help="local torchvision AlexNet state dict (offline LPIPS)")
    parser.add_argument("--no_lpips", action="store_true")
    parser.add_argument("--no_baselines", action="store_true", help="skip copy_last_frame and autoencoder")
    parser.add_argument("--num_gifs", type=int, default=4, help="GIF grids for the first N clips")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--update_model_card", action="store_true", help="write the results into PIPELINE/README.md")
    parser.add_argument("--max_videos", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return EvaluationConfig(**vars(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parse_args(argv)
    try:
        result = evaluate(config)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is not None:
        ext = result.get("extdm", {})
        summary = {m: ext[m]["best_of_n"]["mean"] for m in FRAME_METRICS if m in ext}
        if "fvd_traj" in ext:
            summary.update(fvd_traj=ext["fvd_traj"]["mean"], fvd_best=ext["fvd_best"])
        print(json.dumps(summary, indent=2))
        print(f"wrote {Path(config.output_dir) / 'metrics.json'}")
    return 0
