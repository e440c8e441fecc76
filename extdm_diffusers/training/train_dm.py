"""Train the ExtDM denoiser (``ExtDMUNet3DModel``) against a frozen ``FlowAutoencoder``.

    accelerate launch training_scripts/train_dm.py --benchmark smmnist --dataset_dir data/smmnist \\
        --flow_autoencoder out/smmnist-ae --output_dir out/smmnist-dm

What a step does (the original ``scripts/DM/train.py`` with the u22 diffusion wrapper):

* a batch of ``num_cond_frames + num_pred_frames`` clips goes through the frozen autoencoder in one no-grad
  ``encode_condition`` call (the same function the pipeline samples with): reference = the last observed
  frame; motion = [grid x, grid y, 2·occlusion−1] of every frame; the feature condition;
* target = the future frames' motion; t ~ U{0..999}; epsilon-prediction MSE (``denoising_loss``, noised with
  ``ExtDMDDIMScheduler.add_noise``: cosine schedule, 1000 steps); ``--prediction_type v_prediction`` and
  ``--snr_gamma`` (Min-SNR-γ) are options beyond the original, for short trainings;
* AdamW (betas (0.9, 0.999), wd 0) and MultiStepLR stepped per optimizer step with the benchmark's milestones
  (or `--lr_scheduler` cosine, linear, ... from diffusers, with `--lr_warmup_steps`);
* ``rec_loss`` / ``rec_warp_loss`` (L1 between the real future frames and the decoder's frames from the
  thresholded x̂0, with and without the occlusion blend) are logged every ``--log_reconstruction_steps``: metrics
  only, as in the original where they carry no gradient.

``--output_dir`` receives an ``ExtDMPipeline`` (``model_index.json`` at its root: load it with
``ExtDMPipeline.from_pretrained(OUT)``) and a model card, at every ``--validation_steps`` and at the end,
``checkpoint-STEP`` folders, ``validation/step-STEP/`` (GIFs, PSNR/SSIM) and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm
import torch.nn.functional as F

from . import common
from .common import TrainingArgumentError, logger
from .diffusion_loss import denoising_loss
from ..schedulers.scheduling_extdm_ddim import PREDICTION_TYPES

SCRIPT = "training_scripts/train_dm.py"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the ExtDM denoiser against a frozen flow autoencoder.")
    common.add_common_arguments(parser)
    parser.add_argument("--flow_autoencoder", required=True,
                        help="FlowAutoencoder folder (train_flow_ae.py's --output_dir) or a pipeline folder with a "
                             "flow_autoencoder/ subfolder")
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon",
                        help="what the denoiser predicts: the noise (the original) or the velocity, which learns "
                             "the high-noise steps far sooner (saved in the pipeline's scheduler config)")
    parser.add_argument("--snr_gamma", type=float, default=None,
                        help="Min-SNR-γ loss weighting (5.0 is the Min-SNR paper's choice; the original ExtDM: none)")
    parser.add_argument("--log_reconstruction_steps", type=int, default=100,
                        help="log rec_loss / rec_warp_loss every N steps (0: never); they cost one decoder call")
    parser.add_argument("--validation_inference_steps", type=int, default=None,
                        help="DDIM steps of validation samples (default: the benchmark's evaluation, 10)")
    args = parser.parse_args(argv)
    args._argv = list(argv) if argv is not None else None
    return args


def load_flow_autoencoder(path: str):
    """A ``FlowAutoencoder`` from its own folder, a pipeline folder (``flow_autoencoder/``) or a Hub id."""
    from ..models import FlowAutoencoder

    folder = Path(path)
    try:
        if folder.is_dir():
            if (folder / "config.json").is_file():
                config = json.loads((folder / "config.json").read_text())
                if config.get("_class_name") not in (None, "FlowAutoencoder"):
                    raise TrainingArgumentError(
                        f"--flow_autoencoder: {path} holds a {config.get('_class_name')}, not a FlowAutoencoder")
                return FlowAutoencoder.from_pretrained(str(folder))
            if (folder / "flow_autoencoder" / "config.json").is_file():
                return FlowAutoencoder.from_pretrained(str(folder), subfolder="flow_autoencoder")
            raise TrainingArgumentError(
                f"--flow_autoencoder: {path} holds neither a FlowAutoencoder (config.json) nor a pipeline with a "
                "flow_autoencoder/ subfolder")
        return FlowAutoencoder.from_pretrained(path, subfolder="flow_autoencoder")
    except TrainingArgumentError:
        raise
    except Exception as error:  # noqa: BLE001 - name the argument whatever went wrong
        raise TrainingArgumentError(f"--flow_autoencoder: cannot load a FlowAutoencoder from {path!r}: {error}") from error


def reconstruction_metrics(flow_autoencoder, scheduler, condition, noise, timesteps, model_output, future_frames, use_occlusion):
    """rec_loss, rec_warp_loss: L1 between the real future frames and the frames decoded from the thresholded
    x̂0 (with the occlusion blend, and the plain warp)."""
    with torch.no_grad():
        target = condition.future_motion.float()
        noisy = scheduler.add_noise(target, noise.float(), timesteps)
        x0 = scheduler.predict_original_sample(model_output.float(), timesteps, noisy)
        motion = x0.transpose(1, 2).to(condition.reference.dtype)
        occlusion = (motion[:, :, 2:3] + 1) * 0.5 if use_occlusion else None
        decoded = flow_autoencoder.decode(condition.reference, motion[:, :, :2], occlusion)
        future = future_frames.to(decoded.sample.dtype)
        return {
            "rec_loss": F.l1_loss(decoded.sample.float(), future.float()).item(),
            "rec_warp_loss": F.l1_loss(decoded.deformed.float(), future.float()).item(),
        }


def model_card_body(benchmark, num_cond: int, num_pred: int) -> str:
    return (
        "An [ExtDM](https://github.com/nku-zhichengzhang/ExtDM) video-prediction pipeline (flow autoencoder + "
        f"denoiser + DDIM scheduler) trained with extdm-diffusers: {num_cond} observed frames -> {num_pred} "
        "predicted frames per window (longer horizons are rolled out window by window).\n\n"
        "```python\nimport torch\nfrom extdm_diffusers import ExtDMPipeline\n\n"
        "pipe = ExtDMPipeline.from_pretrained(\"PATH_OR_REPO\")\n"
        f"video = torch.rand(1, {num_cond}, 3, {benchmark.frame_size}, {benchmark.frame_size})  # observed frames in [0, 1]\n"
        f"frames = pipe(video, num_frames={num_pred}, generator=torch.Generator().manual_seed(0)).frames\n```"
    )


def validate_and_save(args, accelerator, benchmark, unet, ema, flow_autoencoder, test_data, global_step, num_cond,
                      num_pred, use_occlusion, seed, metrics_log) -> Dict[str, float]:
    """Main process: save the pipeline (EMA weights with --use_ema) and a model card into --output_dir, then
    predict a few test clips, logging PSNR/SSIM and GIFs (also to validation/step-N/)."""
    from diffusers.utils import export_to_gif
    from PIL import Image

    from ..data import clip_dataset
    from ..metrics import psnr, ssim
    from ..pipelines import ExtDMPipeline
    from ..schedulers import ExtDMDDIMScheduler

    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    was_training = model.training
    model.eval()
    results: Dict[str, float] = {}
    try:
        pipe = ExtDMPipeline(flow_autoencoder=flow_autoencoder, unet=model,
                             scheduler=ExtDMDDIMScheduler(prediction_type=args.prediction_type))
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(args.output_dir)
        common.write_model_card(
            args.output_dir, title=f"ExtDM {benchmark.display_name}", benchmark=benchmark, dataset=args.dataset_dir,
            body=model_card_body(benchmark, num_cond, num_pred), args=args,
            command=common.command_line(args._argv, SCRIPT), extra_tags=["video-prediction-pipeline"],
        )
        if test_data is None:
            return results
        clips = clip_dataset(benchmark.name, test_data, "test", num_frames=num_cond + num_pred,
                             num_videos=args.num_validation_videos,
                             rgb=flow_autoencoder.config.num_channels == 3)
        video = torch.stack([clips[i]["video"] for i in range(len(clips))])
        steps = args.validation_inference_steps or benchmark.evaluation.num_inference_steps
        with torch.no_grad():
            prediction = pipe(video[:, :num_cond].to(accelerator.device), num_frames=num_pred, num_inference_steps=steps,
                              generator=torch.Generator(device=accelerator.device).manual_seed(seed),
                              output_type="pt", use_occlusion=use_occlusion).frames.float().cpu()
        target = video[:, num_cond:]
        results["val_psnr"] = psnr(prediction, target).mean().item()
        if min(target.shape[-2:]) >= 11:
            results["val_ssim"] = ssim(prediction, target).mean().item()
        folder = Path(args.output_dir, "validation", f"step-{global_step}")
        folder.mkdir(parents=True, exist_ok=True)
        gifs = []
        full = torch.cat([video[:, :num_cond], prediction], dim=1)
        for i in range(video.shape[0]):
            side_by_side = torch.cat([video[i], full[i]], dim=-1)  # real | predicted (observed frames: real)
            frames = [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8"))
                      for f in side_by_side]
            gifs.append(export_to_gif(frames, str(folder / f"video_{i}.gif"), fps=4))
        (folder / "metrics.json").write_text(json.dumps(dict(results, step=global_step), indent=2))
        metrics_log.log(results, global_step)
        common.log_videos(accelerator, "validation", gifs, global_step)
        logger.info(f"step {global_step}: validation {results}")
        return results
    finally:
        model.train(was_training)
        if ema is not None:
            ema.restore(model.parameters())


def main(args_or_argv: Union[argparse.Namespace, Sequence[str], None] = None) -> Dict[str, Any]:
    """Train; returns ``{"output_dir", "global_step", "loss", ...validation metrics}``."""
    args = args_or_argv if isinstance(args_or_argv, argparse.Namespace) else parse_args(args_or_argv)
    if not hasattr(args, "_argv"):
        args._argv = None
    from diffusers.training_utils import EMAModel

    from ..data import clip_dataset, load_video_dataset
    from ..models import ExtDMUNet3DModel
    from ..pipelines.pipeline_extdm import encode_condition
    from ..schedulers import ExtDMDDIMScheduler

    # ---- every check before any training --------------------------------------------------------------
    common.check_common_arguments(args)
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise TrainingArgumentError(f"--snr_gamma must be > 0, got {args.snr_gamma}")
    if args.log_reconstruction_steps < 0:
        raise TrainingArgumentError(f"--log_reconstruction_steps must be >= 0, got {args.log_reconstruction_steps}")
    benchmark = common.resolve_benchmark(args.benchmark)
    training = benchmark.denoiser_training
    overrides = common.load_model_config(args.model_config)
    common.check_config_keys(overrides, common.constructor_keys(ExtDMUNet3DModel), "ExtDMUNet3DModel")
    flow_autoencoder = load_flow_autoencoder(args.flow_autoencoder)
    feature_channels = flow_autoencoder.feature_channels
    if overrides.get("cond_feature_channels", feature_channels) != feature_channels:
        raise TrainingArgumentError(
            f"--model_config: cond_feature_channels {overrides['cond_feature_channels']} differs from the "
            f"--flow_autoencoder's feature channels ({feature_channels}); leave it out, it is taken from the autoencoder")
    unet_config = benchmark.unet_config(feature_channels, **overrides)
    num_cond, num_pred = unet_config["num_cond_frames"], unet_config["num_pred_frames"]
    try:
        train_data = load_video_dataset(args.dataset_dir, "train")
    except Exception as error:  # noqa: BLE001
        raise TrainingArgumentError(f"--dataset_dir: cannot load the 'train' split of {args.dataset_dir!r}: {error}") from error
    common.check_clip_lengths(train_data, num_cond + num_pred, "train", f"a {num_cond}+{num_pred}-frame training clip")
    common.check_frame_shape(train_data, benchmark, flow_autoencoder.config.sample_size,
                             flow_autoencoder.config.num_channels, "--flow_autoencoder")
    try:
        test_data = load_video_dataset(args.dataset_dir, "test")
    except Exception:  # noqa: BLE001
        logger.warning(f"--dataset_dir {args.dataset_dir} has no 'test' split: validation only saves the pipeline")
        test_data = None
    if test_data is not None:
        common.check_clip_lengths(test_data, num_cond + num_pred, "test", f"a {num_cond}+{num_pred}-frame validation clip")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ExtDMUNet3DModel(**unet_config)  # config errors surface here, before any process group work
    except (TypeError, ValueError) as error:
        raise TrainingArgumentError(f"--model_config: the denoiser config is invalid: {error}") from error

    accelerator = common.make_accelerator(args)
    os.makedirs(args.output_dir, exist_ok=True)
    seed = training.seed if args.seed is None else args.seed
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    batch_size = args.train_batch_size or common.default_batch_size(training.batch_size, num_processes, args.gradient_accumulation_steps)
    global_batch = batch_size * num_processes * args.gradient_accumulation_steps
    train_clips = clip_dataset(benchmark.name, train_data, "train", num_frames=num_cond + num_pred,
                               rgb=flow_autoencoder.config.num_channels == 3)
    max_train_steps = args.max_train_steps or common.default_max_train_steps(
        training.num_epochs, training.num_repeats, len(train_clips), global_batch)
    learning_rate = args.learning_rate or training.learning_rate

    # ---- models, optimizer, schedule --------------------------------------------------------------------
    dtype = common.weight_dtype(accelerator)
    frozen_ae = flow_autoencoder if dtype == torch.float32 else copy.deepcopy(flow_autoencoder)
    frozen_ae.requires_grad_(False).eval().to(accelerator.device, dtype=dtype)
    flow_autoencoder.requires_grad_(False).eval().to(accelerator.device)
    use_occlusion_train = flow_autoencoder.estimates_occlusion  # the original trains with 2·occ−1 always
    use_occlusion_eval = benchmark.evaluation.use_occlusion and flow_autoencoder.estimates_occlusion

    torch.manual_seed(seed)
    unet = ExtDMUNet3DModel(**unet_config)
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, betas=training.adam_betas,
                                  eps=args.adam_epsilon, weight_decay=training.weight_decay)
    lr_scheduler = common.make_lr_scheduler(args, optimizer, training, max_train_steps)
    ema = None
    if args.use_ema:
        ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=ExtDMUNet3DModel, model_config=unet.config)
        ema.to(accelerator.device)
    noise_scheduler = ExtDMDDIMScheduler(prediction_type=args.prediction_type)

    unet, optimizer = accelerator.prepare(unet, optimizer)
    # the LR schedule is not prepared: accelerate would step it once per process; ours counts optimizer steps
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    model = accelerator.unwrap_model(unet)
    num_feature_frames = model.num_feature_frames

    global_step = 0
    checkpoint = common.find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        global_step = common.load_checkpoint(accelerator, checkpoint)["global_step"]
    if accelerator.is_main_process:
        accelerator.init_trackers("extdm-dm", config=common.tracker_config(args))
    metrics_log = common.MetricsLog(accelerator, args.output_dir)

    logger.warning(
        f"training the {benchmark.name} denoiser: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{num_cond}->{num_pred} frames, {len(train_clips)} videos x {training.num_repeats} repeats, batch "
        f"{batch_size} x {num_processes} processes x {args.gradient_accumulation_steps} accumulation = {global_batch}, "
        f"lr {learning_rate}, steps {global_step} -> {max_train_steps}"
    )
    accumulation = args.gradient_accumulation_steps
    stream = common.micro_batches(train_clips, batch_size, seed, global_step * accumulation, training.num_repeats,
                                  num_processes, rank, args.dataloader_num_workers)
    per_epoch = common.EpochBatchSampler.batches_per_epoch(len(train_clips), training.num_repeats, batch_size * num_processes)
    last_loss, results = float("nan"), {}
    progress_bar = tqdm(total=max_train_steps, initial=global_step, desc="denoiser steps", disable=not accelerator.is_local_main_process)
    while global_step < max_train_steps:
        generator = common.step_generator(seed, global_step, rank, accelerator.device)
        log_reconstruction = args.log_reconstruction_steps and (global_step + 1) % args.log_reconstruction_steps == 0
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            micro_index, batch = next(stream)
            frames = batch["video"].to(accelerator.device, dtype=dtype)
            with torch.no_grad():
                condition = encode_condition(frozen_ae, frames, num_cond, num_feature_frames, use_occlusion_train)
            target = condition.future_motion.float()
            noise = torch.randn(target.shape, generator=generator, device=accelerator.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (target.shape[0],),
                                      generator=generator, device=accelerator.device)
            captured = {}
            hook = None
            if log_reconstruction and micro == accumulation - 1:
                hook = model.register_forward_hook(lambda m, i, o: captured.__setitem__("output", o.sample.detach()))
            sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(unet)
            with sync:
                loss = denoising_loss(unet, noise_scheduler, target, condition.cond_motion.float(),
                                      condition.cond_features.float(), timesteps, noise=noise, snr_gamma=args.snr_gamma)
                accelerator.backward(loss / accumulation)
            if hook is not None:
                hook.remove()
            step_loss += loss.detach() / accumulation
        if args.max_grad_norm is not None:
            accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())
        global_step += 1
        progress_bar.update(1)

        if global_step % args.logging_steps == 0 or global_step == max_train_steps or log_reconstruction:
            last_loss = accelerator.gather(step_loss[None]).mean().item()
            values = {"loss": last_loss, "lr": lr_scheduler.get_last_lr()[0], "epoch": micro_index // per_epoch}
            if log_reconstruction and "output" in captured:
                values.update(reconstruction_metrics(frozen_ae, noise_scheduler, condition, noise, timesteps,
                                                     captured["output"], frames[:, num_cond:], use_occlusion_train))
            metrics_log.log(values, global_step)
            progress_bar.set_postfix(loss=f"{values['loss']:.4g}")
            if accelerator.is_main_process:
                logger.info(f"step {global_step}/{max_train_steps}: {values}")
        if global_step % args.checkpointing_steps == 0:
            common.save_checkpoint(accelerator, args.output_dir, global_step,
                                   {"micro_batch": global_step * accumulation, "epoch": (global_step * accumulation) // per_epoch},
                                   args.checkpoints_total_limit)
        if global_step % args.validation_steps == 0 or global_step == max_train_steps:
            if accelerator.is_main_process:
                results = validate_and_save(args, accelerator, benchmark, unet, ema, flow_autoencoder, test_data,
                                            global_step, num_cond, num_pred, use_occlusion_eval, seed, metrics_log)
            accelerator.wait_for_everyone()

    if global_step >= max_train_steps and not Path(args.output_dir, "model_index.json").exists() and accelerator.is_main_process:
        # resumed from a checkpoint at (or past) the last step: still leave a pipeline behind
        results = validate_and_save(args, accelerator, benchmark, unet, ema, flow_autoencoder, test_data,
                                    global_step, num_cond, num_pred, use_occlusion_eval, seed, metrics_log)
    accelerator.wait_for_everyone()
    if args.push_to_hub and accelerator.is_main_process:
        common.push_folder(args, args.output_dir, f"ExtDM {benchmark.name} pipeline, step {global_step}")
    accelerator.end_training()
    return dict(results, output_dir=args.output_dir, global_step=global_step, loss=last_loss)


if __name__ == "__main__":
    main()
