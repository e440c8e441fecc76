"""The final numbers from the per-clip arrays: best-of-N and mean-of-samples with the original's mean/std/CI,
``fvd_traj`` and ``fvd_best``, and the notes ``metrics.json`` carries about what each one is."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import scipy.stats as st

from ..metrics import frechet_distance
from .config import FRAME_METRICS, METHODS

ORACLE_NOTE = (
    "best_of_n is an oracle: per video, the sample closest to the ground truth is picked using the ground truth, "
    "separately for each metric (max PSNR, max SSIM, min LPIPS of the mean over predicted frames), as the original "
    "valid.py does and as the paper reports. mean_of_samples averages over the samples instead (no oracle)."
)
FVD_NOTE = (
    "FVD uses the full clips (ground-truth condition + predicted frames) against the real clips. fvd_traj: mean, std "
    "and 95% CI of the num_samples FVDs 'sample k of every video vs the real videos' (no oracle). fvd_best: FVD after "
    "picking per video the sample whose I3D feature is L1-closest to the real clip's (an oracle). The paper most "
    "likely reports fvd_traj's mean (see docs/evaluation.md)."
)
CI_NOTE = (
    "std is numpy's population std (ddof=0) over videos; ci95 is the half-width of the 95% normal interval, "
    "1.96 * scipy.stats.sem (ddof=1), as the original valid.py metric_stuff"
)
PAIRED_NOTE = (
    "paired_differences: per video, ExtDM's value (mean over its samples and predicted frames) minus the baseline's "
    "(mean over predicted frames), summarized over videos (mean, std, ci95 as above); interval is mean ± ci95. "
    "verdict: 'win' where the interval excludes zero on ExtDM's side (higher PSNR and SSIM, lower LPIPS), 'loss' "
    "where it excludes zero on the baseline's side, else 'not significant'."
)
DIVERSITY_NOTE = (
    "sample_diversity: per video, the mean over pairs of its samples of their per-pixel mean squared difference "
    "(predicted frames, values in [0, 1]), then mean/std/ci95 over videos; 0 when the samples coincide"
)


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """mean, std and 95% CI half-width over ``values`` exactly as the original ``metric_stuff``:
    ``np.mean``, ``np.std`` (ddof=0) and ``mean − norm.interval(0.95, mean, sem)[0]`` = 1.96·sem (ddof=1)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    std = float(values.std())
    if len(values) > 1:
        sem = st.sem(values)
        ci = mean - float(st.norm.interval(confidence=0.95, loc=mean, scale=sem)[0]) if sem > 0 else 0.0
    else:
        ci = None  # one value: no interval (the original gets NaN)
    return {"mean": mean, "std": std, "ci95": ci, "n": int(len(values))}


def aggregate_frame_metric(values: np.ndarray, higher_is_better: bool) -> Dict[str, Any]:
    """``values`` (V videos, N samples, T frames) of one metric -> ``best_of_n`` and ``mean_of_samples``.

    Per sample the metric is the mean over its predicted frames. ``best_of_n`` (oracle): per video the best
    sample (max or min), its per-frame values make the per-frame curve. ``mean_of_samples``: per video the mean
    over samples. Each gets mean/std/ci95 over videos and ``per_frame`` (mean over videos per frame).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"`values` must be (videos, samples, frames), got shape {values.shape}")
    per_sample = values.mean(axis=2)  # (V, N)
    best_curves = best_sample_curves(values, higher_is_better)  # (V, T)
    return {
        "best_of_n": {
            **summarize(per_sample.max(axis=1) if higher_is_better else per_sample.min(axis=1)),
            "per_frame": best_curves.mean(axis=0).tolist(),
            "selection": "max" if higher_is_better else "min",
        },
        "mean_of_samples": {**summarize(per_sample.mean(axis=1)), "per_frame": values.mean(axis=(0, 1)).tolist()},
    }


def best_sample_curves(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """``values`` (V, N, T) -> (V, T): per video the per-frame values of its best sample (by the mean over frames)."""
    per_sample = values.mean(axis=2)
    best = per_sample.argmax(axis=1) if higher_is_better else per_sample.argmin(axis=1)
    return values[np.arange(values.shape[0]), best]


def fvd_traj(real: np.ndarray, generated: np.ndarray) -> Dict[str, Any]:
    """``real`` (V, D), ``generated`` (V, N, D): the N FVDs of sample index k of every video vs the real videos,
    summarized (mean/std/ci95) with the list of values."""
    values = [frechet_distance(real, generated[:, k]) for k in range(generated.shape[1])]
    return {**summarize(values), "values": values}


def fvd_best(real: np.ndarray, generated: np.ndarray) -> Dict[str, Any]:
    """Oracle FVD: per video the sample whose feature is L1-closest to the real clip's feature."""
    distance = np.abs(generated - real[:, None]).sum(axis=2)  # (V, N)
    selected = distance.argmin(axis=1)
    return {"value": frechet_distance(real, generated[np.arange(len(real)), selected]), "selected": selected.tolist()}


def paired_difference(extdm: np.ndarray, baseline: np.ndarray, higher_is_better: bool) -> Dict[str, Any]:
    """``extdm`` (V videos, N samples, T frames) minus ``baseline`` (V, T), per video over its frames (ExtDM
    averaged over samples too): summarized over videos, with the 95% interval and whether it excludes zero."""
    difference = np.asarray(extdm, np.float64).mean(axis=(1, 2)) - np.asarray(baseline, np.float64).mean(axis=1)
    summary = summarize(difference)
    ci = summary["ci95"]
    verdict = "not significant"
    interval = None
    if ci is not None:
        interval = [summary["mean"] - ci, summary["mean"] + ci]
        sign = 1 if higher_is_better else -1
        if sign * interval[0] > 0 and sign * interval[1] > 0:
            verdict = "win"
        elif sign * interval[0] < 0 and sign * interval[1] < 0:
            verdict = "loss"
    return {**summary, "interval": interval, "verdict": verdict}


def aggregate(records: List[Dict[str, np.ndarray]], methods: Sequence[str] = METHODS) -> Dict[str, Any]:
    """Final numbers from the per-video arrays (``features/clip_*.npz`` contents, in clip order)."""
    out: Dict[str, Any] = {}
    for method in methods:
        section: Dict[str, Any] = {}
        for metric, higher in FRAME_METRICS.items():
            key = f"{method}/{metric}"
            if key not in records[0]:
                continue
            values = np.stack([r[key] for r in records])
            if method == "extdm":
                section[metric] = aggregate_frame_metric(values, higher)
            else:  # one "sample": best_of_n == mean_of_samples, reported once
                section[metric] = aggregate_frame_metric(values[:, None], higher)["mean_of_samples"]
        if f"{method}/diversity_mse" in records[0]:
            section["sample_diversity"] = {**summarize([float(r[f"{method}/diversity_mse"]) for r in records]),
                                           "note": DIVERSITY_NOTE}
        fkey = f"{method}/i3d"
        if fkey in records[0] and "real/i3d" in records[0]:
            real = np.stack([r["real/i3d"] for r in records]).astype(np.float64)
            gen = np.stack([r[fkey] for r in records]).astype(np.float64)
            if method == "extdm":
                section["fvd_traj"] = fvd_traj(real, gen)
                best = fvd_best(real, gen)
                section["fvd_best"] = best["value"]
                section["fvd_best_selected_samples"] = best["selected"]
            else:
                section["fvd"] = frechet_distance(real, gen)
        if section:
            out[method] = section
    paired = {
        method: {metric: paired_difference(np.stack([r[f"extdm/{metric}"] for r in records]),
                                           np.stack([r[f"{method}/{metric}"] for r in records]), higher)
                 for metric, higher in FRAME_METRICS.items()
                 if f"extdm/{metric}" in records[0] and f"{method}/{metric}" in records[0]}
        for method in methods if method != "extdm"
    }
    paired = {method: section for method, section in paired.items() if section}
    if paired:
        out["paired_differences"] = paired
    return out
