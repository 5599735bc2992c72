"""The training loop end to end on a tiny generated dataset: files, resume, early stopping, plateau,
and the `pipeline()` round trip in a process that never imports this project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_flags
from image_classifier.config import ConfigError, parse_config
from image_classifier.engine import TrainerState, find_checkpoint
from image_classifier.runner import run

MODEL_FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "configuration_small_cnn.py",
               "modeling_small_cnn.py", "training_config.json", "metrics.json", "history.json",
               "data_summary.json", "model_summary.txt", "results.csv", "README.md"]
PLOTS = ["samples.png", "class_distribution.png", "augmentation.png", "learning_curves.png",
         "confusion_matrix.png", "reliability.png", "top_losses.png", "gradcam.png", "filters.png"]


def tiny_args(dataset, output_dir, *extra):
    """tiny_flags() on `dataset`, writing to `output_dir` (its cache beside it)."""
    return ["--dataset", str(dataset), "--output_dir", str(output_dir),
            *tiny_flags(Path(output_dir).parent / "cache", *extra)]


def assert_resumes_to_the_same_weights(dataset, full: Path, resumed: Path, *extra):
    """Resume a copy of `full`'s first checkpoint (the state after epoch 1) into `resumed`, with the same flags:
    the finished model must equal `full`'s bit for bit."""
    first = sorted((full / "checkpoints").glob("step_*"))[0]
    shutil.copytree(first, resumed / "checkpoints" / first.name)
    run(parse_config(tiny_args(dataset, resumed, *extra, "--resume_from_checkpoint", "latest")))
    expected, got = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_image_folder):
    """One finished two-epoch run, shared by the tests that only read its files."""
    out = tmp_path_factory.mktemp("run") / "model"
    results = run(parse_config(tiny_args(tiny_image_folder, out)))
    return out, results


def test_every_output_file_exists_and_parses(trained):
    out, results = trained
    umask = os.umask(0)
    os.umask(umask)
    for name in MODEL_FILES:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name      # readable as any saved file
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 1000, name
    for name in ("config.json", "preprocessor_config.json", "training_config.json", "metrics.json",
                 "history.json", "data_summary.json"):
        json.loads((out / name).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))
    for prefix in ("test", "eval"):
        for key in ("accuracy", "precision", "recall", "f1", "loss", "precision_weighted", "recall_weighted",
                    "f1_weighted", "per_class"):
            assert f"{prefix}_{key}" in metrics, f"{prefix}_{key}"
    assert metrics["num_parameters"] > 0 and metrics["train_seconds"] > 0
    assert metrics["test_accuracy"] > 0.6        # colours separate the three classes easily
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "learning_rate", "seconds",
            "data_wait_seconds"} <= set(history[0])
    assert 0 <= history[0]["data_wait_seconds"] <= history[0]["seconds"]
    # Each epoch counts the images it trained on: its optimizer steps x the batch of 16 (no accumulation).
    assert all(h["train_images"] == 16 * len(h["learning_rates"]) > 0 for h in history)
    config = json.loads((out / "config.json").read_text())
    assert "AutoModelForImageClassification" in config["auto_map"]
    assert sorted(config["id2label"].values()) == ["blue", "green", "red"]
    assert len(list((out / "checkpoints").glob("step_*"))) == 2
    assert "Total" in (out / "model_summary.txt").read_text()


def test_refuses_to_overwrite_a_finished_model(trained, tiny_image_folder):
    out, _ = trained
    with pytest.raises(ConfigError, match="overwrite_output_dir"):
        run(parse_config(tiny_args(tiny_image_folder, out)))


def test_resume_after_epoch_one_reaches_the_same_weights(trained, tiny_image_folder, tmp_path):
    out, _ = trained
    resumed = tmp_path / "resumed"
    assert_resumes_to_the_same_weights(tiny_image_folder, out, resumed)
    assert json.loads((resumed / "history.json").read_text())[-1]["epoch"] == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint(tmp_path, "latest")


def test_early_stopping_stops_when_the_metric_stalls(tiny_image_folder, tmp_path, capsys):
    # A learning rate this small cannot move the predictions (and without BatchNorm no running
    # statistics change either): validation accuracy stalls at once.
    results = run(parse_config(tiny_args(tiny_image_folder, tmp_path / "m", "--num_train_epochs", "6",
                                         "--learning_rate", "1e-12", "--early_stopping_patience", "2",
                                         "--batch_norm", "false", "--optimizer", "sgd")))
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history) == 3 and results["best_epoch"] == 1 and results["epochs_trained"] == 3
    assert ("Early stopping after epoch 3: validation accuracy has not risen by more than 0 for 2 epochs "
            "(--early_stopping_patience 2); keeping epoch 1's weights") in capsys.readouterr().out


def test_a_diverged_run_stops_with_an_error_naming_the_learning_rate(tiny_image_folder, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ConfigError, match=r"--learning_rate: training diverged in epoch 1: the training loss "
                                          r"became (nan|inf).*Lower --learning_rate \(it is 1e\+30"):
        run(parse_config(tiny_args(tiny_image_folder, out, "--optimizer", "sgd", "--learning_rate", "1e30",
                                   "--batch_norm", "false", "--max_grad_norm", "0")))
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()


def test_plateau_lowers_the_learning_rate(tiny_image_folder, tmp_path):
    run(parse_config(tiny_args(tiny_image_folder, tmp_path / "m", "--num_train_epochs", "3",
                               "--learning_rate", "1e-6", "--lr_scheduler_type", "plateau",
                               "--plateau_patience", "0", "--plateau_factor", "0.5", "--batch_norm", "false")))
    lrs = [h["learning_rate"] for h in json.loads((tmp_path / "m" / "history.json").read_text())]
    # (ReduceLROnPlateau ignores cuts smaller than 1e-8, hence 1e-6 rather than 1e-12 here.)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(5e-7)


def test_trainer_state_improvement_rule():
    args = parse_config(["--early_stopping_threshold", "0.01"]).train
    state = TrainerState(best_metric=0.5)
    assert not state.improved(0.505, args) and state.improved(0.52, args)
    loss_args = parse_config(["--metric_for_best_model", "loss"]).train
    assert TrainerState(best_metric=1.0).improved(0.5, loss_args)


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
model_dir, images = sys.argv[1], json.loads(sys.argv[2])
classify = pipeline("image-classification", model=model_dir, trust_remote_code=True)
labels = [classify(path, top_k=1)[0]["label"] for path in images]
assert "image_classifier" not in sys.modules, "the project was imported"
print(json.dumps(labels))
"""


def test_pipeline_in_a_fresh_process_matches_our_evaluation(trained, tmp_path):
    from image_classifier.data import load_data
    from image_classifier.augment import Normalize
    from transformers import AutoModelForImageClassification

    out, _ = trained
    config = parse_config([str(out / "training_config.json")])
    data = load_data(config.data, seed=config.train.seed)
    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        ours = model(pixel_values=Normalize(data.mean, data.std)(data.tensors["test"].images)).logits.argmax(-1)
    paths = []
    for i, row in enumerate(data.splits["test"]):
        paths.append(str(tmp_path / f"{i}.png"))
        row["image"].save(paths[-1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(out), json.dumps(paths)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs == [model.config.id2label[int(i)] for i in ours]


def test_resident_batches_shard_disjointly_reshuffle_per_epoch_and_skip(tmp_path):
    from image_classifier.data import ImageTensors
    from image_classifier.engine import ResidentBatches

    n = 50                                          # not a multiple of batch 4 x 2 processes
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    data = ImageTensors(images, torch.arange(n))
    ranks = [ResidentBatches(data, 4, torch.device("cpu"), seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([labels for _, labels in rank]) for rank in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 6 and all(len(s) == 24 for s in seen)
    assert not set(seen[0].tolist()) & set(seen[1].tolist())          # disjoint shards
    for batch_images, batch_labels in ranks[0]:
        assert torch.equal(batch_images[:, 0, 0, 0].long(), batch_labels)   # images stay with their labels
    assert torch.equal(torch.cat([l for _, l in ranks[0]]), seen[0])      # same epoch, same order
    ranks[0].set_epoch(1)
    assert not torch.equal(torch.cat([l for _, l in ranks[0]]), seen[0])  # a new epoch reshuffles
    ranks[0].set_epoch(0)
    tail = ranks[0].skip_first_batches(2)
    assert len(tail) == 4 and torch.equal(torch.cat([l for _, l in tail]), seen[0][8:])
    tiny = ResidentBatches(ImageTensors(images[:3], torch.arange(3)), 16, torch.device("cpu"), 0, 1, 2)
    assert [len(l) for _, l in tiny] == [1]          # a split smaller than a global batch still yields


def test_resident_batches_apply_the_alternating_flip_by_split_position():
    from image_classifier.augment import AlternatingFlip
    from image_classifier.data import ImageTensors
    from image_classifier.engine import ResidentBatches

    n = 40
    images = torch.arange(n * 2, dtype=torch.uint8).view(n, 1, 1, 2)          # image i = [2i, 2i + 1]
    schedule = AlternatingFlip(n, seed=1)
    batches = ResidentBatches(ImageTensors(images, torch.arange(n)), 8, torch.device("cpu"), seed=0, flip=schedule)
    for epoch in range(2):
        batches.set_epoch(epoch)
        for batch_images, labels in batches:
            mirrored = batch_images[:, 0, 0, 0] > batch_images[:, 0, 0, 1]
            assert torch.equal(mirrored, schedule.first[labels] ^ bool(epoch))


def test_waited_for_counts_the_wait_for_each_batch_not_the_work_between():
    import time

    from image_classifier.engine import WaitedFor

    def slow(n):                 # a loader that takes 30 ms per batch
        for i in range(n):
            time.sleep(0.03)
            yield i

    batches = WaitedFor(slow(4))
    seen = []
    for i in batches:
        time.sleep(0.05)         # a training step: not waiting
        seen.append(i)
    assert seen == [0, 1, 2, 3]
    assert 0.11 < batches.seconds < 0.2


def test_tta_views_average_mirror_and_shifted_copies():
    from image_classifier.engine import _tta_views

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    assert [w for _, w in _tta_views(x, "none")] == [1.0]
    flip = _tta_views(x, "flip")
    assert sum(w for _, w in flip) == 1.0 and torch.equal(flip[1][0], x.flip(-1))
    views = _tta_views(x, "flip_translate")
    assert len(views) == 6 and sum(w for _, w in views) == 1.0
    assert all(v.shape == x.shape for v, _ in views)
    assert torch.equal(views[2][0][..., 1:, 1:], x[..., :-1, :-1])     # shifted one pixel down-right


def test_ema_and_tta_run_records_them_and_resumes_to_the_same_weights(tiny_image_folder, tmp_path):
    extra = ["--ema_decay", "0.9", "--tta", "flip_translate"]
    results = run(parse_config(tiny_args(tiny_image_folder, tmp_path / "full", *extra)))
    assert results["tta"] == "flip_translate" and 0 <= results["test_accuracy_without_tta"] <= 1
    assert_resumes_to_the_same_weights(tiny_image_folder, tmp_path / "full", tmp_path / "resumed", *extra)


def test_each_epoch_validates_on_one_view_unless_tta_each_epoch(tiny_image_folder, tmp_path):
    for each, views in ((False, "none"), (True, "flip_translate")):
        out = tmp_path / views
        # float32: under bf16 the epochs' validation would be in bf16 and the final one in float32.
        results = run(parse_config(tiny_args(tiny_image_folder, out, "--tta", "flip_translate",
                                             "--tta_each_epoch", str(each), "--mixed_precision", "no",
                                             "--calibrate", "false")))     # a temperature changes the final loss
        history = json.loads((out / "history.json").read_text())
        assert results["tta"] == "flip_translate" and {h["eval_tta"] for h in history} == {views}
        # The final validation scores the best epoch's weights with all views: the same figure only when
        # that epoch was scored with them too.
        best = history[results["best_epoch"] - 1]
        assert (best["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)) is each
        card = (out / "README.md").read_text()
        assert ("Validation here scores one view per image" in card) is not each


def test_progressive_resizing_trains_the_first_epoch_small_and_resumes_to_the_same_weights(tiny_image_folder, tmp_path):
    extra = ["--progressive_resize_epochs", "1", "--progressive_resize_size", "12"]
    results = run(parse_config(tiny_args(tiny_image_folder, tmp_path / "full", *extra)))
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert [h["train_image_size"] for h in history] == [12, 16]       # then full size, as evaluated and saved
    assert 0 <= results["test_accuracy"] <= 1
    assert "first 1 epoch(s) at 12x12 px, then 16x16 px" in (tmp_path / "full" / "README.md").read_text()
    # The resumed run must train epoch 2 at full size again.
    assert_resumes_to_the_same_weights(tiny_image_folder, tmp_path / "full", tmp_path / "resumed", *extra)


@pytest.mark.slow
def test_real_mnist_one_epoch_on_a_few_thousand_images_reaches_95_percent(shared_datasets, tmp_path):
    results = run(parse_config([
        "--dataset", str(shared_datasets / "mnist"), "--output_dir", str(tmp_path / "mnist"),
        "--cache_dir", str(tmp_path / "cache"), "--max_train_samples", "5000", "--max_eval_samples", "2000",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--learning_rate", "0.05"]))
    assert results["test_num_samples"] == 2000
    assert results["test_accuracy"] >= 0.95, results["test_accuracy"]


def test_triangle_schedule_rises_from_a_fifth_to_the_peak_then_falls_to_seven_percent():
    from image_classifier.engine import build_scheduler

    args = parse_config(["--lr_scheduler_type", "triangle", "--warmup_ratio", "0.25", "--learning_rate", "2.0"]).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, args, total_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.4) and lrs[25] == pytest.approx(2.0) and lrs[100] == pytest.approx(0.14)
    assert lrs[12] == pytest.approx(0.4 + 1.6 * 12 / 25) and lrs[60] == pytest.approx(2.0 - 1.86 * 35 / 75)


def test_lookahead_waits_then_pulls_weights_into_a_hardening_average_and_restores():
    from image_classifier.engine import Lookahead

    model = torch.nn.BatchNorm1d(3)
    lookahead = Lookahead(model, total_steps=100, start=0.3, every=5)
    model.bias.data.fill_(1.0)
    lookahead.update(25)                                   # before 30% of the steps: nothing
    assert lookahead.average is None
    lookahead.update(31)                                   # not a multiple of 5: nothing
    assert lookahead.average is None
    lookahead.update(30)                                   # first: the average starts at the weights
    assert torch.equal(lookahead.average["bias"], torch.ones(3))
    model.bias.data.fill_(3.0)
    model.running_mean.fill_(2.0)
    lookahead.update(50)
    decay = 0.95 ** 5 * 0.5 ** 3
    torch.testing.assert_close(model.bias.data, torch.full((3,), 1 + 2 * (1 - decay)))   # weights = the average
    torch.testing.assert_close(model.running_mean, torch.full((3,), 2 * (1 - decay)))   # float buffers too
    assert model.num_batches_tracked.dtype == torch.int64                                # integers left alone
    model.bias.data.fill_(7.0)
    saved = lookahead.state_dict()
    lookahead.finish_epoch()                               # the epoch ends on the average, not the last step
    torch.testing.assert_close(model.bias.data, torch.full((3,), 1 + 2 * (1 - decay)))
    fresh = Lookahead(model, total_steps=100)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.average["bias"], lookahead.average["bias"])


def test_airbench_sgd_recipe_runs_records_and_resumes_to_the_same_weights(tiny_image_folder, tmp_path):
    # Small batches: about 10 steps an epoch, so the lookahead average starts and updates within 2 epochs.
    extra = ["--optimizer", "sgd", "--lookahead", "--lr_scheduler_type", "triangle", "--bias_learning_rate_scale", "8",
             "--per_device_train_batch_size", "4", "--stem", "whiten", "--identity_init", "true",
             "--norm_scale", "false", "--batch_norm_momentum", "0.4", "--logit_scale", "0.2", "--whiten_bias_epochs", "1"]
    results = run(parse_config(tiny_args(tiny_image_folder, tmp_path / "full", *extra)))
    assert 0 <= results["test_accuracy"] <= 1
    saved = json.loads((tmp_path / "full" / "training_config.json").read_text())
    assert saved["lookahead"] and saved["bias_learning_rate_scale"] == 8 and saved["lr_scheduler_type"] == "triangle"
    assert_resumes_to_the_same_weights(tiny_image_folder, tmp_path / "full", tmp_path / "resumed", *extra)


KEEP_FREED_MEMORY = """
import resource, sys, torch
from image_classifier.engine import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.randn(128, 3, 32, 32)                  # activations of 32 MiB each: above glibc's mmap threshold
for step in range(4):
    if step == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x).square().mean().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_keep_freed_memory_stops_training_steps_faulting_their_pages_in_again():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    faults = {mode: int(subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY, mode], env=env, check=True,
                                       capture_output=True, text=True).stdout) for mode in ("off", "on")}
    # Each step allocates some 200 MiB of activations and gradients: 50,000 pages of 4 KiB, faulted in afresh
    # every step by default and reused once freed memory is kept.
    assert faults["off"] > 20_000 and faults["on"] < faults["off"] / 10, faults


@pytest.mark.skipif(torch.cuda.is_available() or not Path("/proc/cpuinfo").is_file(), reason="a Linux CPU run")
def test_precision_is_bf16_for_the_presets_on_a_cpu_whose_flags_list_native_bf16_and_any_request_wins(monkeypatch):
    from image_classifier.engine import default_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    flags = set(Path("/proc/cpuinfo").read_text().split())        # the kernel's view, not PyTorch's probe
    for model in ("cnn-fast", "cnn-wide"):
        assert default_precision(None, model) == ("bf16" if {"avx512_bf16", "amx_bf16"} & flags else None)
    # Float32 for the rest: torch's CPU bf16 gradient of a strided conv over padding only is wrong (see the docstring).
    assert default_precision(None, "timm/resnet18") is None and default_precision(None, "cnn-basic") is None
    assert default_precision("no", "cnn-fast") == "no" and default_precision("bf16", "timm/resnet18") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")          # `accelerate launch --mixed_precision no`
    assert default_precision(None, "cnn-fast") is None


def test_kernels_capped_below_bf16_make_the_presets_train_in_float32(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (how a host without AVX-512 is measured on one that has it) leaves bf16 emulated,
    so the presets' default is float32 there, as on a CPU without it; a cap that keeps bf16 changes nothing."""
    from image_classifier.engine import cpu_has_native_bf16, cpu_kernel_caps, default_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_kernel_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert not cpu_has_native_bf16() and default_precision(None, "cnn-fast") is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert "ONEDNN_MAX_CPU_ISA" not in cpu_kernel_caps()


def test_two_trackers_get_the_step_loss_the_epochs_and_the_test_metrics(tiny_image_folder, tmp_path):
    """train.py as a user runs it, with TensorBoard and trackio (TRACKIO_DIR is read once, at trackio's import:
    a process of its own); results.csv is history.json as a table."""
    import csv
    import sqlite3

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "model"
    flags = [*tiny_args(tiny_image_folder, out), "--report_to", "tensorboard,trackio", "--logging_steps", "1"]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "train.py"), *flags], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    events = EventAccumulator(str(next((out / "runs").rglob("events.out.tfevents.*"))))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/step_loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4
    assert [e.value for e in events.Scalars("epoch/eval_accuracy")] == pytest.approx(
        [h["eval_accuracy"] for h in json.loads((out / "history.json").read_text())])
    metrics = json.loads((out / "metrics.json").read_text())
    assert events.Scalars("final/test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"])
    with sqlite3.connect(tmp_path / "trackio" / "image_classifier.db") as db:
        logged = [json.loads(row[0]) for row in db.execute("select metrics from metrics")]
    assert sum("train/step_loss" in m for m in logged) == len(steps)
    assert any(m.get("final/test_accuracy") == pytest.approx(metrics["test_accuracy"]) for m in logged)
    history = json.loads((out / "history.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    assert float(rows[-1]["eval_accuracy"]) == pytest.approx(history[-1]["eval_accuracy"])
    assert "learning_rates" not in rows[0] and "train_loss" in rows[0]


def test_an_unknown_or_missing_tracker_names_the_fix():
    with pytest.raises(ConfigError, match="'tensorbord' is not a tracker; choose from tensorboard"):
        parse_config(["--report_to", "tensorbord"])
    with pytest.raises(ConfigError, match="aim is not installed: pip install aim"):
        parse_config(["--report_to", "tensorboard,aim"])
    assert parse_config(["--report_to", "all"]).train.report_to.startswith("tensorboard")


@pytest.mark.parametrize("kind, warmup", [("linear", 0.0), ("cosine", 0.1), ("triangle", 0.2), ("constant", 0.0)])
def test_a_retargeted_schedule_continues_as_one_built_for_its_new_length(kind, warmup):
    from image_classifier.engine import build_scheduler, retarget_scheduler

    args = parse_config(["--lr_scheduler_type", kind, "--warmup_ratio", str(warmup), "--learning_rate", "2.0"]).train

    def stepped(total: int, steps: int):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        scheduler = build_scheduler(optimizer, args, total_steps=total)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    optimizer, scheduler = stepped(100, 30)
    retarget_scheduler(scheduler, args, 150)
    fresh_optimizer, fresh = stepped(150, 30)
    for _ in range(120):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh_optimizer.param_groups[0]["lr"])
        assert scheduler.get_last_lr() == pytest.approx(fresh.get_last_lr())
        for o, s in ((optimizer, scheduler), (fresh_optimizer, fresh)):
            o.step()
            s.step()


def test_a_one_cycle_schedule_says_it_cannot_change_length():
    from image_classifier.engine import build_scheduler, retarget_scheduler

    args = parse_config(["--lr_scheduler_type", "onecycle"]).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    with pytest.raises(ValueError, match="onecycle schedule cannot change its length"):
        retarget_scheduler(build_scheduler(optimizer, args, 100), args, 150)
