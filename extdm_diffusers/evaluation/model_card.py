"""The results in the pipeline's model card: a section between markers in ``README.md`` (the table, ExtDM against
the baselines per video, the paper's numbers where the protocol is the paper's, the pictures) and ``model-index``
metadata (``huggingface_hub.ModelCard``), other benchmarks' results kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..benchmarks import BENCHMARKS
from ..file_io import atomic_path, atomic_write_text
from ..pipelines.pipeline_extdm import DEFAULT_ROLLOUT_REFERENCE
from .config import FRAME_METRICS

CARD_START = "<!-- extdm-evaluation-results-start -->"
CARD_END = "<!-- extdm-evaluation-results-end -->"
#: pictures a pipeline folder may hold, embedded in this order when present (the quick start writes both)
CARD_IMAGES = {"predictions.gif": "predictions: condition | truth | prediction",
               "per_frame.png": "PSNR and SSIM per predicted frame"}
_DIGITS = {"fvd": 1, "psnr": 2, "ssim": 3, "lpips": 3}


def _pipeline_configs(folder: Path) -> Dict[str, Dict[str, Any]]:
    """The pipeline folder's ``flow_autoencoder`` and ``unet`` configs ({} where a file is missing)."""
    configs = {}
    for name in ("flow_autoencoder", "unet"):
        path = folder / name / "config.json"
        configs[name] = json.loads(path.read_text()) if path.is_file() else {}
    return configs


def paper_protocol_differences(result: Dict[str, Any], frame_size: Optional[int]) -> List[str]:
    """How this run's protocol differs from the paper's (the registry entry of its benchmark): benchmark,
    cond/pred frames, frame size, samples per video, sampler, occlusion maps, rollout. Empty when the paper's numbers
    compare."""
    meta = result["metadata"]
    proto = meta["protocol"]
    paper = BENCHMARKS.get(meta["benchmark"])
    if paper is None:
        return [f"{meta['benchmark']} is not one of the paper's benchmarks"]
    ours = {"cond→pred frames": f"{proto['cond_frames']}→{proto['pred_frames']}",
            "frame size": f"{frame_size}×{frame_size}" if frame_size else "unknown",
            "samples per video": str(meta["num_samples"])}
    theirs = {"cond→pred frames": f"{paper.evaluation.cond_frames}→{paper.evaluation.pred_frames}",
              "frame size": f"{paper.frame_size}×{paper.frame_size}",
              "samples per video": str(paper.evaluation.num_samples)}
    differences = [f"{key} {ours[key]} (the paper: {theirs[key]})" for key in ours if ours[key] != theirs[key]]
    if proto.get("paper_sampler") is False:  # recorded by runs that can pick another sampler
        differences.append(f"the sampler ({_sampler(proto)}; the paper: {paper.evaluation.num_inference_steps} "
                           f"steps of DDIM, eta {paper.evaluation.eta})")
    if "use_occlusion" in proto and bool(proto["use_occlusion"]) != paper.evaluation.use_occlusion:
        on_off = {True: "on", False: "off"}
        differences.append(f"occlusion maps {on_off[bool(proto['use_occlusion'])]} (the paper: "
                           f"{on_off[paper.evaluation.use_occlusion]})")
    if proto.get("rollout_reference", DEFAULT_ROLLOUT_REFERENCE) != DEFAULT_ROLLOUT_REFERENCE:
        differences.append(f"the rollout (rollout_reference {proto['rollout_reference']}; the paper: each window warps "
                           "the last frame decoded before it)")
    return differences


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        ci = value.get("ci95")
        return f"{value['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")
    return f"{value:.{digits}f}"


def _sampler(proto: Mapping[str, Any]) -> str:
    """The sampler the run used: ``scheduler``, ``sampler_preset`` and ``scheduler_settings`` where recorded
    (the settings hold eta where the scheduler takes one), else the protocol's DDIM steps and eta."""
    steps = f"{proto['num_inference_steps']} steps per window"
    if not proto.get("scheduler"):
        return f"{steps} of DDIM, eta {proto['eta']}"
    settings = proto.get("scheduler_settings")
    if isinstance(settings, Mapping):
        settings = "; ".join(f"{k}: {v}" for k, v in settings.items())
    return (f"sampler `{proto['scheduler']}`" + (f" (preset `{proto['sampler_preset']}`)" if proto.get("sampler_preset") else "")
            + (f" ({settings})" if settings else "") + f", {steps}")


def _results_section(result: Dict[str, Any], frame_size: Optional[int], images: Sequence[str]) -> str:
    meta = result["metadata"]
    proto = meta["protocol"]
    samples = meta["num_samples"]
    size = f" at {frame_size}×{frame_size}" if frame_size else ""
    calls = proto.get("denoiser_calls_per_video")
    lines = [
        CARD_START,
        f"## Evaluation results: {meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}{size}",
        "",
        f"{meta['num_videos']} test clips, {samples} sample{'s' if samples != 1 else ''} each, {_sampler(proto)}"
        + (f", {calls} denoiser calls per video" if calls else "")
        + f", seed {proto['seed']}, occlusion {'on' if proto['use_occlusion'] else 'off'} "
        "(`extdm_diffusers.evaluation`, see docs/evaluation.md). ± is the 95% CI over videos."
        + (" best of N is an oracle (the sample closest to the ground truth, per metric)." if samples > 1 else ""),
        "",
        "| method | FVD | PSNR | SSIM | LPIPS |",
        "| --- | --- | --- | --- | --- |",
    ]
    ext = result.get("extdm", {})
    rows = [(f"ExtDM, mean of {samples} samples" if samples > 1 else "ExtDM (one sample per clip)", "mean_of_samples")]
    if samples > 1:  # with one sample the oracle pick is that sample: the rows would repeat
        rows.insert(0, (f"ExtDM, best of {samples} (oracle)", "best_of_n"))
    for label, key in rows:
        fvd = ext.get("fvd_traj") if key == "mean_of_samples" else ext.get("fvd_best")
        which = " (fvd_traj)" if key == "mean_of_samples" else " (fvd_best)"
        row = [label, _fmt(fvd, 1) + (which if fvd is not None else "")]
        row += [_fmt(ext.get(m, {}).get(key), _DIGITS[m]) for m in FRAME_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    for method, label in (("copy_last_frame", "copy last frame"), ("autoencoder", "autoencoder (ceiling)")):
        if method in result:
            sec = result[method]
            lines.append("| " + " | ".join([label, _fmt(sec.get("fvd"), 1)]
                                           + [_fmt(sec.get(m), _DIGITS[m]) for m in FRAME_METRICS]) + " |")
    paper = result.get("paper_results") or {}
    differences = paper_protocol_differences(result, frame_size) if paper else []
    if paper and not differences:
        lines.append("| paper | " + " | ".join(_fmt(paper.get(m), _DIGITS[m]) for m in ("fvd", *FRAME_METRICS)) + " |")
    paired = result.get("paired_differences", {})
    if paired:
        lines += ["", "ExtDM minus each baseline, per video (mean [paired 95% interval]; a win where it excludes zero):", ""]
        for method, per_metric in paired.items():
            parts = []
            for metric, diff in per_metric.items():
                d = _DIGITS[metric]
                interval = (f" [{diff['interval'][0]:+.{d}f}, {diff['interval'][1]:+.{d}f}]" if diff.get("interval") else "")
                parts.append(f"{metric.upper()} {diff['mean']:+.{d}f}{interval} {diff['verdict']}")
            lines.append(f"- {method.replace('_', ' ')}: " + "; ".join(parts))
    if paper and differences:
        shown = ", ".join(f"{m.upper()} {_fmt(v, _DIGITS.get(m, 3))}" for m, v in paper.items())
        lines += ["", f"The paper's numbers ({shown}) are not shown: this protocol differs in " + "; ".join(differences) + "."]
    for name in images:
        lines += ["", f"![{CARD_IMAGES.get(name, name)}]({name})"]
    lines += ["", CARD_END]
    return "\n".join(lines)


def _copy_images(folder: Path, images: Sequence[Union[str, Path]]) -> List[str]:
    """Copy ``images`` into ``folder`` (the card links them by relative path, and an upload of the folder carries
    them); returns the names to embed: those given, then the ``CARD_IMAGES`` the folder holds."""
    names = []
    for image in images:
        image = Path(image)
        if not image.is_file():
            raise FileNotFoundError(f"`images`: {image} does not exist")
        target = folder / image.name
        if image.resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(image, tmp)
        names.append(image.name)
    names += [name for name in CARD_IMAGES if name not in names and (folder / name).is_file()]
    return sorted(names, key=lambda n: list(CARD_IMAGES).index(n) if n in CARD_IMAGES else len(CARD_IMAGES))


def update_model_card(pipeline_dir: str, result: Dict[str, Any], images: Sequence[Union[str, Path]] = ()) -> Path:
    """Write the results section (between markers) and ``model-index`` metadata into ``pipeline_dir/README.md``;
    ``images`` (e.g. ``per_frame.png``) are copied into the folder and embedded, as are ``predictions.gif`` and
    ``per_frame.png`` found there."""
    folder = Path(pipeline_dir)
    if not folder.is_dir():
        raise ValueError(f"--update_model_card needs a local pipeline folder, got {pipeline_dir!r}")
    path = folder / "README.md"
    meta = result["metadata"]
    proto = meta["protocol"]
    configs = _pipeline_configs(folder)
    frame_size = meta.get("frame_size") or configs["flow_autoencoder"].get("sample_size")
    dataset_type = meta["benchmark"]
    dataset_name = f"{meta['benchmark_display_name']} {proto['cond_frames']}→{proto['pred_frames']}"
    ext = result.get("extdm", {})
    samples = meta["num_samples"]
    evals = []

    def add(metric_type, name, value):
        evals.append(EvalResult(task_type="video-prediction", task_name="Video prediction", dataset_type=dataset_type,
                                dataset_name=dataset_name, dataset_split=proto["split"], metric_type=metric_type,
                                metric_name=name, metric_value=round(float(value), 4)))

    if "fvd_traj" in ext:
        add("fvd", f"FVD (mean over {samples} samples, fvd_traj)" if samples > 1 else "FVD", ext["fvd_traj"]["mean"])
        if samples > 1:
            add("fvd", "FVD (oracle best sample, fvd_best)", ext["fvd_best"])
    for metric in FRAME_METRICS:
        if metric in ext:
            if samples > 1:
                add(metric, f"{metric.upper()} (oracle best of {samples})", ext[metric]["best_of_n"]["mean"])
            add(metric, f"{metric.upper()} (mean of samples)" if samples > 1 else metric.upper(),
                ext[metric]["mean_of_samples"]["mean"])
    section = _results_section(result, frame_size, _copy_images(folder, images))
    if path.exists():
        card = ModelCard.load(path)
        data = card.data
        kept = [e for e in (data.eval_results or []) if e.dataset_type != dataset_type]
        data.eval_results = kept + evals
        data.model_name = data.model_name or folder.resolve().name
        text = card.text
        if CARD_START in text and CARD_END in text:
            head, rest = text.split(CARD_START, 1)
            text = head + section + rest.split(CARD_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        data = ModelCardData(model_name=folder.resolve().name, library_name="diffusers",
                             tags=["video-prediction", "extdm"], eval_results=evals)
        text = f"# {folder.resolve().name}\n\nAn ExtDM video prediction pipeline (`extdm_diffusers.ExtDMPipeline`).\n\n"
        if configs["flow_autoencoder"].get("sample_size") and configs["unet"].get("num_cond_frames"):
            from ..training.hub import usage_example

            text += usage_example(configs["flow_autoencoder"], configs["unet"]) + "\n\n"
        text += f"{section}\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    atomic_write_text(path, str(card))
    return path
