"""The results in the pipeline's model card: a table between markers in ``README.md`` and ``model-index``
metadata (``huggingface_hub.ModelCard``), other benchmarks' results kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..file_io import atomic_write_text
from .config import FRAME_METRICS

CARD_START = "<!-- extdm-evaluation-results-start -->"
CARD_END = "<!-- extdm-evaluation-results-end -->"


def _results_table(result: Dict[str, Any]) -> str:
    meta = result["metadata"]
    proto = meta["protocol"]
    lines = [
        CARD_START,
        f"## Evaluation results: {meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}",
        "",
        f"{meta['num_videos']} test clips, {meta['num_samples']} samples each, {proto['num_inference_steps']} DDIM steps, "
        f"eta {proto['eta']}, seed {proto['seed']}, occlusion {'on' if proto['use_occlusion'] else 'off'} "
        "(`extdm_diffusers.evaluation`, see docs/evaluation.md). best-of-N is an oracle (the sample closest to "
        "the ground truth, per metric); ± is the 95% CI over videos.",
        "",
        "| method | FVD | PSNR | SSIM | LPIPS |",
        "| --- | --- | --- | --- | --- |",
    ]

    def fmt(d, digits):
        if d is None:
            return "–"
        if isinstance(d, dict):
            ci = d.get("ci95")
            return f"{d['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")
        return f"{d:.{digits}f}"

    ext = result.get("extdm", {})
    for label, key in (("ExtDM, best of N (oracle)", "best_of_n"), ("ExtDM, mean of samples", "mean_of_samples")):
        fvd = ext.get("fvd_traj") if key == "mean_of_samples" else ext.get("fvd_best")
        row = [label, fmt(fvd, 1) + (" (fvd_traj)" if key == "mean_of_samples" and fvd else " (fvd_best)" if fvd else "")]
        row += [fmt(ext.get(m, {}).get(key), d) for m, d in (("psnr", 2), ("ssim", 3), ("lpips", 3))]
        lines.append("| " + " | ".join(row) + " |")
    for method in ("copy_last_frame", "autoencoder"):
        if method in result:
            sec = result[method]
            row = [method, fmt(sec.get("fvd"), 1)] + [fmt(sec.get(m), d) for m, d in (("psnr", 2), ("ssim", 3), ("lpips", 3))]
            lines.append("| " + " | ".join(row) + " |")
    if result.get("paper_results"):
        pr = result["paper_results"]
        lines.append("| paper | " + " | ".join(fmt(pr.get(m), d) for m, d in (("fvd", 1), ("psnr", 2), ("ssim", 3), ("lpips", 3))) + " |")
    lines += ["", CARD_END]
    return "\n".join(lines)


def update_model_card(pipeline_dir: str, result: Dict[str, Any]) -> Path:
    """Write the results table (between markers) and ``model-index`` metadata into ``pipeline_dir/README.md``."""
    folder = Path(pipeline_dir)
    if not folder.is_dir():
        raise ValueError(f"--update_model_card needs a local pipeline folder, got {pipeline_dir!r}")
    path = folder / "README.md"
    meta = result["metadata"]
    proto = meta["protocol"]
    dataset_type = meta["benchmark"]
    dataset_name = f"{meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}"
    ext = result.get("extdm", {})
    evals = []

    def add(metric_type, name, value):
        evals.append(EvalResult(task_type="video-prediction", task_name="Video prediction", dataset_type=dataset_type,
                                dataset_name=dataset_name, dataset_split=proto["split"], metric_type=metric_type,
                                metric_name=name, metric_value=round(float(value), 4)))

    if "fvd_traj" in ext:
        add("fvd", f"FVD (mean over {meta['num_samples']} samples, fvd_traj)", ext["fvd_traj"]["mean"])
        add("fvd", "FVD (oracle best sample, fvd_best)", ext["fvd_best"])
    for metric in FRAME_METRICS:
        if metric in ext:
            add(metric, f"{metric.upper()} (oracle best of {meta['num_samples']})", ext[metric]["best_of_n"]["mean"])
            add(metric, f"{metric.upper()} (mean of samples)", ext[metric]["mean_of_samples"]["mean"])
    table = _results_table(result)
    if path.exists():
        card = ModelCard.load(path)
        data = card.data
        kept = [e for e in (data.eval_results or []) if e.dataset_type != dataset_type]
        data.eval_results = kept + evals
        data.model_name = data.model_name or folder.resolve().name
        text = card.text
        if CARD_START in text and CARD_END in text:
            head, rest = text.split(CARD_START, 1)
            text = head + table + rest.split(CARD_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + table + "\n"
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    else:
        data = ModelCardData(model_name=folder.resolve().name, library_name="diffusers",
                             tags=["video-prediction", "extdm"], eval_results=evals)
        text = f"# {folder.resolve().name}\n\nAn ExtDM video prediction pipeline (`extdm_diffusers.ExtDMPipeline`).\n\n{table}\n"
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    atomic_write_text(path, str(card))
    return path
