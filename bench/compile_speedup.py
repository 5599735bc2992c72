"""Does `--torch_compile` pay here? Training-step images/s of a preset, eager vs torch.compile. Prints; never asserts.

    python bench/compile_speedup.py                      # cnn-fast, batch 256, 32x32 RGB, on CPU or the GPU
    python bench/compile_speedup.py --model cnn-wide --batch_size 1000

One step = forward + backward + SGD step on random tensors (channels_last), as in training, under bf16
autocast where training defaults to it (a GPU, or a CPU with native bf16). The first compiled step includes
compiling, printed apart. Each variant is timed over at least --steps steps and --min_seconds: a GPU step
lasts milliseconds, so a fixed handful of steps would time a small fraction of a second there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier.engine import default_precision  # noqa: E402
from image_classifier.models import create_model  # noqa: E402
from timing import bench_device, describe_host, synchronize, time_steps  # noqa: E402


def measure(name: str, batch_size: int, steps: int, min_seconds: float, compiled: bool, device: torch.device,
            bf16: bool, image_size: int = 32) -> dict:
    """Seconds of the first step, then images/s over >= `steps` steps and >= `min_seconds` after 2 warm-up steps."""
    torch.manual_seed(0)
    model = create_model(name, class_names=[str(i) for i in range(10)], num_channels=3, image_size=image_size)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(pixel_values=x).logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    return {"first_step_seconds": first, **time_steps(step, device, batch_size, steps, min_seconds, warmup=2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-fast", help="small-CNN preset")
    p.add_argument("--batch_size", type=int, default=256, help="images per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps, at least")
    p.add_argument("--min_seconds", type=float, default=2.0, help="seconds each variant is timed for, at least")
    args = p.parse_args()
    print(describe_host())       # beside every figure: they hold for this host only
    device, name = bench_device()
    bf16 = default_precision(None, args.model) == "bf16"
    print(f"{args.model}, batch {args.batch_size}, 32x32 RGB, channels_last, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"on {name}")
    rates = {}
    for compiled in (False, True):
        m = measure(args.model, args.batch_size, args.steps, args.min_seconds, compiled, device, bf16)
        rates[compiled] = m["images_per_second"]
        print(f"  {'torch.compile' if compiled else 'eager':<14} first step {m['first_step_seconds']:6.1f} s   then "
              f"{m['images_per_second']:7.0f} images/s ({m['steps']} steps in {m['seconds']:.1f} s)")
    print(f"  compiled / eager: {rates[True] / rates[False]:.2f}x")


if __name__ == "__main__":
    main()
