"""Train the ExtDM flow autoencoder (``FlowAutoencoder``, the original LFAE) on frame pairs.

    accelerate launch training_scripts/train_flow_ae.py --benchmark smmnist --dataset_dir data/smmnist \\
        --output_dir out/smmnist-ae

As the original ``scripts/AE/train.py``: pairs (source, driving) of one video at the benchmark's frame
distance, with its flips and colour jitter, each video ``num_repeats`` times per epoch; loss = VGG19 perceptual
pyramid + equivariance (``FlowAutoencoderLoss``); Adam(2e-4, betas (0.5, 0.999)), MultiStepLR per optimizer
step; batch norm in train mode (``--sync_batchnorm`` synchronises it across processes).

``--output_dir`` receives the autoencoder itself (``FlowAutoencoder.save_pretrained``: ``config.json`` and the
weights at its root, so ``train_dm.py --flow_autoencoder OUT`` takes it as is) and a model card, at every
``--validation_steps`` and at the end; plus ``checkpoint-STEP``, ``validation/step-STEP/`` (reconstruction
PSNR, GIFs) and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from . import common
from .common import TrainingArgumentError, logger

SCRIPT = "training_scripts/train_flow_ae.py"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the ExtDM flow autoencoder on frame pairs.")
    common.add_common_arguments(parser)
    parser.add_argument("--perceptual_loss", choices=["vgg19", "none"], default="vgg19",
                        help="vgg19: the original objective (needs VGG19 weights); none: pixel L1 pyramid instead")
    parser.add_argument("--perceptual_weights", default=None,
                        help="local torchvision vgg19 state dict; without it torchvision's ImageNet weights are downloaded")
    parser.add_argument("--sync_batchnorm", action="store_true", help="synchronise batch norm across processes")
    args = parser.parse_args(argv)
    args._argv = list(argv) if argv is not None else None
    return args


class AutoencoderWithLoss(nn.Module):
    """The autoencoder and its loss as one module, so that DDP sees the whole forward (the loss calls the
    region predictor a second time). The loss (frozen VGG) is kept out of the state dict and checkpoints."""

    def __init__(self, autoencoder: nn.Module, loss: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        object.__setattr__(self, "loss_fn", loss)

    def forward(self, source, driving, transform):
        return self.loss_fn(self.autoencoder, source, driving, transform=transform)


def build_loss(args, benchmark, num_channels: int):
    from .flow_autoencoder_losses import FlowAutoencoderLoss, VGG19PerceptualFeatures

    training = benchmark.autoencoder_training
    vgg = None
    if args.perceptual_loss == "vgg19":
        if args.perceptual_weights is not None:
            if not os.path.isfile(args.perceptual_weights):
                raise TrainingArgumentError(f"--perceptual_weights: no file {args.perceptual_weights!r}")
            try:
                vgg = VGG19PerceptualFeatures(args.perceptual_weights)
            except Exception as error:  # noqa: BLE001
                raise TrainingArgumentError(f"--perceptual_weights: cannot load VGG19 weights from "
                                            f"{args.perceptual_weights!r}: {error}") from error
        else:
            try:
                vgg = VGG19PerceptualFeatures("imagenet")
            except Exception as error:  # noqa: BLE001 - the download failed: say what to do, never fall back
                raise TrainingArgumentError(
                    "--perceptual_loss vgg19: downloading torchvision's ImageNet VGG19 weights failed "
                    f"({type(error).__name__}: {error}); pass --perceptual_weights PATH (a local torchvision vgg19 "
                    "state dict) or train without it with --perceptual_loss none"
                ) from error
        logger.warning(f"training with the VGG19 perceptual pyramid loss (the original objective), weights: "
                       f"{args.perceptual_weights or 'torchvision ImageNet'}, scales {training.pyramid_scales}")
    else:
        logger.warning("training with --perceptual_loss none: a pixel L1 pyramid loss replaces the VGG19 perceptual "
                       "loss; this is NOT the paper's objective")
    return FlowAutoencoderLoss(
        num_channels=num_channels, scales=training.pyramid_scales, perceptual_loss=args.perceptual_loss,
        perceptual_weights=training.perceptual_weights, vgg_weights=vgg,
        equivariance_shift_weight=training.equivariance_shift_weight,
        equivariance_affine_weight=training.equivariance_affine_weight,
        sigma_affine=training.sigma_affine, sigma_tps=training.sigma_tps, points_tps=training.points_tps,
    )


def check_autoencoder_config(overrides: Dict[str, Any]) -> None:
    from ..models import FlowAutoencoder
    from ..models import flow_autoencoder as module

    allowed = common.constructor_keys(FlowAutoencoder)
    allowed["bg_predictor_params"] = dict(module.DEFAULT_BG_PREDICTOR_PARAMS)
    allowed["region_predictor_params"] = dict(module.DEFAULT_REGION_PREDICTOR_PARAMS)
    allowed["generator_params"] = dict(module.DEFAULT_GENERATOR_PARAMS)
    common.check_config_keys(overrides, allowed, "FlowAutoencoder")


def validate_and_save(args, accelerator, benchmark, model, ema, test_pairs, global_step, seed, metrics_log) -> Dict[str, float]:
    """Main process: save the autoencoder (EMA weights with --use_ema) and a model card into --output_dir;
    reconstruction PSNR and GIFs (source, driving, reconstruction) of a few test pairs."""
    from diffusers.utils import export_to_gif
    from PIL import Image

    from ..metrics import psnr

    autoencoder = accelerator.unwrap_model(model).autoencoder
    if ema is not None:
        ema.store(autoencoder.parameters())
        ema.copy_to(autoencoder.parameters())
    was_training = autoencoder.training
    autoencoder.eval()
    results: Dict[str, float] = {}
    try:
        to_save = autoencoder
        if isinstance(next((m for m in autoencoder.modules() if isinstance(m, nn.SyncBatchNorm)), None), nn.SyncBatchNorm):
            to_save = revert_sync_batchnorm(autoencoder)
        to_save.save_pretrained(args.output_dir)
        common.write_model_card(
            args.output_dir, title=f"ExtDM flow autoencoder, {benchmark.display_name}", benchmark=benchmark,
            dataset=args.dataset_dir, args=args, command=common.command_line(args._argv, SCRIPT),
            body=("The motion autoencoder of [ExtDM](https://github.com/nku-zhichengzhang/ExtDM) (LFAE: region-based "
                  "flow plus occlusion), trained with extdm-diffusers. Train the denoiser on it with "
                  "`train_dm.py --flow_autoencoder THIS_FOLDER`.\n\n```python\nfrom extdm_diffusers.models import "
                  "FlowAutoencoder\n\nae = FlowAutoencoder.from_pretrained(\"PATH_OR_REPO\")\n```"),
        )
        if test_pairs is None:
            return results
        items = [common.SeededItems(test_pairs)[(i, common.seed_sequence(seed, i, 5))]
                 for i in range(min(args.num_validation_videos, len(test_pairs)))]
        source = torch.stack([it["source"] for it in items]).to(accelerator.device)
        driving = torch.stack([it["driving"] for it in items]).to(accelerator.device)
        with torch.no_grad():
            prediction = autoencoder(source, driving).prediction.float().clamp(0, 1)
        results["val_psnr"] = psnr(prediction[:, None].cpu(), driving[:, None].cpu()).mean().item()
        folder = Path(args.output_dir, "validation", f"step-{global_step}")
        folder.mkdir(parents=True, exist_ok=True)
        gifs = []
        for i in range(len(items)):
            frames = [source[i], driving[i], prediction[i]]
            images = [Image.fromarray((torch.cat([f.cpu(), driving[i].cpu()], dim=-1).permute(1, 2, 0).clamp(0, 1)
                                       .numpy() * 255).round().astype("uint8")) for f in frames]
            gifs.append(export_to_gif(images, str(folder / f"pair_{i}.gif"), fps=1))
        (folder / "metrics.json").write_text(json.dumps(dict(results, step=global_step), indent=2))
        metrics_log.log(results, global_step)
        common.log_videos(accelerator, "validation", gifs, global_step)
        logger.info(f"step {global_step}: validation {results}")
        return results
    finally:
        autoencoder.train(was_training)
        if ema is not None:
            ema.restore(autoencoder.parameters())


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with SyncBatchNorm layers back as BatchNorm2d (same weights and statistics)."""
    import copy

    module = copy.deepcopy(module)

    def convert(m):
        out = m
        if isinstance(m, nn.SyncBatchNorm):
            out = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            out.load_state_dict(m.state_dict())
        for name, child in m.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(module)


def main(args_or_argv: Union[argparse.Namespace, Sequence[str], None] = None) -> Dict[str, Any]:
    """Train; returns ``{"output_dir", "global_step", "loss", ...validation metrics}``."""
    args = args_or_argv if isinstance(args_or_argv, argparse.Namespace) else parse_args(args_or_argv)
    if not hasattr(args, "_argv"):
        args._argv = None
    from diffusers.training_utils import EMAModel

    from ..data import frame_pair_dataset, load_video_dataset
    from ..models import FlowAutoencoder

    # ---- every check before any training --------------------------------------------------------------
    common.check_common_arguments(args)
    if args.gradient_checkpointing:
        raise TrainingArgumentError("--gradient_checkpointing: FlowAutoencoder does not support gradient checkpointing")
    benchmark = common.resolve_benchmark(args.benchmark)
    training = benchmark.autoencoder_training
    overrides = common.load_model_config(args.model_config)
    check_autoencoder_config(overrides)
    config = benchmark.flow_autoencoder_config(**overrides)
    try:
        train_data = load_video_dataset(args.dataset_dir, "train")
    except Exception as error:  # noqa: BLE001
        raise TrainingArgumentError(f"--dataset_dir: cannot load the 'train' split of {args.dataset_dir!r}: {error}") from error
    common.check_clip_lengths(train_data, training.min_frame_distance + 1, "train",
                              f"a frame pair {training.min_frame_distance} or more frames apart")
    common.check_frame_shape(train_data, benchmark, config.get("sample_size"), config.get("num_channels", 3), "--model_config")
    try:
        with torch.random.fork_rng(devices=[]):
            FlowAutoencoder(**config)
    except (TypeError, ValueError, KeyError) as error:
        raise TrainingArgumentError(f"--model_config: the FlowAutoencoder config is invalid: {error}") from error
    try:
        test_data = load_video_dataset(args.dataset_dir, "test")
    except Exception:  # noqa: BLE001
        logger.warning(f"--dataset_dir {args.dataset_dir} has no 'test' split: validation only saves the autoencoder")
        test_data = None
    loss_fn = build_loss(args, benchmark, config.get("num_channels", 3))

    accelerator = common.make_accelerator(args)
    os.makedirs(args.output_dir, exist_ok=True)
    seed = 1234 if args.seed is None else args.seed
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    batch_size = args.train_batch_size or common.default_batch_size(training.batch_size, num_processes, args.gradient_accumulation_steps)
    global_batch = batch_size * num_processes * args.gradient_accumulation_steps
    rgb = config.get("num_channels", 3) == 3
    train_pairs = frame_pair_dataset(benchmark.name, train_data, "train", rgb=rgb)
    test_pairs = None
    if test_data is not None:
        test_pairs = frame_pair_dataset(benchmark.name, test_data, "test", rgb=rgb, augmentation=None, train=False)
    max_train_steps = args.max_train_steps or common.default_max_train_steps(
        training.num_epochs, training.num_repeats, len(train_pairs), global_batch)
    learning_rate = args.learning_rate or training.learning_rate

    # ---- model, optimizer, schedule ---------------------------------------------------------------------
    torch.manual_seed(seed)
    autoencoder = FlowAutoencoder(**config)
    autoencoder.train()
    if args.sync_batchnorm and num_processes > 1 and accelerator.device.type != "cuda":
        raise TrainingArgumentError(f"--sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, this run uses "
                                    f"{accelerator.device.type}; leave the flag out (per-process batch norm)")
    if args.sync_batchnorm and num_processes > 1:
        autoencoder = nn.SyncBatchNorm.convert_sync_batchnorm(autoencoder)
        logger.warning("batch norm synchronised across processes (--sync_batchnorm)")
    elif args.sync_batchnorm:
        logger.warning("--sync_batchnorm has no effect with one process")
    model = AutoencoderWithLoss(autoencoder, loss_fn)
    loss_fn.to(accelerator.device)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=learning_rate, betas=training.adam_betas)
    lr_scheduler = common.make_lr_scheduler(args, optimizer, training, max_train_steps)
    ema = None
    if args.use_ema:
        ema = EMAModel(autoencoder.parameters(), decay=args.ema_decay, model_cls=FlowAutoencoder, model_config=autoencoder.config)
        ema.to(accelerator.device)

    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    inner = accelerator.unwrap_model(model).autoencoder

    global_step = 0
    checkpoint = common.find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        global_step = common.load_checkpoint(accelerator, checkpoint)["global_step"]
    if accelerator.is_main_process:
        accelerator.init_trackers("extdm-flow-ae", config=common.tracker_config(args))
    metrics_log = common.MetricsLog(accelerator, args.output_dir)

    logger.warning(
        f"training the {benchmark.name} flow autoencoder: {sum(p.numel() for p in inner.parameters()):,} parameters, "
        f"{len(train_pairs)} videos x {training.num_repeats} repeats, batch {batch_size} x {num_processes} processes x "
        f"{args.gradient_accumulation_steps} accumulation = {global_batch}, lr {learning_rate}, steps {global_step} -> "
        f"{max_train_steps}"
    )
    accumulation = args.gradient_accumulation_steps
    stream = common.micro_batches(train_pairs, batch_size, seed, global_step * accumulation, training.num_repeats,
                                  num_processes, rank, args.dataloader_num_workers)
    per_epoch = common.EpochBatchSampler.batches_per_epoch(len(train_pairs), training.num_repeats, batch_size * num_processes)
    last_loss, results = float("nan"), {}
    progress_bar = tqdm(total=max_train_steps, initial=global_step, desc="autoencoder steps", disable=not accelerator.is_local_main_process)
    while global_step < max_train_steps:
        generator = common.step_generator(seed, global_step, rank, accelerator.device)
        step_losses: Dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            micro_index, batch = next(stream)
            source = batch["source"].to(accelerator.device)
            driving = batch["driving"].to(accelerator.device)
            transform = loss_fn.sample_transform(driving.shape[0], generator, accelerator.device, driving.dtype)
            sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model)
            with sync:
                losses = model(source, driving, transform)
                accelerator.backward(losses["loss"] / accumulation)
            for name, value in losses.items():
                step_losses[name] = step_losses.get(name, 0) + value.detach() / accumulation
        if args.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(inner.parameters())
        global_step += 1
        progress_bar.update(1)

        if global_step % args.logging_steps == 0 or global_step == max_train_steps:
            names = sorted(step_losses)
            gathered = accelerator.gather(torch.stack([step_losses[n] for n in names])[None]).mean(0)
            values = {n: v.item() for n, v in zip(names, gathered)}
            last_loss = values["loss"]
            values.update(lr=lr_scheduler.get_last_lr()[0], epoch=micro_index // per_epoch)
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
                results = validate_and_save(args, accelerator, benchmark, model, ema, test_pairs, global_step, seed, metrics_log)
            accelerator.wait_for_everyone()

    if not Path(args.output_dir, "config.json").exists() and accelerator.is_main_process:
        results = validate_and_save(args, accelerator, benchmark, model, ema, test_pairs, global_step, seed, metrics_log)
    accelerator.wait_for_everyone()
    if args.push_to_hub and accelerator.is_main_process:
        common.push_folder(args, args.output_dir, f"ExtDM {benchmark.name} flow autoencoder, step {global_step}")
    accelerator.end_training()
    return dict(results, output_dir=args.output_dir, global_step=global_step, loss=last_loss)


if __name__ == "__main__":
    main()
