"""Learning-rate finder (Smith, 2017; fastai's `lr_find`): which --learning_rate to train with.

From a fresh model, the learning rate grows exponentially from `start` to `end` over `num_steps` optimizer steps
of the run's own training (data, augmentation, optimizer, loss); the loss is smoothed (exponential moving average,
beta 0.98, debiased) and the sweep stops once it exceeds 4x its minimum. As fastai does, the first tenth of the
steps and the last five are not read. The suggestion is the rate where the smoothed loss falls fastest per decade
(the steepest fall); fastai's `valley` rule (about halfway down the longest stretch over which the smoothed loss
keeps falling) is printed and drawn beside it. The issue asked for valley, fastai's default; it was measured here
and lost: on CIFAR-10 a network trained from scratch loses little loss in 100 steps, so the smoothed loss drifts
down from 1e-6 on, the longest fall starts in the near-flat part, and valley lands 17 points behind the best of a
5-rate grid for cnn-basic with Adam, where the steepest fall came within a point (bench/RESULTS.md, "lr-find").
With the muon optimizer every parameter group moves by the same factor, so the SGD groups keep their ratio to
--learning_rate.

`python -m image_classifier lr-find --dataset ... [train.py flags]` writes lr_find.png and lr_find.json to
--lr_find_dir (no model folder) and prints the suggestion with the train.py command that uses it.
"""

from __future__ import annotations

import copy
import math
import shlex
import sys
import tempfile
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["learning_rates", "smooth", "valley", "steepest", "suggest", "sweep", "find_learning_rate", "add_lr_find_command"]

BETA = 0.98              # the loss's moving average
DIVERGED = 4.0           # stop once the smoothed loss exceeds this multiple of its minimum


def learning_rates(start: float, end: float, num_steps: int) -> np.ndarray:
    """num_steps rates from start to end, evenly spaced on a log scale."""
    return start * (end / start) ** (np.arange(num_steps) / max(1, num_steps - 1))


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """Debiased exponential moving average of the losses."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** i))
    return out


def valley(rates: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's valley rule: the longest run of steps over which the (smoothed) loss falls (as a longest
    decreasing subsequence), and the rate a third plus a sixth of the way along it (about halfway)."""
    n = len(losses)
    if n < 2:
        raise ValueError("the sweep needs at least two steps to suggest a rate")
    length = [1] * n                      # length[i]: the longest decreasing subsequence ending at step i
    for i in range(1, n):
        length[i] = 1 + max((length[j] for j in range(i) if losses[i] < losses[j]), default=0)
    end = int(np.argmax(length))
    start = end - length[end] + 1
    third = (end - start) / 3
    return float(rates[start + int(third) + int(third / 2)])


def steepest(rates: Sequence[float], losses: Sequence[float]) -> float:
    """The rate where the (smoothed) loss falls fastest per decade of learning rate: the second reading."""
    return float(rates[int(np.argmin(np.gradient(np.asarray(losses), np.log(np.asarray(rates)))))])


def suggest(rates: Sequence[float], smoothed: Sequence[float]) -> dict[str, float]:
    """fastai's readings of a sweep, on the part it reads: without the first tenth of the steps (the smoothing
    still settling) and the last five (the divergence). `steepest` is the suggestion (see the module's note)."""
    total = len(rates)
    kept = slice(total // 10, total - 5) if total - 5 - total // 10 >= 2 else slice(0, total)
    return {"valley": valley(rates[kept], smoothed[kept]), "steepest": steepest(rates[kept], smoothed[kept])}


def _batches(loader) -> Iterator:
    """The loader's batches, epoch after epoch, without keeping them (itertools.cycle would)."""
    while True:
        yield from loader


def sweep(model, optimizer, loader, augment, args, accelerator, rates: Sequence[float]) -> list[float]:
    """Train at each rate in turn (one optimizer step each; every parameter group scaled by rate /
    --learning_rate) and return the raw losses, stopping once the smoothed loss diverges. The model's weights,
    the optimizer's state and the random state are restored afterwards, exactly."""
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state())
    base = [group["lr"] for group in optimizer.param_groups]
    losses: list[float] = []
    model.train()
    try:
        for rate, (images, labels) in zip(rates, _batches(loader)):
            for group, lr in zip(optimizer.param_groups, base):
                group["lr"] = lr * rate / args.learning_rate
            logits = model(pixel_values=augment(images)).logits
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            smoothed = smooth(losses)
            if not math.isfinite(losses[-1]) or smoothed[-1] > DIVERGED * min(smoothed):
                break
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])
    return losses


def find_learning_rate(config, start: float = 1e-7, end: float = 10.0, num_steps: int = 100) -> dict[str, Any]:
    """The sweep on the run `config` describes (its data, model, augmentation, optimizer and batch): rates, raw and
    smoothed losses, the suggestion. Nothing is written to --output_dir."""
    from accelerate.utils import set_seed

    from . import engine, runner
    from .data import load_data
    from .optim import build_optimizer

    with tempfile.TemporaryDirectory(prefix="lr-find-") as scratch:      # never a model folder
        config.train.output_dir = scratch
        config.unset = config.unset - {"output_dir"}
        source, notes = runner.follow_the_data(config)
        accelerator = engine.build_accelerator(config)
        set_seed(config.train.seed)
        for note in notes:
            accelerator.print(note)
        data = load_data(config.data, seed=config.train.seed, source=source)
    model, normalize = runner.build_model(config, data)
    args = config.train
    augment = runner.build_augment(config, data, normalize)
    loader = engine.build_loader(data.tensors["train"], args.per_device_train_batch_size, True,
                                 config.data.dataloader_num_workers or 0, persistent=False)
    model, optimizer, loader = accelerator.prepare(model, build_optimizer(model, args), loader)
    augment.to(accelerator.device)
    rates = learning_rates(start, end, num_steps)
    losses = sweep(model, optimizer, loader, augment, args, accelerator, rates)
    smoothed = smooth(losses)
    readings = suggest(rates[:len(losses)], smoothed)
    return {"model": config.model.model, "optimizer": args.optimizer, "batch_size": args.per_device_train_batch_size,
            "learning_rates": [float(r) for r in rates[:len(losses)]], "losses": losses, "smoothed": smoothed,
            "suggestion": readings["steepest"], "rule": "steepest fall", "valley": readings["valley"]}


# --------------------------------------------------------------------------------------------
# Command line: `python -m image_classifier lr-find [--lr_find_steps N] [train.py flags]`
# --------------------------------------------------------------------------------------------

def add_lr_find_command(subparsers) -> None:
    """Add the `lr-find` sub-command (see `image_classifier.__main__`); the train.py flags pass through."""
    parser = subparsers.add_parser(
        "lr-find", help="sweep the learning rate and suggest one (the steepest fall of the loss)",
        description="Train a fresh model for --lr_find_steps steps at exponentially growing learning rates, with "
                    "every other train.py flag as given (data, model, optimizer, batch, augmentation); write "
                    "lr_find.png and lr_find.json to --lr_find_dir and print the suggested --learning_rate with the "
                    "train.py command that uses it. No model folder is written.", add_help=True)
    parser.add_argument("--lr_find_steps", type=int, default=100, help="optimizer steps in the sweep (default 100)")
    parser.add_argument("--lr_find_start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    parser.add_argument("--lr_find_end", type=float, default=10.0, help="last learning rate (default 10)")
    parser.add_argument("--lr_find_dir", default="lr_find", help="where lr_find.png and lr_find.json go")
    parser.set_defaults(run=lr_find_command, pass_through=True)


def lr_find_command(args, train_flags: Optional[list[str]] = None) -> int:
    """Run `lr-find`: parse the train.py flags, sweep, write the plot and the JSON, print the suggestion."""
    from pathlib import Path

    from . import plots
    from .config import parse_config
    from .files import write_json

    flags = list(train_flags if train_flags is not None else getattr(args, "train_flags", []))
    config = parse_config(flags)
    result = find_learning_rate(config, args.lr_find_start, args.lr_find_end, args.lr_find_steps)
    out = Path(args.lr_find_dir)
    write_json(out / "lr_find.json", result)
    plots.plot_lr_find(result["learning_rates"], result["smoothed"], result["suggestion"], result["valley"],
                       out / "lr_find.png", title=f"{result['model']}, {result['optimizer']}, batch {result['batch_size']}")
    kept = [flag for i, flag in enumerate(flags) if flag != "--learning_rate"
            and not (i > 0 and flags[i - 1] == "--learning_rate")]
    print(f"lr-find: {len(result['losses'])} steps from {args.lr_find_start:g} to {result['learning_rates'][-1]:.3g}; "
          f"suggested --learning_rate {result['suggestion']:.3g} (the loss falls fastest there; fastai's valley rule "
          f"reads {result['valley']:.3g}); plot: {out / 'lr_find.png'}")
    print("train with it:\n  python train.py " + " ".join(shlex.quote(f) for f in kept)
          + f" --learning_rate {result['suggestion']:.3g}", file=sys.stdout)
    return 0
