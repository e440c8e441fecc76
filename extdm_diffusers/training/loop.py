"""The one training loop of ``train_flow_ae.py`` and ``train_dm.py``; a ``TrainingTask`` supplies what differs
(the models, the loss step, what is saved and what validation shows).

The loop: argument and dataset checks before anything else; the accelerator (gradient accumulation, split
batches); seeded models, optimizer, LR schedule and EMA; ``accelerator.prepare``; resume; then per micro-batch
``accelerator.accumulate`` + the task's loss, and per optimizer step clip / step / schedule / EMA, logging,
checkpoints and validation; a final save if the last step saved nothing; the Hub upload.

Resume stays bit-identical with the data loader and the LR schedule prepared: the loader's batch sampler
starts at the checkpoint's micro-batch (``seeded_batches``) and holds no state of its own, and with
``split_batches`` accelerate steps the schedule once per optimizer step and gives each process its slice of the
global batch, the order the sampler fixed.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import torch
from diffusers.utils import logging
from torch import nn
from tqdm.auto import tqdm

from ..cpu_memory import reuse_freed_cpu_memory
from ..file_io import atomic_write_text
from . import checkpoints
from .arguments import check_common_arguments, resolve_benchmark
from .dataset_checks import load_splits
from .hub import command_line, push_folder, write_model_card
from .seeded_batches import batches_per_epoch, seeded_loader, step_generator
from .tracking import MetricsLog, log_videos, tracker_config

logger = logging.get_logger("extdm_diffusers.training")


@dataclass(frozen=True)
class TaskNames:
    """How a training task names itself.

    script: its ``training_scripts/`` file (for the model card's command line).
    what: "flow autoencoder" / "denoiser" (logs, progress bar).
    saved: what ``save`` writes, "flow autoencoder" / "pipeline" (logs, the Hub commit message).
    saved_file: the file ``save`` writes at ``--output_dir``'s root (its absence after the loop means the final
        save is still due).
    tracker_project: the accelerate trackers' project name.
    """

    script: str
    what: str
    saved: str
    saved_file: str
    tracker_project: str


class TrainingTask:
    """What one training script trains. A subclass sets ``names`` and implements the methods; the loop calls
    them in this order: ``__init__`` (argument checks), ``check_data``, ``train_dataset``, ``build_model``,
    ``make_optimizer``, then per micro-batch ``loss_step`` and, at validation, ``save`` and ``validate``."""

    names: TaskNames

    def __init__(self, args: argparse.Namespace, benchmark):
        self.args, self.benchmark = args, benchmark

    @property
    def training(self):
        """The registry's training hyperparameters (``AutoencoderTraining`` / ``DenoiserTraining``)."""
        raise NotImplementedError

    def check_data(self, train_data, test_data) -> None:
        """Raise ``TrainingArgumentError`` on what the data or the model config cannot train."""

    def train_dataset(self, train_data, test_data):
        """The training items (a map-style dataset drawn with torch's RNG); keep what validation needs."""
        raise NotImplementedError

    def build_model(self, accelerator, dtype: torch.dtype) -> Tuple[nn.Module, nn.Module]:
        """``(module to prepare, the trained ModelMixin)``, built under the seeded global RNG."""
        raise NotImplementedError

    def trained_model(self, unwrapped: nn.Module) -> nn.Module:
        """The trained ``ModelMixin`` inside the unwrapped prepared module."""
        return unwrapped

    def make_optimizer(self, parameters: Iterable[nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
        """The optimizer, ``fused=True``: one pass per tensor without temporaries. torch's default on the CPU is
        the per-tensor loop, whose temporaries of the weights' size made Adam a sixth of an autoencoder step
        (docs/performance.md, training steps)."""
        raise NotImplementedError

    def loss_step(self, model: nn.Module, batch: Dict[str, Any], generator: torch.Generator, step: int,
                  last_micro: bool) -> Dict[str, torch.Tensor]:
        """The losses of one micro-batch of optimizer step ``step`` (0-based): ``"loss"`` is backpropagated, all
        are logged."""
        raise NotImplementedError

    def logs_at(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) logs, beyond every ``--logging_steps``."""
        return False

    def extra_metrics(self) -> Dict[str, float]:
        """Metrics beyond the losses for the step just logged."""
        return {}

    def save(self, model: nn.Module) -> None:
        """Write ``model`` (EMA weights swapped in) to ``--output_dir``."""
        raise NotImplementedError

    def model_card(self) -> Dict[str, Any]:
        """``write_model_card``'s ``title``, ``body`` and ``extra_tags``."""
        raise NotImplementedError

    def has_validation_data(self) -> bool:
        raise NotImplementedError

    def validate(self, model: nn.Module, folder: Path, seed: int, device) -> Tuple[Dict[str, float], List[str]]:
        """``(metrics, GIF paths written into folder)`` of ``model`` (eval mode, EMA weights)."""
        raise NotImplementedError


def make_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir))
    kwargs = {}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    # accelerate keeps one AcceleratorState per process and refuses another mixed precision for a later run in the
    # same process (the quick start, a notebook): each run starts its own, keeping the processes' distributed state
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # split_batches: the loader yields global batches (each process takes its slice) and the prepared LR
    # schedule steps once per optimizer step, so both stay what one process would see
    return Accelerator(log_with=None if args.report_to == "none" else args.report_to, project_config=project,
                       gradient_accumulation_steps=args.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)], **kwargs)


def weight_dtype(accelerator) -> torch.dtype:
    """The dtype of frozen models under ``--mixed_precision`` (trained weights stay in their own)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def make_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, training, max_train_steps: int):
    """The learning-rate schedule, stepped once per optimizer step: the original's MultiStepLR at the benchmark's
    milestones, or one of diffusers' schedules over ``max_train_steps``."""
    if args.lr_scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(training.lr_milestones), gamma=training.lr_gamma)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=max_train_steps)


def default_batch_size(global_batch: int, num_processes: int, accumulation: int) -> int:
    return max(1, global_batch // (num_processes * accumulation))


def default_max_train_steps(num_epochs: int, num_repeats: int, num_videos: int, global_batch: int) -> int:
    """The original's implied steps: epochs x ceil(repeats x N / batch)."""
    return num_epochs * batches_per_epoch(num_videos, num_repeats, global_batch)


def validate_and_save(task: TrainingTask, accelerator, prepared: nn.Module, ema, global_step: int, seed: int,
                      metrics_log: MetricsLog) -> Dict[str, float]:
    """Main process: save the model (EMA weights with --use_ema) and a model card into --output_dir, then the
    task's validation: metrics and GIFs (also to validation/step-N/)."""
    args = task.args
    model = task.trained_model(accelerator.unwrap_model(prepared))
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    was_training = model.training
    model.eval()
    try:
        task.save(model)
        write_model_card(args.output_dir, benchmark=task.benchmark, dataset=args.dataset_dir, args=args,
                         command=command_line(args._argv, task.names.script), **task.model_card())
        if not task.has_validation_data():
            return {}
        folder = Path(args.output_dir, "validation", f"step-{global_step}")
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            results, gifs = task.validate(model, folder, seed, accelerator.device)
        atomic_write_text(folder / "metrics.json", json.dumps(dict(results, step=global_step), indent=2))
        metrics_log.log(results, global_step)
        log_videos(accelerator, "validation", gifs, global_step)
        logger.info(f"step {global_step}: validation {results}")
        return results
    finally:
        model.train(was_training)
        if ema is not None:
            ema.restore(model.parameters())


def train(task_class: type, args: argparse.Namespace) -> Dict[str, Any]:
    """Run ``task_class``'s training with ``args``; returns ``{"output_dir", "global_step", "loss", ...validation
    metrics}``."""
    from diffusers.training_utils import EMAModel

    if not hasattr(args, "_argv"):
        args._argv = None
    # ---- every check before any training --------------------------------------------------------------
    check_common_arguments(args)
    benchmark = resolve_benchmark(args.benchmark)
    task: TrainingTask = task_class(args, benchmark)
    training = task.training
    train_data, test_data = load_splits(args.dataset_dir, f"saves the {task.names.saved}")
    task.check_data(train_data, test_data)

    reuse_freed_cpu_memory()
    accelerator = make_accelerator(args)
    os.makedirs(args.output_dir, exist_ok=True)
    seed = training.seed if args.seed is None else args.seed
    num_processes, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    batch_size = args.train_batch_size or default_batch_size(training.batch_size, num_processes, accumulation)
    global_batch = batch_size * num_processes * accumulation
    train_set = task.train_dataset(train_data, test_data)
    max_train_steps = args.max_train_steps or default_max_train_steps(
        training.num_epochs, training.num_repeats, len(train_set), global_batch)
    learning_rate = args.learning_rate or training.learning_rate

    # ---- models, optimizer, schedule --------------------------------------------------------------------
    torch.manual_seed(seed)
    model, trained = task.build_model(accelerator, weight_dtype(accelerator))
    optimizer = task.make_optimizer(trained.parameters(), learning_rate)
    lr_scheduler = make_lr_scheduler(args, optimizer, training, max_train_steps)
    ema = None
    if args.use_ema:
        ema = EMAModel(trained.parameters(), decay=args.ema_decay, model_cls=type(trained), model_config=trained.config)
        ema.to(accelerator.device)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    trained = task.trained_model(accelerator.unwrap_model(model))

    global_step = 0
    checkpoint = checkpoints.find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        global_step = checkpoints.load_checkpoint(accelerator, checkpoint)["global_step"]
    if accelerator.is_main_process:
        accelerator.init_trackers(task.names.tracker_project, config=tracker_config(args))
    metrics_log = MetricsLog(accelerator, args.output_dir)

    logger.warning(
        f"training the {benchmark.name} {task.names.what}: {sum(p.numel() for p in trained.parameters()):,} parameters, "
        f"{len(train_set)} videos x {training.num_repeats} repeats, batch {batch_size} x {num_processes} processes x "
        f"{accumulation} accumulation = {global_batch}, lr {learning_rate}, steps {global_step} -> {max_train_steps}"
    )
    per_epoch = batches_per_epoch(len(train_set), training.num_repeats, batch_size * num_processes)
    first_micro = global_step * accumulation
    loader = accelerator.prepare(seeded_loader(
        train_set, batch_size * num_processes, seed, training.num_repeats, first_micro,
        max(0, max_train_steps - global_step) * accumulation, args.dataloader_num_workers))
    last_loss, results = float("nan"), {}
    progress_bar = tqdm(total=max_train_steps, initial=global_step, desc=f"{task.names.what} steps",
                        disable=not accelerator.is_local_main_process)
    for micro_index, batch in enumerate(loader, start=first_micro):
        if micro_index % accumulation == 0:
            generator = step_generator(seed, global_step, accelerator.process_index, accelerator.device)
            step_losses: Dict[str, torch.Tensor] = {}
        with accelerator.accumulate(model):
            losses = task.loss_step(model, batch, generator, global_step, accelerator.sync_gradients)
            accelerator.backward(losses["loss"])
        for name, value in losses.items():
            step_losses[name] = step_losses.get(name, 0) + value.detach() / accumulation
        if not accelerator.sync_gradients:
            continue
        if args.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trained.parameters())
        global_step += 1
        progress_bar.update(1)

        if global_step % args.logging_steps == 0 or global_step == max_train_steps or task.logs_at(global_step):
            names = sorted(step_losses)
            gathered = accelerator.gather(torch.stack([step_losses[n] for n in names])[None]).mean(0)
            values = {n: v.item() for n, v in zip(names, gathered)}
            last_loss = values["loss"]
            values.update(lr=lr_scheduler.get_last_lr()[0], epoch=micro_index // per_epoch)
            values.update(task.extra_metrics())
            metrics_log.log(values, global_step)
            progress_bar.set_postfix(loss=f"{values['loss']:.4g}")
            if accelerator.is_main_process:
                logger.info(f"step {global_step}/{max_train_steps}: {values}")
        if global_step % args.checkpointing_steps == 0:
            checkpoints.save_checkpoint(
                accelerator, args.output_dir, global_step,
                {"micro_batch": global_step * accumulation, "epoch": (global_step * accumulation) // per_epoch},
                args.checkpoints_total_limit)
        if global_step % args.validation_steps == 0 or global_step == max_train_steps:
            if accelerator.is_main_process:
                results = validate_and_save(task, accelerator, model, ema, global_step, seed, metrics_log)
            accelerator.wait_for_everyone()

    if not Path(args.output_dir, task.names.saved_file).exists() and accelerator.is_main_process:
        # resumed from a checkpoint at (or past) the last step: still leave a model behind
        results = validate_and_save(task, accelerator, model, ema, global_step, seed, metrics_log)
    accelerator.wait_for_everyone()
    if args.push_to_hub and accelerator.is_main_process:
        push_folder(args, args.output_dir, f"ExtDM {benchmark.name} {task.names.saved}, step {global_step}")
    accelerator.end_training()
    return dict(results, output_dir=args.output_dir, global_step=global_step, loss=last_loss)
