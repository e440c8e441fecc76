"""What a trained model is published with: the model card (``README.md``) and the Hub upload."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Mapping, Optional, Sequence

from ..file_io import atomic_write_text


def command_line(argv: Optional[Sequence[str]], script: str) -> str:
    """The ``accelerate launch`` command that ran ``script`` with ``argv`` (default: this process's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return "accelerate launch " + script + " " + " ".join(shlex.quote(a) for a in argv)


#: options that say where files go, how often to log, save and validate, how to upload: not the trained model's
#: settings, so the card's hyperparameter table leaves them out (the command line shows them)
RUN_LOGISTICS = frozenset({
    "benchmark", "dataset_dir", "output_dir", "logging_dir", "logging_steps", "report_to", "push_to_hub", "hub_model_id",
    "hub_token", "resume_from_checkpoint", "checkpointing_steps", "checkpoints_total_limit", "validation_steps",
    "num_validation_videos", "validation_inference_steps", "log_reconstruction_steps", "dataloader_num_workers",
    "gradient_checkpointing",
})


def usage_example(flow_autoencoder_config: Mapping[str, Any], unet_config: Mapping[str, Any],
                  load_from: str = "PATH_OR_REPO", num_frames: Optional[int] = None,
                  frame_size: Optional[int] = None) -> str:
    """The card's Python example, with the pipeline's own frame size and channels (the autoencoder's
    ``sample_size``, or ``frame_size`` where it records none, and ``num_channels``) and condition length (the
    denoiser's ``num_cond_frames``); it predicts ``num_frames`` (default: one window, ``num_pred_frames``)."""
    size = flow_autoencoder_config.get("sample_size") or frame_size
    if not size:
        raise ValueError("`frame_size` is needed: the autoencoder's config records no `sample_size`")
    channels = flow_autoencoder_config.get("num_channels", 3)
    cond = unet_config["num_cond_frames"]
    num_frames = num_frames or unet_config["num_pred_frames"]
    return (
        "```python\nimport torch\nfrom extdm_diffusers import ExtDMPipeline\n\n"
        f"pipe = ExtDMPipeline.from_pretrained(\"{load_from}\")\n"
        f"video = torch.rand(1, {cond}, {channels}, {size}, {size})  # {cond} observed frames, (B, T, C, H, W) in [0, 1]\n"
        f"frames = pipe(video, num_frames={num_frames}, generator=torch.Generator().manual_seed(0), "
        f"output_type=\"pt\").frames  # (1, {num_frames}, {channels}, {size}, {size})\n```"
    )


def hyperparameters(args: argparse.Namespace) -> str:
    """The training's settings as a Markdown table: every option but the run logistics (``RUN_LOGISTICS``) and
    private attributes; ``--model_config`` as compact JSON."""
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in RUN_LOGISTICS}
    if not settings.get("use_ema"):
        settings.pop("ema_decay", None)
    rows = ["| setting | value |", "| --- | --- |"]
    for key, value in sorted(settings.items()):
        if key == "model_config" and isinstance(value, str) and value.lstrip().startswith("{"):
            value = json.dumps(json.loads(value), separators=(", ", ": "))
        shown = "not set" if value is None else f"`{value}`"
        rows.append(f"| `--{key}` | {shown} |")
    return "\n".join(rows) + ("\n\nNot set: the benchmark's default (`extdm-benchmark show NAME`), or off."
                              if None in settings.values() else "")


def training_data_description(dataset: str) -> str:
    """A sentence on how the training split of a local dataset was built (from its build record), so that a card
    trained on other data than the benchmark's (another frame size, speed, subset) says so; empty otherwise."""
    from ..data.builders.splits import BUILD_INFO_FILE, build_settings

    built = build_settings(dataset, "train") if dataset and os.path.isdir(dataset) else None
    if built is None:
        return ""
    settings = ", ".join(f"`{key}` {json.dumps(value)}" for key, value in built["kwargs"].items()
                         if value is not None and key != "split")
    return f" The training split as built (`train/{BUILD_INFO_FILE}`): `{built['generator']}` with {settings}."


def write_model_card(folder: str, *, title: str, benchmark, dataset: str, body: str, args: argparse.Namespace,
                     command: str, extra_tags: Sequence[str] = ()) -> None:
    """README.md with a Hub model card (library diffusers, tags extdm / video-prediction)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="diffusers",
        tags=["extdm", "video-prediction", *extra_tags],
        datasets=[dataset] if dataset and not os.path.isdir(dataset) else None,
        license="apache-2.0",
    )
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n\n"
        f"## Training\n\nBenchmark: {benchmark.display_name} (`{benchmark.name}`), data: `{dataset}`."
        f"{training_data_description(dataset)}\n\n"
        f"```bash\n{command}\n```\n\n### Hyperparameters\n\n{hyperparameters(args)}\n"
    )
    atomic_write_text(os.path.join(folder, "README.md"), str(ModelCard(content)))


def push_folder(args: argparse.Namespace, folder: str, message: str) -> None:
    """Upload ``folder`` to ``--hub_model_id`` (checkpoints, tracker logs and half-written folders left out)."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, token=args.hub_token,
                  ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", "*.tmp/**"])
