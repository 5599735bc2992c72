"""ONNX export of a finished run: parity with PyTorch, and PyTorch vs ONNX Runtime fp32 vs int8 on this CPU.
Prints; never asserts.

    python bench/onnx_export.py                                # outputs/cifar10, every test image
    python bench/onnx_export.py --model outputs/run --num_images 2000

Runs `python -m image_classifier export --int8` (export.export_and_check) on the folder: writes model.onnx and
model.int8.onnx there, checks the ONNX graph against PyTorch on the test images (largest logit difference, top-1
agreement), then scores and times each runtime (images/s at batch 64, ms at batch 1, best of repeated calls).
Targets (issue 37): int8 at most 0.5 points below fp32 and at least 1.5x faster than fp32 ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier.export import export_and_check  # noqa: E402
from timing import describe_host  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/cifar10", help="a finished run's folder (default outputs/cifar10)")
    parser.add_argument("--num_images", type=int, default=None, help="test images (default: all)")
    args = parser.parse_args()
    print(describe_host())
    report = export_and_check(Path(args.model), args.num_images, int8=True)
    fp32, int8 = report["onnxruntime"], report["onnxruntime int8"]
    lost = 100 * (fp32["test_accuracy"] - int8["test_accuracy"])
    print(f"int8 vs fp32 ONNX Runtime: {lost:+.2f} points of test accuracy lost (target <= 0.5), "
          f"{int8['images_per_second'] / fp32['images_per_second']:.2f}x the images/s at batch 64 (target >= 1.5), "
          f"{fp32['ms_per_image_at_batch_1'] / int8['ms_per_image_at_batch_1']:.2f}x at batch 1; ONNX Runtime fp32 is "
          f"{fp32['images_per_second'] / report['pytorch']['images_per_second']:.2f}x PyTorch at batch 64")


if __name__ == "__main__":
    main()
