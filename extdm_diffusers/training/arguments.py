"""The command line both training scripts share, its checks, and the lookups an argument names (benchmark,
``--model_config``). Every check runs before any training and raises ``TrainingArgumentError`` naming the
argument."""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..benchmarks import TRAINING_SEED

LR_SCHEDULERS = ("multistep", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class TrainingArgumentError(ValueError):
    """A bad command-line value, found before training starts; the message names the argument."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both scripts take (same names as diffusers' training examples)."""
    parser.add_argument("--benchmark", required=True, metavar="NAME_OR_FILE",
                        help="smmnist, kth, bair, cityscapes or ucf101 (the registry), or a .json/.yaml benchmark file "
                             "(see extdm-benchmark show)")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute the trained model's activations in the backward pass (less memory, more time)")
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
    parser.add_argument("--seed", type=int, default=None, help=f"default: the benchmark's ({TRAINING_SEED})")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--logging_steps", type=int, default=10, help="log the loss every N steps")


def parse_training_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, remembering ``argv`` for the model card's command line."""
    args = parser.parse_args(argv)
    args._argv = list(argv) if argv is not None else None
    return args


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


def resolve_benchmark(name_or_path: str):
    """``--benchmark``: the registry's ``Benchmark`` or a benchmark file's (``benchmarks.load_benchmark``), validated."""
    from ..benchmarks import BenchmarkDefinitionError, load_benchmark

    try:
        return load_benchmark(name_or_path)
    except (KeyError, TypeError) as error:
        raise TrainingArgumentError(f"--benchmark: {error.args[0]}") from None
    except BenchmarkDefinitionError as error:
        raise TrainingArgumentError(f"--benchmark: {error}") from None


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


def model_config_overrides(value: Optional[str], cls: type, nested: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """``--model_config`` (``load_model_config``), its keys checked against ``cls``'s constructor; ``nested``
    describes the keys of dict-valued arguments."""
    overrides = load_model_config(value)
    check_config_keys(overrides, dict(constructor_keys(cls), **(nested or {})), cls.__name__)
    return overrides


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


def constructor_keys(cls: type) -> Dict[str, Any]:
    """The keyword arguments of ``cls.__init__``, as ``check_config_keys``' ``allowed``."""
    return {name: None for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")}
