"""What ``train_flow_ae.py`` and ``train_dm.py`` share: arguments, input checks, deterministic data order,
seeded noise, checkpoints (save, prune, resume), model cards and the Hub upload.

Determinism: every random draw of training is a function of ``(seed, epoch, position)`` or ``(seed, step,
process)``: the data order and each item's augmentation (``EpochBatchSampler`` + ``SeededItems``) and the
noise, timesteps and transforms of a step (``step_generator``). A run resumed from a checkpoint therefore sees
exactly the batches and noise of an uninterrupted run with the same seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from diffusers.utils import logging

logger = logging.get_logger("extdm_diffusers.training")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"
TRAINING_STATE_FILE = "training_state.json"
METRICS_FILE = "metrics.jsonl"


LR_SCHEDULERS = ("multistep", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class TrainingArgumentError(ValueError):
    """A bad command-line value, found before training starts; the message names the argument."""


# ----------------------------------------------------------------------------------------------------------
# arguments
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both scripts take (same names as diffusers' training examples)."""
    parser.add_argument("--benchmark", required=True, help="smmnist, kth, bair, cityscapes or ucf101 (the registry)")
    parser.add_argument("--dataset_dir", required=True, help="a dataset_builders/ output folder (save_to_disk) or a Hub dataset id")
    parser.add_argument("--output_dir", required=True, help="where the model, checkpoints and validation go")
    parser.add_argument("--model_config", default=None,
                        help="JSON string or path to a JSON file deep-merged over the benchmark's model config")
    parser.add_argument("--train_batch_size", type=int, default=None,
                        help="batch per process (default: the benchmark's global batch / processes / accumulation)")
    parser.add_argument("--max_train_steps", type=int, default=None,
                        help="optimizer steps (default: the original's epochs x ceil(repeats x videos / global batch))")
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the benchmark's")
    parser.add_argument("--lr_scheduler", default="multistep", choices=LR_SCHEDULERS,
                        help="multistep: the original's MultiStepLR at the benchmark's milestones; the others are "
                             "diffusers.optimization.get_scheduler's, over --max_train_steps")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="warm-up optimizer steps (not with multistep)")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_grad_norm", type=float, default=None, help="gradient clipping (the original: none)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                        help="default: accelerate config's (fp32 unless configured)")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--use_ema", action="store_true", help="keep an EMA of the weights and save it (the original: none)")
    parser.add_argument("--ema_decay", type=float, default=0.9999)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    parser.add_argument("--report_to", choices=["tensorboard", "wandb", "none"], default="none",
                        help="tracker (metrics also go to OUTPUT_DIR/metrics.jsonl)")
    parser.add_argument("--logging_dir", default="logs", help="tracker folder, relative to --output_dir")
    parser.add_argument("--validation_steps", type=int, default=1000, help="validate and save the model every N steps (and at the end)")
    parser.add_argument("--num_validation_videos", type=int, default=4)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: the benchmark's (1234)")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--logging_steps", type=int, default=10, help="log the loss every N steps")


def check_common_arguments(args: argparse.Namespace) -> None:
    for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps",
                 "checkpoints_total_limit", "validation_steps", "num_validation_videos", "logging_steps"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise TrainingArgumentError(f"--{name} must be >= 1, got {value}")
    if args.dataloader_num_workers < 0:
        raise TrainingArgumentError(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise TrainingArgumentError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.lr_warmup_steps < 0:
        raise TrainingArgumentError(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    if args.lr_scheduler in ("multistep", "constant") and args.lr_warmup_steps:
        raise TrainingArgumentError(f"--lr_warmup_steps: --lr_scheduler {args.lr_scheduler} has no warm-up; use "
                                    "constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingArgumentError("--push_to_hub needs --hub_model_id REPO")
    if not 0 < args.ema_decay < 1:
        raise TrainingArgumentError(f"--ema_decay must lie in (0, 1), got {args.ema_decay}")
    if args.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                raise TrainingArgumentError(
                    "--report_to tensorboard needs tensorboard: pip install tensorboard (or use --report_to wandb|none)"
                ) from None


def make_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, training, max_train_steps: int):
    """The learning-rate schedule, stepped once per optimizer step: the original's MultiStepLR at the benchmark's
    milestones, or one of diffusers' schedules over ``max_train_steps``."""
    if args.lr_scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(training.lr_milestones), gamma=training.lr_gamma)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=max_train_steps)


def resolve_benchmark(name: str):
    from ..benchmarks import get_benchmark

    try:
        return get_benchmark(name)
    except (KeyError, TypeError) as error:
        raise TrainingArgumentError(f"--benchmark: {error.args[0]}") from None


def load_model_config(value: Optional[str]) -> Dict[str, Any]:
    """``--model_config``: a JSON object, inline or in a file."""
    if value is None:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        if not os.path.isfile(value):
            raise TrainingArgumentError(f"--model_config: {value!r} is neither a JSON object nor a JSON file")
        text = Path(value).read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingArgumentError(f"--model_config: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise TrainingArgumentError(f"--model_config must be a JSON object, got {type(config).__name__}")
    return config


def check_config_keys(config: Mapping[str, Any], allowed: Mapping[str, Any], what: str, prefix: str = "") -> None:
    """Raise naming every key of ``config`` that ``allowed`` lacks; dict values in both are checked recursively
    (``allowed`` values that are dicts describe the nested keys)."""
    unknown = sorted(prefix + key for key in config if key not in allowed)
    if unknown:
        raise TrainingArgumentError(
            f"--model_config: unknown {what} keys {unknown}; known keys: {sorted(prefix + k for k in allowed)}"
        )
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(allowed[key], dict):
            check_config_keys(value, allowed[key], what, prefix=f"{prefix}{key}.")


def constructor_keys(cls) -> Dict[str, Any]:
    import inspect

    return {name: None for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")}


# ----------------------------------------------------------------------------------------------------------
# data
def dataset_video_lengths(dataset) -> List[int]:
    from ..data.video_schema import NUM_FRAMES_COLUMN

    return [int(n) for n in dataset[NUM_FRAMES_COLUMN]] if NUM_FRAMES_COLUMN in dataset.column_names else []


def check_clip_lengths(dataset, needed: int, split: str, what: str) -> None:
    """Every video of ``dataset`` holds at least ``needed`` frames, else an error naming --dataset_dir."""
    lengths = dataset_video_lengths(dataset)
    if not lengths:
        raise TrainingArgumentError(f"--dataset_dir: the {split!r} split has no videos (or no num_frames column)")
    short = [i for i, n in enumerate(lengths) if n < needed]
    if short:
        raise TrainingArgumentError(
            f"--dataset_dir: {len(short)} of {len(lengths)} {split!r} videos have fewer than the {needed} frames "
            f"{what} needs (e.g. video {short[0]} has {lengths[short[0]]})"
        )


def first_frame_shape(dataset) -> Tuple[int, int, int]:
    """(H, W, C) of the first stored frame."""
    from ..data.clips import _open_png
    from ..data.video_schema import VIDEO_COLUMN

    row = dataset.with_format("arrow")[0]
    frame = _open_png(row.column(VIDEO_COLUMN)[0].values.field("bytes")[0].as_py())
    return tuple(frame.shape)  # type: ignore[return-value]


def check_frame_shape(dataset, benchmark, size: Optional[int], channels: int, model_arg: str) -> None:
    """The frames the models will see (after the benchmark's crop) must match the autoencoder's size and channels."""
    h, w, c = first_frame_shape(dataset)
    if benchmark.crop_width is not None:
        w = min(w, benchmark.crop_width)
    if size is not None and (h, w) != (size, size):
        raise TrainingArgumentError(
            f"{model_arg}: the autoencoder takes {size}x{size} frames (sample_size) but --dataset_dir holds {h}x{w} "
            "frames; rebuild the dataset at that size or set sample_size to match"
        )
    if c not in (1, channels) and not (c == 1 and channels == 3):
        raise TrainingArgumentError(f"{model_arg}: the autoencoder takes {channels} channels but --dataset_dir frames have {c}")


def default_batch_size(global_batch: int, num_processes: int, accumulation: int) -> int:
    return max(1, global_batch // (num_processes * accumulation))


def default_max_train_steps(num_epochs: int, num_repeats: int, num_videos: int, global_batch: int) -> int:
    """The original's implied steps: epochs x ceil(repeats x N / batch)."""
    return num_epochs * math.ceil(num_repeats * num_videos / global_batch)


def seed_sequence(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: different tuples give unrelated seeds)."""
    return int(np.random.SeedSequence([int(v) % (2**63) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochBatchSampler(Sampler):
    """Batches of ``(item, item_seed)`` for one process: epoch ``e`` is a permutation of ``num_repeats x N``
    items (``DatasetRepeater``-style repeats) drawn from ``(seed, e)``, cut into global batches of
    ``batch_size x num_processes`` (the last one is topped up from the start of the permutation, so every
    batch is full and every process gets the same count); process ``rank`` takes its slice. ``skip`` batches
    are left out at the start (resuming mid-epoch)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, num_repeats: int = 1,
                 num_processes: int = 1, rank: int = 0, skip: int = 0):
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, seed, epoch
        self.num_repeats, self.num_processes, self.rank, self.skip = num_repeats, num_processes, rank, skip

    @staticmethod
    def batches_per_epoch(num_items: int, num_repeats: int, global_batch: int) -> int:
        return math.ceil(num_items * num_repeats / global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch(self.num_items, self.num_repeats, self.batch_size * self.num_processes) - self.skip

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        total = self.num_items * self.num_repeats
        generator = torch.Generator().manual_seed(seed_sequence(self.seed, self.epoch, 1))
        order = torch.randperm(total, generator=generator).tolist()
        global_batch = self.batch_size * self.num_processes
        num_batches = self.batches_per_epoch(self.num_items, self.num_repeats, global_batch)
        order = order + order[: num_batches * global_batch - total]
        for b in range(self.skip, num_batches):
            start = b * global_batch + self.rank * self.batch_size
            yield [(order[p] % self.num_items, seed_sequence(self.seed, self.epoch, 2, p))
                   for p in range(start, start + self.batch_size)]


class SeededItems(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` drawn with torch's RNG seeded by ``seed``: random starts,
    pair distances and augmentations no longer depend on workers or on what ran before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def micro_batches(dataset: Dataset, batch_size: int, seed: int, start: int, num_repeats: int, num_processes: int,
                  rank: int, num_workers: int) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Endless ``(micro_batch_index, batch)`` from micro-batch ``start`` on, epoch after epoch."""
    per_epoch = EpochBatchSampler.batches_per_epoch(len(dataset), num_repeats, batch_size * num_processes)
    index = start
    while True:
        epoch, position = divmod(index, per_epoch)
        sampler = EpochBatchSampler(len(dataset), batch_size, seed, epoch, num_repeats, num_processes, rank, skip=position)
        loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=num_workers,
                            persistent_workers=False)
        for batch in loader:
            yield index, batch
            index += 1


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    """The generator of one optimizer step's noise, timesteps and transforms on process ``rank``; torch's
    global RNG is seeded from the same triple (for anything inside the models that draws from it)."""
    value = seed_sequence(seed, step, rank, 3)
    torch.manual_seed(seed_sequence(seed, step, rank, 4))
    return torch.Generator(device=device).manual_seed(value)


# ----------------------------------------------------------------------------------------------------------
# checkpoints
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
    return path


def load_checkpoint(accelerator, path: Path) -> Dict[str, Any]:
    state = json.loads(Path(path, TRAINING_STATE_FILE).read_text())
    accelerator.load_state(str(path))
    logger.info(f"resumed from {path} at step {state['global_step']}")
    return state


# ----------------------------------------------------------------------------------------------------------
# logging, model cards, Hub
class MetricsLog:
    """Metrics to the accelerate trackers and, on the main process, to OUTPUT_DIR/metrics.jsonl."""

    def __init__(self, accelerator, output_dir: str):
        self.accelerator = accelerator
        self.path = Path(output_dir, METRICS_FILE)

    def log(self, values: Dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        if self.accelerator.trackers:
            self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(dict(values, step=step)) + "\n")


def log_videos(accelerator, tag: str, gif_paths: Sequence[str], step: int) -> None:
    """Validation GIFs to wandb (as videos); tensorboard gets the metrics only."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Video(p, format="gif") for p in gif_paths]}, step=step)


def command_line(argv: Optional[Sequence[str]], script: str) -> str:
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    return "accelerate launch " + script + " " + " ".join(shlex.quote(a) for a in argv)


def write_model_card(folder: str, *, title: str, benchmark, dataset: str, body: str, args: argparse.Namespace,
                     command: str, extra_tags: Sequence[str] = ()) -> None:
    """README.md with a Hub model card (library diffusers, tags extdm / video-prediction)."""
    from huggingface_hub import ModelCard, ModelCardData

    hyperparameters = "\n".join(f"- `{k}`: `{v}`" for k, v in sorted(vars(args).items()) if k != "hub_token")
    data = ModelCardData(
        library_name="diffusers",
        tags=["extdm", "video-prediction", *extra_tags],
        datasets=[dataset] if dataset and not os.path.isdir(dataset) else None,
        license="apache-2.0",
    )
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body}\n\n"
        f"## Training\n\nBenchmark: {benchmark.display_name} (`{benchmark.name}`), data: `{dataset}`.\n\n"
        f"```bash\n{command}\n```\n\n### Hyperparameters\n\n{hyperparameters}\n"
    )
    ModelCard(content).save(os.path.join(folder, "README.md"))


def push_folder(args: argparse.Namespace, folder: str, message: str) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(args.hub_model_id, exist_ok=True, token=args.hub_token).repo_id
    upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, token=args.hub_token,
                  ignore_patterns=["checkpoint-*", "checkpoint-*/**", "logs/**", "*.tmp/**"])


def make_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir))
    kwargs = {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    return Accelerator(log_with=None if args.report_to == "none" else args.report_to, project_config=project, **kwargs)


def weight_dtype(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def tracker_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Tracker-safe hyperparameters (scalars only)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
