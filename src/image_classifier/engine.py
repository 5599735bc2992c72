"""The Accelerate training and evaluation loops.

Accelerate owns devices, processes and mixed precision: this module never moves tensors by hand
and never checks ranks except to decide who prints or writes. Batches arrive as uint8 images
(B, C, H, W) and int64 labels on the training device; augmentation and normalisation run there.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import Config, ConfigError, TrainingArguments, training_on_cuda
from .files import DiskFullError, disk_full_is_an_error
from .interrupt import StopOnSignal, TrainingInterrupted, resume_command
from .model_folder import CHECKPOINTS
from .models import train_stem_bias
from .optim import build_optimizer, freeze_backbone
from .recipes import RECIPES, recipe_for
from .streaming import SKIPPED, StreamedImages, collate_dropping_skipped

__all__ = [
    "TrainerState",
    "build_accelerator",
    "build_scheduler",
    "fit",
    "predict",
    "predict_float32",
    "find_checkpoint",
]


def build_accelerator(config: Config) -> Accelerator:
    """An Accelerator for this run: precision, accumulation, trackers, seedable data order."""
    train = config.train
    accelerator = Accelerator(
        mixed_precision=default_precision(train.mixed_precision, config.model.architecture),
        dynamo_backend="inductor" if train.torch_compile else None,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=None if train.report_to == "none" else train.report_to.split(","),
        project_config=ProjectConfiguration(project_dir=train.output_dir,
                                            logging_dir=os.path.join(train.output_dir, "runs")),
        # The shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed),
    )
    # Small images on a CPU: freed activation blocks reused, not faulted in again (a fifth of a CIFAR step). Not
    # for photos: a ResNet-18 step at 160 px ran as fast without it and its process peaked 0.4 GB lower (1.99 GB).
    if accelerator.device.type == "cpu" and config.data.data_path != "streaming":
        keep_freed_memory()
    return accelerator


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and keep what is freed there. Returns whether it applied.

    By default glibc maps each block above 32 MiB (one (1024, 48, 31, 31) float activation is 180 MiB)
    straight from the kernel and unmaps it when freed, so every CPU training step faults all its
    activation pages in again, zero-filled: at batch 1024 that was a fifth of the step time, spent in
    the kernel. With mmap off and trimming off the allocator reuses the freed blocks (peak memory
    stays reserved until the process ends). Elsewhere (macOS, musl) nothing changes.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4        # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def default_precision(requested: Optional[str], model: str) -> Optional[str]:
    """--mixed_precision, else `accelerate launch`/config's choice, else bf16 on a GPU that has it, or on a CPU
    that computes in it natively where the model's recipe says so (`bf16_on_cpu`: cnn-fast/cnn-wide), else none.

    On a CPU only those presets: bf16 is measured there (bench/RESULTS.md), and their convolutions are all
    stride 1. torch 2.14's CPU bf16 weight gradient of a strided convolution whose window sees only padding
    (a timm ResNet's last stage on 16x16 images: a stride-2 3x3 on a 1x1 map) is garbage, NaN in half the
    trials, in the border taps; so timm models and cnn-basic train in float32 there unless asked.
    """
    if requested is not None or "ACCELERATE_MIXED_PRECISION" in os.environ:
        return requested
    if training_on_cuda():
        return "bf16" if torch.cuda.is_bf16_supported() else None
    return "bf16" if RECIPES[recipe_for(model)]["bf16_on_cpu"] and cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512_BF16 or AMX), so oneDNN's bf16 kernels pay.

    On a 2-core AMD EPYC with AVX512_BF16 a training step of the presets ran 1.8-2.7x faster under bf16 autocast
    (bench/precision_speedup.py, bench/RESULTS.md). Elsewhere x86 CPUs emulate bf16, which is not expected to pay
    (not measured here), and ARM CPUs are not probed: float32 stays their default.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")   # private, so looked up defensively
    return not cpu_kernel_caps() and any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# oneDNN's instruction sets (ONEDNN_MAX_CPU_ISA values) that include its bf16 kernels.
_ONEDNN_BF16_ISAS = frozenset({"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
                               "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "ALL"})


def cpu_kernel_caps() -> dict[str, str]:
    """The environment variables that keep this process's CPU kernels below bf16 on a CPU that has it
    (`ONEDNN_MAX_CPU_ISA=AVX2` for the convolutions, `ATEN_CPU_CAPABILITY=avx2` for the rest): a host without
    AVX-512, as far as the kernels can tell. Empty where nothing is capped."""
    caps = {}
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if os.environ.get(name) and os.environ[name].upper() not in _ONEDNN_BF16_ISAS:
            caps[name] = os.environ[name]
    if os.environ.get("ATEN_CPU_CAPABILITY") and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        caps["ATEN_CPU_CAPABILITY"] = os.environ["ATEN_CPU_CAPABILITY"]
    return caps


def effective_learning_rate(args: TrainingArguments, num_processes: int) -> float:
    """--learning_rate, times processes x accumulation steps with --scale_lr (the linear scaling rule:
    --learning_rate is then the rate for one process's batch)."""
    return args.learning_rate * (num_processes * args.gradient_accumulation_steps if args.scale_lr else 1)


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
    if args.lr_scheduler_type == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(_triangle, num_warmup_steps=warmup, num_training_steps=total_steps))
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


def _triangle(step: int, num_warmup_steps: int, num_training_steps: int, start: float = 0.2, end: float = 0.07
              ) -> float:
    """Learning-rate factor: linear from `start` to 1 over the warm-up steps, then linear to `end` at the last
    step (keywords named as transformers' schedules name them, so `retarget_scheduler` treats them alike)."""
    warmup, total = num_warmup_steps, num_training_steps
    if step < warmup:
        return start + (1 - start) * step / warmup
    return 1 + (end - 1) * min(step - warmup, total - warmup) / max(total - warmup, 1)


RETARGETABLE_SCHEDULES = ("constant", "linear", "triangle", "cosine")   # LambdaLR: their length can change mid-run


def retarget_scheduler(scheduler, args: TrainingArguments, total_steps: int) -> None:
    """Give a running schedule of RETARGETABLE_SCHEDULES a new length in place, at the step it has reached (the
    object stays the one registered for checkpointing): from now on each step's rate is what a schedule built for
    `total_steps` gives there. The rate factors are transformers' partials (and `_triangle`'s), whose step counts
    are keywords; a resumed run builds its schedule from the config's epochs, so the caller saves those too."""
    if args.lr_scheduler_type not in RETARGETABLE_SCHEDULES:
        raise ValueError(f"a {args.lr_scheduler_type} schedule cannot change its length mid-run")
    if args.lr_scheduler_type == "constant":
        return
    steps = dict(num_warmup_steps=int(args.warmup_ratio * total_steps), num_training_steps=total_steps)
    scheduler.lr_lambdas = [functools.partial(f.func, *f.args, **{**f.keywords, **steps})
                            for f in scheduler.lr_lambdas]
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]     # what get_last_lr() reads


class Lookahead:
    """airbench's weight averaging: from `start` (a fraction of the steps) on, every `every` optimizer steps
    the running average moves towards the weights by 1 - decay and the weights are set to it; `decay` is
    `base ** every * progress ** power`, so early averages follow the weights and late ones hold them.

    Floating-point buffers (BatchNorm statistics) are averaged with the weights. `finish_epoch` sets the
    weights to the average, so evaluation and checkpoints see it. Checkpointed via state_dict.
    """

    def __init__(self, model: torch.nn.Module, total_steps: int, start: float = 0.3, every: int = 5,
                 base: float = 0.95, power: float = 3.0):
        self.model, self.every, self.start = model, every, start
        self.base, self.power = base, power
        self.average: Optional[dict[str, torch.Tensor]] = None
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        """The run's length in optimizer steps (a --time_budget re-plan may change it mid-run)."""
        self.total_steps, self.start_step = total_steps, int(self.start * total_steps)

    def _floats(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        if step < self.start_step or step % self.every:
            return
        weights = self._floats()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in weights.items()}
            return
        decay = self.base ** self.every * (step / self.total_steps) ** self.power
        for name, w in weights.items():
            self.average[name].lerp_(w, 1 - decay)
            w.copy_(self.average[name])

    @torch.no_grad()
    def finish_epoch(self) -> None:
        if self.average is not None:
            for name, w in self._floats().items():
                w.copy_(self.average[name])

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state["average"]
        weights = self._floats()
        self.average = None if average is None else {k: v.to(weights[k].device) for k, v in average.items()}


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
    epoch_sums: dict[str, float] = field(default_factory=dict)  # training loss/accuracy sums of an interrupted epoch

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
                f"{Path(output_dir) / CHECKPOINTS}/step_*); pass 'latest' to take the newest.")
        return path
    found = sorted((Path(output_dir) / CHECKPOINTS).glob("step_*"))
    if not found:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS}; "
            "start without --resume_from_checkpoint, or point --output_dir at the interrupted run.")
    return found[-1]


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: TrainerState, keep: int) -> Path:
    """`save_state` into a temporary folder, then rename it into place: a crash never leaves half a checkpoint."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step_{state.global_step:08d}"
    tmp = root / f".tmp_step_{state.global_step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        with disk_full_is_an_error(f"checkpoint {final.name}", root, _after_a_failed_save(root, output_dir)):
            accelerator.save_state(str(tmp))           # every process writes its own RNG state
    except DiskFullError:
        shutil.rmtree(tmp, ignore_errors=True)          # half a checkpoint: give its space back
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        # Older checkpoints beyond the limit, and what a killed save left half-written.
        for old in sorted(root.glob("step_*"))[:-keep] + list(root.glob(".tmp_step_*")):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _after_a_failed_save(root: Path, output_dir: str) -> str:
    """What a failed checkpoint save leaves intact, and how to go on from there."""
    previous = sorted(root.glob("step_*"))
    if not previous:
        return (f"No checkpoint of this run was saved yet; the files already in {output_dir} are intact. "
                "Free some space, then run the same command again.")
    return (f"The previous checkpoint, {previous[-1].name}, and the files already in {output_dir} are intact. "
            f"Free some space, then resume with:\n  {resume_command()}")


# Test-time augmentation: (views, weights) of a normalized batch (B, C, H, W); the logits are the
# weighted mean over views. flip_translate follows airbench: half on the image and its mirror, a
# quarter each on the pair shifted one pixel up-left and the pair shifted down-right.
def _tta_views(x: torch.Tensor, tta: str) -> list[tuple[torch.Tensor, float]]:
    if tta == "none":
        return [(x, 1.0)]
    if tta == "flip":
        return [(x, 0.5), (x.flip(-1), 0.5)]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")          # (B, C, H + 2, W + 2)
    h, w = x.shape[-2:]
    views = [(x, 0.25), (x.flip(-1), 0.25)]
    for shifted in (padded[..., :h, :w], padded[..., 2:, 2:]):
        views += [(shifted, 0.125), (shifted.flip(-1), 0.125)]
    return views


@torch.no_grad()
def predict(model, loader, normalize: Callable, accelerator: Accelerator,
            tta: str = "none", mixed_precision: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) float32 and labels (N,) over a prepared loader, gathered from every process.

    `gather_for_metrics` drops the samples Accelerate repeats to even out the last batch, so each
    image counts once whatever the number of processes. `tta` averages logits over views
    (see `_tta_views`); "none" is exactly what `pipeline()` computes. `mixed_precision=False` computes in
    float32 whatever the training's precision: pass a model `plain_model` returned.
    """
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        x = normalize(images)
        with accelerator.autocast(AutocastKwargs(enabled=mixed_precision)):
            logits = sum(w * model(pixel_values=v).logits.float() for v, w in _tta_views(x, tta))
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        all_logits.append(logits.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    logits, labels = np.concatenate(all_logits), np.concatenate(all_labels)
    kept = labels != SKIPPED             # the streaming path's undecodable images (each warned about once)
    return (logits, labels) if kept.all() else (logits[kept], labels[kept])


def predict_float32(model: torch.nn.Module, split: Dataset, normalize: Callable, accelerator: Accelerator,
                    config: Config, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """`predict` over every image of `split` once, in float32 whatever the training's precision: pass the
    network `plain_model` returned. Returns logits (N, K) and labels (N,)."""
    loader = accelerator.prepare(build_loader(split, config.train.per_device_eval_batch_size, False,
                                              config.data.dataloader_num_workers or 0, persistent=False))
    return predict(model, loader, normalize, accelerator, tta, mixed_precision=False)


class ResidentBatches:
    """Training batches drawn by indexing a uint8 tensor kept on the training device (no DataLoader).

    Each epoch shuffles with a generator seeded by (seed, epoch), the same on every process; process
    r of n takes every n-th batch-sized slice of that order, so shards are disjoint and a resumed run
    sees the same batches. The last partial batch is dropped (it would be smaller on some ranks).
    `flip` (an augment.AlternatingFlip) mirrors images by split position and epoch.
    Yields (uint8 (B, C, H, W), int64 (B,)) on `device`.
    """

    def __init__(self, data: Dataset, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1, accumulation: int = 1,
                 flip: Optional[Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = None):
        self.images = data.images.to(device)     # the whole split, once: CIFAR-10 train is 138 MiB
        self.labels = data.labels.to(device)
        # A split smaller than one global batch still gives every process a non-empty batch.
        self.batch_size = max(1, min(batch_size, len(self.labels) // (world_size * accumulation)))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        # Whole accumulation windows only: a window cut by the end of the epoch would carry its gradients
        # into the next epoch (and past the epoch's checkpoint). So k batches of b are one batch of k x b.
        self.accumulation = accumulation
        self.epoch, self.skip = 0, 0
        self.flip = flip

    def __len__(self) -> int:
        windows = max(len(self.labels) // (self.batch_size * self.world_size * self.accumulation), 1)
        return windows * self.accumulation - self.skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, n: int) -> "ResidentBatches":
        """A view of this epoch without its first n batches (for a run resumed mid-epoch)."""
        view = ResidentBatches.__new__(ResidentBatches)
        view.__dict__.update(self.__dict__, skip=n)
        return view

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.labels), generator=generator).to(self.labels.device)
        total = len(self) + self.skip
        for i in range(self.skip, total):
            start = (i * self.world_size + self.rank) * self.batch_size
            index = order[start:start + self.batch_size]
            images = self.images[index]
            yield (self.flip(images, index, self.epoch) if self.flip else images), self.labels[index]


class StreamedBatches:
    """Training batches of a streamed train split (--streaming; streaming.StreamedImages): this process's part of
    the stream through a DataLoader (its workers decode), in full batches moved to `device`.

    Every process yields the same number of batches per epoch, the split's rows over (batch x processes), in whole
    accumulation windows, or the others would wait at a gradient all-reduce. Parts can differ in length: datasets
    gives each process whole files where their number allows (else every n-th row), so with files of unequal
    length a short part goes round again, in another order, and a long part leaves its last rows of this epoch's
    order unread. Resumed mid-epoch, the first batches are read and dropped (a stream cannot seek).
    Yields (uint8 (B, C, H, W), int64 (B,)).
    """

    def __init__(self, data, batch_size: int, device: torch.device, rank: int, world_size: int, accumulation: int,
                 num_workers: int):
        self.data, self.rank = data.shard(rank, world_size), rank
        self.batch_size = max(1, min(batch_size, len(data) // (world_size * accumulation)))
        self.windows = max(len(data) // (self.batch_size * world_size * accumulation), 1)
        self.accumulation, self.device, self.num_workers = accumulation, device, num_workers
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return self.windows * self.accumulation - self.skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, n: int) -> "StreamedBatches":
        view = StreamedBatches.__new__(StreamedBatches)
        view.__dict__.update(self.__dict__, skip=n)
        return view

    def __iter__(self):
        count, total, b = 0, len(self) + self.skip, self.batch_size
        images, labels = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        for lap in range(total + 1):
            self.data.set_epoch(self.epoch + lap * 1_000_003)      # a second lap of a short part: another order
            read = 0
            # the loader's batches end where each worker's rows do: joined and cut again into full batches
            for more_images, more_labels in build_loader(self.data, b, True, self.num_workers, persistent=False):
                images, labels = torch.cat([images, more_images]), torch.cat([labels, more_labels])
                read += len(more_labels)
                while len(labels) >= b:
                    count += 1
                    if count > self.skip:
                        yield images[:b].to(self.device), labels[:b].to(self.device)
                    images, labels = images[b:], labels[b:]
                    if count >= total:
                        return
            if read == 0:
                break
        raise RuntimeError(f"Process {self.rank}'s part of the train stream holds no readable image (datasets gives "
                           "each process whole files of the stream where their number allows): use fewer processes "
                           "or a dataset in more files.")


def _train_epoch(model, loader, optimizer, scheduler, augment, mix, accelerator, args: TrainingArguments,
                 state: TrainerState, max_steps: int, average_weights: Optional[Callable[[], None]] = None,
                 stop: Optional[StopOnSignal] = None, class_weights: Optional[torch.Tensor] = None) -> dict[str, float]:
    """One pass over the training loader (or until a stop signal at an optimizer step).

    Returns the sums of loss, correct predictions and samples (`loss_sum`, `correct`, `seen`) over all processes,
    and of the seconds each process waited for its next batch (`data_wait_seconds`, see `WaitedFor`).
    `class_weights` (K,) weight the loss per true class (--class_balance loss).
    """
    model.train()
    per_step_schedule = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    loss_sum = torch.zeros((), device=accelerator.device)
    correct = torch.zeros((), device=accelerator.device)
    seen = torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", leave=False, dynamic_ncols=True,
               disable=not accelerator.is_local_main_process, initial=state.step_in_epoch,
               total=state.step_in_epoch + len(loader))
    batches = WaitedFor(bar)
    for images, labels in batches:
        if labels.numel() == 0:        # the streaming path: every image of this batch was undecodable
            continue
        with accelerator.accumulate(model):
            inputs, targets = augment(images), labels                 # uint8 -> normalized float, on device
            if mix is not None:
                inputs, targets = mix(inputs, labels)                 # targets: (B, K) soft
            logits = model(pixel_values=inputs).logits
            loss = F.cross_entropy(logits.float(), targets, weight=class_weights, label_smoothing=args.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.step_in_epoch += 1
        if accelerator.sync_gradients:
            state.global_step += 1
            state.learning_rates.append(optimizer.param_groups[0]["lr"])
            if average_weights is not None:
                average_weights()
            if per_step_schedule and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(-1) == labels).sum()
        seen += labels.shape[0]
        if state.step_in_epoch % args.logging_steps == 0:
            _report_step(bar, accelerator, state, loss, loss_sum, correct, seen, optimizer.param_groups[0]["lr"])
        # Stop only where gradients were just applied: a checkpoint cannot hold half-accumulated ones.
        if state.global_step >= max_steps or (accelerator.sync_gradients and stop and stop.requested(accelerator)):
            break
    waited = torch.tensor(batches.seconds, device=accelerator.device)
    totals = (accelerator.reduce(t, reduction="sum").item() for t in (loss_sum, correct, seen, waited))
    return dict(zip(("loss_sum", "correct", "seen", "data_wait_seconds"), totals))


class WaitedFor:
    """Iterates `batches`, adding up in `seconds` the time spent waiting for each next one (timm's "data time"):
    on a CPU with no loader workers, the loop's own decoding; with workers, what they could not hide. On a GPU
    the device may still be busy with queued steps meanwhile, so there it bounds the stall from above."""

    def __init__(self, batches):
        self.batches, self.seconds = batches, 0.0

    def __iter__(self):
        iterator = iter(self.batches)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - started
            yield batch


def check_finite(loss_sum: float, state: TrainerState, optimizer: torch.optim.Optimizer,
                 args: TrainingArguments) -> None:
    """Stop with a ConfigError naming --learning_rate when an epoch's training loss is not finite (the weights
    are then NaN or inf: evaluating them would only fail later, in a metric). One check per epoch, on the
    loss summed over all processes, so every process stops together; nothing of this epoch is saved."""
    if math.isfinite(loss_sum):
        return
    peak = max(state.learning_rates, default=optimizer.param_groups[0]["lr"])
    raise ConfigError("learning_rate", (
        f"training diverged in epoch {state.epoch + 1}: the training loss became {loss_sum} (the learning rate had "
        f"reached {peak:.3g}) and nothing of this epoch was saved. Lower --learning_rate (it is "
        f"{args.learning_rate:g}; `python -m image_classifier lr-find` with the same flags suggests one) or raise "
        "--warmup_ratio, and run again with --overwrite_output_dir."))


def _report_step(bar, accelerator: Accelerator, state: TrainerState, loss: torch.Tensor, loss_sum: torch.Tensor,
                 correct: torch.Tensor, seen: torch.Tensor, lr: float) -> None:
    """Every --logging_steps: the epoch's running loss and accuracy on the progress bar; this step's loss and the
    learning rate to the trackers (--report_to), at the optimizer step."""
    bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}", acc=f"{(correct / seen).item():.4f}", lr=f"{lr:.3g}")
    if accelerator.trackers:
        accelerator.log({"train/step_loss": loss.item(), "train/learning_rate": lr}, step=state.global_step)


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                 sampler: Optional[torch.utils.data.Sampler] = None, persistent: bool = True) -> DataLoader:
    """A DataLoader over a split: worker processes decode (the streaming path), pinned memory and a prefetch
    of 4 batches per worker on a GPU, undecodable images dropped from training batches.

    Workers start from a fresh forkserver process, not by forking this one: a forked worker keeps the parent's
    pages as they were when the parent rewrites them, so the workers of an evaluation loader forked from a
    training process held 0.7 GB each (6.6 GB in all for a 2,000-photo run). The forkserver imports torch and the
    decoder once, so its workers share those pages (a fresh process importing them holds 0.43 GB of its own).
    `persistent`: the workers stay for the next pass (a loader used every epoch).
    """
    import multiprocessing

    if num_workers > 0:      # no effect once the forkserver runs (it is started once per process)
        multiprocessing.set_forkserver_preload(["torch", "torchvision.transforms.v2", __package__ + ".streaming"])
    cuda = torch.cuda.is_available() and training_on_cuda()
    context = "forkserver" if num_workers > 0 and "forkserver" in multiprocessing.get_all_start_methods() else None
    ordered = isinstance(dataset, torch.utils.data.IterableDataset)     # a stream shuffles itself
    # A generator of its own: each new iterator draws its worker seed from it instead of the global
    # RNG, so the iterator a mid-epoch resume creates leaves the augmentation draws where they were.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None and not ordered, sampler=sampler,
                      num_workers=num_workers, drop_last=False, persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator(), pin_memory=cuda, multiprocessing_context=context,
                      prefetch_factor=(4 if cuda else 2) if num_workers > 0 else None,
                      collate_fn=collate_dropping_skipped if shuffle else None)


def _stop_workers(loader) -> None:
    """End the worker processes of a loader with persistent workers (a no-op for any other loader)."""
    for holder in (getattr(loader, "base_dataloader", None), loader):     # Accelerate's wrapper, or the loader
        iterator = getattr(holder, "_iterator", None)
        if iterator is not None:
            if hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            holder._iterator = None


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float32: N / (K x count of class k), so every class carries the same total weight (sklearn's
    'balanced'); a class with no training image gets weight 0."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))


def balanced_sampler(labels: torch.Tensor, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws len(labels) training images per epoch with probability 1 / (count of its class): each class
    equally often, small ones with repeats (--class_balance sampling)."""
    weights = class_weights(labels, int(labels.max()) + 1)[labels]
    return torch.utils.data.WeightedRandomSampler(weights.double(), num_samples=len(labels), replacement=True,
                                                  generator=torch.Generator().manual_seed(seed))


@dataclass
class FitResult:
    state: TrainerState
    model: torch.nn.Module          # as prepared by Accelerate, holding the best weights
    tta: str = "none"               # the test-time augmentation used in evaluation (see resolve_tta)


@dataclass
class Loop:
    """What `setup` builds for the training loop: the prepared objects, the schedule's length, the weight
    averages, and the epoch-start hooks (one per feature that changes something at an epoch's start)."""

    model: Any                      # as prepared by Accelerate
    optimizer: Any
    scheduler: Any
    train_loader: Any               # a ResidentBatches or a prepared DataLoader
    eval_loader: Any
    unwrapped: torch.nn.Module      # the network itself (no DDP, no torch.compile)
    state: TrainerState
    num_epochs: int
    max_steps: int                  # optimizer steps
    side: int                       # pixels: the training images are side x side
    tta: str                        # the final evaluation's test-time augmentation (see resolve_tta)
    epoch_tta: str                  # the per-epoch validation's
    ema: Optional[AveragedModel] = None
    class_weights: Optional[torch.Tensor] = None     # (K,) loss weight per class (--class_balance loss)
    lookahead: Optional[Lookahead] = None
    epoch_start: list[Callable[[int], None]] = field(default_factory=list)    # hook(epoch, 0-based)
    # hook(loop) after an epoch's record, before its checkpoint: what changes the rest of the run (a re-plan)
    epoch_end: list[Callable[["Loop"], None]] = field(default_factory=list)

    @property
    def evaluated(self) -> torch.nn.Module:
        """What is evaluated and saved: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def average_weights(self) -> Optional[Callable[[], None]]:
        """The after-every-optimizer-step update of the weight averages; None without any."""
        if self.lookahead is None and self.ema is None:
            return None

        def update() -> None:
            if self.lookahead is not None:
                self.lookahead.update(self.state.global_step)
            if self.ema is not None:
                self.ema.update_parameters(self.unwrapped)
        return update


def fit(model, train_set: Dataset, eval_set: Dataset, *, augment, normalize, mix, config: Config,
        accelerator: Accelerator, evaluate_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
        stop: Optional[StopOnSignal] = None, epoch_end: Sequence[Callable[[Loop], None]] = ()) -> FitResult:
    """Train with early stopping and per-epoch checkpoints; return the state and the best model.

    `evaluate_fn(logits, labels)` turns validation predictions into metrics with `accuracy`, `f1`, `loss`.
    With `stop` entered (see `StopOnSignal`), SIGINT/SIGTERM save a checkpoint at the next optimizer
    step and raise `TrainingInterrupted`. `epoch_end` hooks run after each epoch's record (`Loop.epoch_end`).
    """
    args = config.train
    loop = setup(model, train_set, eval_set, augment=augment, normalize=normalize, config=config,
                 accelerator=accelerator)
    loop.epoch_end.extend(epoch_end)
    state = loop.state
    while state.epoch < loop.num_epochs and state.global_step < loop.max_steps and not _should_stop(state, args):
        loader = _epoch_loader(loop, accelerator, args.seed)
        for hook in loop.epoch_start:
            hook(state.epoch)
        started = time.perf_counter()
        sums = _train_epoch(loop.model, loader, loop.optimizer, loop.scheduler, augment, mix, accelerator, args,
                            state, loop.max_steps, loop.average_weights(), stop, loop.class_weights)
        state.train_seconds += time.perf_counter() - started
        check_finite(sums["loss_sum"], state, loop.optimizer, args)
        sums = {k: v + state.epoch_sums.get(k, 0.0) for k, v in sums.items()}   # + the part before a resume
        if stop and stop.agreed:   # stopped mid-epoch: the resumed run finishes this epoch and its sums
            state.epoch_sums = sums
            raise _save_and_stop(accelerator, args, state, stop.agreed)
        state.epoch_sums = {}
        if loop.lookahead is not None:
            loop.lookahead.finish_epoch()
        record = {"train_loss": sums["loss_sum"] / sums["seen"], "train_accuracy": sums["correct"] / sums["seen"],
                  "train_images": int(sums["seen"]),     # images trained on this epoch, all processes
                  "train_image_size": augment.train_size or loop.side,      # pixels (--progressive_resize_epochs)
                  # of this epoch's training seconds, those a process waited for its next batch (mean of the
                  # processes; a resumed epoch: its part after the resume and the part before, as saved)
                  "data_wait_seconds": round(sums["data_wait_seconds"] / accelerator.num_processes, 2)}
        logits, labels = predict(loop.evaluated, loop.eval_loader, normalize, accelerator, loop.epoch_tta)
        record_epoch(loop, record, evaluate_fn(logits, labels), args, accelerator)
        for hook in loop.epoch_end:
            hook(loop)
        checkpoint = save_checkpoint(accelerator, args.output_dir, state, args.save_total_limit)
        if stop and stop.requested(accelerator):   # signalled during evaluation or the save: resume from this one
            raise TrainingInterrupted(stop.agreed, checkpoint)

    if _should_stop(state, args) and state.epoch < loop.num_epochs:
        accelerator.print(describe_early_stop(state, args))
    augment.train_size = None
    _stop_workers(loop.train_loader)      # now, not at garbage collection: the final evaluation starts its own
    if state.best_weights is not None:
        loop.unwrapped.load_state_dict(state.best_weights)
    accelerator.wait_for_everyone()
    return FitResult(state=state, model=loop.model, tta=loop.tta)


def setup(model, train_set: Dataset, eval_set: Dataset, *, augment, normalize, config: Config,
          accelerator: Accelerator) -> Loop:
    """Loaders, optimizer and scheduler prepared by Accelerate; weight averages; the epoch-start hooks; the
    state of a checkpoint for --resume_from_checkpoint. Prints the plan."""
    args = config.train
    workers, class_balance = config.data.dataloader_num_workers or 0, config.data.class_balance
    eval_loader = build_loader(eval_set, args.per_device_eval_batch_size, False, workers, persistent=False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_batchnorm and accelerator.num_processes > 1:
        model = _sync_batchnorm(model, accelerator)
    lr = effective_learning_rate(args, accelerator.num_processes)
    backbone_lr = config.model.backbone_learning_rate and config.model.backbone_learning_rate * lr / args.learning_rate
    optimizer = build_optimizer(model, args, lr, backbone_lr)      # (--scale_lr scales the backbone's lr too)
    if args.resident_data and workers == 0 and hasattr(train_set, "images") and class_balance != "sampling":
        model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
        train_loader = ResidentBatches(train_set, args.per_device_train_batch_size, accelerator.device, args.seed,
                                       accelerator.process_index, accelerator.num_processes,
                                       args.gradient_accumulation_steps,
                                       augment.alternating_flip(len(train_set), args.seed))
    elif isinstance(train_set, StreamedImages):          # --streaming: each process reads its own part
        model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
        train_loader = StreamedBatches(train_set, args.per_device_train_batch_size, accelerator.device,
                                       accelerator.process_index, accelerator.num_processes,
                                       args.gradient_accumulation_steps, workers)
    else:
        train_loader = build_loader(train_set, args.per_device_train_batch_size, True, workers,
                                    balanced_sampler(train_set.labels, args.seed) if class_balance == "sampling" else None)
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    augment.to(accelerator.device)      # parameter-free modules: mean/std buffers follow the batches
    normalize.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    num_epochs, max_steps = _schedule_length(args, len(train_loader))
    tta = resolve_tta(args, augment)
    loop = Loop(model=model, optimizer=optimizer, scheduler=build_scheduler(optimizer.optimizer, args, max_steps),
                train_loader=train_loader, eval_loader=eval_loader, unwrapped=unwrapped, state=TrainerState(),
                num_epochs=num_epochs, max_steps=max_steps, side=train_set[0][0].shape[-1], tta=tta,
                epoch_tta=tta if args.tta_each_epoch else "none",      # 6 views cost 6 forward passes per image
                # The weight average is what gets evaluated and saved; its BatchNorm statistics are averaged too.
                ema=AveragedModel(unwrapped, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
                if args.ema_decay > 0 else None,
                lookahead=Lookahead(unwrapped, max_steps) if args.lookahead else None)
    if class_balance == "loss":
        loop.class_weights = class_weights(train_set.labels, unwrapped.config.num_labels).to(accelerator.device)
    loop.epoch_start = epoch_start_hooks(loop, augment, config, accelerator)
    accelerator.register_for_checkpointing(loop.scheduler, loop.state,
                                           *(a for a in (loop.lookahead, loop.ema) if a is not None))
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint}: epoch {loop.state.epoch}, step {loop.state.global_step}")
    _print_plan(loop, args, accelerator, lr)
    return loop


def _schedule_length(args: TrainingArguments, batches_per_epoch: int) -> tuple[int, int]:
    """(epochs, optimizer steps) of the run: from --max_train_steps, else from --num_train_epochs."""
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_steps:
        return math.ceil(args.max_train_steps / steps_per_epoch), args.max_train_steps
    return math.ceil(args.num_train_epochs), math.ceil(args.num_train_epochs * steps_per_epoch)


def reschedule(loop: Loop, args: TrainingArguments) -> None:
    """Set the rest of the run to --num_train_epochs as it now stands (a --time_budget re-plan): the epochs, the
    optimizer steps, the learning-rate schedule's and the weight average's length, in place."""
    loop.num_epochs, loop.max_steps = _schedule_length(args, len(loop.train_loader))
    retarget_scheduler(loop.scheduler, args, loop.max_steps)
    if loop.lookahead is not None:
        loop.lookahead.set_total_steps(loop.max_steps)


def epoch_start_hooks(loop: Loop, augment, config: Config, accelerator: Accelerator) -> list[Callable[[int], None]]:
    """What changes at the start of an epoch (0-based), one hook per feature: the progressive-resizing image
    size, whether the whitening stem's bias trains, whether the backbone is frozen."""
    args = config.train

    def resize(epoch: int) -> None:            # --progressive_resize_epochs: the side this epoch trains at
        augment.train_size = progressive_size(args, epoch, loop.side)

    def stem_bias(epoch: int) -> None:         # --whiten_bias_epochs
        train_stem_bias(loop.unwrapped, epoch < args.whiten_bias_epochs)

    def freeze(epoch: int) -> None:            # --freeze_backbone_epochs
        frozen = epoch < config.model.freeze_backbone_epochs
        if freeze_backbone(loop.optimizer, frozen):
            accelerator.print(f"epoch {epoch + 1}: backbone "
                              + ("frozen (only the classifier trains)" if frozen else "released (every layer trains)"))

    # DDP fixes the set of trained parameters when it wraps the model: the stem bias stays as it is there.
    return [resize, *([stem_bias] if accelerator.num_processes == 1 else []), freeze]


def _epoch_loader(loop: Loop, accelerator: Accelerator, seed: int):
    """This epoch's batches: all of them (with the epoch's seed set), or, resumed mid-epoch, the rest."""
    state = loop.state
    if state.step_in_epoch == 0:
        # Same augmentation/dropout draws for an epoch whether or not the run was resumed.
        set_seed(seed * 1000 + state.epoch, device_specific=True)
        loader = loop.train_loader
    elif isinstance(loop.train_loader, (ResidentBatches, StreamedBatches)):   # resumed: RNG states came back
        loader = loop.train_loader.skip_first_batches(state.step_in_epoch)
    else:
        loader = accelerator.skip_first_batches(loop.train_loader, state.step_in_epoch)
    loader.set_epoch(state.epoch)    # the shuffle order of this epoch: seed + epoch
    return loader


def record_epoch(loop: Loop, record: dict[str, Any], metrics: dict[str, float], args: TrainingArguments,
                 accelerator: Accelerator) -> None:
    """Close an epoch: its history record, the plateau schedule, the best weights so far, the log line."""
    state = loop.state
    state.epoch += 1
    state.step_in_epoch = 0
    epoch_lrs = state.learning_rates[sum(len(h["learning_rates"]) for h in state.history):]
    record = {"epoch": state.epoch, **record, **{f"eval_{k}": metrics[k] for k in ("loss", "accuracy", "f1")},
              "eval_tta": loop.epoch_tta,
              "learning_rate": loop.optimizer.param_groups[0]["lr"], "seconds": round(state.train_seconds, 2),
              "learning_rates": epoch_lrs}
    state.history.append(record)
    value = metrics[args.metric_for_best_model]
    if isinstance(loop.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        loop.scheduler.step(value)
    if state.improved(value, args):
        state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
        best = loop.ema.module if loop.ema is not None else loop.unwrapped
        state.best_weights = {k: v.detach().cpu().clone() for k, v in best.state_dict().items()}
    else:
        state.bad_epochs += 1
    # At the optimizer step, as the per-step reports: one axis for both (wandb refuses steps that go back).
    accelerator.log({f"epoch/{k}": v for k, v in record.items() if isinstance(v, (int, float))},
                    step=state.global_step)
    accelerator.print(_format_record(record, best=state.best_epoch == state.epoch))


def _print_plan(loop: Loop, args: TrainingArguments, accelerator: Accelerator, lr: float) -> None:
    n, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    per_device = args.per_device_train_batch_size
    epochs = loop.num_epochs if args.max_train_steps else args.num_train_epochs     # 5.85: the last one partial
    accelerator.print(f"Training {epochs:g} epochs ({loop.max_steps} optimizer steps) on {n} process(es), "
                      f"{accelerator.device}; global batch {per_device * n * accumulation} ({per_device} per process x "
                      f"{n} process(es) x {accumulation} accumulation step(s)); learning rate {lr:g}"
                      + (f" (--scale_lr: {args.learning_rate:g} x {n * accumulation})" if args.scale_lr else ""))


def plain_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The trained network as it is saved and served: without DDP, torch.compile or the autocast that
    `prepare` wraps its forward in under --mixed_precision (removed in place: for after training)."""
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False, keep_torch_compile=False)


def progressive_size(args: TrainingArguments, epoch: int, side: int) -> Optional[int]:
    """The side training images of `epoch` (0-based) are downscaled to under --progressive_resize_epochs, else None."""
    if epoch >= args.progressive_resize_epochs:
        return None
    return args.progressive_resize_size or round(0.75 * side)


def resolve_tta(args: TrainingArguments, augment) -> str:
    """--tta where the training flips images (mirrored views are in-distribution); "none" otherwise (digits)."""
    return args.tta if getattr(augment, "flip", False) else "none"


def _sync_batchnorm(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """BatchNorm statistics over the global batch (Accelerate leaves them per process); before DDP wraps the model."""
    if accelerator.device.type == "cpu":
        raise ConfigError("sync_batchnorm", "torch's SyncBatchNorm runs on GPUs only; drop the flag for CPU processes")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _save_and_stop(accelerator: Accelerator, args: TrainingArguments, state: TrainerState,
                   signum: int) -> TrainingInterrupted:
    """Checkpoint at this optimizer step (every process), for the caller to raise."""
    accelerator.print(f"\n{signal.Signals(signum).name}: saving a checkpoint at step {state.global_step} "
                      f"(epoch {state.epoch + 1}, batch {state.step_in_epoch}), then stopping")
    return TrainingInterrupted(signum, save_checkpoint(accelerator, args.output_dir, state, args.save_total_limit))


def _should_stop(state: TrainerState, args: TrainingArguments) -> bool:
    return args.early_stopping_patience is not None and state.bad_epochs >= args.early_stopping_patience


def describe_early_stop(state: TrainerState, args: TrainingArguments) -> str:
    """Why training stopped early: the metric, the patience and the best epoch whose weights are kept."""
    better = "risen" if args.greater_is_better else "fallen"
    return (f"Early stopping after epoch {state.epoch}: validation {args.metric_for_best_model} has not {better} by "
            f"more than {args.early_stopping_threshold:g} for {state.bad_epochs} epochs (--early_stopping_patience "
            f"{args.early_stopping_patience}); keeping epoch {state.best_epoch}'s weights "
            f"({args.metric_for_best_model} {state.best_metric:.4f})")


def _format_record(record: dict[str, Any], best: bool) -> str:
    return (f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
            f"val loss {record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f} f1 {record['eval_f1']:.4f}  "
            f"lr {record['learning_rate']:.3g}  {record['seconds']:.1f}s" + ("  *best" if best else ""))
