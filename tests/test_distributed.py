"""Many processes and faults: a real `accelerate launch` with two CPU processes, SIGTERM and SIGKILL
in the middle of training and resuming, gradient accumulation, and the resume command.

Runs on CPU in CI. Two CPU processes need torchrun's launcher: in accelerate 1.15
`accelerate launch --cpu --num_processes 2` starts ONE process, so these tests (like the README)
use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` and check that the
run really had two processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from image_classifier import runner
from image_classifier.augment import BatchAugment
from image_classifier.config import ConfigError, parse_config, save_config
from image_classifier.engine import _sync_batchnorm, find_checkpoint
from image_classifier.interrupt import StopOnSignal, TrainingInterrupted, resume_command
from image_classifier.model_folder import clear_finished_run
from image_classifier.runner import check_output_dir, run

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"      # the venv's launcher, beside its python
TIMEOUT = 240


def recipe(dataset, output_dir, *extra) -> list[str]:
    """Tiny and quick: a narrow cnn-fast on 16x16 images, batches of 4 (test split: 14 images, not a
    multiple of 4 x 2 processes), no test-time augmentation so metrics are one forward pass per image."""
    return ["--dataset", str(dataset), "--output_dir", str(output_dir), "--widths", "8", "16",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "0.05",
            "--cache_dir", str(Path(output_dir).parent / "cache"), "--validation_split_fraction", "0.2",
            "--test_split_fraction", "0.2", "--tta", "none", *map(str, extra)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(args: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "train.py", *args]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes),
            "--main_process_port", str(_free_port()), "train.py", *args]


def environment() -> dict[str, str]:
    # One thread per process: two processes share two cores, and runs stay bit-for-bit repeatable.
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    done = subprocess.run(command(args, processes), cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def start(args: list[str], processes: int = 1) -> subprocess.Popen:
    return subprocess.Popen(command(args, processes), cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(out: Path, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = sorted((out / "checkpoints").glob("step_*"))
        if found:
            return found[0]
        assert process.poll() is None, process.stdout.read()[-4000:]
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no checkpoint appeared")


def assert_same_weights(a: Path, b: Path) -> None:
    expected, got = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def assert_metrics_match_one_process(out: Path, metrics: dict, data, images: list) -> None:
    """The saved folder, loaded by stock transformers in this one process, scores the test `images` (PIL, in the
    order of data's test split) as the run's metrics.json says, to 1e-5."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from image_classifier.metrics import compute_metrics

    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    with torch.no_grad():
        logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits.numpy()
    ours = compute_metrics(logits, data.tensors["test"].labels.numpy(), data.class_names, prefix="test")
    assert metrics["test_num_samples"] == len(images)
    for key in ("test_accuracy", "test_loss", "test_f1"):
        assert metrics[key] == pytest.approx(ours[key], abs=1e-5), key


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- two processes -----------------------------------------------------------------------------

TWO_PROCESS_EPOCHS = 10     # long enough that a signal sent after the first checkpoint lands mid-training


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_image_folder):
    """An uninterrupted `accelerate launch` run on two CPU processes: (output folder, its output)."""
    out = tmp_path_factory.mktemp("two") / "model"
    done = train(recipe(tiny_image_folder, out, "--num_train_epochs", TWO_PROCESS_EPOCHS), processes=2)
    return out, done.stdout + done.stderr


@pytest.mark.slow
def test_two_processes_report_what_one_process_measures_on_the_saved_model(two_process_run, tiny_image_folder,
                                                                            tmp_path):
    from transformers import AutoModelForImageClassification

    from image_classifier.augment import Normalize
    from image_classifier.data import load_data
    from image_classifier.metrics import compute_metrics

    out, log = two_process_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2, log[-3000:]
    assert "global batch 8 (4 per process x 2 process(es) x 1 accumulation step(s))" in log

    # One process, no Accelerate: the saved folder, the same split, the same metric code.
    config = parse_config([str(out / "training_config.json")])
    data = load_data(config.data, seed=config.train.seed)
    test = data.tensors["test"]
    assert len(test.labels) % (4 * 2) != 0         # Accelerate pads the last batch; gather_for_metrics drops it
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=Normalize(data.mean, data.std)(test.images)).logits.numpy()
    ours = compute_metrics(logits, test.labels.numpy(), data.class_names, prefix="test")
    assert metrics["test_num_samples"] == len(test.labels)
    for key in ("test_accuracy", "test_loss", "test_f1", "test_precision", "test_recall"):
        assert metrics[key] == pytest.approx(ours[key], abs=1e-6), key

    # Exactly the files one process writes: nothing twice, nothing per rank, no temporary leftovers.
    run(parse_config(recipe(tiny_image_folder, tmp_path / "one", "--num_train_epochs", 1)))
    one, two = files_under(tmp_path / "one"), files_under(out)
    assert {f for f in two if not f.startswith("checkpoints/")} == {f for f in one if not f.startswith("checkpoints/")}
    assert not [f for f in two if Path(f).name.startswith(".")]
    checkpoint_files = {Path(f).name for f in one if f.startswith("checkpoints/")}
    for step in (out / "checkpoints").glob("step_*"):   # each process saves only its own RNG state
        assert {p.name for p in step.iterdir()} == checkpoint_files | {"random_states_1.pkl"}


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_and_resume_matches_uninterrupted(two_process_run,
                                                                                      tiny_image_folder, tmp_path):
    import psutil

    reference, _ = two_process_run
    out = tmp_path / "model"
    args = recipe(tiny_image_folder, out, "--num_train_epochs", TWO_PROCESS_EPOCHS)
    launcher = start(args, processes=2)
    wait_for_checkpoint(out, launcher)
    # Only rank 1 is told: rank 0 learns of it at the next step, or it would wait for rank 1 forever.
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "train.py" in p.cmdline()]
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)
    log = launcher.communicate(timeout=TIMEOUT)[0]
    assert launcher.returncode != 0
    assert "SIGTERM: saving a checkpoint at step" in log or "training stopped by SIGTERM" in log, log[-3000:]
    assert ("Resume with:\n  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py"
            in log), log[-3000:]
    assert log.rstrip().count("--resume_from_checkpoint latest") >= 1
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()

    resumed = train([*args, "--resume_from_checkpoint", "latest"], processes=2)
    assert "Resumed from" in resumed.stdout + resumed.stderr
    assert_same_weights(reference, out)
    expected, got = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    for key in ("test_accuracy", "test_loss", "eval_accuracy", "eval_loss", "best_epoch", "global_steps"):
        assert got[key] == expected[key], key


# -- one process --------------------------------------------------------------------------------

KILL_DURING_SECOND_SAVE = """
import os, runpy, signal, sys
from pathlib import Path
import accelerate

real_save_state = accelerate.Accelerator.save_state
calls = []

def save_state(self, output_dir=None, **kwargs):
    result = real_save_state(self, output_dir, **kwargs)
    calls.append(output_dir)
    if len(calls) == 2:      # the second checkpoint: half its weights on disk, then killed (as by the OOM killer)
        weights = Path(output_dir) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return result

accelerate.Accelerator.save_state = save_state
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_to_resume_from(tiny_image_folder, tmp_path):
    out = tmp_path / "model"
    args = recipe(tiny_image_folder, out, "--num_train_epochs", 2)
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, *args], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = out / "checkpoints"
    first, = checkpoints.glob("step_*")
    half_written, = checkpoints.glob(".tmp_step_*")
    assert find_checkpoint(out, "latest") == first

    resumed = train([*args, "--resume_from_checkpoint", "latest"])
    assert f"Resumed from {first}: epoch 1" in resumed.stdout + resumed.stderr
    assert not half_written.exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2


@pytest.mark.slow
def test_sigterm_exits_143_with_the_resume_command(tiny_image_folder, tmp_path):
    out = tmp_path / "model"
    args = recipe(tiny_image_folder, out, "--num_train_epochs", 40)
    process = start(args)
    wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGTERM)
    log = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 143, log[-3000:]
    assert f"Resume with:\n  {sys.executable} train.py --dataset" in log
    assert log.rstrip().endswith("--tta none --num_train_epochs 40 --resume_from_checkpoint latest")
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("resident_data", ["true", "false"])
def test_a_signal_mid_epoch_checkpoints_that_step_and_resuming_gives_identical_weights(
        tiny_image_folder, tmp_path, monkeypatch, resident_data):
    args = lambda out, *extra: parse_config(recipe(tiny_image_folder, tmp_path / out, "--num_train_epochs", 2,
                                                   "--resident_data", resident_data, *extra))
    run(args("full"))

    class SignalledAugment(BatchAugment):
        """Ctrl-C arrives while batch 14 (epoch 2, batch 3 of 11) is augmented."""
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            if type(self).calls == 14:
                signal.raise_signal(signal.SIGINT)
            return super().forward(x)

    monkeypatch.setattr(runner, "BatchAugment", SignalledAugment)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        run(args("cut"))
    assert signal.getsignal(signal.SIGINT) is handler         # the run put the previous handler back
    assert stopped.value.exit_code == 130
    assert stopped.value.checkpoint == tmp_path / "cut" / "checkpoints" / "step_00000014"
    assert not (tmp_path / "cut" / "metrics.json").exists()

    run(args("cut", "--resume_from_checkpoint", "latest"))
    assert_same_weights(tmp_path / "full", tmp_path / "cut")
    full, cut = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("full", "cut"))
    assert [h["eval_loss"] for h in cut] == [h["eval_loss"] for h in full]
    assert [h["train_loss"] for h in cut] == pytest.approx([h["train_loss"] for h in full], abs=1e-6)
    assert [h["learning_rates"] for h in cut] == [h["learning_rates"] for h in full]


def test_gradient_accumulation_gives_the_larger_batch(tiny_image_folder, tmp_path):
    # One epoch of whole windows: 2 batches of 16, or 4 of 8 with each pair's gradients summed (each
    # halved): the same 32 images in the same order, 2 optimizer steps. What sees the batch size is off:
    # BatchNorm normalises by the statistics of each forward batch (8 images, not 16: another function),
    # and augmentation and dropout draw their random numbers per batch (other draws for 8 + 8 than for 16).
    # And float32: bf16 (the default on a CPU that has it) rounds two half-batch sums otherwise than one.
    common = ["--num_train_epochs", 1, "--batch_norm", "false", "--augment", "false", "--block_dropout", 0,
              "--classifier_dropout", 0, "--learning_rate", 0.1, "--mixed_precision", "no"]
    run(parse_config(recipe(tiny_image_folder, tmp_path / "big", *common, "--per_device_train_batch_size", 16)))
    run(parse_config(recipe(tiny_image_folder, tmp_path / "acc", *common, "--per_device_train_batch_size", 8,
                            "--gradient_accumulation_steps", 2)))
    big, acc = load_file(tmp_path / "big" / "model.safetensors"), load_file(tmp_path / "acc" / "model.safetensors")
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-5, atol=1e-6, msg=name)
    histories = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("big", "acc")]
    assert [len(h[0]["learning_rates"]) for h in histories] == [2, 2]        # optimizer steps, not batches
    assert histories[1][0]["learning_rates"] == pytest.approx(histories[0][0]["learning_rates"])


# -- pieces -------------------------------------------------------------------------------------

class OneProcess:
    num_processes = 1


def test_stop_on_signal_records_the_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert stop.requested(OneProcess()) is None
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)           # a launcher's repeat moments later is ignored
        assert stop.requested(OneProcess()) == signal.SIGTERM == stop.agreed
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_command_keeps_the_flags_and_replaces_any_resume_flag():
    argv = ["train.py", "run.yaml", "--seed", "3", "--resume_from_checkpoint", "old", "--output_dir", "out dir",
            "--resume_from_checkpoint=x"]
    assert resume_command(argv, {}) == (f"{sys.executable} train.py run.yaml --seed 3 --output_dir 'out dir' "
                                        "--resume_from_checkpoint latest")
    env = {"WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2", "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29500", "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert resume_command(["train.py", "--seed", "3"], env).startswith(
        "accelerate launch --num_processes 8 --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 "
        "--main_process_port 29500 --mixed_precision bf16 train.py --seed 3 --resume_from_checkpoint latest")
    cpu = resume_command(["train.py"], {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "True"})
    assert cpu == "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --resume_from_checkpoint latest"


def test_half_written_checkpoints_are_ignored_and_old_runs_are_not_mixed_in(tmp_path):
    (tmp_path / "checkpoints" / "step_00000005").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".tmp_step_00000009").mkdir()
    assert find_checkpoint(tmp_path, "latest").name == "step_00000005"
    config = parse_config(["--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="unfinished run .*--resume_from_checkpoint latest"):
        check_output_dir(config)
    check_output_dir(parse_config(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"]))
    check_output_dir(parse_config(["--output_dir", str(tmp_path), "--overwrite_output_dir"]))
    # A resume with another net, batch or resizing schedule than the saved run's (their defaults follow the
    # device) is refused. All three are spelled out, so the test means the same on a GPU machine.
    wide = ["--model", "cnn-wide", "--per_device_train_batch_size", "1000"]
    saved = parse_config(["--output_dir", str(tmp_path), *wide, "--progressive_resize_epochs", "5"])
    save_config(saved, tmp_path / "training_config.json")
    resume = ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"]
    with pytest.raises(ConfigError, match="--model cnn-wide, not cnn-basic.*Pass --model cnn-wide to resume"):
        check_output_dir(parse_config([*resume, "--model", "cnn-basic"]))
    with pytest.raises(ConfigError, match="--per_device_train_batch_size 1000, not 2000.*"
                                          "Pass --per_device_train_batch_size 1000 to resume"):
        check_output_dir(parse_config([*resume, "--model", "cnn-wide", "--per_device_train_batch_size", "2000"]))
    with pytest.raises(ConfigError, match="--progressive_resize_epochs 5, not 0.*"   # 0: a GPU's default
                                          "Pass --progressive_resize_epochs 5 to resume"):
        check_output_dir(parse_config([*resume, *wide, "--progressive_resize_epochs", "0"]))
    check_output_dir(parse_config([*resume, *wide, "--progressive_resize_epochs", "5"]))
    (tmp_path / "metrics.json").write_text("{}")
    clear_finished_run(tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()
    check_output_dir(config)


class Placed:
    def __init__(self, device: str):
        self.device = torch.device(device)


def test_sync_batchnorm_converts_for_gpus_and_refuses_cpu_processes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        _sync_batchnorm(model, Placed("cpu"))
    converted = _sync_batchnorm(model, Placed("cuda"))
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert converted[1].weight.data_ptr() == model[1].weight.data_ptr()   # same parameters, no copy


@pytest.mark.slow
def test_two_processes_on_the_streaming_path_see_every_photo_and_score_what_one_process_does(photo_folder, tmp_path):
    """Photos, decoded per sample (two loader workers per process): each epoch covers every training photo across
    the processes (Accelerate pads the last global batch with a few repeats), and metrics.json equals a one-process
    evaluation of the saved model through the saved image processor."""
    from image_classifier.data import load_data
    from image_classifier.images import load_image

    out = tmp_path / "model"
    done = train([*recipe(photo_folder, out, "--num_train_epochs", 2, "--image_size", 32, "--model", "cnn-fast"),
                  "--dataloader_num_workers", "2"], processes=2)
    log = done.stdout + done.stderr
    assert "Data path streaming: photos" in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2, log[-3000:]
    config = parse_config([str(out / "training_config.json")])
    data = load_data(config.data, seed=config.train.seed)
    n, global_batch = len(data.tensors["train"]), 4 * 2
    for epoch in json.loads((out / "history.json").read_text()):
        assert n <= epoch["train_images"] < n + global_batch, epoch

    paths = [v["path"] for v in data.splits["test"].cast_column(
        "image", __import__("datasets").Image(decode=False))["image"]]
    # Evaluation decodes each photo whole, as the processor's caller does: the same numbers.
    assert_metrics_match_one_process(out, metrics, data, [load_image(p) for p in paths])


@pytest.mark.slow
def test_two_processes_with_streaming_read_their_parts_and_score_what_one_process_does(tiny_parquet_folder, tmp_path):
    """--streaming on a local parquet folder (the Hub's layout, two train files of unequal length): each process
    reads its own part of the train stream and both take the same number of batches (the shorter part goes
    round again), every epoch trains on len(train) // global batch x global batch images, and metrics.json equals a
    one-process evaluation of the saved model through the saved image processor."""
    from image_classifier.data import load_data

    out = tmp_path / "model"
    done = train([*recipe(tiny_parquet_folder, out, "--num_train_epochs", 2, "--model", "cnn-fast"), "--streaming",
                  "--dataloader_num_workers", "1"], processes=2)
    log = done.stdout + done.stderr
    assert "Data path streaming: --streaming (datasets' streaming mode)" in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2, log[-3000:]
    config = parse_config([str(out / "training_config.json")])
    data = load_data(config.data, seed=config.train.seed)
    assert len(data.tensors["train"]) == 48            # 60 less the carved 20 % (parts of 14 and 34 rows)
    assert [epoch["train_images"] for epoch in json.loads((out / "history.json").read_text())] == [48, 48]

    from io import BytesIO

    from PIL import Image

    images = [Image.open(BytesIO(value["bytes"])).convert("RGB") for value in data.splits["test"]["image"]]
    assert len(images) == 12
    assert_metrics_match_one_process(out, metrics, data, images)


def test_a_streaming_run_resumed_after_epoch_one_reaches_the_same_weights(tiny_parquet_folder, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train([*recipe(tiny_parquet_folder, full, "--num_train_epochs", 2), "--streaming"])
    first = sorted((full / "checkpoints").glob("step_*"))[0]
    __import__("shutil").copytree(first, resumed / "checkpoints" / first.name)
    train([*recipe(tiny_parquet_folder, resumed, "--num_train_epochs", 2), "--streaming",
           "--resume_from_checkpoint", "latest"])
    assert_same_weights(full, resumed)
