"""The learning-rate finder's suggestion against a grid of rates, trained to the end. Prints; never asserts.

    python bench/lr_grid.py --dataset ../shared/datasets/cifar10 -- --model cnn-basic --optimizer adam --num_train_epochs 5

Runs `python -m image_classifier lr-find` with the train.py flags after `--` (timed), then trains one run per
--grid rate, one at the suggestion (valley) and one at the steepest fall, each in a fresh `train.py` process
writing to a temporary folder, and prints each run's validation and test accuracy. A reading holds if its test
accuracy is within a point of the grid's best.
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
              f"suggestion {found['suggestion']:.3g} (valley), steepest fall {found['steepest']:.3g}", flush=True)
        rates = [float(r) for r in args.grid.split(",")]
        readings = {found["suggestion"]: "   <- lr-find (valley)", found["steepest"]: "   <- steepest fall"}
        results = {}
        for rate in [*rates, *readings]:
            out = Path(tmp) / f"lr_{rate:.3g}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "train.py", *train_flags, "--learning_rate", f"{rate:.6g}",
                            "--output_dir", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            metrics = json.loads((out / "metrics.json").read_text())
            results[rate] = metrics
            print(f"  --learning_rate {rate:<10.3g} validation {metrics['eval_accuracy']:.4f}  test "
                  f"{metrics['test_accuracy']:.4f}  ({metrics['train_seconds']:.0f} s of training, "
                  f"{time.perf_counter() - started:.0f} s in all){readings.get(rate, '')}",
                  flush=True)
    best = max(rates, key=lambda r: results[r]["test_accuracy"])
    for rate, name in ((found["suggestion"], "valley"), (found["steepest"], "steepest fall")):
        gap = results[best]["test_accuracy"] - results[rate]["test_accuracy"]
        print(f"grid best {best:.3g}: test {results[best]['test_accuracy']:.4f}; {name} {rate:.3g}: test "
              f"{results[rate]['test_accuracy']:.4f} ({100 * abs(gap):.2f} points {'behind' if gap > 0 else 'ahead of'} "
              "the best)")


if __name__ == "__main__":
    main()
