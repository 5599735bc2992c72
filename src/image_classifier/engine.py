"""The Accelerate training and evaluation loops.

Accelerate owns devices, processes and mixed precision: this module never moves tensors by hand
and never checks ranks except to decide who prints or writes. Batches arrive as uint8 images
(B, C, H, W) and int64 labels on the training device; augmentation and normalisation run there.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import Config, TrainingArguments

__all__ = [
    "TrainerState",
    "build_accelerator",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "predict",
    "find_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"


def build_accelerator(config: Config) -> Accelerator:
    """An Accelerator for this run: precision, accumulation, trackers, seedable data order."""
    train = config.train
    return Accelerator(
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=None if train.report_to == "none" else train.report_to,
        project_config=ProjectConfiguration(project_dir=train.output_dir,
                                            logging_dir=os.path.join(train.output_dir, "runs")),
        # The shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed),
    )


def build_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW; no weight decay on biases and norm weights."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum,
                               nesterov=args.nesterov and args.momentum > 0)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate, betas=betas)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas)


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int):
    """The learning-rate schedule, sized in optimizer steps (plateau: stepped per epoch on a metric).

    Not passed through `accelerator.prepare`: a prepared scheduler steps once per process for each
    optimizer step, which would end the schedule early on several processes.
    """
    from transformers import get_constant_schedule, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    warmup = int(args.warmup_ratio * total_steps)
    if args.lr_scheduler_type == "constant":
        return get_constant_schedule(optimizer)
    if args.lr_scheduler_type == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if args.lr_scheduler_type == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if args.lr_scheduler_type == "onecycle":
        # Momentum is left as configured (cycle_momentum=False) so --momentum means what it says.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 2),
            pct_start=max(args.warmup_ratio, 1e-3), cycle_momentum=False)
    mode = "max" if args.greater_is_better else "min"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=args.plateau_factor, patience=args.plateau_patience,
        threshold=args.early_stopping_threshold, threshold_mode="abs")


@dataclass
class TrainerState:
    """Everything beyond model/optimizer/RNG that a resumed run needs; saved in every checkpoint."""

    epoch: int = 0                  # completed epochs
    step_in_epoch: int = 0          # batches done in the current epoch (0 at an epoch boundary)
    global_step: int = 0            # optimizer steps done
    best_metric: Optional[float] = None
    best_epoch: int = 0
    bad_epochs: int = 0             # epochs since the best one (early stopping)
    train_seconds: float = 0.0      # wall seconds inside training epochs (evaluation excluded)
    history: list[dict[str, Any]] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)   # one per optimizer step
    best_weights: Optional[dict[str, torch.Tensor]] = None      # CPU copy of the best model's state

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def improved(self, value: float, args: TrainingArguments) -> bool:
        if self.best_metric is None:
            return True
        delta = value - self.best_metric if args.greater_is_better else self.best_metric - value
        return delta > args.early_stopping_threshold


def find_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """Resolve --resume_from_checkpoint: 'latest' (newest in OUTPUT_DIR/checkpoints) or a folder."""
    if which != "latest":
        path = Path(which)
        if not list(path.glob("custom_checkpoint_*")):
            raise FileNotFoundError(
                f"--resume_from_checkpoint: {which!r} is not a checkpoint folder (expected one of "
                f"{Path(output_dir) / CHECKPOINT_DIR}/step_*); pass 'latest' to take the newest.")
        return path
    found = sorted((Path(output_dir) / CHECKPOINT_DIR).glob("step_*"))
    if not found:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINT_DIR}; "
            "start without --resume_from_checkpoint, or point --output_dir at the interrupted run.")
    return found[-1]


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: TrainerState, keep: int) -> Path:
    """`save_state` into a temporary folder, then rename it into place: a crash never leaves half a checkpoint."""
    root = Path(output_dir) / CHECKPOINT_DIR
    final = root / f"step_{state.global_step:08d}"
    tmp = root / f".tmp_step_{state.global_step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))           # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@torch.no_grad()
def predict(model, loader: DataLoader, normalize: Callable, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) float32 and labels (N,) over a prepared loader, gathered from every process.

    `gather_for_metrics` drops the samples Accelerate repeats to even out the last batch, so each
    image counts once whatever the number of processes.
    """
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        logits = model(pixel_values=normalize(images)).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        all_logits.append(logits.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    return np.concatenate(all_logits), np.concatenate(all_labels)


def _train_epoch(model, loader, optimizer, scheduler, augment, mix, accelerator, args: TrainingArguments,
                 state: TrainerState, max_steps: int) -> dict[str, float]:
    """One pass over the training loader; returns mean loss and accuracy over all processes."""
    model.train()
    per_step_schedule = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device)
    seen = torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, dynamic_ncols=True,
               disable=not accelerator.is_local_main_process, initial=state.step_in_epoch,
               total=state.step_in_epoch + len(loader))
    for images, labels in bar:
        with accelerator.accumulate(model):
            inputs, targets = augment(images), labels                 # uint8 -> normalized float, on device
            if mix is not None:
                inputs, targets = mix(inputs, labels)                 # targets: (B, K) soft
            logits = model(pixel_values=inputs).logits
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.step_in_epoch += 1
        if accelerator.sync_gradients:
            state.global_step += 1
            state.learning_rates.append(optimizer.param_groups[0]["lr"])
            if per_step_schedule and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(-1) == labels).sum()
        seen += labels.shape[0]
        if state.step_in_epoch % 10 == 0:
            bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}", acc=f"{(correct / seen).item():.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        if state.global_step >= max_steps:
            break
    loss_sum, correct, seen = (accelerator.reduce(t, reduction="sum") for t in (loss_sum, correct, seen))
    return {"train_loss": (loss_sum / seen).item(), "train_accuracy": (correct / seen).item()}


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=False, persistent_workers=num_workers > 0)


@dataclass
class FitResult:
    state: TrainerState
    model: torch.nn.Module          # as prepared by Accelerate, holding the best weights


def fit(model, train_set: Dataset, eval_set: Dataset, *, augment, normalize, mix, config: Config,
        accelerator: Accelerator, evaluate_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]]) -> FitResult:
    """Train with early stopping and per-epoch checkpoints; return the state and the best model.

    `evaluate_fn(logits, labels)` turns validation predictions into metrics with `accuracy`, `f1`, `loss`.
    """
    args = config.train
    train_loader = _loader(train_set, args.per_device_train_batch_size, True, config.data.dataloader_num_workers)
    eval_loader = _loader(eval_set, args.per_device_eval_batch_size, False, config.data.dataloader_num_workers)
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    augment.to(accelerator.device)      # parameter-free modules: mean/std buffers follow the batches
    normalize.to(accelerator.device)

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    if args.max_train_steps:
        max_steps = args.max_train_steps
        num_epochs = math.ceil(max_steps / steps_per_epoch)
    else:
        num_epochs = math.ceil(args.num_train_epochs)
        max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer.optimizer, args, max_steps)
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state)

    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint}: epoch {state.epoch}, step {state.global_step}")
    if accelerator.is_main_process:
        global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        accelerator.print(f"Training {num_epochs} epochs ({max_steps} optimizer steps) on {accelerator.num_processes} "
                          f"process(es), {accelerator.device}; global batch {global_batch}, lr {args.learning_rate}")

    unwrapped = accelerator.unwrap_model(model)
    while state.epoch < num_epochs and state.global_step < max_steps and not _should_stop(state, args):
        if state.step_in_epoch == 0:
            # Same augmentation/dropout draws for an epoch whether or not the run was resumed.
            set_seed(args.seed * 1000 + state.epoch, device_specific=True)
            epoch_loader = train_loader
        else:  # resumed mid-epoch: the RNG states came back with the checkpoint
            epoch_loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
        epoch_loader.set_epoch(state.epoch)    # the shuffle order of this epoch: seed + epoch
        started = time.perf_counter()
        record = _train_epoch(model, epoch_loader, optimizer, scheduler, augment, mix, accelerator, args,
                              state, max_steps)
        state.train_seconds += time.perf_counter() - started
        logits, labels = predict(model, eval_loader, normalize, accelerator)
        metrics = evaluate_fn(logits, labels)
        state.epoch += 1
        state.step_in_epoch = 0
        epoch_lrs = state.learning_rates[sum(len(h["learning_rates"]) for h in state.history):]
        record = {"epoch": state.epoch, **record, **{f"eval_{k}": metrics[k] for k in ("loss", "accuracy", "f1")},
                  "learning_rate": optimizer.param_groups[0]["lr"], "seconds": round(state.train_seconds, 2),
                  "learning_rates": epoch_lrs}
        state.history.append(record)
        value = metrics[args.metric_for_best_model]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        if state.improved(value, args):
            state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
            state.best_weights = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
        else:
            state.bad_epochs += 1
        accelerator.log({k: v for k, v in record.items() if k != "learning_rates"}, step=state.epoch)
        accelerator.print(_format_record(record, best=state.best_epoch == state.epoch))
        save_checkpoint(accelerator, args.output_dir, state, args.save_total_limit)

    if state.best_weights is not None:
        unwrapped.load_state_dict(state.best_weights)
    accelerator.wait_for_everyone()
    return FitResult(state=state, model=model)


def _should_stop(state: TrainerState, args: TrainingArguments) -> bool:
    return args.early_stopping_patience is not None and state.bad_epochs >= args.early_stopping_patience


def _format_record(record: dict[str, Any], best: bool) -> str:
    return (f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
            f"val loss {record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f} f1 {record['eval_f1']:.4f}  "
            f"lr {record['learning_rate']:.3g}  {record['seconds']:.1f}s" + ("  *best" if best else ""))
