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
PSNR, GIFs) and ``metrics.jsonl``. The loop itself is ``loop.train``'s, shared with ``train_dm.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.utils import logging
from torch import nn

from .arguments import TrainingArgumentError, add_common_arguments, model_config_overrides, parse_training_args
from .dataset_checks import check_clip_lengths, check_frame_shape
from .loop import TaskNames, TrainingTask, train
from .seeded_batches import SeededItems, seed_sequence
from .tracking import write_gif

logger = logging.get_logger("extdm_diffusers.training")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the ExtDM flow autoencoder on frame pairs.")
    add_common_arguments(parser)
    parser.add_argument("--perceptual_loss", choices=["vgg19", "none"], default="vgg19",
                        help="vgg19: the original objective (needs VGG19 weights); none: pixel L1 pyramid instead")
    parser.add_argument("--perceptual_weights", default=None,
                        help="local torchvision vgg19 state dict; without it torchvision's ImageNet weights are downloaded")
    parser.add_argument("--sync_batchnorm", action="store_true", help="synchronise batch norm across processes")
    return parse_training_args(parser, argv)


class AutoencoderWithLoss(nn.Module):
    """The autoencoder and its loss as one module, so that DDP sees the whole forward (the loss predicts the
    regions outside the autoencoder's forward). The loss (frozen VGG) is kept out of the state dict and checkpoints."""

    def __init__(self, autoencoder: nn.Module, loss: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        object.__setattr__(self, "loss_fn", loss)

    def forward(self, source, driving, transform):
        return self.loss_fn(self.autoencoder, source, driving, transform=transform)


def build_loss(args: argparse.Namespace, benchmark, num_channels: int):
    """``FlowAutoencoderLoss`` with the benchmark's weights; VGG19 from --perceptual_weights or torchvision."""
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


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with SyncBatchNorm layers back as BatchNorm2d (same weights and statistics)."""
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


class FlowAutoencoderTask(TrainingTask):
    """The flow autoencoder on frame pairs, with its loss: the autoencoder itself is what is saved."""

    names = TaskNames(script="training_scripts/train_flow_ae.py", what="flow autoencoder", saved="flow autoencoder",
                      saved_file="config.json", tracker_project="extdm-flow-ae")

    def __init__(self, args: argparse.Namespace, benchmark):
        super().__init__(args, benchmark)
        from ..models import FlowAutoencoder

        # the registry's configs are complete: their dict values name every nested key
        nested = {k: v for k, v in benchmark.flow_autoencoder_config().items() if isinstance(v, dict)}
        self.config = benchmark.flow_autoencoder_config(**model_config_overrides(args.model_config, FlowAutoencoder, nested))
        self.num_channels = self.config.get("num_channels", 3)

    @property
    def training(self):
        return self.benchmark.autoencoder_training

    def check_data(self, train_data, test_data) -> None:
        from ..models import FlowAutoencoder

        distance = self.training.min_frame_distance
        check_clip_lengths(train_data, distance + 1, "train", f"a frame pair {distance} or more frames apart")
        check_frame_shape(train_data, self.benchmark, self.config.get("sample_size"), self.num_channels, "--model_config")
        try:
            with torch.random.fork_rng(devices=[]):
                FlowAutoencoder(**self.config)
        except (TypeError, ValueError, KeyError) as error:
            raise TrainingArgumentError(f"--model_config: the FlowAutoencoder config is invalid: {error}") from error
        self.loss_fn = build_loss(self.args, self.benchmark, self.num_channels)

    def train_dataset(self, train_data, test_data):
        rgb = self.num_channels == 3
        self.test_pairs = None
        if test_data is not None:
            self.test_pairs = self.benchmark.frame_pairs(test_data, "test", rgb=rgb, augmentation=None, train=False)
        return self.benchmark.frame_pairs(train_data, "train", rgb=rgb)

    def build_model(self, accelerator, dtype: torch.dtype) -> Tuple[nn.Module, nn.Module]:
        from ..models import FlowAutoencoder

        autoencoder = FlowAutoencoder(**self.config)
        autoencoder.train()
        if self.args.gradient_checkpointing:
            autoencoder.enable_gradient_checkpointing()
        multi_process = accelerator.num_processes > 1
        if self.args.sync_batchnorm and multi_process and accelerator.device.type != "cuda":
            raise TrainingArgumentError(f"--sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, this run "
                                        f"uses {accelerator.device.type}; leave the flag out (per-process batch norm)")
        if self.args.sync_batchnorm and multi_process:
            autoencoder = nn.SyncBatchNorm.convert_sync_batchnorm(autoencoder)
            logger.warning("batch norm synchronised across processes (--sync_batchnorm)")
        elif self.args.sync_batchnorm:
            logger.warning("--sync_batchnorm has no effect with one process")
        self.loss_fn.to(accelerator.device)
        self.device = accelerator.device
        return AutoencoderWithLoss(autoencoder, self.loss_fn), autoencoder

    def trained_model(self, unwrapped: nn.Module) -> nn.Module:
        return unwrapped.autoencoder

    def make_optimizer(self, parameters, learning_rate: float) -> torch.optim.Optimizer:
        # fused: see TrainingTask.make_optimizer
        return torch.optim.Adam(parameters, lr=learning_rate, betas=self.training.adam_betas, fused=True)

    def loss_step(self, model, batch, generator, step, last_micro) -> Dict[str, torch.Tensor]:
        source = batch["source"].to(self.device)
        driving = batch["driving"].to(self.device)
        transform = self.loss_fn.sample_transform(driving.shape[0], generator, self.device, driving.dtype)
        return model(source, driving, transform)

    def save(self, model: nn.Module) -> None:
        if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
            model = revert_sync_batchnorm(model)
        model.save_pretrained(self.args.output_dir)

    def model_card(self) -> Dict[str, Any]:
        return {
            "title": f"ExtDM flow autoencoder, {self.benchmark.display_name}",
            "body": ("The motion autoencoder of [ExtDM](https://github.com/nku-zhichengzhang/ExtDM) (LFAE: region-based "
                     "flow plus occlusion), trained with extdm-diffusers. Train the denoiser on it with "
                     "`train_dm.py --flow_autoencoder THIS_FOLDER`.\n\n```python\nfrom extdm_diffusers.models import "
                     "FlowAutoencoder\n\nae = FlowAutoencoder.from_pretrained(\"PATH_OR_REPO\")\n```"),
        }

    def has_validation_data(self) -> bool:
        return self.test_pairs is not None

    def validate(self, model, folder: Path, seed: int, device) -> Tuple[Dict[str, float], List[str]]:
        """Reconstruction PSNR of a few test pairs; GIFs of (source, driving, reconstruction), each beside driving."""
        from ..metrics import psnr

        items = [SeededItems(self.test_pairs)[(i, seed_sequence(seed, i, 5))]
                 for i in range(min(self.args.num_validation_videos, len(self.test_pairs)))]
        source = torch.stack([it["source"] for it in items]).to(device)
        driving = torch.stack([it["driving"] for it in items]).to(device)
        prediction = model(source, driving).prediction.float().clamp(0, 1)
        results = {"val_psnr": psnr(prediction[:, None].cpu(), driving[:, None].cpu()).mean().item()}
        gifs = []
        for i in range(len(items)):
            frames = torch.stack([source[i], driving[i], prediction[i]]).cpu()
            beside_driving = torch.cat([frames, driving[i].cpu().expand_as(frames)], dim=-1)
            gifs.append(write_gif(beside_driving, folder / f"pair_{i}.gif", fps=1))
        return results, gifs


def main(args_or_argv: Union[argparse.Namespace, Sequence[str], None] = None) -> Dict[str, Any]:
    """Train; returns ``{"output_dir", "global_step", "loss", ...validation metrics}``."""
    return train(FlowAutoencoderTask, args_or_argv if isinstance(args_or_argv, argparse.Namespace) else parse_args(args_or_argv))


if __name__ == "__main__":
    main()
