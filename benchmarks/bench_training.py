"""Training-step speed and peak memory of the two ExtDM training steps at a benchmark's paper configuration
(random weights): the denoiser step of train_dm.py (frozen-AE encode_condition + denoising_loss + AdamW) and the
flow-autoencoder step of train_flow_ae.py (FlowAutoencoderLoss + Adam).

    python benchmarks/bench_training.py --benchmark smmnist --batch_size 2 --steps 3          # CPU fp32
    python benchmarks/bench_training.py --device cuda --batch_size 40 --ae_batch_size 100

The AE step uses --perceptual_loss vgg19 with random VGG weights (same cost as ImageNet weights, nothing to
download); --perceptual_loss none measures the pixel-loss variant.
"""

import argparse
import json
import resource
import time

import torch

from extdm_diffusers.benchmarks import get_benchmark
from extdm_diffusers.models import ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.pipelines.pipeline_extdm import encode_condition
from extdm_diffusers.schedulers import ExtDMDDIMScheduler
from extdm_diffusers.training import FlowAutoencoderLoss, VGG19PerceptualFeatures, denoising_loss


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process RSS high-water mark


def timed(step, steps, warmup, device):
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--benchmark", default="smmnist")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=2, help="denoiser batch")
    parser.add_argument("--ae_batch_size", type=int, default=None, help="autoencoder batch (default: --batch_size)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--perceptual_loss", choices=["vgg19", "none"], default="vgg19")
    parser.add_argument("--only", choices=["dm", "ae"], default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    bench = get_benchmark(args.benchmark)
    torch.manual_seed(0)
    results = {"benchmark": bench.name, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}

    ae = FlowAutoencoder(**bench.flow_autoencoder_config()).to(device)
    size, cond, pred = bench.frame_size, bench.train_cond_frames, bench.train_pred_frames
    if args.only in (None, "dm"):
        ae.eval().requires_grad_(False)
        unet = ExtDMUNet3DModel(**bench.unet_config(ae.feature_channels)).to(device).train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=0)
        scheduler = ExtDMDDIMScheduler()
        clips = torch.rand(args.batch_size, cond + pred, 3, size, size, device=device)

        def dm_step():
            with torch.no_grad():
                c = encode_condition(ae, clips, cond, unet.num_feature_frames, True)
            t = torch.randint(0, 1000, (clips.shape[0],), device=device)
            loss = denoising_loss(unet, scheduler, c.future_motion, c.cond_motion, c.cond_features, t)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rate = timed(dm_step, args.steps, args.warmup, device)
        results["dm"] = {"batch": args.batch_size, "clip": f"{cond}+{pred}x{size}px", "steps_per_s": rate,
                         "clips_per_s": rate * args.batch_size, "peak_mb": peak_memory_mb(device),
                         "unet_params": sum(p.numel() for p in unet.parameters())}
        del unet, optimizer
    if args.only in (None, "ae"):
        batch = args.ae_batch_size or args.batch_size
        ae.train().requires_grad_(True)
        loss_fn = FlowAutoencoderLoss(scales=bench.autoencoder_training.pyramid_scales, perceptual_loss=args.perceptual_loss,
                                      vgg_weights=VGG19PerceptualFeatures(None) if args.perceptual_loss == "vgg19" else None).to(device)
        optimizer = torch.optim.Adam(ae.parameters(), lr=2e-4, betas=(0.5, 0.999))
        source, driving = (torch.rand(batch, 3, size, size, device=device) for _ in range(2))

        def ae_step():
            loss_fn(ae, source, driving)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rate = timed(ae_step, args.steps, args.warmup, device)
        results["ae"] = {"batch": batch, "perceptual_loss": args.perceptual_loss, "steps_per_s": rate,
                         "pairs_per_s": rate * batch, "peak_mb": peak_memory_mb(device),
                         "ae_params": sum(p.numel() for p in ae.parameters())}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
