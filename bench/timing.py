"""The benches' one way to time a step's throughput (time_to_accuracy.py, compile_speedup.py, predictor_latency.py)."""

from __future__ import annotations

import torch

# The one step timer, shared with the runs' own (--time_budget times a copy of the model's steps with it).
from image_classifier.budget import synchronize, time_steps  # noqa: F401
from image_classifier.engine import cpu_kernel_caps


def bench_device() -> tuple[torch.device, str]:
    """The device a bench runs on (the GPU when there is one) and its name to print."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return device, name


# The instruction-set features that decide a CPU's training and inference speed here (see README, Speed).
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512_BF16", "amx_tile": "AMX",
                "avx512_vnni": "AVX512_VNNI"}


def describe_host() -> str:
    """'host: AMD EPYC 9R14, 2 cores (2 threads used); AVX2 AVX-512 AVX512_BF16 AVX512_VNNI; no AMX' (or the GPU):
    every bench prints it beside its figures, so figures from different hosts are never compared as one machine."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:                      # not Linux: the name platform gives
        pass
    have = [name for flag, name in CPU_FEATURES.items() if flag in flags]
    missing = [name for flag, name in CPU_FEATURES.items() if flag not in flags and flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = (f"host: {model}, {cores} cores ({torch.get_num_threads()} threads used); {' '.join(have) or 'no AVX2'}"
            + (f"; no {', '.join(missing)}" if missing else ""))
    caps = cpu_kernel_caps()
    if caps:            # emulating a smaller CPU: its figures are not this host's own
        line += f"; kernels capped by {' '.join(f'{k}={v}' for k, v in caps.items())}"
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line
