"""What the evaluation computes on one clip: the samples (one seeded generator each, ``--batch_size`` at a time),
their PSNR/SSIM/LPIPS per predicted frame and I3D features, the real clip's features, and the two baselines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..benchmarks import EvaluationProtocol
from ..metrics import LPIPS, I3DFeatureExtractor, psnr, ssim
from ..pipelines import ExtDMPipeline
from .config import EvaluationConfig, EvaluationError, sample_seed
from .gifs import write_gif


def load_metric_models(config: EvaluationConfig, device: torch.device) -> Tuple[Optional[I3DFeatureExtractor], Optional[LPIPS]]:
    """The I3D detector and LPIPS, unless switched off; a failed load says which option to pass instead."""
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


def _frame_metrics(pred: torch.Tensor, truth: torch.Tensor, lpips_model: Optional[LPIPS]) -> Dict[str, np.ndarray]:
    truth = truth.expand_as(pred)
    values = {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth)}
    if lpips_model is not None:
        values["lpips"] = lpips_model(pred, truth)
    return {k: v.double().cpu().numpy() for k, v in values.items()}


def evaluate_clip(pipe: ExtDMPipeline, item: Dict[str, Any], position: int, protocol: EvaluationProtocol,
                  config: EvaluationConfig, i3d: Optional[I3DFeatureExtractor], lpips_model: Optional[LPIPS],
                  device: torch.device, progress: tqdm) -> Dict[str, np.ndarray]:
    """Clip ``position``'s arrays, keyed ``method/metric`` (per sample and frame) and ``method/i3d``; writes its
    GIF when it is one of the first ``num_gifs``."""
    c, p, n = protocol.cond_frames, protocol.pred_frames, protocol.num_samples
    clip = item["video"].to(device)
    cond, truth = clip[:c], clip[c : c + p]
    arrays: Dict[str, np.ndarray] = {}
    per_metric: Dict[str, List[np.ndarray]] = {}
    feats: List[torch.Tensor] = []
    make_gif = position < config.num_gifs
    gif_random = int(np.random.default_rng(protocol.seed + position).integers(n)) if make_gif else -1
    best_psnr, best_frames, random_frames = -math.inf, None, None
    adtype = pipe.flow_autoencoder.dtype
    autocast = torch.autocast(device.type, dtype=getattr(torch, config.autocast or "bfloat16"),
                              enabled=config.autocast is not None)
    frame_sum, square_sum = None, 0.0  # of all samples: their mean pairwise distance without keeping them
    for start in range(0, n, config.batch_size):
        ks = list(range(start, min(n, start + config.batch_size)))
        generators = [torch.Generator("cpu").manual_seed(sample_seed(protocol.seed, position, k, n)) for k in ks]
        with autocast:
            frames = pipe(
                cond[None].to(adtype), num_frames=p, num_inference_steps=protocol.num_inference_steps,
                eta=protocol.eta, generator=generators, num_samples_per_video=len(ks),
                use_occlusion=protocol.use_occlusion, output_type="pt",
            ).frames.float().clamp(0, 1)
        flat = frames.flatten(1).cpu().double()
        frame_sum = flat.sum(0) if frame_sum is None else frame_sum + flat.sum(0)
        square_sum += float(flat.square().sum())
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
    if n > 1:  # mean over pairs of samples of their per-pixel MSE: 2 Σ_k |x_k − x̄|² / ((n − 1) · pixels)
        spread = square_sum - float(frame_sum.square().sum()) / n
        arrays["extdm/diversity_mse"] = np.float64(2 * max(spread, 0.0) / ((n - 1) * frame_sum.numel()))
    if i3d is not None:
        arrays["extdm/i3d"] = torch.cat(feats).numpy()
        arrays["real/i3d"] = i3d(clip[None].float())[0].numpy()
    if not config.no_baselines:
        baselines = {"copy_last_frame": cond[-1:].expand(p, -1, -1, -1)}
        with torch.no_grad():
            ae = pipe.flow_autoencoder
            reference = cond[-1][None].to(adtype)
            encoded = ae.encode(truth[None].to(adtype), reference)
            occlusion = encoded.occlusion_map if protocol.use_occlusion else None
            baselines["autoencoder"] = ae.decode(reference, encoded.optical_flow, occlusion).sample[0].float().clamp(0, 1)
        for method, frames in baselines.items():
            for name, value in _frame_metrics(frames[None], truth[None], lpips_model).items():
                arrays[f"{method}/{name}"] = value[0]
            if i3d is not None:
                arrays[f"{method}/i3d"] = i3d(torch.cat([cond, frames])[None])[0].numpy()
    if make_gif:
        write_gif(Path(config.output_dir) / "gifs" / f"clip_{position:05d}.gif", cond.cpu(), truth.cpu(),
                  best_frames, random_frames)
    return arrays
