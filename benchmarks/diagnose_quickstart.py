"""Where a quick start's prediction loses: the autoencoder's ceiling, the denoiser's motion, the rollout's second window.

    python benchmarks/diagnose_quickstart.py --run_dir runs/quickstart [--num_videos 32] [--seed N] [--num_samples 1]

On the run's held-out test videos, picked and seeded as the evaluation picks and seeds them, per predicted frame and
per window (a window is the denoiser's ``num_pred_frames``; the horizon is the quick start's ``--eval_pred_frames``):

a. ``frames.autoencoder``: the flow autoencoder's reconstruction of the true future from its encoding relative to
   the last observed frame (the ceiling of the motion representation; the evaluation's ``autoencoder`` baseline);
b. ``motion_window_1``: the denoiser's motion in window 1 against the autoencoder's encoding of the true frames (flow
   end-point error in pixels of the frame, occlusion MAE), beside holding still (the identity grid, and the last
   observed frame's own encoding held); with a ``motion_prior``, ``extdm_change_to_the_guess``: how far the
   denoiser moved its guess (``applied_px``), how far the truth lies from the guess (``needed_px``) and the cosine
   of the two changes (``alignment``: 1 where the denoiser moves the guess towards the truth, 0 where what it adds
   is unrelated to it); ``motion_window_2_teacher_forced``: the same for the teacher-forced window 2
   (d), against the true frames encoded relative to that window's reference;
c. ``frames.extdm``, ``frames.copy_last_frame``, ``frames.constant_velocity`` (no denoiser: the autoencoder's regions
   continued at constant velocity, ``FlowAutoencoder.extrapolate``): PSNR, SSIM, sharpness against the truth's, centroid errors;
d. ``second_window``: window 2 of the rollout, and window 2 teacher-forced: conditioned as the pipeline
   conditions it, but on the frames the autoencoder decodes from the true motion of window 1 instead of the
   predicted ones, with the same noise, and decoded as the pipeline decodes (its ``rollout_reference``:
   ``observed`` composes with the true motion of window 1's last frame); the gap between the two is the error
   window 1 hands on;
e. ``frames_predictable`` and ``frames_after_a_fresh_velocity``: section c split by whether some digit has drawn a
   fresh velocity (SMMNIST's stochastic bounce) since the last observed frame, from the builder's replayed draws
   (``smmnist.split_paths``): only on the first can one sample be expected to follow the truth.

Writes ``RUN_DIR/diagnosis.json`` and prints the markdown tables (for ``docs/quickstart.md``). The motion of the
free rollout's window 2 is relative to a predicted frame, which has no true encoding; it is not reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from extdm_diffusers.data import load_video_dataset
from extdm_diffusers.evaluation.config import EvaluationConfig, sample_seed
from extdm_diffusers.evaluation.motion_fidelity import (
    blob_centroid_error,
    centroid_error,
    correction_alignment,
    flow_error_pixels,
    sharpness_ratio,
    stroke_pixel_ratio,
)
from extdm_diffusers.file_io import atomic_write_text
from extdm_diffusers.metrics import psnr, ssim
from extdm_diffusers.models.autoencoder_blocks import make_coordinate_grid
from extdm_diffusers.pipelines import ExtDMPipeline
from extdm_diffusers.pipelines.pipeline_extdm import RolloutAnchor, extrapolate_observed

#: the metrics of predicted frames against the true ones: name -> function of (pred, truth), each (B, T, C, H, W) -> (B, T)
FRAME_METRICS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "psnr": psnr,
    "ssim": ssim,
    "sharpness_ratio": sharpness_ratio,
    "stroke_pixel_ratio": stroke_pixel_ratio,
    "centroid_error_px": centroid_error,
    "blob_centroid_error_px": blob_centroid_error,
}

NOTES = {
    "psnr, ssim": "extdm_diffusers.metrics, the evaluation's definitions, per frame",
    "sharpness_ratio": "gradient energy (mean squared neighbour differences) of the frame over the true frame's: 1 is "
                       "as sharp as the truth, blur lowers it",
    "stroke_pixel_ratio": "pixels brighter than 0.5 (a digit's strokes) in the frame over the true frame's: 1 is as "
                          "much digit as the truth; digits that shrink, dissolve or merge lower it",
    "centroid_error_px": "distance in pixels between the intensity centroids of the frame and of the true frame",
    "blob_centroid_error_px": "the same for each of two bright blobs (2-means on intensity-weighted pixel "
                              "coordinates; SMMNIST's two digits), mean of the two, best pairing; left out "
                              "where the test videos have one digit each",
    "flow_error_px": "mean end-point distance between the motion's sampling grid and the autoencoder's encoding of the "
                     "true frame (relative to the window's reference), in pixels of the frame",
    "occlusion_mae": "mean absolute difference of the occlusion maps in [0, 1]",
    "identity_grid": "no motion: the identity sampling grid, occlusion 1 (the reference unchanged)",
    "last_observed_held": "the autoencoder's encoding of the window's reference (the last conditioning frame) relative "
                          "to itself, held over the window: the motion of copying the reference",
    "constant_velocity": "the autoencoder alone: every region continues its step between the last two observed frames "
                         "at constant velocity over the horizon (FlowAutoencoder.extrapolate, bouncing off the frame's "
                         "edges where the pipeline's motion_prior does), decoded; no denoiser",
    "extdm_teacher_forced": "window 2 conditioned on the autoencoder's decoding of the true window-1 motion instead of "
                            "the predicted frames, with the rollout's own noise",
    "per_window": "mean over the window's frames; window = the denoiser's num_pred_frames",
    "mean": "over videos, samples (extdm) and frames",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="an extdm-quickstart --output_dir")
    parser.add_argument("--num_videos", type=int, default=32,
                        help="held-out videos, picked from the test split as the evaluation picks its clips (the "
                             "evaluation's clips and seeds when it is the run's --num_test_videos)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the evaluation's --seed: sample seeds as it draws them (default: the run's own --seed)")
    parser.add_argument("--num_samples", type=int, default=1, help="samples per video (metrics: their mean)")
    parser.add_argument("--batch_size", type=int, default=16, help="videos per batch")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    for name in ("num_videos", "num_samples", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def _frame_metrics(pred: torch.Tensor, truth: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every frame metric of ``pred`` (B·S, T, ...) against ``truth`` (B, T, ...): (B, T), the mean over the
    S samples of each video."""
    samples = pred.shape[0] // truth.shape[0]
    truth = truth.repeat_interleave(samples, dim=0)
    pred, truth = pred.double(), truth.double()
    return {name: fn(pred, truth).unflatten(0, (-1, samples)).mean(dim=1) for name, fn in FRAME_METRICS.items()}


def _motion_metrics(flow: torch.Tensor, occlusion: Optional[torch.Tensor], true_flow: torch.Tensor,
                    true_occlusion: Optional[torch.Tensor], frame_size) -> Dict[str, torch.Tensor]:
    """Flow (B·S, T, 2, h, w) and occlusion (B·S, T, 1, h, w) against the truth's (B, ...) -> (B, T) each."""
    samples = flow.shape[0] // true_flow.shape[0]
    true_flow = true_flow.double().repeat_interleave(samples, dim=0)
    values = {"flow_error_px": flow_error_pixels(flow.double(), true_flow, frame_size)}
    if occlusion is not None and true_occlusion is not None:
        diff = occlusion.double() - true_occlusion.double().repeat_interleave(samples, dim=0)
        values["occlusion_mae"] = diff.abs().mean(dim=(-3, -2, -1))
    return {name: value.unflatten(0, (-1, samples)).mean(dim=1) for name, value in values.items()}


def _correction_metrics(flow: torch.Tensor, prior_flow: torch.Tensor, true_flow: torch.Tensor,
                        frame_size) -> Dict[str, torch.Tensor]:
    """What the denoiser changed in its guess against what the truth needed: the change's size in pixels
    (``applied_px``), the needed change's (``needed_px``: the guess's own error) and their cosine (``alignment``);
    ``flow`` (B·S, T, 2, h, w), the others (B, ...) -> (B, T) each."""
    samples = flow.shape[0] // true_flow.shape[0]
    prior_flow, true_flow = (x.double().repeat_interleave(samples, dim=0) for x in (prior_flow, true_flow))
    flow = flow.double()
    values = {"applied_px": flow_error_pixels(flow, prior_flow, frame_size),
              "needed_px": flow_error_pixels(true_flow, prior_flow, frame_size),
              "alignment": correction_alignment(flow, prior_flow, true_flow)}
    return {name: value.unflatten(0, (-1, samples)).mean(dim=1) for name, value in values.items()}


def _still_motion(condition, num_frames: int, use_occlusion: bool) -> Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The two "no motion" baselines of a window under ``condition``, as (flow, occlusion) over ``num_frames``."""
    b, _, _, h, w = condition.flow.shape
    identity = make_coordinate_grid(h, w, device=condition.flow.device, dtype=condition.flow.dtype).permute(2, 0, 1)
    held_flow = condition.flow[:, -1:].expand(-1, num_frames, -1, -1, -1)
    held_occlusion = condition.occlusion[:, -1:].expand(-1, num_frames, -1, -1, -1) if use_occlusion else None
    return {
        "identity_grid": (identity.expand(b, num_frames, -1, -1, -1),
                          torch.ones_like(held_occlusion) if use_occlusion else None),
        "last_observed_held": (held_flow, held_occlusion),
    }


@torch.no_grad()
def rollout(pipe: ExtDMPipeline, cond: torch.Tensor, horizon: int, generators: List[torch.Generator], num_samples: int,
            num_inference_steps: int, eta: float, use_occlusion: bool):
    """``pipe(cond, ...)``'s prediction (frames in [0, 1] and motion) over ``horizon``, and the ``generators``'
    states where its window 2 begins (for ``denoise_second_window``; empty for one window)."""
    states: List[torch.Tensor] = []

    def keep_generator_states(pipeline, step, timestep, callback_kwargs):
        if step == len(pipeline.scheduler.timesteps) - 1:  # window 1's last step
            states.extend(g.get_state() for g in generators)
        return {}

    output = pipe(cond, num_frames=horizon, num_inference_steps=num_inference_steps, eta=eta, generator=generators,
                  num_samples_per_video=num_samples, use_occlusion=use_occlusion, output_type="pt",
                  return_motion=True, callback_on_step_end=keep_generator_states)
    return output, states


@torch.no_grad()
def denoise_second_window(pipe: ExtDMPipeline, condition, generators: List[torch.Generator], states: List[torch.Tensor],
                          num_inference_steps: int, eta: float, num_windows: int, use_occlusion: bool,
                          anchor: Optional[RolloutAnchor] = None):
    """Window 2 under ``condition`` (one per prediction) as ``ExtDMPipeline.__call__`` samples it, with the
    ``generators`` put back to ``states`` (theirs where the rollout's window 2 began): the same noise as the
    rollout's window 2, decoded as the pipeline decodes it (its ``rollout_reference``; ``anchor``: the motion of
    the condition's reference from the last observed frame). Returns the denoised motion (N, 3, window, h, w) and
    the decoded frames in [0, 1]."""
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)
    latent_dtype = torch.promote_types(pipe.unet.dtype, torch.float32)
    sample = pipe.prepare_latents(None, 1, len(generators), tuple(condition.cond_motion.shape[-2:]), generators,
                                  condition.cond_motion.device, latent_dtype)
    with pipe.progress_bar(total=num_inference_steps) as progress_bar:
        sample = pipe.denoise_window(sample, condition, 1, num_windows, num_inference_steps,
                                     pipe.prepare_extra_step_kwargs(generators, eta), None, [], progress_bar)
    rollout_reference = pipe.resolve_rollout_reference(None)
    frames, _ = pipe.decode_window(condition, sample.to(pipe.flow_autoencoder.dtype), use_occlusion, rollout_reference,
                                   anchor if rollout_reference == "observed" else None)
    return sample, frames.float().clamp(0, 1)


@torch.no_grad()
def diagnose_batch(pipe: ExtDMPipeline, clips: torch.Tensor, positions: List[int], cond_frames: int, horizon: int,
                   num_samples: int, seed: int, num_inference_steps: int, eta: float,
                   use_occlusion: bool) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per-frame arrays (B, T) of one batch of clips (B, cond + horizon, C, H, W), keyed section -> name."""
    window = pipe.num_pred_frames
    cond, truth = clips[:, :cond_frames], clips[:, cond_frames : cond_frames + horizon]
    frame_size = tuple(clips.shape[-2:])
    ae = pipe.flow_autoencoder
    out: Dict[str, Dict[str, torch.Tensor]] = {}

    # a. the ceiling: the true future encoded relative to the reference and decoded, as the evaluation's baseline
    reference = cond[:, -1]
    encoded = ae.encode(truth, reference)
    true_occlusion = encoded.occlusion_map if use_occlusion else None
    reconstructed = ae.decode(reference, encoded.optical_flow, true_occlusion).sample  # unclamped, as decoded frames are
    reconstruction = reconstructed.float().clamp(0, 1)
    out["frames/autoencoder"] = _frame_metrics(reconstruction, truth)
    out["frames/copy_last_frame"] = _frame_metrics(cond[:, -1:].expand_as(truth), truth)
    # the autoencoder alone continuing the last observed step at constant velocity over the whole horizon
    regions = ae.encode(cond[:, -2:], reference).region_params
    guess = extrapolate_observed(ae, reference, regions, 2, 2, horizon, pipe.unet.config.motion_prior)  # the pipeline's own
    guess_occlusion = guess.occlusion_map if use_occlusion else None
    extrapolated = ae.decode(reference, guess.optical_flow, guess_occlusion).sample.float().clamp(0, 1)
    out["frames/constant_velocity"] = _frame_metrics(extrapolated, truth)

    # c. the pipeline's own rollout with the evaluation's seeds
    generators = [torch.Generator("cpu").manual_seed(sample_seed(seed, p, k, num_samples))
                  for p in positions for k in range(num_samples)]
    output, window_2_states = rollout(pipe, cond, horizon, generators, num_samples, num_inference_steps, eta, use_occlusion)
    predicted = output.frames.float().clamp(0, 1)
    out["frames/extdm"] = _frame_metrics(predicted, truth)

    # b. window 1's motion against the true motion, beside holding still
    condition = pipe.encode_condition(cond, use_occlusion)
    first = slice(0, min(window, horizon))
    motion = output.motion[:, first]
    true_flow, true_occ = encoded.optical_flow[:, first], None if true_occlusion is None else true_occlusion[:, first]
    candidates = {"extdm": (motion[:, :, :2], motion[:, :, 2:] if use_occlusion else None),
                  **_still_motion(condition, first.stop, use_occlusion),
                  "constant_velocity": (guess.optical_flow[:, first], None if guess_occlusion is None else guess_occlusion[:, first])}
    for method, (flow, occlusion) in candidates.items():
        out[f"motion_window_1/{method}"] = _motion_metrics(flow, occlusion, true_flow, true_occ, frame_size)
    if pipe.unet.config.motion_prior is not None:  # the denoiser refines the guess: does it move it the right way?
        out["motion_window_1/extdm_change_to_the_guess"] = _correction_metrics(
            motion[:, :, :2], guess.optical_flow[:, first], true_flow, frame_size)
    if horizon <= window:
        return out

    # d. window 2: the rollout's, and teacher-forced from the true motion of window 1
    second = slice(window, min(2 * window, horizon))
    truth_2 = truth[:, second]
    for method, frames in (("extdm_rollout", predicted[:, second]), ("copy_last_frame", cond[:, -1:].expand_as(truth_2)),
                           ("autoencoder", reconstruction[:, second])):
        out[f"second_window/{method}"] = _frame_metrics(frames, truth_2)
    forced_per_video = pipe.next_window_condition(condition, reconstructed[:, first], use_occlusion)
    # the true motion of window 1's last frame, per prediction: what an "observed" rollout composes window 2's with
    last = first.stop - 1
    true_last = RolloutAnchor(reference.repeat_interleave(num_samples, dim=0),
                              encoded.optical_flow[:, last].repeat_interleave(num_samples, dim=0),
                              None if true_occlusion is None else true_occlusion[:, last].repeat_interleave(num_samples, dim=0))
    sample, forced_frames = denoise_second_window(pipe, forced_per_video.repeat_interleave(num_samples), generators,
                                                  window_2_states, num_inference_steps, eta, -(-horizon // window),
                                                  use_occlusion, true_last)
    out["second_window/extdm_teacher_forced"] = _frame_metrics(forced_frames[:, : second.stop - window], truth_2)

    # the teacher-forced window's motion against the true frames encoded relative to its reference
    encoded_2 = ae.encode(truth_2, forced_per_video.reference)
    true_occ_2 = encoded_2.occlusion_map if use_occlusion else None
    motion_2 = pipe.motion_to_output(sample)[:, : second.stop - window]
    candidates = {"extdm_teacher_forced": (motion_2[:, :, :2], motion_2[:, :, 2:] if use_occlusion else None),
                  **_still_motion(forced_per_video, second.stop - window, use_occlusion)}
    for method, (flow, occlusion) in candidates.items():
        out[f"motion_window_2_teacher_forced/{method}"] = _motion_metrics(flow, occlusion, encoded_2.optical_flow,
                                                                          true_occ_2, frame_size)
    return out


def _finite_or_none(value: float) -> Optional[float]:
    return None if value != value else value  # NaN: no video counted there (JSON has no NaN)


def _summary(values: torch.Tensor, window: int) -> Dict[str, Any]:
    """(V, T) per-frame values -> the mean over videos per frame, per window of ``window`` frames, and overall.
    NaN entries (videos a subset leaves out at that frame) are not counted."""
    per_frame = values.nanmean(dim=0)
    return {
        "per_frame": [_finite_or_none(v) for v in per_frame.tolist()],
        "per_window": [_finite_or_none(float(values[:, i : i + window].nanmean())) for i in range(0, values.shape[1], window)],
        "mean": _finite_or_none(float(values.nanmean())),
    }


def _smmnist_test_build(dataset_dir: Path) -> Optional[Dict[str, Any]]:
    """The SMMNIST builder's arguments for the test split (its build record), or None where another builder made it."""
    from extdm_diffusers.data.builders import smmnist
    from extdm_diffusers.data.builders.splits import build_settings

    built = build_settings(dataset_dir, "test")
    if built is None or built["generator"] != smmnist.smmnist_rows.__name__:
        return None
    return built["kwargs"]


def predictable_frames(dataset_dir: Path, video_indices: Sequence[int], cond_frames: int,
                       horizon: int) -> Optional[torch.Tensor]:
    """(V, horizon) bool: True where no digit of the clip's video has drawn a fresh velocity (SMMNIST's stochastic
    bounce) since the last observed frame, so that the observed frames determine the true future; None where the
    test split was not built by the SMMNIST builder (whose draws can be replayed from its build record)."""
    from extdm_diffusers.data.builders import smmnist

    kwargs = _smmnist_test_build(dataset_dir)
    if kwargs is None:
        return None
    paths = smmnist.split_paths(
        kwargs["num_videos"], kwargs["num_frames"], kwargs["image_size"], seed=kwargs["seed"],
        pool_size=kwargs["pool_size"], digit_size=kwargs["digit_size"], max_speed=kwargs["max_speed"],
        num_digits=kwargs["num_digits"], moving_digits=kwargs["moving_digits"], bounce=kwargs.get("bounce", "random"))
    masks = [paths[i].predictable(cond_frames)[cond_frames : cond_frames + horizon] for i in video_indices]
    return torch.from_numpy(np.stack(masks))


def split_by_predictability(arrays: Dict[str, Dict[str, torch.Tensor]], mask: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
    """The ``frames`` section's (V, T) arrays restricted to the predictable (video, frame) pairs and to the others
    (NaN elsewhere), with the share of videos that are predictable at each frame."""
    out: Dict[str, Dict[str, torch.Tensor]] = {"frames_predictable/videos": {"share": mask.double()}}
    for key, metrics in arrays.items():
        section, method = key.split("/")
        if section != "frames":
            continue
        for name, keep in (("frames_predictable", mask), ("frames_after_a_fresh_velocity", ~mask)):
            out[f"{name}/{method}"] = {metric: torch.where(keep, values.double(), torch.nan)
                                       for metric, values in metrics.items()}
    return out


def summarize(arrays: Dict[str, Dict[str, torch.Tensor]], window: int, first_frames: Dict[str, int]) -> Dict[str, Any]:
    """The per-frame arrays of all videos -> the sections of ``diagnosis.json``, each with the predicted frames'
    numbers (1 = the first predicted frame) and, per method and metric, ``_summary``."""
    sections: Dict[str, Any] = {}
    for key, metrics in arrays.items():
        section, method = key.split("/")
        frames = next(iter(metrics.values())).shape[1]
        first = first_frames[section]
        entry = sections.setdefault(section, {"frame_numbers": list(range(first, first + frames))})
        entry[method] = {name: _summary(values, window) for name, values in metrics.items()}
    return sections


_DIGITS = {"share": 2, "psnr": 2, "ssim": 3, "sharpness_ratio": 2, "stroke_pixel_ratio": 2, "centroid_error_px": 2,
           "blob_centroid_error_px": 2, "flow_error_px": 2, "occlusion_mae": 3}
_TITLES = {
    "frames": "Predicted frames against the truth (a: the autoencoder's ceiling; c: the rollout beside copying)",
    "motion_window_1": "b. Window 1's motion against the autoencoder's encoding of the true frames",
    "motion_window_2_teacher_forced": "b. Window 2's motion, teacher-forced, against the true frames' encoding",
    "second_window": "d. The second window: the rollout's, and teacher-forced from the true window-1 motion",
    "frames_predictable": "e. Frames the observed ones determine: no digit has drawn a fresh velocity (a stochastic "
                          "bounce) since the last observed frame (videos.share: the share of videos counted per frame)",
    "frames_after_a_fresh_velocity": "e. The other frames: some digit has bounced and drawn a fresh, unobservable "
                                     "velocity, so one sample cannot be expected to follow the truth",
}


def markdown_tables(sections: Dict[str, Any]) -> str:
    """One markdown table per section: a row per method and metric, a column per predicted frame, then the
    windows' means (where a section spans several) and the mean."""
    blocks = []
    for section, entry in sections.items():
        frames = entry["frame_numbers"]
        methods = {k: v for k, v in entry.items() if k != "frame_numbers"}
        windows = len(next(iter(next(iter(methods.values())).values()))["per_window"])
        window_columns = [f"window {i + 1}" for i in range(windows)] if windows > 1 else []
        header = ["method", "metric", *map(str, frames), *window_columns, "mean"]
        lines = [f"**{_TITLES.get(section, section)}** (predicted frame numbers)", "",
                 "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        for method, metrics in methods.items():
            for name, summary in metrics.items():
                digits = _DIGITS.get(name, 3)
                values = summary["per_frame"] + (summary["per_window"] if windows > 1 else []) + [summary["mean"]]
                cells = ("–" if v is None else f"{v:.{digits}f}" for v in values)
                lines.append("| " + " | ".join([method, name, *cells]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _run_settings(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "quickstart_args.json"
    if not path.is_file() or not (run_dir / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"diagnose_quickstart: error: --run_dir {run_dir} must be a finished extdm-quickstart "
                         "--output_dir (quickstart_args.json and pipeline/ are missing)")
    return json.loads(path.read_text())


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    settings = _run_settings(run_dir)
    config = EvaluationConfig(
        pipeline=str(run_dir / "pipeline"), dataset_dir=str(run_dir / "data"), num_videos=args.num_videos,
        num_samples=args.num_samples, seed=settings["seed"] if args.seed is None else args.seed,
        num_inference_steps=settings["num_inference_steps"],
        cond_frames=settings["cond_frames"], pred_frames=settings["eval_pred_frames"],
    )
    protocol = config.protocol()
    clips = config.registry_benchmark().clip_dataset(load_video_dataset(config.dataset_dir, protocol.split), protocol.split,
                                                     num_frames=protocol.cond_frames + protocol.pred_frames,
                                                     num_videos=protocol.num_videos)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = ExtDMPipeline.from_pretrained(config.pipeline).to(device)
    pipe.set_progress_bar_config(disable=True)
    if pipe.num_cond_frames != protocol.cond_frames:
        raise SystemExit(f"diagnose_quickstart: error: the pipeline conditions on {pipe.num_cond_frames} frames, the run's "
                         f"cond_frames is {protocol.cond_frames}")
    use_occlusion = pipe.resolve_use_occlusion(protocol.use_occlusion)

    arrays: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    for start in range(0, len(clips), args.batch_size):
        positions = list(range(start, min(len(clips), start + args.batch_size)))
        batch = torch.stack([clips[i]["video"] for i in positions]).to(device=device, dtype=pipe.flow_autoencoder.dtype)
        values = diagnose_batch(pipe, batch, positions, protocol.cond_frames, protocol.pred_frames, protocol.num_samples,
                                protocol.seed, protocol.num_inference_steps, protocol.eta, use_occlusion)
        for key, metrics in values.items():
            for name, value in metrics.items():
                arrays.setdefault(key, {}).setdefault(name, []).append(value.cpu())
    window = pipe.num_pred_frames
    arrays = {k: {n: torch.cat(v) for n, v in m.items()} for k, m in arrays.items()}
    mask = predictable_frames(run_dir / "data", clips.video_indices or range(len(clips)), protocol.cond_frames, protocol.pred_frames)
    if mask is not None:
        arrays.update(split_by_predictability(arrays, mask))
    built = _smmnist_test_build(run_dir / "data")
    num_digits = built["num_digits"] if built is not None else None
    if num_digits == 1:  # a 2-means would split the one digit in two; its centroid is centroid_error_px
        arrays = {key: {n: v for n, v in m.items() if n != "blob_centroid_error_px"} for key, m in arrays.items()}
    # the sections in the order the tables print them, with the number of their first predicted frame
    first_frames = {"frames": 1, "motion_window_1": 1, "motion_window_2_teacher_forced": window + 1,
                    "second_window": window + 1, "frames_predictable": 1, "frames_after_a_fresh_velocity": 1}
    result = {
        "run_dir": str(run_dir),
        "settings": {"num_videos": len(clips), "num_samples": protocol.num_samples, "seed": protocol.seed,
                     "cond_frames": protocol.cond_frames, "window": window, "horizon": protocol.pred_frames,
                     "frame_size": list(batch.shape[-2:]), "num_inference_steps": protocol.num_inference_steps,
                     "eta": protocol.eta, "use_occlusion": use_occlusion, "num_digits": num_digits},
        "notes": NOTES,
        **summarize(arrays, window, first_frames),
    }
    atomic_write_text(run_dir / "diagnosis.json", json.dumps(result, indent=2) + "\n")
    print(markdown_tables({k: result[k] for k in first_frames if k in result}), flush=True)
    return result


if __name__ == "__main__":
    main()
