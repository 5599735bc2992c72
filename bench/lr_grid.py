"""The learning-rate finder's suggestion against a grid of rates, trained to the end. Prints; never asserts.

    python bench/lr_grid.py --dataset ../shared/datasets/cifar10 -- --model cnn-basic --optimizer adam --num_train_epochs 5

Runs `python -m image_classifier lr-find` with the train.py flags after `--` (timed), then trains one run per
--grid rate, one at the suggestion (the steepest fall) and one at fastai's valley reading, each in a fresh
`train.py` process writing to a temporary folder, and prints each run's validation and test accuracy (a run that
diverges and stops scores 0). A reading holds if its test accuracy is within a point of the grid's best.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import describe_host  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--grid", default="1e-4,3e-4,1e-3,3e-3,1e-2", help="comma-separated learning rates")
    args = parser.parse_args(argv)
    print(describe_host())       # beside every figure: they hold for this host only
    train_flags = ["--dataset", args.dataset, *flags]
    with tempfile.TemporaryDirectory(prefix="lr-grid-") as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "image_classifier", "lr-find", "--lr_find_dir", tmp, *train_flags],
                       check=True, cwd=ROOT)
        found = json.loads((Path(tmp) / "lr_find.json").read_text())
        print(f"lr-find: {len(found['losses'])} steps in {time.perf_counter() - started:.0f} s (with loading the data); "
              f"suggestion {found['suggestion']:.3g} (steepest fall), fastai's valley {found['valley']:.3g}", flush=True)
        rates = [float(r) for r in args.grid.split(",")]
        readings = {found["suggestion"]: "lr-find (steepest fall)", found["valley"]: "fastai's valley"}
        results = {rate: train_at(rate, train_flags, Path(tmp), readings.get(rate, ""))
                   for rate in [*rates, *readings]}
    best = max(rates, key=lambda r: results[r])
    for rate, name in readings.items():
        gap = results[best] - results[rate]
        print(f"grid best {best:.3g}: test {results[best]:.4f}; {name} {rate:.3g}: test {results[rate]:.4f} "
              f"({100 * abs(gap):.2f} points {'behind' if gap > 0 else 'ahead of'} the best)")


def train_at(rate: float, train_flags: list[str], tmp: Path, reading: str) -> float:
    """Train one run at `rate`, print its line, return its test accuracy (0 for a run that stopped with an error,
    such as a diverged loss: its last error line is printed)."""
    out = tmp / f"lr_{rate:.3g}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *train_flags, "--learning_rate", f"{rate:.6g}",
                           "--output_dir", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    mark = f"   <- {reading}" if reading else ""
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"  --learning_rate {rate:<10.3g} stopped with an error: {last[:160]}{mark}", flush=True)
        return 0.0
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"  --learning_rate {rate:<10.3g} validation {metrics['eval_accuracy']:.4f}  test "
          f"{metrics['test_accuracy']:.4f}  ({metrics['train_seconds']:.0f} s of training, "
          f"{time.perf_counter() - started:.0f} s in all){mark}", flush=True)
    return metrics["test_accuracy"]


if __name__ == "__main__":
    main()
