"""Latency and throughput of `Predictor` next to the bare model forward pass. Prints; never asserts.

    python bench/predictor_latency.py                         # newest model under outputs/
    python bench/predictor_latency.py --model outputs/cifar10 --runs 200 --device cuda
    python bench/predictor_latency.py --preset cnn-fast       # an untrained preset, no run needed

Single image, the same PNG photo every time (median over --runs, ms):
  bare model forward       the model alone on the already preprocessed tensor (no Predictor)
  Predictor.forward        the same tensor through the Predictor's queue and worker thread
  bare pipeline            PNG bytes -> load_image -> saved image processor -> model, in the caller's thread
  Predictor.predict        PNG bytes -> top-5 labels, end to end
  Explainer.explain        PNG bytes -> Grad-CAM overlay at the photo's size, every stage's feature maps, top 5
  + feature-map grids      the same, with the grids drawn as the app and `explain` show them
Throughput (images/s):
  predict_batch(N)         one call with N decoded photos (preprocess + forward + top-k), next to the bare
                           forward on the same N preprocessed images, at each --batch-sizes
  T threads                T threads each calling Predictor.forward(one image): the worker stacks waiting
                           requests into shared forward passes
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier.images import load_image  # noqa: E402
from image_classifier.inference import Predictor  # noqa: E402
from image_classifier.interpretation import Explainer  # noqa: E402
from image_classifier.model_folder import find_latest_model  # noqa: E402
from timing import describe_host, synchronize, time_steps  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or Hub id (default: newest finished run under outputs/)")
    p.add_argument("--preset", default=None,
                   help="benchmark an untrained small-CNN preset (cnn-basic, cnn-fast, cnn-wide) instead of --model")
    p.add_argument("--image-size", type=int, default=32, help="input side for --preset (default 32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes for --preset (default 10)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--runs", type=int, default=100, help="timed repetitions for the single-image figures")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-sizes", default="1,8,32,128", help="comma-separated sizes for predict_batch")
    p.add_argument("--threads", default="1,4,16", help="comma-separated client thread counts")
    p.add_argument("--max-batch-size", type=int, default=32, help="Predictor(max_batch_size=...)")
    p.add_argument("--photo-size", type=int, default=640, help="side of the synthetic input photo (pixels)")
    return p.parse_args()


def _preset_folder(preset: str, image_size: int, num_classes: int) -> str:
    from transformers import ViTImageProcessor

    from image_classifier.models import create_model

    folder = tempfile.mkdtemp(prefix=f"bench-{preset}-")
    model = create_model(preset, class_names=[f"class_{i}" for i in range(num_classes)], num_channels=3,
                         image_size=image_size)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.25] * 3).save_pretrained(folder)
    return folder


def _median_ms(fns: dict, runs: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each function in ms, timed round-robin so that load from other
    processes on the machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[key].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def _throughput(fn, images: int, device: torch.device, min_seconds: float = 1.0) -> float:
    """Images/s of `fn` (`images` per call) over at least min_seconds, after one call to warm up this shape."""
    return time_steps(fn, device, images, steps=1, min_seconds=min_seconds, warmup=1)["images_per_second"]


def main():
    args = parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    if args.preset:
        model_id, what = _preset_folder(args.preset, args.image_size, args.num_classes), f"untrained {args.preset}"
    else:
        model_id = args.model or os.environ.get("MODEL_ID") or find_latest_model("outputs")
        if model_id is None:
            sys.exit("no model: pass --model FOLDER_OR_HUB_ID, set MODEL_ID, train one into outputs/, "
                     "or use --preset cnn-fast")
        model_id, what = str(model_id), str(model_id)

    predictor = Predictor(model_id, device=args.device, max_batch_size=args.max_batch_size)
    device = predictor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()}"
    params = sum(p.numel() for p in predictor.model.parameters())
    size = predictor.processor.size
    photo_h = args.photo_size * 3 // 4
    print(f"model   {what}: {predictor.model.config.model_type}, {params:,} parameters, {predictor.num_labels} "
          f"classes, input {size.get('height')}x{size.get('width')}")
    print(f"device  {device} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print(f"input   one {args.photo_size}x{photo_h} PNG photo, the same image for every figure")

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (photo_h, args.photo_size, 3), np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    png = buf.getvalue()
    image = load_image(png)
    pixels = predictor.preprocess([image])
    pixels_dev = pixels.to(device)
    model = predictor.model

    def bare_forward(x=pixels_dev):
        with torch.inference_mode():
            return torch.softmax(model(pixel_values=x).logits, dim=-1).cpu()

    def bare_pipeline():                    # what a script without the Predictor does for one file
        return bare_forward(predictor.preprocess([load_image(png)]).to(device))

    t = _median_ms({"fwd": bare_forward,
                    "p_fwd": lambda: predictor.forward(pixels),
                    "bare": bare_pipeline,
                    "p_png": lambda: predictor.predict(png)}, args.runs, args.warmup, device)
    print("\nsingle image, median latency")
    print(f"  bare model forward (preprocessed tensor)        {t['fwd']:8.2f} ms")
    print(f"  Predictor.forward (same tensor)                 {t['p_fwd']:8.2f} ms   "
          f"({t['p_fwd'] - t['fwd']:+.2f} ms: queue + worker thread)")
    print(f"  bare: PNG bytes -> load, preprocess, forward    {t['bare']:8.2f} ms")
    print(f"  Predictor.predict (PNG bytes -> top 5)          {t['p_png']:8.2f} ms   "
          f"({t['p_png'] - t['bare']:+.2f} ms over bare)")

    explainer = Explainer(predictor)
    t = _median_ms({"explain": lambda: explainer.explain(png),
                    "grids": lambda: explainer.explain(png).feature_map_images()},
                   max(10, args.runs // 4), max(2, args.warmup // 4), device)
    print(f"  Explainer.explain (PNG bytes -> Grad-CAM, maps) {t['explain']:8.2f} ms")
    print(f"  + feature-map grids (what the app shows)        {t['grids']:8.2f} ms")

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = [image] * max(sizes)
    print("\nbatch throughput, one call with N decoded photos   Predictor.predict_batch   bare forward only")
    for bs in sizes:
        batch = images[:bs]
        ips = _throughput(lambda: predictor.predict_batch(batch), bs, device)
        bare = predictor.preprocess(batch).to(device)
        bare_ips = _throughput(lambda: (bare_forward(bare), synchronize(device)), bs, device)
        print(f"  N={bs:<4d}{'':42s}{ips:10.0f} img/s {bare_ips:14.0f} img/s")

    print("\nconcurrent throughput, T threads each calling Predictor.forward(one preprocessed image)")
    for n in [int(x) for x in args.threads.split(",")]:
        per_thread = max(20, args.runs // 2)
        before = predictor.stats

        def worker():
            for _ in range(per_thread):
                predictor.forward(pixels)
        threads = [threading.Thread(target=worker) for _ in range(n)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
        batches = predictor.stats["batches"] - before["batches"]
        print(f"  T={n:<3d} {n * per_thread / elapsed:8.0f} img/s   ({n * per_thread / max(batches, 1):.1f} images per "
              f"forward pass)")
    predictor.close()


if __name__ == "__main__":
    main()
