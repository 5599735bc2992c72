"""Does stock `pipeline()` on a saved model folder score its test split as the run's metrics.json says? Prints both.

    python bench/pipeline_agreement.py OUTPUT_DIR [--batch_size 64]

The test split is rebuilt from the folder's training_config.json (the run's own split: same dataset, seed and
fractions); each test image goes to `pipeline("image-classification", model=OUTPUT_DIR)` by path, as a user would
send it, and the top-1 labels are compared with the split's labels. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier.config import parse_config  # noqa: E402
from image_classifier.data import load_data  # noqa: E402
from timing import describe_host  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="a model folder train.py wrote")
    p.add_argument("--batch_size", type=int, default=64, help="images per pipeline() forward pass")
    args = p.parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    import datasets
    from transformers import pipeline

    out = Path(args.output_dir)
    config = parse_config([str(out / "training_config.json")])
    data = load_data(config.data, seed=config.train.seed)
    values = data.splits["test"].cast_column("image", datasets.Image(decode=False))["image"]
    inputs = [v["path"] or v["bytes"] for v in values]
    if any(isinstance(i, bytes) for i in inputs):      # parquet rows hold the encoded bytes, not a path
        import io

        from PIL import Image

        inputs = [Image.open(io.BytesIO(i)) if isinstance(i, bytes) else i for i in inputs]
    classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
    started = time.perf_counter()
    predicted = [r[0]["label"] for r in classify(inputs, top_k=1, batch_size=args.batch_size)]
    accuracy = float(np.mean([data.class_names.index(p) == int(y) for p, y in zip(predicted, data.tensors["test"].labels)]))
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"pipeline() accuracy {accuracy:.4f} on {len(inputs)} test images ({time.perf_counter() - started:.0f} s); "
          f"metrics.json test_accuracy {metrics['test_accuracy']:.4f}"
          + (f" (without TTA {metrics['test_accuracy_without_tta']:.4f})" if "test_accuracy_without_tta" in metrics else ""))


if __name__ == "__main__":
    main()
