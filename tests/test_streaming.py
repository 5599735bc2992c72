"""The streaming path: chosen for photos, decoded per sample by the one decoder, bad images counted and skipped,
nothing cached, defaults that follow the data, and a run whose saved folder scores in pipeline() what
metrics.json says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from image_classifier.config import ConfigError, DataArguments, parse_config
from image_classifier.data import ImageTensors, load_data, open_source, predicted_view
from image_classifier.engine import balanced_sampler, build_loader, class_weights
from image_classifier.images import ImageError, read_image
from image_classifier.recipes import PHOTO_MODEL, DataTraits
from image_classifier.streaming import SKIPPED, EncodedImages, collate_dropping_skipped
from image_classifier.transforms import build_eval_transform

REPO = Path(__file__).resolve().parents[1]


def streaming_args(folder, cache, **kwargs) -> DataArguments:
    return DataArguments(dataset=str(folder), cache_dir=str(cache), image_size=32, validation_split_fraction=0.2,
                         test_split_fraction=0.2, **kwargs)


def test_photos_take_the_streaming_path_and_nothing_is_cached(photo_folder, tmp_path):
    data = load_data(streaming_args(photo_folder, tmp_path / "cache"), seed=0)
    assert data.path == "streaming" and data.summary["data_path"] == "streaming"
    assert all(isinstance(t, EncodedImages) for t in data.tensors.values())
    assert sum(len(t) for t in data.tensors.values()) == 60
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    image, label = data.tensors["validation"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and 0 <= label < 3
    assert data.summary["image_sizes"] and data.summary["crop_pct"] == 0.875


def test_small_images_stay_resident_unless_told_or_too_big(tiny_image_folder, tmp_path):
    args = DataArguments(dataset=str(tiny_image_folder), cache_dir=str(tmp_path))
    assert load_data(args, seed=0).path == "resident"
    forced = load_data(DataArguments(dataset=str(tiny_image_folder), cache_dir=str(tmp_path), data_path="streaming"),
                       seed=0)
    assert forced.path == "streaming" and forced.tensors["train"][0][0].shape == (3, 16, 16)
    bound = DataArguments(dataset=str(tiny_image_folder), cache_dir=str(tmp_path), resident_max_gib=1e-6)
    assert load_data(bound, seed=0).path == "streaming"


def test_an_item_is_the_app_decoder_then_the_evaluation_crop(photo_folder, tmp_path):
    data = load_data(streaming_args(photo_folder, tmp_path), seed=0)
    test = data.tensors["test"]
    path = data.splits["test"].cast_column("image", __import__("datasets").Image(decode=False))[3]["image"]["path"]
    full = build_eval_transform(32, 0.875)(torch.from_numpy(np.array(read_image(path)[0])).permute(2, 0, 1))
    assert torch.equal(test[3][0], full)          # evaluation decodes whole, as the app does
    # Training photos may decode at a reduced JPEG scale that keeps the resized side: close to the full decode.
    train = data.tensors["train"]
    drafted = train.with_transform(build_eval_transform(32, 0.875), min_short_side=36)
    whole = train.with_transform(build_eval_transform(32, 0.875))
    assert (drafted[3][0].int() - whole[3][0].int()).abs().float().mean() < 6


def test_the_exif_rotated_photo_is_upright(photo_folder, tmp_path):
    data = load_data(streaming_args(photo_folder, tmp_path), seed=0)
    values = data.splits["train"].cast_column("image", __import__("datasets").Image(decode=False))["image"]
    rotated = [i for i, v in enumerate(values) if v["path"].endswith("00.jpg")]
    assert rotated
    image = read_image(values[rotated[0]]["path"])[0]
    assert image.size == (90, 120)           # stored 120x90 with orientation 6: shown 90 wide, 120 high


def test_an_undecodable_photo_is_a_counted_skip_not_a_worker_crash(photo_folder, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    (folder / "sky" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = load_data(streaming_args(folder, tmp_path / "cache", max_train_samples=None), seed=0)
    broken = [(s, i) for s, t in data.tensors.items()
              for i, v in enumerate(data.splits[s].cast_column("image", __import__("datasets").Image(decode=False))
                                    ["image"]) if v["path"].endswith("broken.jpg")]
    split, index = broken[0]
    with pytest.warns(UserWarning, match=r"Skipped image .*broken\.jpg"):
        image, label = data.tensors[split][index]
    assert label == SKIPPED and image.shape == (3, 32, 32)
    batch = collate_dropping_skipped([data.tensors[split][i] for i in range(len(data.tensors[split]))])
    assert len(batch[1]) == len(data.tensors[split]) - 1 and (batch[1] >= 0).all()
    # Through two worker processes: the batch comes back without it, nothing raises.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = build_loader(data.tensors[split], 64, True, 2)
        labels = torch.cat([labels for _, labels in loader])
    assert len(labels) == len(data.tensors[split]) - 1
    # The plots pick images by prediction: after the skipped row, prediction k is row k + 1.
    view = data.eval_view(split)
    assert predicted_view(view, len(view)) is view
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # warned about once already, by evaluation: not again
        kept = predicted_view(view, len(view) - 1)
    assert kept.positions.tolist() == [i for i in range(len(view)) if i != index]
    k = min(index, len(kept) - 1)            # the first prediction at or past the skipped row
    assert torch.equal(kept.images_at([k]), view.images_at([k + 1 if k >= index else k]))
    # --strict_images: the same row stops the run with the resident path's message.
    with pytest.raises(ImageError, match=r"Image .*broken\.jpg\) cannot be decoded .*drop --strict_images"):
        strict = load_data(streaming_args(folder, tmp_path / "cache", strict_images=True), seed=0)
        strict.tensors[split][index]          # (reached where the stats sample missed it)


def test_defaults_follow_photos_and_imbalance():
    config = parse_config(["--dataset", "photos"])
    notes = config.follow_data(DataTraits(side=640, short_side=480, num_images=20000, gray=False,
                                          imbalance_ratio=5.0))
    assert config.model.model == PHOTO_MODEL and config.train.recipe == "finetune"
    assert config.data.data_path == "streaming" and config.data.dataloader_num_workers == 0     # on a CPU
    assert config.train.tta == "none" and config.train.metric_for_best_model == "f1"
    assert config.data.image_size == 160 and config.train.per_device_train_batch_size == 32
    assert config.train.output_dir == "outputs/photos-timm-resnet18.a1_in1k"
    assert config.follow_data_path(DataTraits(side=640, short_side=480, num_images=20000, gray=False,
                                              imbalance_ratio=5.0)).startswith(
        "Data path streaming: photos (most common side 640 px > 64)")
    assert any("imbalanced (5:1 >= 3:1)" in n for n in notes)
    # What the user set stays; small images keep today's defaults.
    chosen = parse_config(["--dataset", "photos", "--model", "cnn-fast", "--image_size", "96", "--tta", "flip",
                           "--metric_for_best_model", "loss"])
    chosen.follow_data(DataTraits(side=640, short_side=480, num_images=2000, gray=False, imbalance_ratio=5.0))
    assert (chosen.model.model, chosen.data.image_size, chosen.train.tta) == ("cnn-fast", 96, "flip")
    assert chosen.train.metric_for_best_model == "loss" and chosen.train.recipe == "finetune"
    small = parse_config(["--dataset", "cifar10"])
    small.follow_data(DataTraits(side=32, short_side=32, num_images=60000, gray=False, imbalance_ratio=1.0))
    assert (small.model.model, small.train.recipe, small.data.data_path) == ("cnn-fast", "airbench", "resident")
    assert small.train.per_device_train_batch_size == 1000 and small.data.flip_schedule == "alternate"


def test_open_source_reads_headers_not_pixels(photo_folder):
    source = open_source(DataArguments(dataset=str(photo_folder)), seed=0)
    traits = source.traits()
    assert traits.photos and traits.side in (72, 90, 96, 100, 120, 150) and traits.short_side >= 72
    assert traits.num_images == 60 and not traits.gray and traits.imbalance_ratio == 1.0


def test_class_balance_weights_and_sampler():
    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    weights = class_weights(labels, 4)
    assert torch.allclose(weights[:3] * torch.tensor([80.0, 15.0, 5.0]), torch.full((3,), 100 / 4))
    assert weights[3] == 0                        # a class without images
    drawn = torch.tensor(list(balanced_sampler(labels, seed=0)))
    counts = torch.bincount(labels[drawn], minlength=3).float()
    assert len(drawn) == 100 and counts.min() > 20     # each class about a third, where plain draws give 5 %


def tiny_photo_run(folder, out, *extra) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--dataset", str(folder), "--output_dir", str(out),
            "--model", "cnn-fast", "--widths", "8", "16", "--image_size", "32", "--num_train_epochs", "3",
            "--per_device_train_batch_size", "12", "--learning_rate", "0.01", "--validation_split_fraction", "0.2",
            "--test_split_fraction", "0.25", "--cache_dir", str(Path(out).parent / "cache"), *map(str, extra)]


@pytest.mark.slow
def test_a_photo_run_writes_every_file_and_pipeline_scores_what_metrics_json_says(photo_folder, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(tiny_photo_run(photo_folder, out, "--dataloader_num_workers", "2",
                                         "--class_balance", "loss"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Data path streaming: photos (most common side" in done.stdout
    assert "The best epoch is picked by validation accuracy" in done.stdout
    assert "Memory: a training step at batch 12 and 32x32 needs about" in done.stdout
    for name in ("metrics.json", "model.safetensors", "config.json", "preprocessor_config.json", "README.md",
                 "training_config.json", "data_summary.json", "history.json", "plots/reliability.png", "plots/top_losses.png", "plots/gradcam.png", "plots/filters.png",
                 "plots/augmentation.png", "plots/samples.png"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "BitImageProcessor"
    assert processor["size"] == {"shortest_edge": 36} and processor["crop_size"] == {"height": 32, "width": 32}
    config = json.loads((out / "training_config.json").read_text())
    assert config["data_path"] == "streaming" and config["recipe"] == "finetune" and config["crop_pct"] is None
    metrics = json.loads((out / "metrics.json").read_text())

    from transformers import pipeline

    classify = pipeline("image-classification", model=str(out), trust_remote_code=True)
    data = load_data(DataArguments(**{k: v for k, v in config.items() if k in DataArguments.__dataclass_fields__}),
                     seed=config["seed"])
    paths = data.splits["test"].cast_column("image", __import__("datasets").Image(decode=False))["image"]
    names = data.class_names
    predicted = [classify(p["path"], top_k=1)[0]["label"] for p in paths]
    accuracy = np.mean([names.index(p) == int(y) for p, y in zip(predicted, data.tensors["test"].labels)])
    assert metrics["test_num_samples"] == len(paths)
    assert abs(accuracy - metrics["test_accuracy"]) <= 1 / len(paths) + 1e-9


def test_a_batch_that_cannot_fit_is_refused_before_training(photo_folder, tmp_path):
    from image_classifier.runner import run

    args = ["--dataset", str(photo_folder), "--output_dir", str(tmp_path / "out"), "--model", "cnn-fast",
            "--image_size", "160", "--per_device_train_batch_size", "2000000", "--cache_dir", str(tmp_path / "c")]
    with pytest.raises(ConfigError, match=r"--per_device_train_batch_size: a training step of cnn-fast at batch "
                                          r"2000000 and 160x160 needs about [\d.]+ GiB, but only [\d.]+ GiB is free "
                                          r"on cpu; pass --per_device_train_batch_size \d+ or less"):
        run(parse_config(args))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_resident_tensors_and_streaming_items_share_one_interface(tiny_image_folder, tmp_path):
    resident = load_data(DataArguments(dataset=str(tiny_image_folder), cache_dir=str(tmp_path)), seed=0)
    streaming = load_data(DataArguments(dataset=str(tiny_image_folder), cache_dir=str(tmp_path),
                                        data_path="streaming", crop_pct=1.0), seed=0)
    assert isinstance(resident.tensors["test"], ImageTensors)
    # 16x16 PNGs at crop_pct 1: no resize, no crop, the same pixels either way.
    assert torch.equal(resident.tensors["test"].images_at([0, 1, 2]), streaming.tensors["test"].images_at([0, 1, 2]))
    assert torch.equal(resident.tensors["test"].labels, streaming.tensors["test"].labels)


# --------------------------------------------------------------------------------------------
# --streaming: datasets' streaming mode
# --------------------------------------------------------------------------------------------

def test_streaming_reads_a_parquet_folder_and_each_process_reads_its_own_part(tiny_parquet_folder, tmp_path):
    from datasets.distributed import split_dataset_by_node

    from image_classifier.streaming import StreamedImages, image_key

    data = load_data(DataArguments(dataset=str(tiny_parquet_folder), streaming=True, cache_dir=str(tmp_path)), seed=0)
    splits = data.summary["splits"]
    # validation: the first 10 % of the train stream (6 rows of file 0); test: the test file; train: the rest
    assert {s: info["rows"] for s, info in splits.items()} == {"train": 54, "validation": 6, "test": 12}
    assert splits["validation"]["from"] == "the first 6 rows of the train stream (--streaming)"
    assert data.summary["data_path"] == "streaming" and not list(tmp_path.iterdir())     # nothing cached
    train = data.tensors["train"]
    assert isinstance(train, StreamedImages) and len(train) == 54
    assert train[0][0].shape == (3, 16, 16)                      # the head's rows, with the training transform

    labels = [label for rank in (0, 1) for _, label in train.shard(rank, 2)]
    assert len(labels) == 54
    assert np.bincount(labels, minlength=3).tolist() == list(splits["train"]["class_counts"].values())
    # the parts are disjoint and hold no validation image (a skip() would be split between the files)
    parts = [[image_key(row["image"]) for row in split_dataset_by_node(train.stream, rank=rank, world_size=2)]
             for rank in (0, 1)]
    assert [len(p) for p in parts] == [20, 34] and not set(parts[0]) & set(parts[1])
    carved = {image_key(v) for v in data.splits["validation"].cast_column(
        "image", __import__("datasets").Image(decode=False))["image"]}
    assert len(carved) == 6 and not carved & set(parts[0] + parts[1])


def test_evaluation_rows_over_the_memory_bound_are_memory_mapped_once_and_equal_the_in_memory_ones(
        tiny_parquet_folder, tmp_path, monkeypatch):
    import datasets

    from image_classifier import data as data_stage

    def rows(data):
        return {s: data.splits[s].cast_column("image", datasets.Image(decode=False))[:] for s in data.splits}

    folder = shutil.copytree(tiny_parquet_folder, tmp_path / "hub")
    args = DataArguments(dataset=str(folder), streaming=True, cache_dir=str(tmp_path / "cache"))
    in_memory = load_data(args, seed=0)
    assert not (tmp_path / "cache").exists() and all(not d.cache_files for d in in_memory.splits.values())
    monkeypatch.setattr(data_stage, "STREAM_ROWS_IN_MEMORY_MB", 1e-4)          # 105 bytes: the tiny rows are over it
    mapped = load_data(args, seed=0)
    files = sorted((tmp_path / "cache").glob("*.arrow"))
    assert len(files) == 3 and all(len(d.cache_files) == 1 for d in mapped.splits.values())     # memory-mapped
    assert any("kept in memory-mapped files in" in note for note in mapped.summary["notes"])
    assert rows(mapped) == rows(in_memory)                    # the same rows, bytes and labels, in the same order
    assert torch.equal(mapped.tensors["test"][3][0], in_memory.tensors["test"][3][0])
    stamps = [f.stat().st_mtime_ns for f in files]
    load_data(args, seed=0)                                   # another process, or a later run: the same files
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").glob("*.arrow"))] == stamps
    load_data(DataArguments(dataset=str(folder), streaming=True, cache_dir=str(tmp_path / "cache"),
                            max_eval_samples=3), seed=0)   # other rows: files of their own, the first ones untouched
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 6           # (the rows not evaluated go back to train)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    test_file = folder / "data" / "test-00000-of-00001.parquet"
    os.utime(test_file, ns=(test_file.stat().st_atime_ns, test_file.stat().st_mtime_ns + 10**9))     # edited
    load_data(args, seed=0)
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 9           # the data changed: read afresh


def test_unlabeled_stream_rows_are_dropped_and_an_unlabeled_test_split_is_carved_from_train(tiny_image_folder,
                                                                                           tmp_path):
    import datasets

    from image_classifier.streaming import image_key

    names = ["blue", "green", "red"]
    files = sorted(tiny_image_folder.rglob("*.png"), key=str)
    order = np.random.default_rng(2).permutation(len(files))
    rows = [{"image": {"bytes": files[i].read_bytes(), "path": files[i].name},
             "label": names.index(files[i].parent.name) if k % 6 else -1} for k, i in enumerate(order)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    root = tmp_path / "hub" / "data"
    datasets.Dataset.from_list(rows[:60], features=features).to_parquet(str(root / "train-00000-of-00001.parquet"))
    unlabeled = [dict(row, label=-1) for row in rows[60:]]      # a Hub test split without labels
    datasets.Dataset.from_list(unlabeled, features=features).to_parquet(str(root / "test-00000-of-00001.parquet"))

    data = load_data(DataArguments(dataset=str(root.parent), streaming=True, cache_dir=str(tmp_path / "c")), seed=0)
    notes = data.summary["notes"]
    assert "10 unlabeled rows of 'train' dropped" in notes and "12 unlabeled rows of 'test' dropped" in notes
    assert "split 'test' has no labels: test is carved from train instead" in notes
    splits = data.summary["splits"]
    assert {s: info["rows"] for s, info in splits.items()} == {"train": 40, "validation": 5, "test": 5}
    assert all(label >= 0 for s in ("validation", "test") for _, label in data.tensors[s])
    streamed = [label for _, label in data.tensors["train"]]
    assert len(streamed) == 40 and min(streamed) >= 0
    assert np.bincount(streamed, minlength=3).tolist() == list(splits["train"]["class_counts"].values())
    evaluated = {image_key(v) for s in ("validation", "test") for v in data.splits[s].cast_column(
        "image", datasets.Image(decode=False))["image"]}
    trained = {image_key(row["image"]) for row in data.tensors["train"].stream}
    assert len(evaluated) == 10 and not evaluated & trained


class _WorkerBufferSizes(torch.utils.data.IterableDataset):
    def __init__(self, streamed):
        self.streamed = streamed

    def __iter__(self):
        yield self.streamed.worker_buffer_size()


def test_loader_workers_share_the_shuffle_buffer_and_still_read_every_row_once(tiny_parquet_folder, tmp_path):
    data = load_data(DataArguments(dataset=str(tiny_parquet_folder), streaming=True, cache_dir=str(tmp_path),
                                   shuffle_buffer_size=1000), seed=0)
    train = data.tensors["train"]
    assert train.worker_buffer_size() == 1000                     # no workers: the process's whole buffer
    sizes = list(torch.utils.data.DataLoader(_WorkerBufferSizes(train), batch_size=None, num_workers=2))
    assert sizes == [500, 500]                                    # datasets gives each worker a buffer of its own
    labels = torch.cat([batch_labels for _, batch_labels in build_loader(train, 4, True, 2)])
    assert len(labels) == 54 and np.bincount(labels.numpy(), minlength=3).tolist() == \
        list(data.summary["splits"]["train"]["class_counts"].values())


def test_streamed_batches_are_as_many_on_every_process_whatever_its_part(tiny_parquet_folder, tmp_path):
    from image_classifier.engine import StreamedBatches

    data = load_data(DataArguments(dataset=str(tiny_parquet_folder), streaming=True, cache_dir=str(tmp_path)), seed=0)
    counts = []
    for rank in (0, 1):                  # parts of 20 and 34 rows; 54 // (4 x 2) = 6 batches of 4 each
        batches = StreamedBatches(data.tensors["train"], 4, torch.device("cpu"), rank, 2, 1, 0)
        assert len(batches) == 6 and len(batches.skip_first_batches(2)) == 4
        counts.append([len(labels) for _, labels in batches])
    assert counts == [[4] * 6, [4] * 6]


def test_a_class_ordered_stream_is_carved_stratified_and_flags_a_stream_cannot_serve_are_refused(tiny_image_folder,
                                                                                                  tmp_path):
    data = load_data(DataArguments(dataset=str(tiny_image_folder), streaming=True, cache_dir=str(tmp_path)), seed=0)
    splits = data.summary["splits"]          # an image folder streams class by class: its first rows are all blue
    assert {s: info["rows"] for s, info in splits.items()} == {"train": 58, "validation": 7, "test": 7}
    assert all(count >= 2 for s in ("validation", "test") for count in splits[s]["class_counts"].values()), splits
    assert any("ordered by class" in note for note in data.summary["notes"])
    assert np.bincount([label for _, label in data.tensors["train"]], minlength=3).tolist() == \
        list(splits["train"]["class_counts"].values())
    limited = load_data(DataArguments(dataset=str(tiny_image_folder), streaming=True, cache_dir=str(tmp_path),
                                      max_train_samples=30, max_eval_samples=6), seed=0)
    counts = list(limited.summary["splits"]["train"]["class_counts"].values())     # stratified, not the first 30
    assert sum(counts) == 30 and min(counts) >= 9, counts
    assert np.bincount([label for _, label in limited.tensors["train"]], minlength=3).tolist() == counts
    with pytest.raises(ConfigError, match="--data_path: --streaming reads the train split as a stream"):
        parse_config(["--dataset", "x", "--streaming", "--data_path", "resident"])._resolve_path(None)
    with pytest.raises(ConfigError, match="--class_balance: 'sampling' draws images by position"):
        parse_config(["--dataset", "x", "--streaming", "--class_balance", "sampling"])._resolve_path(None)
