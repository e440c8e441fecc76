"""The sampler study (issue 20): quality against denoiser calls for every scheduler and step count, on the same
held-out videos with the same seeds, paired against the paper's sampler (``ddim_original``, 10 steps).

    python benchmarks/bench_samplers.py --pipeline runs/quickstart/pipeline --dataset_dir runs/quickstart/data \
        --num_videos 64 --num_samples 8 --schedulers ddim_original dpm dpm_sde unipc ddim ddpm euler euler_ancestral \
        --steps 2 3 4 5 6 8 10 --output benchmarks/results/samplers.json --plot docs/samplers.png

Every setting is one run of the evaluation package (``extdm_diffusers.evaluation.evaluate``: the protocol's clips,
seeds ``seed + clip * num_samples + sample``, PSNR/SSIM per frame, the sample diversity), in its own folder under
``--work_dir``; this script only compares the committed per-video arrays. Per setting ``--output`` records:
denoiser calls per video, seconds per video (the whole evaluation of one video's samples, measured over the clips
this session evaluated), mean-of-samples and best-of-N PSNR/SSIM, their paired difference to the reference on
the same videos (mean, 95% interval, verdict), the sample diversity (mean over pairs of samples of one video of
their per-pixel MSE, predicted frames in [0, 1]) and its ratio to the reference's, and ``holds``: no paired
interval on the reference's side of zero and diversity within 10%.

Resumable: ``--output`` is rewritten after every setting and a rerun skips the settings it holds; an interrupted
setting continues from its committed clips. ``--dtype bfloat16`` runs the pipeline in bf16, ``--autocast
bfloat16`` keeps fp32 weights under ``torch.autocast``; the reference always runs in float32 without autocast, so
the paired differences of ``ddim_original`` 10 in bf16 are bf16's effect on quality. ``--etas 0 0.5`` adds DDIM's
noise level as a dimension for the schedulers whose step takes one (``ddim_original``, ``ddim``: key ``ddim-5-eta0.5``);
the reference keeps the protocol's eta.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from extdm_diffusers.cpu_features import cpu_description
from extdm_diffusers.evaluation import EvaluationConfig, evaluate
from extdm_diffusers.evaluation import records
from extdm_diffusers.evaluation.config import AUTOCAST_DTYPES, DTYPES, FRAME_METRICS
from extdm_diffusers.evaluation.statistics import best_sample_curves, paired_difference
from extdm_diffusers.file_io import atomic_path, atomic_write_text
from extdm_diffusers.schedulers import SCHEDULER_NAMES, resolve_sampler, scheduler_takes_eta

REFERENCE = ("ddim_original", 10)
DIVERSITY_TOLERANCE = 0.10


def setting_key(scheduler: str, steps: int, dtype: str = "float32", autocast: Optional[str] = None,
                eta: Optional[float] = None) -> str:
    """``eta`` None: the protocol's (the key names an eta only where one was asked for)."""
    return (f"{scheduler}-{steps}" + ("" if eta is None else f"-eta{eta:g}") + ("" if dtype == "float32" else f"-{dtype}")
            + (f"-autocast_{autocast}" if autocast else ""))


def _key(setting: Dict[str, Any]) -> str:
    return setting_key(setting["scheduler"], setting["steps"], setting["dtype"], setting["autocast"], setting.get("eta"))


def settings_to_run(schedulers: Sequence[str], steps: Sequence[int], dtype: str, autocast: Optional[str],
                    etas: Optional[Sequence[float]] = None) -> List[Dict[str, Any]]:
    """The reference first (float32, the protocol's eta), then every scheduler x steps (x eta, for the schedulers
    whose step takes one, where ``etas`` are given) in the asked dtype."""
    out = [{"scheduler": REFERENCE[0], "steps": REFERENCE[1], "dtype": "float32", "autocast": None, "eta": None}]
    for scheduler in schedulers:
        for eta in (etas if etas and scheduler_takes_eta(scheduler) else [None]):
            for k in steps:
                setting = {"scheduler": scheduler, "steps": k, "dtype": dtype, "autocast": autocast, "eta": eta}
                if setting != out[0]:
                    out.append(setting)
    return out


def _committed_arrays(folder: Path) -> List[Dict[str, np.ndarray]]:
    done = records.read_records(folder)
    return [records.load_arrays(folder, done[i]) for i in sorted(done)]


def _per_video(arrays: List[Dict[str, np.ndarray]], metric: str, higher: bool) -> Dict[str, np.ndarray]:
    """(V, N, T) -> per video the per-frame values (V, 1, T) of the mean over samples and of the best sample."""
    values = np.stack([a[f"extdm/{metric}"] for a in arrays]).astype(np.float64)
    return {"mean_of_samples": values.mean(axis=1, keepdims=True), "best_of_n": best_sample_curves(values, higher)[:, None]}


def compare(arrays: List[Dict[str, np.ndarray]], reference: List[Dict[str, np.ndarray]], metrics: Dict[str, Any],
            reference_metrics: Dict[str, Any]) -> Dict[str, Any]:
    """A setting's numbers, paired against the reference's on the same videos."""
    ext, ref_ext = metrics["extdm"], reference_metrics["extdm"]
    out: Dict[str, Any] = {}
    holds = True
    for metric, higher in FRAME_METRICS.items():
        if metric not in ext:
            continue
        mine, theirs = _per_video(arrays, metric, higher), _per_video(reference, metric, higher)
        section = {}
        for kind in ("mean_of_samples", "best_of_n"):
            paired = paired_difference(mine[kind], theirs[kind][:, 0], higher)  # (V, 1, T) against (V, T)
            section[kind] = {"mean": ext[metric][kind]["mean"], "ci95": ext[metric][kind]["ci95"],
                             "paired_vs_reference": paired}
            holds &= paired["verdict"] != "loss"
        out[metric] = section
    diversity = ext.get("sample_diversity", {}).get("mean")
    ref_diversity = ref_ext.get("sample_diversity", {}).get("mean")
    ratio = diversity / ref_diversity if diversity is not None and ref_diversity else None
    out["sample_diversity"] = {"mean": diversity, "ratio_to_reference": ratio}
    out["holds"] = bool(holds and ratio is not None and abs(ratio - 1) <= DIVERSITY_TOLERANCE)
    return out


def setting_config(args: argparse.Namespace, setting: Dict[str, Any], folder: Path) -> EvaluationConfig:
    """The evaluation of one setting, in ``folder``."""
    return EvaluationConfig(
        pipeline=args.pipeline, dataset_dir=args.dataset_dir, benchmark=args.benchmark, output_dir=str(folder),
        num_videos=args.num_videos, num_samples=args.num_samples, seed=args.seed, pred_frames=args.pred_frames,
        scheduler=setting["scheduler"], num_inference_steps=setting["steps"], eta=setting.get("eta"), batch_size=args.batch_size,
        no_fvd=True, no_lpips=args.lpips_weights is None, lpips_weights=args.lpips_weights, no_baselines=True,
        num_gifs=0, device=args.device, dtype=setting["dtype"], autocast=setting["autocast"],
    )


def run_setting(args: argparse.Namespace, setting: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """One evaluation run (resumed where it stopped); its metrics and the seconds per video of this session."""
    before = len(records.read_records(folder)) if folder.exists() else 0
    config = setting_config(args, setting, folder)
    start = time.perf_counter()
    metrics = evaluate(config)
    seconds = time.perf_counter() - start
    evaluated = len(records.read_records(folder)) - before
    return {"metrics": metrics, "seconds_per_video": round(seconds / evaluated, 3) if evaluated else None,
            "videos_timed": evaluated}


def _series(row: Dict[str, Any]) -> str:
    """A plotted line: one scheduler, at one eta where the study asked for one."""
    return row["scheduler"] + ("" if row.get("eta") is None else f" eta {row['eta']:g}")


def plot(results: Dict[str, Any], path: Path) -> None:
    """PSNR and SSIM (mean of samples solid, best of N dashed, both marked at every setting; filled where the
    setting holds) against denoiser calls per video, one line per scheduler, the reference as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    settings = results["settings"]
    reference = settings[setting_key(*REFERENCE)]
    all_calls = sorted({s["denoiser_calls_per_video"] for s in settings.values()})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for series in dict.fromkeys(_series(s) for s in settings.values()):
            rows = sorted((s for s in settings.values() if _series(s) == series and metric in s),
                          key=lambda s: s["denoiser_calls_per_video"])
            calls = [s["denoiser_calls_per_video"] for s in rows]
            line, = ax.plot(calls, [s[metric]["mean_of_samples"]["mean"] for s in rows], "-", label=series)
            colour = line.get_color()
            ax.plot(calls, [s[metric]["best_of_n"]["mean"] for s in rows], "--", color=colour, alpha=0.6)
            for kind, marker in (("mean_of_samples", "o"), ("best_of_n", "^")):
                for row, x in zip(rows, calls):
                    held = bool(row.get("holds"))
                    ax.plot([x], [row[metric][kind]["mean"]], marker, color=colour, markersize=5,
                            markerfacecolor=colour if held else "white", alpha=1.0 if kind == "mean_of_samples" else 0.7)
        for kind, style in (("mean_of_samples", "-"), ("best_of_n", "--")):
            ax.axhline(reference[metric][kind]["mean"], color="black", linestyle=style, linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(all_calls)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("denoiser calls per video (one sample, whole horizon)")
        ax.set_ylabel(metric.upper())
    # below both panels: inside one it covers the points where the solvers meet the reference
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(len(labels), 8)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    meta = results["metadata"]
    fig.suptitle(f"{meta['benchmark']}: {meta['num_videos']} videos, {meta['num_samples']} samples each\no solid: mean of "
                 "samples, ^ dashed: best of N; filled: within the reference's paired CI and diversity; black: "
                 "ddim_original, 10 steps", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 * -(-len(labels) // columns), 1, 1))  # room for the legend's rows below
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--benchmark", default=None, help="default: the one the pipeline records")
    parser.add_argument("--num_videos", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--pred_frames", type=int, default=None, help="default: the protocol's horizon")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULER_NAMES), choices=SCHEDULER_NAMES)
    parser.add_argument("--steps", nargs="+", type=int, default=[2, 3, 4, 5, 6, 8, 10])
    parser.add_argument("--etas", nargs="+", type=float, default=None,
                        help="DDIM's eta for the schedulers whose step takes one (ddim_original, ddim), one setting "
                             "each; default: the protocol's (1.0). Others run once, without eta")
    parser.add_argument("--output", required=True, help="results JSON, rewritten after every setting")
    parser.add_argument("--work_dir", default=None, help="the evaluation runs (default: OUTPUT without .json + _runs)")
    parser.add_argument("--plot", default=None, help="a PNG of quality against denoiser calls")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="of the compared settings (reference: float32)")
    parser.add_argument("--autocast", default=None, choices=AUTOCAST_DTYPES)
    parser.add_argument("--lpips_weights", default=None, help="a local AlexNet state dict: adds LPIPS")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.steps):
        parser.error(f"--steps must all be >= 1, got {args.steps}")
    for eta in args.etas or ():
        try:  # the samplers' own rule for eta, checked before the reference's run
            resolve_sampler("ddim", eta=eta)
        except ValueError as error:
            parser.error(f"--etas {eta:g}: {error}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    output = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else output.with_name(output.stem + "_runs")
    results = json.loads(output.read_text()) if output.exists() else {"settings": {}}
    settings = settings_to_run(args.schedulers, args.steps, args.dtype, args.autocast, args.etas)
    reference_key = setting_key(*REFERENCE)
    reference_arrays = reference_metrics = None
    for setting in settings:
        key = _key(setting)
        folder = work / key
        if key in results["settings"] and key != reference_key:
            print(f"{key}: done, skipped")
            continue
        if key in results["settings"]:  # the reference: its arrays are needed for the pairing
            # made with this run's settings (seed, videos, samples), or every pairing against it would be wrong
            records.check_run_config(folder, setting_config(args, setting, folder).run_settings())
            metrics = json.loads((folder / "metrics.json").read_text())
            run = None
        else:
            print(f"{key}: evaluating")
            run = run_setting(args, setting, folder)
            metrics = run["metrics"]
        arrays = _committed_arrays(folder)
        if key == reference_key:
            reference_arrays, reference_metrics = arrays, metrics
        if run is None:
            continue
        proto = metrics["metadata"]["protocol"]
        results["settings"][key] = {
            **setting, "denoiser_calls_per_video": proto["denoiser_calls_per_video"],
            "scheduler_settings": proto["scheduler_settings"], "seconds_per_video": run["seconds_per_video"],
            "videos_timed": run["videos_timed"], **compare(arrays, reference_arrays, metrics, reference_metrics),
        }
        meta = metrics["metadata"]
        results["metadata"] = {
            "benchmark": meta["benchmark"], "num_videos": meta["num_videos"], "num_samples": meta["num_samples"],
            "pred_frames": proto["pred_frames"], "seed": meta["seed"], "pipeline": args.pipeline,
            "reference": reference_key, "cpu": cpu_description(), "device": str(args.device or "auto"),
            "diversity": "mean over pairs of samples of one video of their per-pixel MSE (predicted frames in [0, 1])",
            "holds": f"no paired 95% interval of PSNR/SSIM (mean of samples, best of N) below the reference's, and "
                     f"diversity within {DIVERSITY_TOLERANCE:.0%} of it",
            "versions": meta["versions"],
        }
        atomic_write_text(output, json.dumps(results, indent=2) + "\n")
        row = results["settings"][key]
        print(f"{key}: {row['denoiser_calls_per_video']} calls/video, {row['seconds_per_video']} s/video, PSNR "
              f"{row['psnr']['mean_of_samples']['mean']:.2f} (mean) {row['psnr']['best_of_n']['mean']:.2f} (best), "
              f"holds: {row['holds']}")
    if args.plot:
        plot(results, Path(args.plot))
    return results


if __name__ == "__main__":
    main()
