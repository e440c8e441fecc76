"""The command line of ``training_scripts/evaluate.py``: flags (protocol values default to the registry's), the run,
a one-line error for bad inputs, and the headline numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cpu_memory import reuse_freed_cpu_memory
from ..schedulers import SAMPLER_PRESETS, SCHEDULER_NAMES
from .config import AUTOCAST_DTYPES, DTYPES, FRAME_METRICS, EvaluationConfig, EvaluationError
from .run import evaluate


def parse_args(argv: Optional[Sequence[str]] = None) -> EvaluationConfig:
    """``training_scripts/evaluate.py``'s flags as an :class:`EvaluationConfig`."""
    parser = argparse.ArgumentParser(
        description="Evaluate an ExtDM pipeline with the paper's protocol (resumable; shard with accelerate launch "
                    "or torchrun). Protocol values default to the benchmark registry's.")
    parser.add_argument("--pipeline", required=True, help="pipeline folder or Hub repo id")
    parser.add_argument("--benchmark", default=None, metavar="NAME_OR_FILE",
                        help="smmnist, kth, bair, cityscapes, ucf101 or a .json/.yaml benchmark file (default: the "
                             "benchmark the pipeline records; an explicit one wins, but must match its frame size "
                             "and channels)")
    parser.add_argument("--dataset_dir", required=True, help="a dataset_builders/ output (save_to_disk folder) or Hub repo")
    parser.add_argument("--output_dir", default="evaluation")
    parser.add_argument("--split", default=None)
    parser.add_argument("--num_videos", type=int, default=None, help="test clips (protocol: 256)")
    parser.add_argument("--num_samples", type=int, default=None, help="samples per clip (protocol: 100)")
    parser.add_argument("--seed", type=int, default=None, help="protocol: 1000")
    parser.add_argument("--scheduler", default=None, choices=SCHEDULER_NAMES,
                        help="default ddim_original: the paper's ExtDMDDIMScheduler; the others are diffusers' solvers "
                             "with the ExtDM schedule (docs/pipeline.md, 'Schedulers'); not the paper's protocol")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="denoising steps per window (protocol: 10)")
    parser.add_argument("--eta", type=float, default=None,
                        help="DDIM noise, for ddim_original and ddim only (protocol: 1.0)")
    parser.add_argument("--sampler_preset", default=None, choices=tuple(SAMPLER_PRESETS),
                        help="scheduler, steps and eta together: " + "; ".join(
                            f"{name}: {preset.description}" for name, preset in SAMPLER_PRESETS.items())
                        + " (not combinable with --scheduler, --num_inference_steps, --eta)")
    parser.add_argument("--cond_frames", type=int, default=None, help="override the observed frames (not the protocol)")
    parser.add_argument("--pred_frames", type=int, default=None, help="override the horizon (not the protocol)")
    occ = parser.add_mutually_exclusive_group()
    occ.add_argument("--use_occlusion", dest="use_occlusion", action="store_true", default=None)
    occ.add_argument("--no_occlusion", dest="use_occlusion", action="store_false")
    parser.add_argument("--batch_size", type=int, default=16, help="(clip, sample) pairs per pipeline call")
    parser.add_argument("--i3d", default=None, help="local i3d_torchscript.pt (default: download it once)")
    parser.add_argument("--no_fvd", action="store_true")
    parser.add_argument("--lpips_weights", default=None, help="local torchvision AlexNet state dict (offline LPIPS)")
    parser.add_argument("--no_lpips", action="store_true")
    parser.add_argument("--no_baselines", action="store_true", help="skip copy_last_frame and autoencoder")
    parser.add_argument("--num_gifs", type=int, default=4, help="GIF grids for the first N clips")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--autocast", default=None, choices=AUTOCAST_DTYPES,
                        help="run the pipeline under torch.autocast in this dtype (weights stay --dtype; the "
                             "scheduler's motion and the metrics stay float32)")
    parser.add_argument("--update_model_card", action="store_true", help="write the results into PIPELINE/README.md")
    parser.add_argument("--max_videos", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return EvaluationConfig(**vars(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: run, print the headline numbers; 1 with a one-line error for bad inputs."""
    config = parse_args(argv)
    reuse_freed_cpu_memory()
    try:
        print(f"sampler: {config.sampler_note()}")
        result = evaluate(config)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is not None:
        ext = result.get("extdm", {})
        summary = {m: ext[m]["best_of_n"]["mean"] for m in FRAME_METRICS if m in ext}
        if "fvd_traj" in ext:
            summary.update(fvd_traj=ext["fvd_traj"]["mean"], fvd_best=ext["fvd_best"])
        print(json.dumps(summary, indent=2))
        print(f"wrote {Path(config.output_dir) / 'metrics.json'}")
    return 0
