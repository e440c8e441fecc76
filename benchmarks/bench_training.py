"""Training-step speed and peak memory of the two ExtDM training steps at a benchmark's paper configuration
(random weights): the denoiser step of train_dm.py (frozen-AE encode_condition + denoising_loss + AdamW) and the
flow-autoencoder step of train_flow_ae.py (FlowAutoencoderLoss + Adam).

    python benchmarks/bench_training.py --benchmark smmnist --batch_size 2 --steps 3          # CPU fp32
    python benchmarks/bench_training.py --device cuda --batch_size 40 --ae_batch_size 100

The AE step uses --perceptual_loss vgg19 with random VGG weights (same cost as ImageNet weights, nothing to
download); --perceptual_loss none measures the pixel-loss variant.

With --original PATH (a checkout of the original ExtDM code) the original's training steps are built at the same
sizes (random weights on both sides) and timed beside ours in the same process, alternating ours/original for
--repeats rounds; the medians and the ratio ours/original are printed:

    python benchmarks/bench_training.py --original /path/to/ExtDM --threads 1 --steps 2 --repeats 3

- DM: the original FlowDiffusion (model/BaseDM_adaptor/VideoFlowDiffusion_multi.py, the SMMNIST denoiser
  DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi; multi1248.py does not import, a SyntaxError) in training mode,
  as scripts/DM/train.py steps it: zero_grad, forward (frozen-AE loop over the frames under no_grad,
  GaussianDiffusion.p_losses, and the no-grad rec/warp reconstructions it logs), (loss + rec + warp).backward(),
  AdamW over model.diffusion. The frozen AE is put in eval mode without gradients, as a loaded checkpoint is.
- AE: the original ReconstructionModel (model/LFAE/model.py) with the benchmark's perceptual/equivariance weights
  and a random-weight Vgg19, Adam over generator + region + background predictors, as scripts/AE/train.py.
  Compared only with --perceptual_loss vgg19.
Each side runs under glibc's malloc as its scripts do (``--malloc``, ``--original_malloc``): ours keeps freed blocks
for reuse (``extdm_diffusers.cpu_memory``, as the training loop sets it), the original keeps glibc's defaults,
emulated in its rounds by the thresholds glibc reaches once a process has freed its large blocks.
Our steps use the training scripts' fused Adam/AdamW (``--no_fused``: torch's CPU default, the per-tensor loop
the original runs) and, in the DM step, the autoencoder features of the observed frames only.
The original needs einops, einops_exts, rotary-embedding-torch and scikit-image; xformers and timm (never used at
run time) are stubbed, and on the CPU .cuda() is made a no-op.
"""

import argparse
import copy
import importlib
import importlib.machinery
import json
import os
import resource
import statistics
import sys
import time
import types

import torch

from extdm_diffusers.benchmarks import get_benchmark
from extdm_diffusers.cpu_memory import REUSED_BLOCK_BYTES, reuse_freed_cpu_memory, set_glibc_malloc_thresholds
from extdm_diffusers.models import ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.pipelines.pipeline_extdm import encode_condition
from extdm_diffusers.schedulers import ExtDMDDIMScheduler
from extdm_diffusers.training import FlowAutoencoderLoss, VGG19PerceptualFeatures, denoising_loss


MALLOCS = ("reuse", "glibc_default")


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


def load_original(path, device):
    """Make the original ExtDM code at ``path`` importable (import stubs only; none of its code is copied)."""
    path = os.path.abspath(path)
    if path not in sys.path:
        sys.path.insert(0, path)
    import diffusers.utils.import_utils  # noqa: F401  (let diffusers probe the environment before the stubs exist)
    import torch.nn as nn

    xformers = types.ModuleType("xformers")
    xformers.ops = types.ModuleType("xformers.ops")
    sys.modules.setdefault("xformers", xformers)
    sys.modules.setdefault("xformers.ops", xformers.ops)
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:
        timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
        layers.DropPath = lambda *a, **k: nn.Identity()
        layers.trunc_normal_ = lambda t, std=1.0, **k: nn.init.trunc_normal_(t, std=std)
        timm.models, models.layers = models, layers
        for module in (timm, models, layers):
            module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
            sys.modules[module.__name__] = module
    if device.type == "cpu":  # the original calls .cuda() unconditionally
        torch.Tensor.cuda = lambda self, *a, **k: self
        nn.Module.cuda = lambda self, *a, **k: self


def original_dm_step(bench, clips, device):
    """The original SMMNIST-style denoiser training step (see the module docstring), on ``clips`` (B, T, C, H, W)."""
    FlowDiffusion = importlib.import_module("model.BaseDM_adaptor.VideoFlowDiffusion_multi").FlowDiffusion
    config = {  # the parts of the original DM YAML that FlowDiffusion reads
        "flow_params": {"model_params": copy.deepcopy(bench.flow_autoencoder)},
        "dataset_params": {
            "frame_shape": bench.frame_size,
            "train_params": {"cond_frames": bench.train_cond_frames, "pred_frames": bench.train_pred_frames},
            "valid_params": {"cond_frames": bench.evaluation.cond_frames, "pred_frames": bench.evaluation.pred_frames},
        },
    }
    config["diffusion_params"] = {"model_params": {"null_cond_prob": 0.0, "use_residual_flow": False, "only_use_flow": False,
                                                   "sampling_timesteps": 10, "loss_type": "l2"}}
    dim_mults = bench.unet_config()["channel_mults"]
    model = FlowDiffusion(config=config, is_train=True, dim_mults=dim_mults, Unet3D_architecture=bench.architecture).to(device)
    for part in (model.generator, model.region_predictor, model.bg_predictor):
        part.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.diffusion.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    real_vid = clips.permute(0, 2, 1, 3, 4).contiguous()

    def step():
        optimizer.zero_grad()
        ret = model(real_vid)
        (ret["loss"].mean() + ret["rec_loss"].mean() + ret["rec_warp_loss"].mean()).backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.unet.parameters())


def original_ae_step(bench, source, driving, device):
    """The original flow-autoencoder training step (ReconstructionModel + Adam), random VGG19 weights."""
    from model.LFAE.bg_motion_predictor import BGMotionPredictor
    from model.LFAE.generator import Generator
    from model.LFAE.region_predictor import RegionPredictor
    lfae_model = importlib.import_module("model.LFAE.model")

    p = bench.flow_autoencoder
    generator = Generator(num_regions=p["num_regions"], num_channels=p["num_channels"], revert_axis_swap=p["revert_axis_swap"],
                          **p["generator_params"]).to(device)
    region_predictor = RegionPredictor(num_regions=p["num_regions"], num_channels=p["num_channels"],
                                       estimate_affine=p["estimate_affine"], **p["region_predictor_params"]).to(device)
    bg_predictor = BGMotionPredictor(num_channels=p["num_channels"], **p["bg_predictor_params"]).to(device)
    t = bench.autoencoder_training
    train_params = {"scales": list(t.pyramid_scales),
                    "transform_params": {"sigma_affine": t.sigma_affine, "sigma_tps": t.sigma_tps, "points_tps": t.points_tps},
                    "loss_weights": {"perceptual": list(t.perceptual_weights), "equivariance_shift": t.equivariance_shift_weight,
                                     "equivariance_affine": t.equivariance_affine_weight}}
    vgg19 = lfae_model.models.vgg19
    lfae_model.models.vgg19 = lambda pretrained=False, **k: vgg19(weights=None)  # random weights, nothing to download
    try:
        model = lfae_model.ReconstructionModel(region_predictor, bg_predictor, generator, train_params).to(device).train()
    finally:
        lfae_model.models.vgg19 = vgg19
    params = list(generator.parameters()) + list(region_predictor.parameters()) + list(bg_predictor.parameters())
    optimizer = torch.optim.Adam(params, lr=t.learning_rate, betas=(0.5, 0.999))
    x = {"source": source, "driving": driving}

    def step():
        optimizer.zero_grad()
        losses, _ = model(x)
        (losses["perceptual"].mean() + losses["equivariance_shift"].mean() + losses["equivariance_affine"].mean()).backward()
        optimizer.step()

    return step, sum(p.numel() for p in params)


# glibc's thresholds once a process has freed its large blocks: the mmap threshold rises to the largest freed
# mmapped block up to its 32 MiB cap, the trim threshold to twice that (the original's training scripts run so)
GLIBC_DEFAULT_MALLOC_AFTER_WARMUP = (32 << 20, 64 << 20)


def malloc_setter(mallocs):
    """Set the process once where both sides run alike (``mallocs[name]``: "reuse" or "glibc_default"), and return
    the callable that ``compare`` calls before each side's rounds: it switches glibc's thresholds where the sides
    differ, and does nothing where they do not."""
    if mallocs["ours"] == mallocs["original"]:
        if mallocs["ours"] == "reuse":
            reuse_freed_cpu_memory()
        return lambda name: None
    thresholds = {"reuse": (REUSED_BLOCK_BYTES, REUSED_BLOCK_BYTES), "glibc_default": GLIBC_DEFAULT_MALLOC_AFTER_WARMUP}
    return lambda name: set_glibc_malloc_thresholds(*thresholds[mallocs[name]])


def compare(ours, original, steps, warmup, repeats, device, use_malloc):
    """Seconds per step of ``ours`` and ``original``, timed in alternation (``repeats`` rounds of ``steps`` each),
    each side under its own glibc malloc thresholds (``use_malloc(name)``, from ``malloc_setter``)."""
    for name, step in (("ours", ours), ("original", original)):
        use_malloc(name)
        for _ in range(warmup):
            step()
    times = {"ours": [], "original": []}
    for _ in range(repeats):
        for name, step in (("ours", ours), ("original", original)):
            use_malloc(name)
            times[name].append(1.0 / timed(step, steps, 0, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"ours_steps_per_s": 1 / med["ours"], "original_steps_per_s": 1 / med["original"],
            "speedup": med["original"] / med["ours"], "ours_s_per_step": times["ours"],
            "original_s_per_step": times["original"], "steps_per_round": steps, "rounds": repeats}


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
    parser.add_argument("--original", default=None, help="folder of the original ExtDM code: time its steps beside ours")
    parser.add_argument("--repeats", type=int, default=3, help="with --original: alternating rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--malloc", choices=MALLOCS, default="reuse",
                        help="ours: 'reuse' (freed blocks kept for reuse, as the command-line tools run, "
                             "extdm_diffusers.cpu_memory) or 'glibc_default'")
    parser.add_argument("--original_malloc", choices=MALLOCS, default="glibc_default",
                        help="with --original: the original's, as its scripts run (default) or 'reuse'")
    parser.add_argument("--no_fused", dest="fused", action="store_false",
                        help="our optimizers without fused=True (torch's CPU default, the original's), to measure it")
    parser.add_argument("--mixed_precision", choices=["no", "bf16"], default="no",
                        help="ours under bf16 autocast, as the training scripts' --mixed_precision bf16 runs them "
                             "(accelerate's autocast; weights and optimizer stay fp32); the original stays fp32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.original:
        load_original(args.original, device)
    bench = get_benchmark(args.benchmark)
    torch.manual_seed(0)
    mallocs = {"ours": args.malloc, "original": args.original_malloc if args.original else args.malloc}
    use_malloc = malloc_setter(mallocs)
    results = {"benchmark": bench.name, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "malloc": mallocs, "mixed_precision": args.mixed_precision}
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")  # noqa: E731

    ae = FlowAutoencoder(**bench.flow_autoencoder_config()).to(device)
    size, cond, pred = bench.frame_size, bench.train_cond_frames, bench.train_pred_frames
    if args.only in (None, "dm"):
        ae.eval().requires_grad_(False)
        unet = ExtDMUNet3DModel(**bench.unet_config(ae.feature_channels)).to(device).train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4, betas=(0.9, 0.999), weight_decay=0, fused=args.fused)
        scheduler = ExtDMDDIMScheduler()
        clips = torch.rand(args.batch_size, cond + pred, 3, size, size, device=device)

        # as train_dm.py runs it: the frozen autoencoder in the mixed-precision dtype, the U-Net's forward in autocast
        frozen_dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
        frozen_ae = ae if frozen_dtype == torch.float32 else copy.deepcopy(ae).to(frozen_dtype)

        def dm_step():
            with torch.no_grad():
                c = encode_condition(frozen_ae, clips.to(frozen_dtype), cond, unet.num_feature_frames, True)
            t = torch.randint(0, 1000, (clips.shape[0],), device=device)
            with autocast():
                loss = denoising_loss(unet, scheduler, c.future_motion.float(), c.cond_motion.float(),
                                      c.cond_features.float(), t).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results["dm"] = {"batch": args.batch_size, "clip": f"{cond}+{pred}x{size}px",
                         "unet_params": sum(p.numel() for p in unet.parameters())}
        if args.original:
            orig_step, orig_params = original_dm_step(bench, clips, device)
            results["dm"]["original_unet_params"] = orig_params
            results["dm"]["vs_original"] = compare(dm_step, orig_step, args.steps, args.warmup, args.repeats, device, use_malloc)
            del orig_step
        else:
            rate = timed(dm_step, args.steps, args.warmup, device)
            results["dm"].update(steps_per_s=rate, clips_per_s=rate * args.batch_size, peak_mb=peak_memory_mb(device))
        del unet, optimizer
    if args.only in (None, "ae"):
        batch = args.ae_batch_size or args.batch_size
        ae.train().requires_grad_(True)
        loss_fn = FlowAutoencoderLoss(scales=bench.autoencoder_training.pyramid_scales, perceptual_loss=args.perceptual_loss,
                                      vgg_weights=VGG19PerceptualFeatures(None) if args.perceptual_loss == "vgg19" else None).to(device)
        optimizer = torch.optim.Adam(ae.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=args.fused)
        source, driving = (torch.rand(batch, 3, size, size, device=device) for _ in range(2))

        def ae_step():
            with autocast():
                loss = loss_fn(ae, source, driving)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results["ae"] = {"batch": batch, "perceptual_loss": args.perceptual_loss,
                         "ae_params": sum(p.numel() for p in ae.parameters())}
        if args.original and args.perceptual_loss == "vgg19":
            orig_step, orig_params = original_ae_step(bench, source, driving, device)
            results["ae"]["original_ae_params"] = orig_params
            results["ae"]["vs_original"] = compare(ae_step, orig_step, args.steps, args.warmup, args.repeats, device, use_malloc)
        else:
            rate = timed(ae_step, args.steps, args.warmup, device)
            results["ae"].update(steps_per_s=rate, pairs_per_s=rate * batch, peak_mb=peak_memory_mb(device))
    print(json.dumps(results, indent=2))
    for part in ("dm", "ae"):
        vs = results.get(part, {}).get("vs_original")
        if vs:
            print(f"{part}: ours {vs['ours_steps_per_s']:.4f} steps/s, original {vs['original_steps_per_s']:.4f} steps/s, "
                  f"speedup {vs['speedup']:.2f}x (medians of {vs['rounds']} alternating rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
