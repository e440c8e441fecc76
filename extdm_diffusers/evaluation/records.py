"""A run's committed files, which make it resumable: the settings file, each finished clip's
``features/clip_XXXXX.npz`` (written atomically) and its ``per_video*.jsonl`` line (appended last: the line is
the commit), and the merge of the per-process line files."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..file_io import atomic_write_bytes, atomic_write_text
from .config import FRAME_METRICS, METHODS, EvaluationError

RUN_CONFIG = "run_config.json"
LINES = "per_video.jsonl"


def lines_file(out: Path, process_index: int, num_processes: int) -> Path:
    """The line file one process appends to: ``per_video.jsonl``, or ``per_video.rankR.jsonl`` when sharded."""
    return out / (LINES if num_processes == 1 else f"per_video.rank{process_index}.jsonl")


def features_file(position: int) -> str:
    """A clip's arrays, relative to the output folder (as its line names them)."""
    return f"features/clip_{position:05d}.npz"


def start_run(out: Path, settings: Dict[str, Any]) -> None:
    """Create the folders and write ``run_config.json``, or check it against ``settings`` on a restart; drop a
    line torn by a killed run, so appends start on a fresh line. The main process does this alone."""
    (out / "features").mkdir(parents=True, exist_ok=True)
    (out / "gifs").mkdir(exist_ok=True)
    if (out / RUN_CONFIG).exists():
        check_run_config(out, settings)
    else:
        atomic_write_text(out / RUN_CONFIG, json.dumps(settings, indent=2) + "\n")
    for path in out.glob("per_video*.jsonl"):
        data = path.read_bytes()
        good = data[: data.rfind(b"\n") + 1]
        if good != data:
            atomic_write_bytes(path, good)


def check_run_config(out: Path, settings: Dict[str, Any]) -> None:
    """Refuse to continue a run made with other settings, naming each difference."""
    saved = json.loads((out / RUN_CONFIG).read_text())
    diffs = [f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}" for k in sorted(set(saved) | set(settings))
             if saved.get(k) != settings.get(k)]
    if diffs:
        raise EvaluationError(
            f"{out} holds an evaluation run with different settings; use another --output_dir or the same "
            "settings. Differences: " + "; ".join(diffs)
        )


def read_records(out: Path) -> Dict[int, Dict[str, Any]]:
    """The committed lines of every process, by clip."""
    done: Dict[int, Dict[str, Any]] = {}
    for name in sorted(out.glob("per_video*.jsonl")):
        with open(name) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    done[record["clip"]] = record
    return done


def record_line(position: int, item: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """A clip's line: where it comes from, per method the per-sample mean of each metric, and its arrays' file."""
    record: Dict[str, Any] = {"clip": position, "dataset_row": int(item["video_index"]), "id": item["id"],
                              "start_frame": int(item["start_frame"])}
    for method in METHODS:
        values = {}
        for metric in FRAME_METRICS:
            key = f"{method}/{metric}"
            if key in arrays:
                mean = arrays[key].mean(axis=-1)
                values[metric] = mean.tolist() if mean.ndim else float(mean)
        if values:
            record[method] = values
    record["features"] = features_file(position)
    return record


def commit_clip(out: Path, lines: Path, position: int, item: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """The arrays first (atomic), then the line (flushed and fsynced): a clip with a line is complete."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k.replace("/", "__"): v for k, v in arrays.items()})
    atomic_write_bytes(out / features_file(position), buffer.getvalue())
    with open(lines, "a") as f:
        f.write(json.dumps(record_line(position, item, arrays)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_arrays(out: Path, record: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """A committed clip's arrays, keyed ``method/name`` as :func:`commit_clip` got them."""
    with np.load(out / record["features"]) as data:
        return {k.replace("__", "/"): data[k] for k in data.files}


def merge_lines(out: Path, done: Dict[int, Dict[str, Any]], num_clips: int) -> None:
    """All lines, in clip order, into ``per_video.jsonl``; the per-process files go."""
    missing = [i for i in range(num_clips) if i not in done]
    if missing:
        raise RuntimeError(f"clips {missing[:10]}... were not evaluated")
    atomic_write_text(out / LINES, "".join(json.dumps(done[i]) + "\n" for i in range(num_clips)))
    for path in out.glob("per_video.rank*.jsonl"):
        os.remove(path)
