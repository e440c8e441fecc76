"""Seconds and peak memory per predicted video at the paper's configurations (random weights).

    python benchmarks/bench_sampling.py                      # CPU, every configuration
    python benchmarks/bench_sampling.py --device cuda --dtype bfloat16 --configs kth bair

Each configuration predicts its paper evaluation horizon (SMMNIST 10->10, KTH 10->40, BAIR 2->28,
Cityscapes 2->28) with the original sampler (10 DDIM steps per window). On the CPU every configuration
runs in a fresh process so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from extdm_diffusers.benchmarks import BENCHMARKS


def run_one(name: str, device: str, dtype: torch.dtype, batch_size: int, repeats: int, steps: int) -> dict:
    config = BENCHMARKS[name]
    pipe = config.random_pipeline().to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    video = torch.rand(batch_size, config.evaluation.cond_frames, 3, config.frame_size, config.frame_size, device=device, dtype=dtype)
    kwargs = dict(num_frames=config.evaluation.pred_frames, num_inference_steps=steps, output_type="pt",
                  generator=torch.Generator(device).manual_seed(0))
    pipe(video, **kwargs)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(video, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "config": name,
        "frames": f"{config.evaluation.cond_frames}->{config.evaluation.pred_frames} at {config.frame_size}x{config.frame_size}",
        "batch_size": batch_size,
        "seconds_per_video": min(times) / batch_size,
        "peak_memory_mib": round(peak_mib, 1),
        "unet_parameters_m": round(sum(p.numel() for p in pipe.unet.parameters()) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # one config, this process
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    if args.single or args.device != "cpu":
        results = [run_one(n, args.device, dtype, args.batch_size, args.repeats, args.steps) for n in args.configs]
    else:
        results = []
        for name in args.configs:
            command = [sys.executable, __file__, "--single", "--configs", name, "--device", "cpu", "--dtype", args.dtype,
                       "--batch_size", str(args.batch_size), "--repeats", str(args.repeats), "--steps", str(args.steps)]
            results += json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)["results"]
    machine = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "torch": torch.__version__,
    }
    print(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
