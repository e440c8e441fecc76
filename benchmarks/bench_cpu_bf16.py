"""bf16 against float32 for a whole prediction on the CPU, interleaved in one process.

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_bf16.py --pipeline runs/quickstart/pipeline \
        --dataset_dir runs/quickstart/data --num_videos 8 --repeats 3 --output bf16.json

Three ways, each timed once per round, the rounds repeated (so that a slower phase of the machine hits all three):
``float32``; ``bfloat16`` weights and activations (``pipe.to(dtype=torch.bfloat16)``); ``autocast``: float32
weights under ``torch.autocast("cpu", torch.bfloat16)``, so the scheduler's update and the motion stay float32.
The same videos and generator seeds for all three; the predictions' PSNR against float32's is reported beside the
speed (quality against the truth: ``bench_samplers.py --dtype bfloat16`` / ``--autocast bfloat16``). The CPU's
model and whether it computes bf16 natively (AVX512-BF16, AMX) go with every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from extdm_diffusers.cpu_features import cpu_description
from extdm_diffusers.data import load_video_dataset
from extdm_diffusers.data.clips import VideoClipDataset
from extdm_diffusers.file_io import atomic_write_text
from extdm_diffusers.metrics import psnr
from extdm_diffusers.pipelines import ExtDMPipeline

WAYS = ("float32", "bfloat16", "autocast")


def predict(pipe: ExtDMPipeline, video: torch.Tensor, way: str, num_frames: int, steps: int) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(len(video))]
    kwargs = dict(num_frames=num_frames, num_inference_steps=steps, generator=generators, output_type="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "autocast"):
        return pipe(video.to(pipe.unet.dtype), **kwargs).frames.float()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--num_videos", type=int, default=8, help="held-out videos, predicted in one batch")
    parser.add_argument("--pred_frames", type=int, default=None, help="default: the protocol's horizon")
    parser.add_argument("--num_inference_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="a JSON of the results")
    args = parser.parse_args(argv)

    fp32 = ExtDMPipeline.from_pretrained(args.pipeline)
    fp32.set_progress_bar_config(disable=True)
    bf16 = copy.deepcopy(fp32).to(dtype=torch.bfloat16)
    pipes = {"float32": fp32, "bfloat16": bf16, "autocast": fp32}
    protocol = fp32.benchmark.evaluation if fp32.benchmark is not None else None
    cond = protocol.cond_frames if protocol else fp32.unet.config.num_cond_frames
    horizon = args.pred_frames or (protocol.pred_frames if protocol else fp32.unet.config.num_pred_frames)
    test = load_video_dataset(args.dataset_dir, "test")
    clips = VideoClipDataset(test, cond + horizon, train=False, num_videos=min(args.num_videos, len(test)))
    videos = torch.stack([clips[i]["video"] for i in range(len(clips))])
    observed = videos[:, :cond]

    predictions = {way: predict(pipes[way], observed, way, horizon, args.num_inference_steps) for way in WAYS}  # warm-up
    seconds = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            start = time.perf_counter()
            predict(pipes[way], observed, way, horizon, args.num_inference_steps)
            seconds[way].append(time.perf_counter() - start)
    truth = videos[:, cond:].float()
    results = {
        "cpu": cpu_description(), "pipeline": args.pipeline, "num_videos": len(videos),
        "frames": f"{cond} -> {horizon}", "num_inference_steps": args.num_inference_steps, "repeats": args.repeats,
        "ways": {way: {
            "seconds_per_video": round(statistics.median(seconds[way]) / len(videos), 3),
            "speed_vs_float32": round(statistics.median(seconds["float32"]) / statistics.median(seconds[way]), 3),
            "psnr_vs_float32_prediction": None if way == "float32" else round(float(psnr(
                predictions[way].flatten(0, 1), predictions["float32"].flatten(0, 1)).clamp(max=100).mean()), 2),
            "psnr_vs_truth": round(float(psnr(predictions[way].flatten(0, 1), truth.flatten(0, 1)).mean()), 2),
        } for way in WAYS},
    }
    print(json.dumps(results, indent=2))
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
