"""Training checkpoints: ``checkpoint-STEP`` folders written atomically (``accelerator.save_state``, a
``training_state.json`` and a completion marker), pruned to ``--checkpoints_total_limit``, found and checked
for ``--resume_from_checkpoint``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from diffusers.utils import logging

from .arguments import TrainingArgumentError

logger = logging.get_logger("extdm_diffusers.training")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
TRAINING_STATE_FILE = "training_state.json"
# what accelerate's save_state names the prepared LR schedule (checkpoints of older versions lack it)
SCHEDULER_FILE = "scheduler.bin"


def checkpoint_step(path: Path) -> Optional[int]:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> List[Path]:
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def save_checkpoint(accelerator, output_dir: str, global_step: int, state: Dict[str, Any], total_limit: Optional[int]) -> Path:
    """``accelerator.save_state`` into ``checkpoint-STEP.tmp``, a ``training_state.json`` and a completion
    marker, then an atomic rename to ``checkpoint-STEP``; older checkpoints beyond ``total_limit`` are removed."""
    final = Path(output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
    temporary = Path(output_dir, f"{CHECKPOINT_PREFIX}{global_step}.tmp")
    if accelerator.is_main_process:
        if total_limit is not None:
            existing = [p for p in list_checkpoints(output_dir) if p != final]
            for old in existing[: max(0, len(existing) - total_limit + 1)]:
                logger.info(f"removing old checkpoint {old}")
                shutil.rmtree(old)
        if temporary.exists():
            shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        Path(temporary, TRAINING_STATE_FILE).write_text(json.dumps(dict(state, global_step=global_step), indent=2))
        Path(temporary, COMPLETE_MARKER).write_text("complete\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        logger.info(f"saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir: str, resume: Optional[str]) -> Optional[Path]:
    """The folder ``--resume_from_checkpoint`` names ("latest": the newest ``checkpoint-N`` of --output_dir;
    None when there is none yet), checked complete before anything is loaded."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}; starting from scratch")
            return None
        path = found[-1]
    else:
        path = Path(resume)
        if not path.is_dir():
            path = Path(output_dir, resume)
        if not path.is_dir():
            raise TrainingArgumentError(f"--resume_from_checkpoint: no checkpoint folder {resume!r}")
    if not Path(path, COMPLETE_MARKER).is_file() or not Path(path, TRAINING_STATE_FILE).is_file():
        raise TrainingArgumentError(
            f"--resume_from_checkpoint: {path} is incomplete or corrupt (no {COMPLETE_MARKER} / {TRAINING_STATE_FILE}: "
            "the run probably died while writing it); delete it or name an earlier checkpoint"
        )
    if not Path(path, SCHEDULER_FILE).is_file():
        raise TrainingArgumentError(
            f"--resume_from_checkpoint: {path} has no {SCHEDULER_FILE}: it was written by an extdm-diffusers version "
            "that saved the LR schedule as a custom object; resume it with that version"
        )
    return path


def load_checkpoint(accelerator, path: Path) -> Dict[str, Any]:
    """Load ``path`` into the prepared objects; its ``training_state.json``."""
    state = json.loads(Path(path, TRAINING_STATE_FILE).read_text())
    accelerator.load_state(str(path))
    logger.info(f"resumed from {path} at step {state['global_step']}")
    return state
