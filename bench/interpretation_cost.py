"""What the run's interpretation plots cost, next to the run's training time. Prints; never asserts.

    python bench/interpretation_cost.py --model outputs/cifar10

Re-creates what the end of that run did after saving the weights: the test split as the run decoded it (its
training_config.json, the decode cache), the saved model's test probabilities, then the three interpretation
plots of `runner.save_model_folder`, timed one by one (written to a temporary folder, not the model's):
  top_losses.png   the most confident mistakes, each with its Grad-CAM
  gradcam.png      Grad-CAM of correct and wrong predictions, per class
  filters.png      the first layer's filters
The share is of the run's own `train_seconds` (metrics.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier import interpretation, metrics  # noqa: E402
from image_classifier.evaluation import load_saved_run  # noqa: E402
from timing import describe_host  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/cifar10", help="a finished run's folder (default outputs/cifar10)")
    args = parser.parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    folder = Path(args.model)
    saved = load_saved_run(str(folder))
    data, model, normalize = saved.data, saved.model, saved.normalize
    view = data.eval_view("test")
    labels = torch.as_tensor([view[i][1] for i in range(len(view))]).numpy()
    with torch.inference_mode():
        logits = torch.cat([model(pixel_values=normalize(view.images_at(range(s, min(s + 500, len(view)))))).logits
                            for s in range(0, len(view), 500)]).numpy()
    probs = metrics.softmax(logits)
    run = json.loads((folder / "metrics.json").read_text())
    single = run.get("test_accuracy_without_tta", run["test_accuracy"])
    print(f"model   {folder}: {model.config.model_type}, single-view test accuracy {single:.4f} in metrics.json, "
          f"{(probs.argmax(1) == labels).mean():.4f} recomputed here, on {len(labels):,} test images")
    print(f"run     trained {run['train_seconds']:.1f} s on {run.get('hardware')}")
    writers = {"top_losses.png": lambda p: interpretation.write_top_losses(model, normalize, view, labels, probs,
                                                                         data.class_names, p),
               "gradcam.png": lambda p: interpretation.write_cam_grid(model, normalize, view, labels, probs,
                                                                     data.class_names, p),
               "filters.png": lambda p: interpretation.write_filters(model, p)}
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in writers.items():
            start = time.perf_counter()
            write(Path(tmp) / name)
            seconds = time.perf_counter() - start
            total += seconds
            print(f"  {name:16s} {seconds:6.2f} s")
    print(f"interpretation plots {total:.2f} s = {100 * total / run['train_seconds']:.2f} % of the run's "
          f"{run['train_seconds']:.1f} s of training")


if __name__ == "__main__":
    main()
