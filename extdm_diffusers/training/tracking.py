"""Where training reports go: the accelerate trackers, ``OUTPUT_DIR/metrics.jsonl`` and validation GIFs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Metrics to the accelerate trackers and, on the main process, to OUTPUT_DIR/metrics.jsonl."""

    def __init__(self, accelerator, output_dir: str):
        self.accelerator = accelerator
        self.path = Path(output_dir, METRICS_FILE)

    def log(self, values: Dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        if self.accelerator.trackers:
            self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(dict(values, step=step)) + "\n")


def log_videos(accelerator, tag: str, gif_paths: Sequence[str], step: int) -> None:
    """Validation GIFs to wandb (as videos); tensorboard gets the metrics only."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Video(p, format="gif") for p in gif_paths]}, step=step)


def tracker_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Tracker-safe hyperparameters (scalars only)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


def write_gif(frames: torch.Tensor, path: "str | Path", fps: int) -> str:
    """``frames`` (T, C, H, W) in [0, 1] as a GIF at ``path``; returns the path."""
    from diffusers.utils import export_to_gif
    from PIL import Image

    images = [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8"))
              for f in frames.cpu()]
    return export_to_gif(images, str(path), fps=fps)
