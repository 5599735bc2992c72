"""Training rate of candidate timm backbones for photos at the photo default size. Prints figures; never asserts.

    python bench/photo_backbones.py                      # 160 px, batch 32, on the GPU if there is one, else CPU
    python bench/photo_backbones.py --image_size 224 --batch_size 128 --models resnet18 convnext_atto

Each model (random weights, 10 classes, channels_last, float32) does forward + backward + SGD step on random
batches, timed with bench/timing.py after 2 warm-up steps. This is the cost side of the choice of
recipes.PHOTO_MODEL (bench/RESULTS.md, "Photos"); the accuracy side needs the pretrained weights from the Hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from timing import bench_device, describe_host, time_steps  # noqa: E402

CANDIDATES = ["resnet10t", "resnet18", "resnet18d", "mobilenetv3_large_100", "efficientnet_b0", "resnet26t",
              "convnext_atto"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=CANDIDATES, help="timm model names")
    p.add_argument("--image_size", type=int, default=160, help="pixels")
    p.add_argument("--batch_size", type=int, default=32, help="images per step")
    p.add_argument("--min_seconds", type=float, default=5.0, help="each model is timed for at least this long")
    args = p.parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    import timm

    device, name = bench_device()
    print(f"forward + backward + SGD step, {args.image_size} px, batch {args.batch_size}, float32, channels_last, "
          f"on {name}")
    for model_name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(model_name, num_classes=10).to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch_size,), device=device)

        def step() -> None:
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        rate = time_steps(step, device, args.batch_size, steps=5, min_seconds=args.min_seconds, warmup=2)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"  {model_name:24s} {rate['images_per_second']:9.1f} images/s  {params:5.1f} M parameters", flush=True)


if __name__ == "__main__":
    main()
