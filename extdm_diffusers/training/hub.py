"""What a trained model is published with: the model card (``README.md``) and the Hub upload."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from ..file_io import atomic_write_text


def command_line(argv: Optional[Sequence[str]], script: str) -> str:
    """The ``accelerate launch`` command that ran ``script`` with ``argv`` (default: this process's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return "accelerate launch " + script + " " + " ".join(shlex.quote(a) for a in argv)


def write_model_card(folder: str, *, title: str, benchmark, dataset: str, body: str, args: argparse.Namespace,
                     command: str, extra_tags: Sequence[str] = ()) -> None:
    """README.md with a Hub model card (library diffusers, tags extdm / video-prediction)."""
    from huggingface_hub import ModelCard, ModelCardData

    hyperparameters = "\n".join(f"- `{k}`: `{v}`" for k, v in sorted(vars(args).items()) if k != "hub_token")
    data = ModelCardData(
        library_name="diffusers",
        tags=["extdm", "video-prediction", *extra_tags],
        datasets=[dataset] if dataset and not os.path.isdir(dataset) else None,
        license="apache-2.0",
    )
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n\n"
        f"## Training\n\nBenchmark: {benchmark.display_name} (`{benchmark.name}`), data: `{dataset}`.\n\n"
        f"```bash\n{command}\n```\n\n### Hyperparameters\n\n{hyperparameters}\n"
    )
    atomic_write_text(os.path.join(folder, "README.md"), str(ModelCard(content)))


def push_folder(args: argparse.Namespace, folder: str, message: str) -> None:
    """Upload ``folder`` to ``--hub_model_id`` (checkpoints, tracker logs and half-written folders left out)."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, token=args.hub_token,
                  ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", "*.tmp/**"])
