"""Predicted videos per second at the paper's evaluation horizon, by batch size and dtype (random weights).

    python benchmarks/bench_throughput.py --benchmark kth --device cuda --dtypes float32 bfloat16 \
        --batch_sizes 1 10 50 100 200 --protocol_clips 4

1. Pipeline throughput: one ``ExtDMPipeline`` call predicting ``B`` videos (B x 1 sample: batching samples and
   videos is the same batch dimension), the benchmark's horizon (KTH 10 -> 40), 10 DDIM steps per window, eta 1.
   Reports videos/s, predicted frames/s and peak GPU memory; stops at the first batch size that runs out of memory.
2. Agreement: the frames of each dtype against float32 on the same inputs and noise (eta 0, whole rollout).
3. ``--compile``: the same with ``torch.compile(pipe.unet)`` (time to compile reported apart).
4. ``--protocol_clips N``: ``extdm_diffusers.evaluation`` end to end (the protocol's samples per clip, PSNR, SSIM,
   LPIPS with a random-weight AlexNet, both baselines; FVD left out: its I3D weights cannot be downloaded here)
   on N synthetic clips, and the time the whole protocol (256 clips) would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extdm_diffusers.benchmarks import get_benchmark


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pipeline(pipe, benchmark, device: str, dtype: torch.dtype, batch_size: int, repeats: int, steps: int) -> dict:
    ev = benchmark.evaluation
    video = torch.rand(batch_size, ev.cond_frames, 3, benchmark.frame_size, benchmark.frame_size, device=device, dtype=dtype)
    kwargs = dict(num_frames=ev.pred_frames, num_inference_steps=steps, eta=1.0, output_type="pt",
                  use_occlusion=ev.use_occlusion, generator=torch.Generator(device).manual_seed(0))
    pipe(video, **kwargs)  # warm-up (cuDNN autotuning, caches)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(video, **kwargs)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "batch_size": batch_size,
        "seconds_per_call": round(seconds, 4),
        "videos_per_s": round(batch_size / seconds, 2),
        "frames_per_s": round(batch_size * ev.pred_frames / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
    }


def profile_call(pipe, benchmark, device: str, dtype: torch.dtype, batch_size: int, steps: int, top: int = 25) -> str:
    """One pipeline call under torch.profiler: the operators with the most device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    ev = benchmark.evaluation
    video = torch.rand(batch_size, ev.cond_frames, 3, benchmark.frame_size, benchmark.frame_size, device=device, dtype=dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        pipe(video, num_frames=ev.pred_frames, num_inference_steps=steps, output_type="pt", use_occlusion=ev.use_occlusion)
        _sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60)
    print(table, flush=True)
    return table


def agreement(pipe_fp32, benchmark, device: str, dtypes, batch_size: int = 4) -> dict:
    """Relative error of each dtype's rollout against float32 (same inputs and initial noise, eta 0)."""
    ev = benchmark.evaluation
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(batch_size, ev.cond_frames, 3, benchmark.frame_size, benchmark.frame_size, generator=gen)
    kwargs = dict(num_frames=ev.pred_frames, eta=0.0, output_type="pt", use_occlusion=ev.use_occlusion)
    reference = pipe_fp32(video.to(device), generator=torch.Generator().manual_seed(2), **kwargs).frames.float()
    result = {}
    for dtype in dtypes:
        if dtype == torch.float32:
            continue
        pipe = benchmark_pipeline(benchmark, device, dtype, state=pipe_fp32)
        frames = pipe(video.to(device, dtype), generator=torch.Generator().manual_seed(2), **kwargs).frames.float()
        first = slice(0, pipe.num_pred_frames)
        result[str(dtype).replace("torch.", "")] = {
            "first_window_rel_error": float((frames[:, first] - reference[:, first]).norm() / reference[:, first].norm()),
            "rollout_rel_error": float((frames - reference).norm() / reference.norm()),
            "finite": bool(torch.isfinite(frames).all()),
        }
        del pipe
    return result


def benchmark_pipeline(benchmark, device: str, dtype: torch.dtype, state=None):
    torch.manual_seed(0)
    pipe = benchmark.random_pipeline()
    if state is not None:
        pipe.unet.load_state_dict({k: v.float() for k, v in state.unet.state_dict().items()})
        pipe.flow_autoencoder.load_state_dict({k: v.float() for k, v in state.flow_autoencoder.state_dict().items()})
    pipe = pipe.to(device)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_protocol(benchmark, device: str, dtype: str, clips: int, batch_size: int, samples=None) -> dict:
    """``extdm_diffusers.evaluation`` on ``clips`` synthetic clips of the benchmark's size, random weights."""
    import datasets

    from extdm_diffusers.data import encode_frames, video_features
    from extdm_diffusers.evaluation import EvaluationConfig, evaluate

    ev = benchmark.evaluation
    root = Path(tempfile.mkdtemp(prefix="bench_protocol_"))
    torch.manual_seed(0)
    benchmark.random_pipeline().save_pretrained(root / "pipeline")
    rng = np.random.default_rng(0)
    frames_needed = ev.cond_frames + ev.pred_frames
    rows = [{"video": encode_frames(rng.integers(0, 255, (frames_needed, benchmark.frame_size, benchmark.frame_size, 3), dtype=np.uint8)),
             "num_frames": frames_needed, "id": f"v{i}"} for i in range(clips)]
    datasets.DatasetDict({ev.split: datasets.Dataset.from_list(rows, features=video_features())}).save_to_disk(str(root / "data"))
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    alexnet = {}
    for i, shape in shapes.items():
        alexnet[f"features.{i}.weight"] = torch.randn(shape) * 0.05
        alexnet[f"features.{i}.bias"] = torch.zeros(shape[0])
    torch.save(alexnet, root / "alexnet.pth")
    config = EvaluationConfig(pipeline=str(root / "pipeline"), benchmark=benchmark.name, dataset_dir=str(root / "data"),
                              output_dir=str(root / "evaluation"), num_videos=clips, num_samples=samples, batch_size=batch_size, no_fvd=True,
                              lpips_weights=str(root / "alexnet.pth"), num_gifs=0, device=device, dtype=dtype)
    start = time.perf_counter()
    evaluate(config)
    _sync(device)
    seconds = time.perf_counter() - start
    samples = config.protocol()["num_samples"]
    per_clip = seconds / clips
    return {
        "clips": clips, "samples_per_clip": samples, "batch_size": batch_size, "dtype": dtype, "seconds": round(seconds, 1),
        "videos_per_s": round(clips * samples / seconds, 2),
        "projected_minutes_for_256_clips": round(256 * per_clip / 60, 1),
        "note": "PSNR, SSIM, LPIPS (random AlexNet), baselines; FVD (I3D) not included; model loading and dataset "
                "reading included",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="kth")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 10, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(pipe.unet)")
    parser.add_argument("--protocol_clips", type=int, default=0, help="run the evaluation end to end on N clips")
    parser.add_argument("--protocol_batch_size", type=int, default=100)
    parser.add_argument("--protocol_dtype", default="bfloat16")
    parser.add_argument("--protocol_samples", type=int, default=None, help="samples per clip (default: the protocol's 100)")
    parser.add_argument("--no_agreement", action="store_true", help="skip the comparison with float32")
    parser.add_argument("--no_channels_last", action="store_true",
                        help="run the U-Net in the contiguous layout instead of channels_last_3d (A/B)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one call at the last batch size and print the operators by device time")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    benchmark = get_benchmark(args.benchmark)
    if args.no_channels_last:
        from extdm_diffusers.models import unet_3d_extdm

        unet_3d_extdm.CHANNELS_LAST = torch.contiguous_format
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = {
        "machine": {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")},
        "benchmark": benchmark.name,
        "horizon": f"{benchmark.evaluation.cond_frames}->{benchmark.evaluation.pred_frames} at {benchmark.frame_size}px",
        "memory_format": "contiguous" if args.no_channels_last else "channels_last_3d",
        "throughput": [],
    }
    dtypes = [getattr(torch, d) for d in args.dtypes]
    fp32 = benchmark_pipeline(benchmark, args.device, torch.float32)
    if not args.no_agreement:
        report["agreement_with_float32"] = agreement(fp32, benchmark, args.device, dtypes)
        print(json.dumps(report["agreement_with_float32"]), flush=True)
    for dtype in dtypes:
        variants = [False, True] if args.compile else [False]
        for compiled in variants:
            pipe = benchmark_pipeline(benchmark, args.device, dtype, state=fp32)
            compile_seconds = None
            if compiled:
                pipe.unet = torch.compile(pipe.unet)
                start = time.perf_counter()
                time_pipeline(pipe, benchmark, args.device, dtype, args.batch_sizes[0], 1, args.steps)
                compile_seconds = round(time.perf_counter() - start, 1)
            for batch_size in args.batch_sizes:
                try:
                    row = time_pipeline(pipe, benchmark, args.device, dtype, batch_size, args.repeats, args.steps)
                except torch.OutOfMemoryError:
                    print(f"{dtype} batch {batch_size}: out of memory", flush=True)
                    torch.cuda.empty_cache()
                    break
                row.update(dtype=str(dtype).replace("torch.", ""), compiled=compiled, compile_seconds=compile_seconds)
                report["throughput"].append(row)
                print(json.dumps(row), flush=True)
            if args.profile and report["throughput"]:
                report.setdefault("profile", {})[str(dtype)] = profile_call(pipe, benchmark, args.device, dtype,
                                                                            report["throughput"][-1]["batch_size"], args.steps)
            del pipe
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if args.protocol_clips:
        report["protocol"] = run_protocol(benchmark, args.device, args.protocol_dtype, args.protocol_clips,
                                          args.protocol_batch_size, args.protocol_samples)
        print(json.dumps(report["protocol"]), flush=True)
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
