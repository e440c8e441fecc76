"""Time and profile one ExtDMUNet3DModel call in the configuration of
``shared/speed_vs_original/compare_sampling.py`` (a released denoiser at width 32, 8 heads of 32, batch 2,
5 -> 5 frames, motion 32x32, features 256 x 16x16), random weights, float32 on the CPU.

    python benchmarks/profile_unet.py                           # seconds per call and a profile breakdown
    python benchmarks/profile_unet.py --variant traj_ada
    python benchmarks/profile_unet.py --baseline /tmp/base      # interleaved A/B against another checkout
    python benchmarks/profile_unet.py --floor --no-profile      # the call's arithmetic floor on this machine

``--baseline DIR``: DIR holds another version of the package as ``DIR/extdm_diffusers``; it is imported under
another name, given the same weights and inputs, and the two are timed in turn (median of ``--repeats``), so
that load from other jobs on a shared machine hits both alike. Their outputs are compared too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import torch

ARCH = {
    "wo_ref": "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi",
    "traj_u12": "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_u12",
    "traj_ada": "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada",
    "traj_ada_u22": "DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada_u22",
}


def build(package, variant: str, dim: int, seed: int = 0):
    conversion = importlib.import_module(package.__name__ + ".conversion")
    mults = (1, 2, 4, 8) if variant == "wo_ref" else (1, 2, 4, 4)
    motion = 256 if variant in ("traj_u12", "traj_ada") else 3
    config = conversion.unet_config_from_original(
        ARCH[variant], dim=dim, channels=motion + 256, dim_mults=mults, cond_num=5, pred_num=5,
        attn_heads=8, attn_dim_head=32,
    )
    torch.manual_seed(seed)
    model = package.ExtDMUNet3DModel(**config).eval()
    with torch.no_grad():  # non-zero everywhere (zero-initialised extrapolators included)
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def inputs(model, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return dict(
        sample=torch.randn(batch, 3, cfg.num_pred_frames, 32, 32, generator=g),
        timestep=torch.tensor([500] * batch),
        cond_motion=torch.randn(batch, 3, cfg.num_cond_frames, 32, 32, generator=g).clamp(-1, 1),
        cond_features=torch.randn(batch, cfg.cond_feature_channels, model.num_feature_frames, 16, 16, generator=g),
    )


def prepare(model, x):
    """What the pipeline prepares once per window; a ``--baseline`` checkout from before ``prepare_condition``
    prepared the feature condition only."""
    if hasattr(model, "prepare_condition"):
        return {"condition": model.prepare_condition(x["cond_motion"], x["cond_features"])}
    return {"precomputed_features": model.prepare_features(x["cond_features"], x["sample"].shape[-2:])}


def call(model, x, prepared):
    return model(**x, **prepared).sample


def load_baseline(path: str):
    """Import DIR/extdm_diffusers as ``extdm_baseline`` (the package uses relative imports only)."""
    tmp = tempfile.mkdtemp()
    shutil.copytree(os.path.join(path, "extdm_diffusers"), os.path.join(tmp, "extdm_baseline"))
    sys.path.insert(0, tmp)
    return importlib.import_module("extdm_baseline")


CATEGORIES = [
    ("attention (sdpa)", ("scaled_dot_product", "_flash_attention", "bmm", "baddbmm", "softmax", "_safe_softmax")),
    ("linear (qkv/out)", ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul")),
    ("convolution", ("conv", "mkldnn_convolution", "slow_conv")),
    ("norms", ("group_norm", "layer_norm", "var_mean", "native_layer_norm", "native_group_norm", "rsqrt", "aten::sqrt")),
]


def breakdown(model, x, prepared):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(model, x, prepared)
    events = prof.key_averages()
    totals = defaultdict(float)
    # self CPU time by operator, mapped to a category by name
    for e in events:
        name = e.key
        cat = "other (copies, elementwise, cat, permute, ...)"
        for label, keys in CATEGORIES:
            if any(k in name for k in keys):
                cat = label
                break
        totals[cat] += e.self_cpu_time_total / 1e6
    total = sum(totals.values())
    print(f"\nprofile of one call, self CPU time by operator category (total {total:.3f} s):")
    for cat, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:48s} {t:7.3f} s  {100 * t / total:5.1f}%")
    print("\ntop operators by self CPU time:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=18))


def arithmetic_floor(model, x, prepared, seconds_per_call: float) -> None:
    """FLOPs of one call (torch's FlopCounterMode; CPU flash attention counted as SDPA) against the rate of a
    2048x2048 float32 matmul on this machine, the best case for the matrix-heavy kernels."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}) as counter:
        call(model, x, prepared)
    by_op = {str(op).split(".")[1]: flops / 1e9 for op, flops in counter.get_flop_counts()["Global"].items()}
    total = counter.get_total_flops() / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(23):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    rate = 2 * 2048**3 / statistics.median(times[3:]) / 1e9
    floor = total / rate
    print(f"\narithmetic floor: {total:.1f} GFLOP per call ({', '.join(f'{k} {v:.1f}' for k, v in sorted(by_op.items()))}); "
          f"2048^2 matmul {rate:.0f} GFLOP/s -> floor {floor:.3f} s; this call {seconds_per_call:.3f} s = "
          f"{seconds_per_call / floor:.2f}x the floor ({total / seconds_per_call:.0f} GFLOP/s)")


def per_module(model, x, prepared, repeats=3):
    """Wall time per module kind (outermost instances only), median over calls."""
    kinds = ("SpaceTimeWindowAttention", "TemporalAttention", "ResnetBlock3D", "DistributionAdaptor",
             "Downsample3D", "Upsample3D", "OutputHead", "TrajectoryCrossAttention")
    acc = defaultdict(list)
    starts = {}
    depth = [0]

    def pre(mod, _):
        if depth[0] == 0:
            starts[id(mod)] = time.perf_counter()
        depth[0] += 1

    def post(mod, _, __):
        depth[0] -= 1
        if depth[0] == 0:
            acc[type(mod).__name__].append(time.perf_counter() - starts.pop(id(mod)))

    handles = []
    for m in model.modules():
        if type(m).__name__ in kinds:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    totals = defaultdict(list)
    walls = []
    for _ in range(repeats):
        acc.clear()
        t0 = time.perf_counter()
        call(model, x, prepared)
        walls.append(time.perf_counter() - t0)
        for k, v in acc.items():
            totals[k].append(sum(v))
    for h in handles:
        h.remove()
    wall = statistics.median(walls)
    print(f"\nwall time by module kind (median of {repeats}, one call {wall:.3f} s):")
    rest = wall
    for k, v in sorted(totals.items(), key=lambda kv: -statistics.median(kv[1])):
        t = statistics.median(v)
        rest -= t
        print(f"  {k:28s} {t:7.3f} s  {100 * t / wall:5.1f}%")
    print(f"  {'rest (conv_in, cat, embeds)':28s} {rest:7.3f} s  {100 * rest / wall:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="wo_ref", choices=sorted(ARCH))
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--baseline", help="folder holding another extdm_diffusers to compare with, interleaved")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--floor", action="store_true", help="count the call's FLOPs and compare with the matmul rate")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy machine")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    import extdm_diffusers

    dtype = getattr(torch, a.dtype)
    model = build(extdm_diffusers, a.variant, a.dim).to(dtype)
    x = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs(model).items()}
    prepared = prepare(model, x)
    contenders = {"this": (model, prepared)}
    if a.baseline:
        base_pkg = load_baseline(a.baseline)
        base = build(base_pkg, a.variant, a.dim).to(dtype)
        base.load_state_dict(model.state_dict())
        contenders["baseline"] = (base, prepare(base, x))
    if a.compile:
        contenders["compiled"] = (torch.compile(model), prepared)
    outs = {name: call(m, x, p) for name, (m, p) in contenders.items()}  # warm-up
    ref = outs.get("baseline", outs["this"])
    for name, o in outs.items():
        err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
        print(f"{name}: rel. difference to {'baseline' if a.baseline else 'this'} {err:.2e}")
    times, cpu = defaultdict(list), defaultdict(list)
    for _ in range(a.repeats):
        for name, (m, p) in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call(m, x, p)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"{a.variant} dim {a.dim}, batch 2, {a.dtype}, {torch.get_num_threads()} threads, median of {a.repeats}:")
    for k in times:
        print(f"  {k:10s} {statistics.median(times[k]):.3f} s wall, {statistics.median(cpu[k]):.3f} s CPU per call")
    for other in [k for k in times if k != "this"]:
        for label, t in (("wall", times), ("CPU", cpu)):
            ratios = sorted(b / u for b, u in zip(t[other], t["this"]))
            print(f"  {other}/this ({label}): median of per-round ratios {statistics.median(ratios):.3f}x "
                  f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})")
    if a.floor:
        arithmetic_floor(model, x, prepared, statistics.median(times["this"]))
    if not a.no_profile:
        per_module(model, x, prepared)
        breakdown(model, x, prepared)


if __name__ == "__main__":
    main()
