"""Does `--torch_compile` pay here? Training-step images/s of a preset, eager vs torch.compile. Prints; never asserts.

    python bench/compile_speedup.py                      # cnn-fast, batch 256, 32x32 RGB, on CPU or the GPU
    python bench/compile_speedup.py --model cnn-wide --batch_size 512

One step = forward + backward + SGD step on random tensors (channels_last), as in training; the
first compiled step includes compiling, printed apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from image_classifier.models import create_model  # noqa: E402


def measure(name: str, batch_size: int, steps: int, compiled: bool, device: torch.device) -> tuple[float, float]:
    """(seconds of the first step, images/s over `steps` steps after 2 more warm-up steps)."""
    torch.manual_seed(0)
    model = create_model(name, class_names=[str(i) for i in range(10)], num_channels=3, image_size=32)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        F.cross_entropy(forward(pixel_values=x).logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return first, steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-fast", help="small-CNN preset")
    p.add_argument("--batch_size", type=int, default=256, help="images per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch_size}, 32x32 RGB, channels_last, on {name}")
    results = {}
    for compiled in (False, True):
        first, rate = measure(args.model, args.batch_size, args.steps, compiled, device)
        results[compiled] = rate
        print(f"  {'torch.compile' if compiled else 'eager':<14} first step {first:6.1f} s   then {rate:7.0f} images/s")
    print(f"  compiled / eager: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
