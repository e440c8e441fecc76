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
``checkpoint-STEP`` folders, ``validation/step-STEP/`` (GIFs, PSNR/SSIM) and ``metrics.jsonl``. The loop itself
is ``loop.train``'s, shared with ``train_flow_ae.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..pipelines.pipeline_extdm import DEFAULT_ROLLOUT_REFERENCE, ROLLOUT_REFERENCES, flow_and_occlusion
from ..schedulers.scheduling_extdm_ddim import PREDICTION_TYPES
from .arguments import TrainingArgumentError, add_common_arguments, model_config_overrides, parse_training_args
from .dataset_checks import check_clip_lengths, check_frame_shape
from .diffusion_loss import denoising_loss
from .hub import usage_example
from .loop import TaskNames, TrainingTask, train
from .tracking import write_gif


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the ExtDM denoiser against a frozen flow autoencoder.")
    add_common_arguments(parser)
    parser.add_argument("--flow_autoencoder", required=True,
                        help="FlowAutoencoder folder (train_flow_ae.py's --output_dir) or a pipeline folder with a "
                             "flow_autoencoder/ subfolder")
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon",
                        help="what the denoiser predicts: the noise (the original), the velocity, which learns "
                             "the high-noise steps far sooner, or the clean motion (sample) (saved in the "
                             "pipeline's scheduler config)")
    parser.add_argument("--snr_gamma", type=float, default=None,
                        help="Min-SNR-γ loss weighting (5.0 is the Min-SNR paper's choice; the original ExtDM: none)")
    parser.add_argument("--log_reconstruction_steps", type=int, default=100,
                        help="log rec_loss / rec_warp_loss every N steps (0: never); they cost one decoder call")
    parser.add_argument("--validation_inference_steps", type=int, default=None,
                        help="DDIM steps of validation samples (default: the benchmark's evaluation, 10)")
    parser.add_argument("--rollout_reference", choices=ROLLOUT_REFERENCES, default=DEFAULT_ROLLOUT_REFERENCE,
                        help="the saved pipeline's rollout_reference: the frame a later window's frames are warps of "
                             "(last_decoded: the original; observed: the last observed frame, the motion composed)")
    return parse_training_args(parser, argv)


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


def reconstruction_metrics(flow_autoencoder, scheduler, condition, noise, timesteps, model_output, future_frames,
                           use_occlusion: bool, motion_latent_scale: Optional[float] = None) -> Dict[str, float]:
    """rec_loss, rec_warp_loss: L1 between the real future frames and the frames decoded from the thresholded
    x̂0 (with the occlusion blend, and the plain warp)."""
    with torch.no_grad():
        target = condition.denoising_target().float()
        noisy = scheduler.add_noise(target, noise.float(), timesteps)
        x0 = scheduler.predict_original_sample(model_output.float(), timesteps, noisy)
        motion = condition.motion_from_sample(x0).to(condition.reference.dtype)
        decoded = flow_autoencoder.decode(condition.reference, *flow_and_occlusion(motion, use_occlusion, motion_latent_scale))
        future = future_frames.to(decoded.sample.dtype)
        return {
            "rec_loss": F.l1_loss(decoded.sample.float(), future.float()).item(),
            "rec_warp_loss": F.l1_loss(decoded.deformed.float(), future.float()).item(),
        }


def model_card_body(flow_autoencoder_config, unet_config, frame_size: int) -> str:
    """The card's description and usage example, with the pipeline's own frame size (the autoencoder's, else
    ``frame_size``), channels and window."""
    size = flow_autoencoder_config.get("sample_size") or frame_size
    return (
        "An [ExtDM](https://github.com/nku-zhichengzhang/ExtDM) video-prediction pipeline (flow autoencoder + "
        f"denoiser + DDIM scheduler) trained with extdm-diffusers: {unet_config['num_cond_frames']} observed frames -> "
        f"{unet_config['num_pred_frames']} predicted frames per window at {size}x{size} (longer horizons are rolled "
        "out window by window).\n\n" + usage_example(flow_autoencoder_config, unet_config, frame_size=size)
    )


class DenoiserTask(TrainingTask):
    """The denoiser against the frozen ``--flow_autoencoder``: an ``ExtDMPipeline`` is what is saved."""

    names = TaskNames(script="training_scripts/train_dm.py", what="denoiser", saved="pipeline",
                      saved_file="model_index.json", tracker_project="extdm-dm")

    def __init__(self, args: argparse.Namespace, benchmark):
        from ..models import ExtDMUNet3DModel

        super().__init__(args, benchmark)
        if args.snr_gamma is not None and args.snr_gamma <= 0:
            raise TrainingArgumentError(f"--snr_gamma must be > 0, got {args.snr_gamma}")
        if args.log_reconstruction_steps < 0:
            raise TrainingArgumentError(f"--log_reconstruction_steps must be >= 0, got {args.log_reconstruction_steps}")
        overrides = model_config_overrides(args.model_config, ExtDMUNet3DModel)
        self.flow_autoencoder = load_flow_autoencoder(args.flow_autoencoder)
        feature_channels = self.flow_autoencoder.feature_channels
        if overrides.get("cond_feature_channels", feature_channels) != feature_channels:
            raise TrainingArgumentError(
                f"--model_config: cond_feature_channels {overrides['cond_feature_channels']} differs from the "
                f"--flow_autoencoder's feature channels ({feature_channels}); leave it out, it is taken from the autoencoder")
        self.unet_config = benchmark.unet_config(feature_channels, **overrides)
        self.num_cond, self.num_pred = self.unet_config["num_cond_frames"], self.unet_config["num_pred_frames"]
        self.rgb = self.flow_autoencoder.config.num_channels == 3
        self.use_occlusion_train = self.flow_autoencoder.estimates_occlusion  # the original trains with 2·occ−1 always
        self.use_occlusion_eval = benchmark.evaluation.decodes_with_occlusion(self.flow_autoencoder.estimates_occlusion)
        self._kept: Optional[Tuple[Any, ...]] = None

    @property
    def training(self):
        return self.benchmark.denoiser_training

    def check_data(self, train_data, test_data) -> None:
        from ..models import ExtDMUNet3DModel

        frames = self.num_cond + self.num_pred
        what = f"a {self.num_cond}+{self.num_pred}-frame"
        window = "(--benchmark's train_cond_frames + train_pred_frames, or --model_config's num_cond_frames + num_pred_frames)"
        check_clip_lengths(train_data, frames, "train", f"{what} training clip {window}")
        check_frame_shape(train_data, self.benchmark, self.flow_autoencoder.config.sample_size,
                          self.flow_autoencoder.config.num_channels, "--flow_autoencoder")
        if test_data is not None:
            check_clip_lengths(test_data, frames, "test", f"{what} validation clip")
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                ExtDMUNet3DModel(**self.unet_config)  # config errors surface here, before any process group work
        except (TypeError, ValueError) as error:
            raise TrainingArgumentError(f"--model_config: the denoiser config is invalid: {error}") from error

    def train_dataset(self, train_data, test_data):
        self.test_data = test_data
        return self.benchmark.clip_dataset(train_data, "train", num_frames=self.num_cond + self.num_pred, rgb=self.rgb)

    def build_model(self, accelerator, dtype: torch.dtype) -> Tuple[nn.Module, nn.Module]:
        from ..models import ExtDMUNet3DModel

        ae = self.flow_autoencoder
        self.frozen_ae = ae if dtype == torch.float32 else copy.deepcopy(ae)
        self.frozen_ae.requires_grad_(False).eval().to(accelerator.device, dtype=dtype)
        ae.requires_grad_(False).eval().to(accelerator.device)
        self.dtype, self.device = dtype, accelerator.device
        unet = ExtDMUNet3DModel(**self.unet_config)
        unet.train()
        if self.args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.num_feature_frames = unet.num_feature_frames
        self.noise_scheduler = self.make_scheduler()
        return unet, unet

    @property
    def motion_latent_scale(self) -> Optional[float]:
        return self.unet_config.get("motion_latent_scale")

    @property
    def motion_prior(self) -> Optional[str]:
        return self.unet_config.get("motion_prior")

    @property
    def residual_scaling(self) -> Optional[str]:
        return self.unet_config.get("motion_prior_residual_scaling")

    def make_scheduler(self):
        """The original's sampler; for scaled displacement latents (``motion_latent_scale``) or motion measured from a
        prior (``motion_prior``) without its dynamic thresholding, which divides every x0 whose 0.9 quantile
        exceeds 1 and would shrink their motion."""
        from ..schedulers import ExtDMDDIMScheduler

        thresholding = self.motion_latent_scale is None and self.motion_prior is None
        return ExtDMDDIMScheduler(prediction_type=self.args.prediction_type, thresholding=thresholding)

    def make_optimizer(self, parameters, learning_rate: float) -> torch.optim.Optimizer:
        training = self.training
        # fused: see TrainingTask.make_optimizer
        return torch.optim.AdamW(parameters, lr=learning_rate, betas=training.adam_betas, eps=self.args.adam_epsilon,
                                 weight_decay=training.weight_decay, fused=True)

    def logs_at(self, step: int) -> bool:
        return bool(self.args.log_reconstruction_steps) and step % self.args.log_reconstruction_steps == 0

    def loss_step(self, model, batch, generator, step, last_micro) -> Dict[str, torch.Tensor]:
        from ..pipelines.pipeline_extdm import encode_condition

        frames = batch["video"].to(self.device, dtype=self.dtype)
        with torch.no_grad():
            condition = encode_condition(self.frozen_ae, frames, self.num_cond, self.num_feature_frames,
                                         self.use_occlusion_train, self.motion_latent_scale, self.motion_prior,
                                         frames.shape[1] - self.num_cond, self.residual_scaling)
        target = condition.denoising_target().float()
        noise = torch.randn(target.shape, generator=generator, device=self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (target.shape[0],),
                                  generator=generator, device=self.device)
        prior = condition.prior_motion.float() if self.unet_config.get("motion_prior_input") else None
        output = denoising_loss(model, self.noise_scheduler, target, condition.cond_motion.float(),
                                condition.cond_features.float(), timesteps, noise=noise, snr_gamma=self.args.snr_gamma,
                                prior_motion=prior)
        if last_micro and self.logs_at(step + 1):
            self._kept = (condition, noise, timesteps, output.model_output.detach(), frames[:, self.num_cond:])
        return {"loss": output.loss}

    def extra_metrics(self) -> Dict[str, float]:
        if self._kept is None:
            return {}
        condition, noise, timesteps, model_output, future = self._kept
        self._kept = None
        return reconstruction_metrics(self.frozen_ae, self.noise_scheduler, condition, noise, timesteps, model_output,
                                      future, self.use_occlusion_train, self.motion_latent_scale)

    def pipeline(self, unet: nn.Module):
        from ..pipelines import ExtDMPipeline

        # the benchmark as trained (the autoencoder's config, the denoiser's window) goes into model_index.json
        recorded = self.benchmark.for_models(self.flow_autoencoder.config, unet.config)
        pipe = ExtDMPipeline(flow_autoencoder=self.flow_autoencoder, unet=unet,
                             scheduler=self.make_scheduler(),
                             benchmark=recorded.to_dict(), rollout_reference=self.args.rollout_reference)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save(self, model: nn.Module) -> None:
        self.pipeline(model).save_pretrained(self.args.output_dir)

    def model_card(self) -> Dict[str, Any]:
        return {"title": f"ExtDM {self.benchmark.display_name}", "extra_tags": ["video-prediction-pipeline"],
                "body": model_card_body(self.flow_autoencoder.config, self.unet_config, self.benchmark.frame_size)}

    def has_validation_data(self) -> bool:
        return self.test_data is not None

    def validate(self, model, folder: Path, seed: int, device) -> Tuple[Dict[str, float], List[str]]:
        """PSNR (and SSIM) of predicted test clips; GIFs real | predicted."""
        from ..metrics import psnr, ssim

        args, num_cond = self.args, self.num_cond
        clips = self.benchmark.clip_dataset(self.test_data, "test", num_frames=num_cond + self.num_pred,
                                            num_videos=args.num_validation_videos, rgb=self.rgb)
        video = torch.stack([clips[i]["video"] for i in range(len(clips))])
        steps = args.validation_inference_steps or self.benchmark.evaluation.num_inference_steps
        prediction = self.pipeline(model)(
            video[:, :num_cond].to(device), num_frames=self.num_pred, num_inference_steps=steps,
            generator=torch.Generator(device=device).manual_seed(seed), output_type="pt",
            use_occlusion=self.use_occlusion_eval).frames.float().cpu()
        target = video[:, num_cond:]
        results = {"val_psnr": psnr(prediction, target).mean().item()}
        if min(target.shape[-2:]) >= 11:
            results["val_ssim"] = ssim(prediction, target).mean().item()
        full = torch.cat([video[:, :num_cond], prediction], dim=1)
        gifs = [write_gif(torch.cat([video[i], full[i]], dim=-1), folder / f"video_{i}.gif", fps=4)  # real | predicted
                for i in range(video.shape[0])]
        return results, gifs


def main(args_or_argv: Union[argparse.Namespace, Sequence[str], None] = None) -> Dict[str, Any]:
    """Train; returns ``{"output_dir", "global_step", "loss", ...validation metrics}``."""
    return train(DenoiserTask, args_or_argv if isinstance(args_or_argv, argparse.Namespace) else parse_args(args_or_argv))


if __name__ == "__main__":
    main()
