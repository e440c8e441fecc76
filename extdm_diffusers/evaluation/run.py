"""The run: resolve the protocol, read the clips, evaluate the clips not yet committed (sharded over the processes
of ``accelerate launch`` or ``torchrun`` through accelerate's ``PartialState``), then, on the main process, compute
``metrics.json`` from the committed files only, so one process, several and a resumed run give the same numbers."""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import diffusers
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..cpu_features import warn_if_slow_cpu_bf16
from ..data import load_video_dataset
from ..file_io import atomic_write_text
from ..pipelines import DEFAULT_ROLLOUT_REFERENCE, ExtDMPipeline
from ..schedulers import make_scheduler
from . import records
from .config import METHODS, EvaluationConfig, EvaluationError
from .model_card import update_model_card
from .per_clip import evaluate_clip, load_metric_models
from .plots import write_per_frame_plot
from .statistics import CI_NOTE, FVD_NOTE, ORACLE_NOTE, PAIRED_NOTE, aggregate

#: a full protocol run keeps the other processes waiting at a barrier for hours while the slowest finishes
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=72)


def _device(config: EvaluationConfig, state: PartialState) -> torch.device:
    """``--device``, or ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if config.device:
        device = torch.device(config.device)
        if device.type == "cuda" and device.index is None and state.num_processes > 1:
            device = torch.device("cuda", state.local_process_index)
        return device
    return torch.device("cuda", state.local_process_index) if torch.cuda.is_available() else torch.device("cpu")


def _process_state(config: EvaluationConfig) -> PartialState:
    """The processes of this run. A CPU run uses gloo (NCCL would want one GPU per process); processes only
    wait for each other and exchange one flag."""
    cpu = torch.device(config.device).type == "cpu" if config.device else not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=_PROCESS_GROUP_TIMEOUT)


def _versions() -> Dict[str, str]:
    from .. import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "extdm_diffusers": __version__}


def _check_clip_lengths(clips, data, protocol, dataset_dir: str) -> None:
    """Every evaluated video holds the protocol's cond + pred frames: checked before any model loads, not at the
    first short clip."""
    from ..data.video_schema import NUM_FRAMES_COLUMN

    needed = protocol.cond_frames + protocol.pred_frames
    lengths = data[NUM_FRAMES_COLUMN]
    short = sorted({clips.video_index(c) for c in range(len(clips)) if lengths[clips.video_index(c)] < needed})
    if short:
        raise EvaluationError(
            f"--dataset_dir {dataset_dir}: {len(short)} of the evaluated videos have fewer than the {needed} frames of "
            f"the benchmark's evaluation.cond_frames + evaluation.pred_frames ({protocol.cond_frames} + "
            f"{protocol.pred_frames}; --pred_frames overrides the horizon), e.g. video {short[0]} has {lengths[short[0]]}")


def evaluate(config: EvaluationConfig) -> Optional[Dict[str, Any]]:
    """Run (or resume) the evaluation; returns the metrics on the main process (None on the others, or when
    ``max_videos`` stopped the run early)."""
    started = time.time()
    bench = config.registry_benchmark()
    protocol = config.protocol()
    settings = config.run_settings()
    config.check()
    if config.update_model_card and not Path(config.pipeline).is_dir():
        raise EvaluationError(f"--update_model_card needs a local pipeline folder, got {config.pipeline!r}")
    state = _process_state(config)
    out = Path(config.output_dir)
    device = _device(config, state)

    # 1. The clips (first, so that a wrong dataset leaves nothing behind), then the run config: written once,
    # checked on every (re)start.
    try:
        data = load_video_dataset(config.dataset_dir, protocol.split)
        clips = bench.clip_dataset(data, protocol.split, num_frames=protocol.cond_frames + protocol.pred_frames,
                                   num_videos=protocol.num_videos)
    except (KeyError, FileNotFoundError) as e:
        raise EvaluationError(f"cannot read split {protocol.split!r} of {config.dataset_dir}: {e}") from e
    _check_clip_lengths(clips, data, protocol, config.dataset_dir)
    with state.main_process_first():
        if state.is_main_process:
            records.start_run(out, settings)
        else:
            records.check_run_config(out, settings)
    done = records.read_records(out)
    state.wait_for_everyone()  # every process has read the same `done` before any commits a clip

    # 2. Models, for the clips still to do. Any split of them works: each clip has its own seeds and its own line.
    todo = [i for i in range(len(clips)) if i not in done]
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    i3d = lpips_model = pipe = None
    if mine:
        i3d, lpips_model = load_metric_models(config, device)
        pipe = ExtDMPipeline.from_pretrained(config.pipeline).to(device)
        dtype = getattr(torch, config.dtype)
        if dtype != pipe.unet.dtype:  # (diffusers warns on every dtype cast, even a no-op one)
            pipe = pipe.to(dtype=dtype)
        warn_if_slow_cpu_bf16(device, dtype, config.autocast and getattr(torch, config.autocast), what="--dtype/--autocast")
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(config.sampler().scheduler, pipe.scheduler.config)
        if pipe.num_cond_frames != protocol.cond_frames:
            raise EvaluationError(f"the pipeline conditions on {pipe.num_cond_frames} frames; the {bench.name} "
                                  f"protocol on {protocol.cond_frames}")

    # 3. Clips, one at a time; each is committed (npz, then its line) as soon as it is finished.
    lines = records.lines_file(out, state.process_index, state.num_processes)
    sharded = state.num_processes > 1
    stopped = False
    with tqdm(total=len(mine) * protocol.num_samples, unit="sample", disable=None, position=state.process_index,
              desc=f"evaluating (rank {state.process_index})" if sharded else "evaluating") as progress:
        for count, position in enumerate(mine):
            if config.max_videos is not None and count >= config.max_videos:
                stopped = True
                break
            item = clips[position]
            arrays = evaluate_clip(pipe, item, position, protocol, config, i3d, lpips_model, device, progress)
            records.commit_clip(out, lines, position, item, arrays)
    stopped = any(gather_object([stopped]))
    state.wait_for_everyone()

    # 4. The main process gathers everything that was committed and computes the numbers.
    result = None
    if not stopped and state.is_main_process:
        done = records.read_records(out)
        records.merge_lines(out, done, len(clips))
        arrays = [records.load_arrays(out, done[i]) for i in range(len(clips))]
        result = _final_metrics(config, arrays, clips.video_indices, state.num_processes, started)
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        write_per_frame_plot(result, out / "per_frame.png")
        if config.update_model_card:
            update_model_card(config.pipeline, result, images=[out / "per_frame.png"])
    if not stopped:
        state.wait_for_everyone()
    if sharded:
        state.destroy_process_group()
    return result


def _window_frames(pipeline: str) -> int:
    """Frames the pipeline's denoiser predicts per call: longer horizons roll out window by window."""
    from ..models import ExtDMUNet3DModel

    return int(ExtDMUNet3DModel.load_config(pipeline, subfolder="unet")["num_pred_frames"])


def _rollout_reference(pipeline: str) -> str:
    """The frame the pipeline's later windows warp (``ExtDMPipeline``'s ``rollout_reference``, in model_index.json)."""
    return ExtDMPipeline.load_config(pipeline).get("rollout_reference", DEFAULT_ROLLOUT_REFERENCE)


def _frame_shape(pipeline: str, bench) -> Dict[str, int]:
    """The frame size and channels of the pipeline's autoencoder (a benchmark given by name may record others)."""
    from ..models import FlowAutoencoder

    config = FlowAutoencoder.load_config(pipeline, subfolder="flow_autoencoder")
    return {"frame_size": int(config.get("sample_size") or bench.frame_size),
            "num_channels": int(config.get("num_channels", bench.num_channels))}


def _final_metrics(config: EvaluationConfig, arrays: List[Dict[str, np.ndarray]], dataset_rows: List[int],
                   processes: int, started: float) -> Dict[str, Any]:
    bench = config.registry_benchmark()
    protocol = config.protocol()
    methods = ("extdm",) if config.no_baselines else METHODS
    result: Dict[str, Any] = {
        "metadata": {
            "benchmark": bench.name,
            "benchmark_display_name": bench.display_name,
            "protocol": {**config.protocol_record(),
                         "denoiser_calls_per_video": config.denoiser_calls_per_video(_window_frames(config.pipeline)),
                         "rollout_reference": _rollout_reference(config.pipeline)},
            "registry_protocol": dataclasses.asdict(bench.evaluation),
            "num_videos": len(arrays),
            "num_samples": protocol.num_samples,
            **_frame_shape(config.pipeline, bench),
            "window_frames": _window_frames(config.pipeline),
            "seed": protocol.seed,
            "sample_seed_rule": "torch.Generator('cpu').manual_seed(seed + clip * num_samples + sample)",
            "pipeline": str(config.pipeline),
            "dataset_dir": str(config.dataset_dir),
            "dataset_rows": [int(i) for i in dataset_rows],
            "dtype": config.dtype,
            "autocast": config.autocast,
            "metrics": {"fvd": not config.no_fvd, "i3d": config.i3d, "lpips": not config.no_lpips,
                        "lpips_weights": config.lpips_weights},
            "frames": {"psnr_ssim_lpips": "predicted frames only", "fvd": "ground-truth condition + predicted frames"},
            "versions": _versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "processes": processes,
            "elapsed_seconds_last_session": round(time.time() - started, 1),
        },
        "notes": {"sampler": config.sampler_note(), "best_of_n": ORACLE_NOTE, "fvd": FVD_NOTE, "std_ci95": CI_NOTE, "paired_differences": PAIRED_NOTE,
                  "copy_last_frame": "baseline: the last observed frame repeated",
                  "autoencoder": "baseline: the flow autoencoder's reconstruction of the true future frames from their "
                                 "true motion w.r.t. the last observed frame (the ceiling of the motion representation); "
                                 "same use_occlusion"},
        "paper_results": dict(bench.paper_results),
    }
    result.update(aggregate(arrays, methods))
    return result
