"""Throughput and memory of the data path on a photo folder. Prints figures; never asserts.

    python bench/make_photo_folder.py /tmp/photos2k --num_images 2000
    python bench/data_throughput.py /tmp/photos2k                     # the default photo model at its default size
    python bench/data_throughput.py /tmp/photos20k -- --model timm/resnet10t   # any train.py flag after --

In one process, on the run's own objects (`runner.run` is what train.py calls):

1. loader: images/s of the training DataLoader alone (decode + random-resized crop + flip in the run's
   --dataloader_num_workers worker processes (0: in this process), collated into uint8 batches), over
   --loader_batches batches; and with one worker per core, what the loader could feed a GPU;
2. bare: the same model doing forward + backward + optimizer step on random batches of the same size (no data at
   all), in a fresh process just before the run and again just after it, the mean of the two: what the loop could
   reach if it never waited for data (this host's speed drifts 5-10 % between minutes; one timing beside a
   10-minute run moved the ratio below by as much);
3. loop: one training epoch of `train.py` on the folder (the run's own plan: data path, model, recipe, batch),
   images/s as the run counts them (training seconds, evaluation excluded), and efficiency = loop / bare; beside
   it, by the run's own clock, the share of its training seconds the loop spent waiting for its next batch
   (history.json's data_wait_seconds): 1 - that share is the efficiency that no drift of the host can move;
4. memory: the peak of the summed PSS of this process and all its children (the loader workers; PSS counts a
   page the processes share once, as RSS does not), sampled every 0.5 s through the whole run, beside the
   run's own estimate of a step's memory; and the bytes written under the cache folders (HF_HOME) by the run.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from image_classifier import data as data_stage  # noqa: E402
from image_classifier import engine, models  # noqa: E402
from image_classifier.config import parse_config  # noqa: E402
from image_classifier.runner import build_model, follow_the_data, run  # noqa: E402
from timing import describe_host, time_steps  # noqa: E402


class PeakMemory:
    """The peak memory (bytes) of this process and its children together, sampled every `every` seconds: the sum
    of their PSS (proportional set size: each shared page divided among the processes that map it). The sum of
    plain RSS counts the pages forked loader workers share with their parent once per process (18 GB for the
    2,000-photo run, where the main process alone peaked at 3), which no machine ever had to hold."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = sum(pss(process.pid) for process in [me, *me.children(recursive=True)])
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pss(pid: int) -> int:
    """Bytes of PSS of a process, from /proc/PID/smaps_rollup (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def measure_loader(data, config, batches: int, workers: int) -> float:
    """Images/s of the training loader alone with `workers` processes, from its first batch (which starts them and,
    under --streaming, fills the shuffle buffer) to its last timed one: not the teardown after it (datasets sleeps
    5 s when a shuffled parquet stream is left, a PyArrow workaround; a training epoch pays it once)."""
    loader = engine.build_loader(data.tensors["train"], config.train.per_device_train_batch_size, True, workers)
    seen, started, ended = 0, None, None
    for i, (images, _labels) in enumerate(loader):
        if i == 0:
            started = time.perf_counter()
            continue
        seen += len(images)
        ended = time.perf_counter()
        if i >= batches:
            break
    return seen / (ended - started)


def measure_bare(model, data, config, seconds: float) -> float:
    """Images/s of forward + backward + AdamW step on random normalized batches of the run's size."""
    batch, size = config.train.per_device_train_batch_size, data.image_size
    model = model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, data.num_channels, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, len(data.class_names), (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time_steps(step, torch.device("cpu"), batch, steps=3, min_seconds=seconds, warmup=1)["images_per_second"]


def bare_in_a_fresh_process(flags: list[str], seconds: float) -> float:
    """measure_bare for the run's resolved model, data size and batch, in a fresh process, so that neither its
    memory nor its allocator's leftovers count in the run's peak."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_bare, flags, seconds).result()


def _bare(flags: list[str], seconds: float) -> float:
    """The run's flags resolved for the data as train.py resolves them (model, input size, batch), into a folder
    of their own; no training."""
    config = parse_config([*flags, "--output_dir", tempfile.mkdtemp(prefix="data_throughput-bare-")])
    source, _ = follow_the_data(config)
    data = data_stage.load_data(config.data, seed=config.train.seed, source=source)
    return measure_bare(build_model(config, data)[0], data, config, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="an image folder (bench/make_photo_folder.py makes one)")
    p.add_argument("--loader_batches", type=int, default=15, help="batches the loader-only figure is timed over")
    p.add_argument("--bare_seconds", type=float, default=20.0, help="seconds the bare model is timed over")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)       # train.py flags follow a lone --
    args = p.parse_args(argv[:split])
    print(describe_host())       # beside every figure: they hold for this host only
    args.train_args = argv[split + 1:]
    cache_root = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    cache_before = folder_bytes(cache_root)
    out = tempfile.mkdtemp(prefix="data_throughput-")
    flags = ["--dataset", args.dataset, "--output_dir", out, "--num_train_epochs", "1", *args.train_args]

    bare_before = bare_in_a_fresh_process(flags, args.bare_seconds)
    with PeakMemory() as memory:
        config = parse_config(flags)
        started = time.perf_counter()
        results = run(config)
        wall = time.perf_counter() - started
    history = json.loads((Path(out) / "history.json").read_text())
    loop_rate = history[0]["train_images"] / history[0]["seconds"]
    waited = history[0]["data_wait_seconds"] / history[0]["seconds"]      # share of the training seconds
    cache_written = folder_bytes(cache_root) - cache_before

    data = data_stage.load_data(config.data, seed=config.train.seed)   # the run's resolved config, again
    with PeakMemory() as loader_memory:
        loader_rate = measure_loader(data, config, args.loader_batches, config.data.dataloader_num_workers)
    cores = len(os.sched_getaffinity(0))
    loader_rate_all = measure_loader(data, config, args.loader_batches, cores)     # what could feed a GPU
    model, _ = build_model(config, data)
    estimate = models.estimate_training_bytes(model, config.train.per_device_train_batch_size,
                                              (data.num_channels, data.image_size, data.image_size))
    bare_after = bare_in_a_fresh_process(flags, args.bare_seconds)
    bare_rate = (bare_before + bare_after) / 2

    figures = {
        "dataset": args.dataset, "train_images": len(data.tensors["train"]), "data_path": data.path,
        "model": config.model.model, "image_size": data.image_size,
        "batch": config.train.per_device_train_batch_size, "workers": config.data.dataloader_num_workers,
        "cpu": f"{psutil.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "loader_images_per_second": round(loader_rate, 1), f"loader_images_per_second_{cores}_workers":
        round(loader_rate_all, 1), "bare_images_per_second": round(bare_rate, 1),
        "bare_images_per_second_before_after": [round(bare_before, 1), round(bare_after, 1)],
        "loop_images_per_second": round(loop_rate, 1), "pipeline_efficiency": round(loop_rate / bare_rate, 3),
        "data_wait_share": round(waited, 4),
        "peak_pss_gb_run": round(memory.peak / 1e9, 2), "peak_pss_gb_loader_alone": round(loader_memory.peak / 1e9, 2),
        "step_estimate_gb": round(estimate / 1e9, 2), "cache_written_mb": round(cache_written / 1e6, 1),
        "run_wall_seconds": round(wall, 1), "train_seconds": history[0]["seconds"],
        "test_accuracy": results["test_accuracy"],
    }
    print(f"\n{args.dataset}: {figures['train_images']:,} train photos, {data.path} path, {config.model.model} at "
          f"{data.image_size}px, batch {figures['batch']}, {figures['workers']} workers ({figures['cpu']})")
    print(f"  loader alone  {loader_rate:8.1f} images/s with the run's {figures['workers']} workers, "
          f"{loader_rate_all:.1f} with {cores} (all cores)")
    print(f"  bare model    {bare_rate:8.1f} images/s (forward + backward + step, random batches; {bare_before:.1f} "
          f"before the run, {bare_after:.1f} after)")
    print(f"  training loop {loop_rate:8.1f} images/s -> pipeline efficiency {loop_rate / bare_rate:.3f}; it waited "
          f"for its next batch {history[0]['data_wait_seconds']:.1f} s of {history[0]['seconds']:.1f} s "
          f"({100 * waited:.1f} %): {1 - waited:.3f} by the run's own clock")
    print(f"  peak memory (PSS), all processes: {memory.peak / 1e9:.2f} GB for the run ({wall:.0f} s), "
          f"{loader_memory.peak / 1e9:.2f} GB for the loader alone; step estimate {estimate / 1e9:.2f} GB")
    print(f"  cache written under {cache_root}: {cache_written / 1e6:.1f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
