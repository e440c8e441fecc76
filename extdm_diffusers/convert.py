"""Convert original ExtDM checkpoints into a diffusers pipeline folder (with a model card).

    python -m extdm_diffusers.convert --ae_checkpoint AE.pth --dm_checkpoint DM.pth --config config/DM/kth.yaml \
        --architecture DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada --output_dir extdm-kth
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import yaml

from .conversion import ARCHITECTURE_PRESETS, pipeline_from_original

# Recognised original experiment names -> the dataset the model was trained on.
_DATASETS = {"smmnist": "SMMNIST", "kth": "KTH", "bair": "BAIR robot pushing", "cityscapes": "Cityscapes", "ucf": "UCF-101"}


def load_original_checkpoint(path: str, trust_checkpoint: bool = False) -> dict:
    """``torch.load`` of an original ``.pth`` on the CPU, with ``weights_only=True`` unless trusted."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as error:
        raise RuntimeError(
            f"{path} holds Python objects beyond tensors, which `weights_only=True` refuses to unpickle. If you "
            f"trust the file, pass --trust_checkpoint. ({error})"
        ) from error


def model_card(config: Mapping, architecture: str, repo_id: Optional[str]) -> str:
    name = str(config.get("experiment_name", "")).lower()
    dataset = next((label for key, label in _DATASETS.items() if key in name), None)
    dataset_params = config.get("dataset_params", {})
    train = dataset_params.get("train_params", {})
    valid = dataset_params.get("valid_params", {})
    metadata = {
        "library_name": "diffusers",
        "pipeline_tag": "image-to-video",
        "tags": ["extdm", "extdm-diffusers", "video-prediction", "diffusers"],
        "license": "other",
    }
    if dataset:
        metadata["datasets"] = [dataset]
    cond, pred = train.get("cond_frames"), train.get("pred_frames")
    load_from = repo_id or "path/to/this/folder"
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# ExtDM{f' on {dataset}' if dataset else ''}",
        "",
        "ExtDM (*Distribution Extrapolation Diffusion Model for Video Prediction*, CVPR 2024) converted from the "
        "original checkpoints (github.com/nku-zhichengzhang/ExtDM) with "
        "`python -m extdm_diffusers.convert`.",
        "",
        f"- original denoiser: `{architecture}`",
        f"- frame size: {dataset_params.get('frame_shape')}; the model observes {cond} frames and predicts {pred} per window"
        + (f"; the paper evaluates {valid.get('cond_frames')} -> {valid.get('pred_frames')}" if valid else ""),
        "- sampler: `ExtDMDDIMScheduler`, the original DDIM (10 steps, cosine schedule, dynamic thresholding)",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from extdm_diffusers import ExtDMPipeline",
        "",
        f'pipe = ExtDMPipeline.from_pretrained("{load_from}")',
        f"video = torch.rand(1, {cond}, 3, {dataset_params.get('frame_shape')}, {dataset_params.get('frame_shape')})  # (B, T, C, H, W) in [0, 1]",
        f"frames = pipe(video, num_frames={valid.get('pred_frames', pred)}, output_type=\"pt\").frames",
        "```",
        "",
        "## Original configuration",
        "",
        "```yaml",
        yaml.safe_dump(dict(config), sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def convert(
    ae_checkpoint: str,
    dm_checkpoint: str,
    config_path: str,
    architecture: str,
    output_dir: str,
    unet_kwargs: Optional[dict] = None,
    push_to_hub: Optional[str] = None,
    trust_checkpoint: bool = False,
):
    with open(config_path) as f:
        config = yaml.safe_load(f)
    pipe = pipeline_from_original(
        load_original_checkpoint(ae_checkpoint, trust_checkpoint),
        load_original_checkpoint(dm_checkpoint, trust_checkpoint),
        config,
        architecture,
        unet_kwargs,
    )
    pipe.save_pretrained(output_dir, safe_serialization=True)
    Path(output_dir, "README.md").write_text(model_card(config, architecture, push_to_hub))
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=output_dir, repo_id=push_to_hub)
    return pipe


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extdm_diffusers.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--ae_checkpoint", required=True, help="original flow autoencoder .pth")
    parser.add_argument("--dm_checkpoint", required=True, help="original diffusion model .pth (holds 'diffusion')")
    parser.add_argument("--config", required=True, help="original DM YAML (config/DM/*.yaml)")
    parser.add_argument("--architecture", required=True, choices=sorted(ARCHITECTURE_PRESETS), help="original denoiser module")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--unet_kwargs", type=json.loads, default=None,
                        help="original Unet3D arguments as JSON, if the model was not built with the wrapper's defaults")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="unpickle arbitrary objects in the .pth files (torch.load weights_only=False)")
    args = parser.parse_args(argv)
    convert(args.ae_checkpoint, args.dm_checkpoint, args.config, args.architecture, args.output_dir,
            args.unet_kwargs, args.push_to_hub, args.trust_checkpoint)
    print(f"saved ExtDMPipeline to {args.output_dir}")


if __name__ == "__main__":
    main()
