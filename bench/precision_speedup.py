"""Does bf16 autocast pay here? Training-step images/s of a preset in float32 and under bf16 autocast, at the
image sizes training uses (24x24 for progressive resizing's small epochs, 32x32). Prints; never asserts.

    python bench/precision_speedup.py                                  # cnn-fast and cnn-wide, batch 1000
    python bench/precision_speedup.py --models cnn-wide --batch_size 2000

Training defaults to bf16 where the chip computes in it natively: a GPU that supports it, or, for cnn-fast and
cnn-wide, a CPU with AVX512_BF16 or AMX (`engine.default_precision`); this prints that choice per model too. The
step is compile_speedup.py's (forward + backward + SGD step on random channels_last tensors), eager, timed for at
least --min_seconds. Rates print to 0.1 image/s and the ratio to 3 decimals, so the ratio can be checked from them.
"""

from __future__ import annotations

import argparse

from compile_speedup import measure          # first: it puts src/ on sys.path
from image_classifier.engine import default_precision  # noqa: E402
from timing import bench_device, describe_host  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cnn-fast", "cnn-wide"], help="small-CNN presets")
    p.add_argument("--batch_size", type=int, default=1000, help="images per step")
    p.add_argument("--image_sizes", type=int, nargs="+", default=[24, 32], help="square image sides, pixels")
    p.add_argument("--steps", type=int, default=10, help="timed steps, at least")
    p.add_argument("--min_seconds", type=float, default=10.0, help="seconds each variant is timed for, at least")
    args = p.parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    device, name = bench_device()
    print(f"batch {args.batch_size}, channels_last, eager, on {name}")
    for model in args.models:
        print(f"  {model}: training's default precision here: {default_precision(None, model) or 'float32'}")
        for side in args.image_sizes:
            rates = {bf16: measure(model, args.batch_size, args.steps, args.min_seconds, False, device, bf16, side)
                     ["images_per_second"] for bf16 in (False, True)}
            print(f"  {model:<9} {side}x{side}: float32 {rates[False]:9.1f} images/s   bf16 autocast "
                  f"{rates[True]:9.1f} images/s   bf16 / float32: {rates[True] / rates[False]:.3f}x", flush=True)


if __name__ == "__main__":
    main()
