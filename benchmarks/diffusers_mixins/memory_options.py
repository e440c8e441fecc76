"""Peak resident memory (CPU) of one ExtDMPipeline prediction under diffusers' memory options, each in a fresh
process: the BAIR configuration of the benchmark registry (random weights), 2 -> 2 frames at 64x64, 2 steps,
float32. The peak is taken over the call only (``/proc/self/clear_refs`` resets it after the set-up), with the
resident memory before the call beside it.

    OMP_NUM_THREADS=2 python benchmarks/diffusers_mixins/memory_options.py
"""

import json
import subprocess
import sys
import tempfile
import time

OPTIONS = ["none", "enable_model_cpu_offload", "enable_sequential_cpu_offload",
           "accelerate cpu_offload (both models, execution device cpu)", "enable_group_offload (disk)",
           "enable_layerwise_casting (fp8 storage)", "torch.compile (unet)"]


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def run(option: str) -> dict:
    import torch

    from extdm_diffusers.benchmarks import BENCHMARKS

    config = BENCHMARKS["bair"]
    pipe = config.random_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if option == "enable_model_cpu_offload":
        pipe.enable_model_cpu_offload(device="cpu")
    elif option == "enable_sequential_cpu_offload":
        pipe.enable_sequential_cpu_offload(device="cpu")  # fails on the CPU: diffusers asks for "cpu:0" (docs/models.md)
    elif option.startswith("accelerate cpu_offload"):
        from accelerate import cpu_offload

        for model in (pipe.unet, pipe.flow_autoencoder):  # the hooks enable_sequential_cpu_offload installs
            cpu_offload(model, execution_device=torch.device("cpu"), offload_buffers=True)
    elif option.startswith("enable_group_offload"):
        folder = tempfile.mkdtemp()
        for name in ("unet", "flow_autoencoder"):
            getattr(pipe, name).enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"),
                                                     offload_type="block_level", num_blocks_per_group=1,
                                                     offload_to_disk_path=f"{folder}/{name}")
    elif option.startswith("enable_layerwise_casting"):
        pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    elif option.startswith("torch.compile"):
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    video = torch.rand(1, config.evaluation.cond_frames, 3, config.frame_size, config.frame_size)
    kwargs = dict(num_frames=2, num_inference_steps=2, eta=0.0, output_type="pt", generator=torch.Generator().manual_seed(0))
    if option.startswith("torch.compile"):
        pipe(video, **kwargs)  # compiles
    before = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident set
    start = time.perf_counter()
    pipe(video, **kwargs)
    seconds = time.perf_counter() - start
    return {"option": option, "rss_before_mib": round(before / 1024), "peak_during_call_mib": round(rss_kib("VmHWM") / 1024),
            "seconds": round(seconds, 2)}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(run(sys.argv[1])))
    else:
        for option in OPTIONS:
            out = subprocess.run([sys.executable, __file__, option], capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{option}: failed: {out.stderr.strip()[-300:]}")
