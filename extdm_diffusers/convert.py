"""Convert original ExtDM checkpoints into a diffusers pipeline folder (with a model card).

    python -m extdm_diffusers.convert --ae_checkpoint AE.pth --dm_checkpoint DM.pth --benchmark kth \
        --output_dir extdm-kth

``--benchmark NAME_OR_FILE`` (a registry name or a benchmark file) holds everything the original DM YAML gave;
``--config config/DM/kth.yaml`` (the original YAML) is accepted instead. The denoiser architecture and its
arguments are inferred from the checkpoint unless ``--architecture`` names one. The folder records the benchmark
(its complete definition, with the checkpoint's window) in ``model_index.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
import yaml

from .architectures import ARCHITECTURE_PRESETS
from .benchmarks import Benchmark, BenchmarkDefinitionError, get_benchmark, load_benchmark
from .conversion import CheckpointConversionError, infer_unet_from_original, pipeline_from_original
from .training.hub import usage_example

# Recognised original experiment names -> the dataset the model was trained on.
_DATASETS = {"smmnist": "SMMNIST", "kth": "KTH", "bair": "BAIR robot pushing", "cityscapes": "Cityscapes", "ucf": "UCF-101"}


class ConversionInputError(ValueError):
    """A file given to the converter is missing or is not what it should be (one line, naming the file)."""


def load_original_checkpoint(path: str, trust_checkpoint: bool = False) -> dict:
    """``torch.load`` of an original ``.pth`` on the CPU, with ``weights_only=True`` unless trusted."""
    if not os.path.isfile(path):
        raise ConversionInputError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a genuine pickle of objects that weights_only refuses
            raise ConversionInputError(
                f"{path} holds Python objects beyond tensors, which `weights_only=True` refuses to unpickle; if you "
                "trust the file, pass --trust_checkpoint"
            ) from error
        raise ConversionInputError(f"{path} is not a PyTorch checkpoint (.pth): it does not unpickle") from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ConversionInputError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format?): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ConversionInputError(f"{path} holds a {type(checkpoint).__name__}, expected the dict an original ExtDM .pth holds")
    return checkpoint


def load_original_config(path: str) -> dict:
    """The original DM YAML (``config/DM/*.yaml``) as a dict, checked for what conversion reads."""
    if not os.path.isfile(path):
        raise ConversionInputError(f"config not found: {path}")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ConversionInputError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(config, dict) or not isinstance(config.get("flow_params", {}).get("model_params"), dict):
        raise ConversionInputError(f"{path} has no `flow_params.model_params`: pass the original DM YAML (config/DM/*.yaml)")
    train = config.get("dataset_params", {}).get("train_params", {})
    if not {"cond_frames", "pred_frames"} <= set(train):
        raise ConversionInputError(f"{path} has no `dataset_params.train_params.cond_frames/pred_frames`: pass the original DM YAML")
    return config


def original_config_from_benchmark(benchmark: Benchmark) -> dict:
    """What conversion reads of an original DM YAML, from a benchmark: no clone of the original repository needed."""
    return {
        "experiment_name": benchmark.name,
        "flow_params": {"model_params": benchmark.flow_autoencoder_config()},
        "dataset_params": {
            "frame_shape": benchmark.frame_size,
            "train_params": {"cond_frames": benchmark.train_cond_frames, "pred_frames": benchmark.train_pred_frames},
            "valid_params": {"cond_frames": benchmark.evaluation.cond_frames, "pred_frames": benchmark.evaluation.pred_frames},
        },
    }


def registry_benchmark_of(config: Mapping) -> Optional[Benchmark]:
    """The registry entry an original YAML's ``experiment_name`` names (``kth64`` -> kth), or None."""
    name = str(config.get("experiment_name", "")).lower()
    key = next((key for key in _DATASETS if key in name), None)
    return None if key is None else get_benchmark(key)


def model_card(config: Mapping, architecture: str, repo_id: Optional[str], flow_autoencoder_config: Mapping,
               unet_config: Mapping, benchmark: Optional[Benchmark] = None, original_yaml: bool = True) -> str:
    """The folder's README.md; ``original_yaml``: ``config`` is the original DM YAML (shown in full). Frame size,
    channels and window come from the converted models' configs (the checkpoint's, where the YAML differs)."""
    name = str(config.get("experiment_name", "")).lower()
    dataset = next((label for key, label in _DATASETS.items() if key in name), None)
    valid = config.get("dataset_params", {}).get("valid_params", {})
    metadata = {
        "library_name": "diffusers",
        "pipeline_tag": "image-to-video",
        "tags": ["extdm", "extdm-diffusers", "video-prediction", "diffusers"],
        "license": "other",
    }
    if dataset:
        metadata["datasets"] = [dataset]
    cond, pred = unet_config["num_cond_frames"], unet_config["num_pred_frames"]
    size = flow_autoencoder_config.get("sample_size") or config.get("dataset_params", {}).get("frame_shape")
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
        f"- frame size: {size}x{size}; the model observes {cond} frames and predicts {pred} per window"
        + (f"; the paper evaluates {valid.get('cond_frames')} -> {valid.get('pred_frames')}" if valid else ""),
        "- sampler: `ExtDMDDIMScheduler`, the original DDIM (10 steps, cosine schedule, dynamic thresholding)",
        "",
        "## Use",
        "",
        usage_example(flow_autoencoder_config, unet_config, load_from, num_frames=valid.get("pred_frames", pred),
                      frame_size=size),
        "",
    ]
    if benchmark is not None:
        lines += [f"## Benchmark `{benchmark.name}`", "",
                  "Recorded in `model_index.json` (`pipe.benchmark`); evaluation and `extdm-predict` read it from there.", "",
                  "```json", json.dumps(benchmark.to_dict(), indent=2), "```", ""]
    if original_yaml:
        lines += ["## Original configuration", "", "```yaml", yaml.safe_dump(dict(config), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def convert(
    ae_checkpoint: str,
    dm_checkpoint: str,
    config_path: Optional[str],
    architecture: str,
    output_dir: str,
    unet_kwargs: Optional[dict] = None,
    push_to_hub: Optional[str] = None,
    trust_checkpoint: bool = False,
    log: Callable[[str], None] = print,
    benchmark: Optional[str] = None,
):
    """Original checkpoints -> a ``save_pretrained`` folder with a model card. ``architecture="auto"`` infers the
    denoiser and its arguments from the checkpoint and logs what it found. ``benchmark`` (a registry name or a
    benchmark file) replaces ``config_path`` (the original YAML); with both, the YAML builds the models and
    ``benchmark`` is what the folder records."""
    if config_path is None and benchmark is None:
        raise ConversionInputError("pass --benchmark NAME_OR_FILE (or the original YAML with --config)")
    bench = None
    if benchmark is not None:
        try:
            bench = load_benchmark(benchmark)
        except (KeyError, TypeError, BenchmarkDefinitionError) as error:
            raise ConversionInputError(f"--benchmark: {error.args[0] if isinstance(error, KeyError) else error}") from None
    from_yaml = config_path is not None
    if from_yaml:
        config = load_original_config(config_path)
        bench = bench or registry_benchmark_of(config)
    else:
        config = original_config_from_benchmark(bench)
        config_path = f"--benchmark {benchmark}"
    ae = load_original_checkpoint(ae_checkpoint, trust_checkpoint)
    dm = load_original_checkpoint(dm_checkpoint, trust_checkpoint)
    if "diffusion" not in dm:
        raise ConversionInputError(f"{dm_checkpoint} has no 'diffusion' entry: is it an original ExtDM diffusion checkpoint? (keys: {sorted(dm)[:8]})")
    kwargs = dict(unet_kwargs or {})
    if architecture == "auto":
        denoiser = {k[len("denoise_fn."):]: v for k, v in dm["diffusion"].items() if k.startswith("denoise_fn.")}
        architecture, inferred = infer_unet_from_original(denoiser)
        kwargs = {**inferred, **kwargs}
        log(f"inferred from {dm_checkpoint}: {architecture} with " + ", ".join(f"{k}={v}" for k, v in inferred.items()))
        train = config["dataset_params"]["train_params"]
        if (train["cond_frames"], train["pred_frames"]) != (kwargs["cond_num"], kwargs["pred_num"]):
            log(f"note: the checkpoint observes {kwargs['cond_num']} and predicts {kwargs['pred_num']} frames per window; "
                f"{config_path} says {train['cond_frames']} -> {train['pred_frames']}: the checkpoint's values are used")
    pipe = pipeline_from_original(ae, dm, config, architecture, kwargs)
    if bench is not None:  # as converted: the checkpoint's autoencoder, window and architecture
        bench = bench.for_models(pipe.flow_autoencoder.config, pipe.unet.config, architecture)
        pipe.register_to_config(benchmark=bench.to_dict())
    else:
        log(f"note: {config_path} names no registry benchmark; the folder records none (pass --benchmark to record one)")
    pipe.save_pretrained(output_dir, safe_serialization=True)
    Path(output_dir, "README.md").write_text(model_card(config, architecture, push_to_hub, pipe.flow_autoencoder.config,
                                                        pipe.unet.config, bench, original_yaml=from_yaml))
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(folder_path=output_dir, repo_id=push_to_hub)
    return pipe


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object of original Unet3D arguments")
    return value


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extdm_diffusers.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--ae_checkpoint", required=True, help="original flow autoencoder .pth")
    parser.add_argument("--dm_checkpoint", required=True, help="original diffusion model .pth (holds 'diffusion')")
    parser.add_argument("--benchmark", default=None, metavar="NAME_OR_FILE",
                        help="smmnist, kth, bair, cityscapes, ucf101 or a .json/.yaml benchmark file: what the original "
                             "YAML gave, and what the folder records")
    parser.add_argument("--config", default=None, help="original DM YAML (config/DM/*.yaml), instead of --benchmark")
    parser.add_argument("--architecture", default="auto", choices=["auto"] + sorted(ARCHITECTURE_PRESETS),
                        help="original denoiser module; 'auto' (default) infers it and its arguments from the checkpoint")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--unet_kwargs", type=_json_object, default=None,
                        help="original Unet3D arguments as JSON, merged over the architecture's (or the inferred) ones")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="unpickle arbitrary objects in the .pth files (torch.load weights_only=False)")
    args = parser.parse_args(argv)
    try:
        convert(args.ae_checkpoint, args.dm_checkpoint, args.config, args.architecture, args.output_dir,
                args.unet_kwargs, args.push_to_hub, args.trust_checkpoint, benchmark=args.benchmark)
    except (ConversionInputError, CheckpointConversionError, ValueError) as error:
        # one line naming the file or argument, like argparse's own errors; no traceback for bad input
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"saved ExtDMPipeline to {args.output_dir}")


if __name__ == "__main__":
    main()
