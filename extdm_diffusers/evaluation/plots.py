"""``per_frame.png``: each frame metric of an evaluation's ``metrics.json`` per predicted frame, ExtDM against
copying the last frame and the autoencoder's ceiling, with the denoiser's window boundaries marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..file_io import atomic_path
from .config import FRAME_METRICS

AXIS_LABELS = {"psnr": "PSNR (dB), higher is better", "ssim": "SSIM, higher is better", "lpips": "LPIPS, lower is better"}
#: (section, key in the section or None for a baseline, legend label, line style)
_CURVES = (
    ("extdm", "mean_of_samples", "ExtDM, mean of {n} samples", dict(color="tab:blue", linestyle="-", marker="o")),
    ("extdm", "best_of_n", "ExtDM, best of {n} (oracle)", dict(color="tab:blue", linestyle="--", marker=".")),
    ("copy_last_frame", None, "copy last frame", dict(color="tab:gray", linestyle="-", marker="s")),
    ("autoencoder", None, "autoencoder (ceiling)", dict(color="tab:green", linestyle=":", marker="^")),
)


def _curves(result: Dict[str, Any], metric: str) -> List[Tuple[str, List[float], Dict[str, Any]]]:
    """(label, per-frame values, style) of each curve ``result`` has for ``metric``; best-of-N only where N > 1
    (with one sample it is the mean)."""
    num_samples = result["metadata"]["num_samples"]
    curves = []
    for section, key, label, style in _CURVES:
        values = result.get(section, {}).get(metric)
        if values is None or (key == "best_of_n" and num_samples <= 1):
            continue
        values = values[key] if key else values
        label = "ExtDM, one sample per video" if key == "mean_of_samples" and num_samples == 1 else label.format(n=num_samples)
        curves.append((label, values["per_frame"], style))
    return curves


def per_frame_figure(result: Dict[str, Any]) -> Figure:
    """One panel per frame metric in ``result`` (an evaluation's ``metrics.json``): x the predicted frame,
    dotted vertical lines between the denoiser's windows (``metadata.window_frames``, where recorded)."""
    if not isinstance(result, dict) or "metadata" not in result or "extdm" not in result:
        raise ValueError("`result` must be an evaluation's metrics.json dict, with `metadata` and an `extdm` section")
    metrics = [m for m in FRAME_METRICS if m in result["extdm"]]
    if not metrics:
        raise ValueError(f"`result` has no per-frame metric in its `extdm` section (expected one of {list(FRAME_METRICS)})")
    meta = result["metadata"]
    proto = meta["protocol"]
    window = meta.get("window_frames")
    figure = Figure(figsize=(4.2 * len(metrics), 4.1), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for label, values, style in _curves(result, metric):
            ax.plot(range(1, len(values) + 1), values, label=label, markersize=4, **style)
        frames = proto["pred_frames"]
        if window:
            for boundary in range(window, frames, window):
                ax.axvline(boundary + 0.5, color="black", linestyle=":", linewidth=1,
                           label="window boundary" if boundary == window else None)
        ax.set_xlabel("predicted frame")
        ax.set_ylabel(AXIS_LABELS[metric])
        ax.set_xlim(0.5, frames + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    samples = meta["num_samples"]
    figure.suptitle(
        f"{meta['benchmark_display_name']} ({meta['benchmark']}), {proto['cond_frames']}→{proto['pred_frames']} frames"
        + (f" at {meta['frame_size']}×{meta['frame_size']}" if meta.get("frame_size") else "")
        + f"\n{meta['num_videos']} test videos, {samples} sample{'s' if samples != 1 else ''} each"
        + (f", denoiser windows of {window} frames" if window else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False)
    return figure


def write_per_frame_plot(result: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Draw :func:`per_frame_figure` to the PNG ``path`` (atomically, mode ``0o666 & ~umask``)."""
    path = Path(path)
    figure = per_frame_figure(result)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path
