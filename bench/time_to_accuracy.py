"""Time to accuracy of the default training recipe on CIFAR-10. Prints figures; never asserts.

    python bench/time_to_accuracy.py                                   # ../shared/datasets/cifar10, 1 seed
    python bench/time_to_accuracy.py --seeds 2                         # repeat with seeds 0, 1; print the mean
    python bench/time_to_accuracy.py --first_seed 1                    # seed 1 alone (a second seed, run later)
    python bench/time_to_accuracy.py --seeds 2 -- --num_train_epochs 20 --model cnn-wide   # any train.py flag
    python bench/time_to_accuracy.py -- --time_budget 15m             # the plan train.py would make, and its end

It runs the project's own stages (load_data, runner.build_model, runner.train_model) exactly as
`train.py` does, except that the held-out split scored after every epoch is the TEST split, so the
per-epoch figure is test accuracy (with test-time augmentation when the recipe enables it: the bench
sets --tta_each_epoch, which train.py leaves off).
`--full_train` also trains on the validation part train.py carves out (all 50k, as airbench). Seconds
are training seconds as `fit` counts them: wall time inside training epochs, evaluation excluded.

Printed per seed: each epoch's cumulative training seconds and test accuracy, then the seconds at
which 85%, 90% and 93% were first reached, the final accuracy (the per-epoch figures are in the training's
precision, bf16 where that is the default; the final one is also given in float32, as train.py's final
evaluation and pipeline() compute it), the training loop's images/s, and the
pipeline efficiency = loop images/s / bare images/s, where "bare" is the same model (same memory
format, precision and compile setting) doing forward + backward + optimizer step on random tensors
of the same batch size, measured in the same process over at least --bare_steps steps and --bare_seconds
(with --progressive_resize_epochs, at each size the epochs trained at, weighted by the images trained at
it), and the same ratio without epoch 1, whose seconds also carry the device's one-time start-up that the
bare model's warm-up steps leave out (on a GPU, where an epoch lasts 0.2 s, most of the gap). With several
seeds it then prints the mean curve (per epoch, the seeds' mean seconds and mean accuracy); the JSON's
seconds_to_85/90/93 are read off that curve: the mean training seconds of the first epoch whose seed-mean
accuracy reaches the threshold (null where it never does). With `--time_budget` the run plans as train.py does (for
the images the bench trains on, --full_train included), prints the plan, and then the planned against the actual
training seconds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.utils import set_seed

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier import budget, engine, models  # noqa: E402
from image_classifier.config import parse_config  # noqa: E402
from image_classifier.data import ImageTensors, load_data  # noqa: E402
from image_classifier.metrics import compute_metrics  # noqa: E402
from image_classifier.engine import predict_float32  # noqa: E402
from image_classifier.runner import build_model, describe_hardware, train_model  # noqa: E402
from timing import describe_host  # noqa: E402

THRESHOLDS = (0.85, 0.90, 0.93)
DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DEFAULT_DATASET), help="dataset (default: the local CIFAR-10 copy)")
    p.add_argument("--seeds", type=int, default=1,
                   help="runs with seeds first_seed..first_seed+N-1; the summary is their mean")
    p.add_argument("--first_seed", type=int, default=0,
                   help="the first seed (e.g. 1 to add a second seed to a run of seed 0 made earlier)")
    p.add_argument("--full_train", action="store_true",
                   help="train on all of the train split (CIFAR-10: 50k), as airbench does, adding the validation "
                        "part train.py holds out (5k) and the bench never scores; default: train.py's 45k")
    p.add_argument("--bare_steps", type=int, default=20,
                   help="timed steps of the bare model, at least (after 3 warm-up)")
    p.add_argument("--bare_seconds", type=float, default=2.0,
                   help="seconds the bare model is timed for, at least (on a GPU 20 steps take a fraction of one)")
    p.add_argument("train_flags", nargs="*", help="train.py flags after `--`, e.g. -- --num_train_epochs 12")
    args = p.parse_args()
    if args.seeds < 1 or args.first_seed < 0:
        p.error(f"--seeds must be at least 1 and --first_seed at least 0 (got {args.seeds} and {args.first_seed})")
    # The bench sets each run's seed itself; a train.py --seed after `--` would reach the config but not set_seed,
    # the printed tables or the JSON. train.py's own parser says whether the flags set it (it also takes --see 3).
    if any(parse_config(["--dataset", args.dataset, "--seed", str(s), *args.train_flags]).train.seed != s
           for s in (0, 1)):
        p.error("the bench picks the seeds: use --first_seed and --seeds before `--`, not train.py's --seed after it")
    return args


def seconds_to(history: list[dict], threshold: float) -> float | None:
    """Training seconds at the end of the first epoch whose test accuracy reaches `threshold`."""
    return next((h["seconds"] for h in history if h["eval_accuracy"] >= threshold), None)


def bare_images_per_second(model, accelerator, image_shape: tuple[int, ...], config, steps: int,
                           min_seconds: float = 0.0) -> dict:
    """Forward + backward + optimizer step of the trained model on random tensors (no data, no augmentation), as
    --time_budget times a copy (budget.time_training_step), over at least `steps` steps after 3 warm-up ones and at
    least `min_seconds`. Returns images_per_second with the steps and seconds it was measured over."""
    return budget.time_training_step(model, config.train, accelerator, image_shape, steps, min_seconds, warmup=3)


def run_seed(seed: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="tta-") as out:
        # --tta_each_epoch: every epoch's figure is the test accuracy as the final evaluation would score it.
        config = parse_config(["--dataset", args.dataset, "--seed", str(seed), "--output_dir", out,
                               "--overwrite_output_dir", "--tta_each_epoch", "true", *args.train_flags])
        accelerator = engine.build_accelerator(config)
        set_seed(seed)                      # as train.py: before the splits and the model's initialisation
        models.prepare_model_config(config)
        data = load_data(config.data, seed=seed)
        train = data.tensors["train"]
        if args.full_train and "validation" in data.tensors:
            train = ImageTensors(torch.cat([train.images, data.tensors["validation"].images]),
                                 torch.cat([train.labels, data.tensors["validation"].labels]))
        plan, build, shape = None, (lambda c: build_model(c, data)[0]), tuple(train.images.shape[1:])
        if config.train.time_budget:    # as train.py plans it, for the images this bench trains on
            plan = budget.plan_time_budget(config, build, accelerator, shape, len(train))
            print(budget.describe_plan(plan))
        elif line := budget.check_default_speed(config, build, accelerator, shape, len(train)):
            print(line)                 # as train.py: a float32 host where the default would train past 15 min
        set_seed(seed)                      # as train.py: the model initialised after a fresh seed, timed or not
        model, normalize = build_model(config, data)
        result = train_model(model, normalize, data, train, data.tensors["test"], config, accelerator, plan=plan)
        history = result.state.history
        # Before the bare model's timing below, whose optimizer steps on random tensors change the weights.
        final_float32 = float32_accuracy(result, accelerator, data, normalize, config)
        # Images trained on, as fit counts them (the resident loader drops each epoch's last partial batch).
        images = sum(h["train_images"] for h in history)
        # The bare model at each size the epochs trained at (--progressive_resize_epochs: some at a smaller one);
        # its seconds for the same work are each epoch's images at its own size's rate.
        channels = train.images.shape[1]
        bare = {side: bare_images_per_second(result.model, accelerator, (channels, side, side), config,
                                             args.bare_steps, args.bare_seconds)
                for side in sorted({h["train_image_size"] for h in history})}
        bare_seconds = _bare_seconds(history, bare)
        # Epoch 1 also pays the device's one-time start-up (CUDA's context and kernel loading, cuDNN's choice of
        # kernels), which the bare model's warm-up steps leave out: on a GPU, where an epoch lasts 0.2 s, that is
        # most of the gap. The figure without it is the loop's own cost.
        later_seconds = result.state.train_seconds - history[0]["seconds"]
        return {"seed": seed, "history": history, "train_images": len(train), "device": describe_hardware(accelerator),
                "mixed_precision": accelerator.mixed_precision, "final_accuracy": history[-1]["eval_accuracy"],
                "final_accuracy_float32": final_float32,
                "images_per_second": images / result.state.train_seconds,
                "bare_images_per_second": images / bare_seconds, "bare_by_size": bare,
                "efficiency": bare_seconds / result.state.train_seconds,
                "train_seconds": result.state.train_seconds,
                "time_budget_seconds": plan and plan.budget_seconds,
                "planned_train_seconds": plan and plan.predicted_seconds, "plan": plan and budget.describe_plan(plan),
                "replanned_train_seconds": plan and plan.replanned_seconds, "replans": plan.replans if plan else [],
                "efficiency_after_epoch_1": _bare_seconds(history[1:], bare) / later_seconds
                if len(history) > 1 and later_seconds > 0 else None,
                **{f"seconds_to_{round(t * 100)}": seconds_to(history, t) for t in THRESHOLDS}}


def float32_accuracy(result, accelerator, data, normalize, config) -> float:
    """Test accuracy (with the recipe's TTA) of the trained network in float32, as train.py's final evaluation and
    pipeline() compute it; the per-epoch figures are in the training's precision (bf16 where that is the default)."""
    if accelerator.mixed_precision == "no" and config.train.tta_each_epoch:     # the last epoch's figure is it
        return result.state.history[-1]["eval_accuracy"]
    logits, labels = predict_float32(engine.plain_model(accelerator, result.model), data.tensors["test"], normalize,
                                     accelerator, config, result.tta)
    return compute_metrics(logits, labels, data.class_names)["accuracy"]


def _bare_seconds(epochs: list[dict], bare: dict) -> float:
    """Seconds the bare model takes for these epochs' images, each at the rate of the size it trained at."""
    return sum(h["train_images"] / bare[h["train_image_size"]]["images_per_second"] for h in epochs)


def mean_curve(runs: list[dict]) -> list[dict]:
    """Per epoch, the seeds' mean training seconds and mean test accuracy (epochs all seeds have)."""
    epochs = min(len(r["history"]) for r in runs)
    return [{"epoch": runs[0]["history"][i]["epoch"],
             "seconds": _mean(r["history"][i]["seconds"] for r in runs),
             "eval_accuracy": _mean(r["history"][i]["eval_accuracy"] for r in runs)} for i in range(epochs)]


def _round(value, digits: int = 1):
    return None if value is None else round(value, digits)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(seconds) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f} s"


def _fmt_ratio(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    args = parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run_seed(seed, args)
        runs.append(r)
        print(f"\nseed {seed} on {r['device']}, {r['train_images']:,} training images:")
        print("  epoch  train_seconds  test_accuracy")
        for h in r["history"]:
            print(f"  {h['epoch']:>5}  {h['seconds']:>13.1f}  {h['eval_accuracy']:>13.4f}")
        print("  " + "  ".join(f"to {round(t * 100)}%: {_fmt(r[f'seconds_to_{round(t * 100)}'])}" for t in THRESHOLDS))
        sizes = ", ".join(f"{side}x{side}: {b['images_per_second']:.0f} over {b['steps']} steps, {b['seconds']:.1f} s"
                          for side, b in r["bare_by_size"].items())
        if r["plan"]:
            for line in r["replans"]:
                print(f"  {line}")
            print(f"  time budget {r['time_budget_seconds']:g} s: planned at the start {r['planned_train_seconds']:.1f} s "
                  f"of training, trained {r['train_seconds']:.1f} s (actual / planned "
                  f"{r['train_seconds'] / r['planned_train_seconds']:.3f}; the budget also paid "
                  f"{r['time_budget_seconds'] - r['train_seconds']:.1f} s of timing and margin)")
            if r["replanned_train_seconds"]:
                print(f"  the last re-plan, after epoch {len(r['history']) - 1}, predicted "
                      f"{r['replanned_train_seconds']:.1f} s (actual / predicted "
                      f"{r['train_seconds'] / r['replanned_train_seconds']:.3f})")
        print(f"  final accuracy {r['final_accuracy']:.4f} ({r['mixed_precision']}; float32: "
              f"{r['final_accuracy_float32']:.4f}); loop {r['images_per_second']:.0f} images/s; bare model "
              f"{r['bare_images_per_second']:.0f} images/s ({sizes}); efficiency {r['efficiency']:.3f} "
              f"({_fmt_ratio(r['efficiency_after_epoch_1'])} after epoch 1)")

    curve = mean_curve(runs)
    if args.seeds > 1:
        print(f"\nmean of {args.seeds} seeds:\n  epoch  train_seconds  test_accuracy")
        for h in curve:
            print(f"  {h['epoch']:>5}  {h['seconds']:>13.1f}  {h['eval_accuracy']:>13.4f}")
    # The thresholds are read off the seed-mean curve: the first epoch whose mean accuracy reaches them.
    summary = {f"seconds_to_{round(t * 100)}": _round(seconds_to(curve, t)) for t in THRESHOLDS}
    summary.update(final_accuracy=round(_mean(r["final_accuracy"] for r in runs), 4),
                   final_accuracy_float32=round(_mean(r["final_accuracy_float32"] for r in runs), 4),
                   mixed_precision=runs[0]["mixed_precision"],
                   images_per_second=round(_mean(r["images_per_second"] for r in runs), 1),
                   efficiency=round(_mean(r["efficiency"] for r in runs), 3),
                   train_seconds=round(_mean(r["train_seconds"] for r in runs), 1),
                   time_budget_seconds=runs[0]["time_budget_seconds"],
                   planned_train_seconds=_round(_mean(r["planned_train_seconds"] for r in runs)),
                   replanned_train_seconds=_round(_mean(r["replanned_train_seconds"] for r in runs)),
                   epochs=_mean(len(r["history"]) for r in runs),
                   efficiency_after_epoch_1=_round(_mean(r["efficiency_after_epoch_1"] for r in runs), 3),
                   device=runs[0]["device"], seeds=args.seeds, first_seed=args.first_seed,
                   train_images=runs[0]["train_images"], flags=" ".join(args.train_flags), host=describe_host())
    print(f"\nmean of {args.seeds} seed(s): " + ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("flags", "host")))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
