"""The benches' one way to time a step's throughput (time_to_accuracy.py, compile_speedup.py, predictor_latency.py)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def time_steps(step: Callable[[], None], device: torch.device, images_per_step: int, steps: int,
               min_seconds: float = 0.0, warmup: int = 0) -> dict:
    """Run `warmup` untimed steps, then time at least `steps` steps and at least `min_seconds`.

    A GPU step lasts milliseconds, so a fixed count of steps would time a fraction of a second there. No sync
    per step: that would time the launch queue running dry between steps; the final sync drains the queue, so
    the seconds cover all the work and the run lasts about min_seconds plus the queue. Returns
    images_per_second with the steps and seconds it was measured over.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    started, done = time.perf_counter(), 0
    while done < steps or time.perf_counter() - started < min_seconds:
        step()
        done += 1
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_second": done * images_per_step / seconds, "steps": done, "seconds": seconds}


def bench_device() -> tuple[torch.device, str]:
    """The device a bench runs on (the GPU when there is one) and its name to print."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return device, name


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (on a CPU nothing is queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
