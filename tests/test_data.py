"""The data stage: sources, columns, splits, decoding of every PIL mode, the cache, errors, the
image processor's equality with our own decoding, exploration, and the real CIFAR-10 / MNIST copies."""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ALL_MODES, make_image
from image_classifier.augment import Normalize
from image_classifier.config import DataArguments
from image_classifier.data import (ALIASES, CorruptImageWarning, DataError, ImageTensors, build_image_data,
                                   build_image_processor, load_data, resolve_dataset)
from image_classifier.images import decode_image
from image_classifier.data import _find_columns, _stratified_split


def args_for(dataset, cache_dir, **kwargs) -> DataArguments:
    return DataArguments(dataset=str(dataset), cache_dir=str(cache_dir), **kwargs)


def row_ids(data, split: str) -> set[int]:
    """numbered_dataset_dir encodes each source row id in pixel (0, 0): id = R + 256 * G."""
    pixels = data.tensors[split].images[:, :, 0, 0].to(torch.int64)
    return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())


# ------------------------------------------------------------------------------------------------
# Names and columns
# ------------------------------------------------------------------------------------------------


def test_aliases_resolve_to_hub_ids_and_other_names_pass_through():
    assert resolve_dataset("cifar10") == "uoft-cs/cifar10"
    assert resolve_dataset("CIFAR100") == "uoft-cs/cifar100"
    assert resolve_dataset("mnist") == "ylecun/mnist"
    assert resolve_dataset("fashion-mnist") == resolve_dataset("fashion_mnist") == "zalando-datasets/fashion_mnist"
    assert resolve_dataset("someone/dataset") == "someone/dataset"
    assert resolve_dataset("./local/folder") == "./local/folder"
    assert set(ALIASES) == {"cifar10", "cifar100", "mnist", "fashion_mnist"}


def test_columns_are_found_by_feature_type():
    cifar = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    assert _find_columns(cifar, None, None) == ("img", "label")
    mnist = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["0", "1"])})
    assert _find_columns(mnist, None, None) == ("image", "label")
    cifar100 = datasets.Features({"img": datasets.Image(), "coarse_label": datasets.ClassLabel(names=["x", "y"]),
                                  "fine_label": datasets.ClassLabel(names=["a", "b", "c"])})
    assert _find_columns(cifar100, None, None) == ("img", "fine_label")
    plain = datasets.Features({"id": datasets.Value("int64"), "photo": datasets.Image(),
                               "target": datasets.Value("string")})
    assert _find_columns(plain, None, None) == ("photo", "target")
    assert _find_columns(cifar100, None, "coarse_label") == ("img", "coarse_label")


def test_missing_columns_are_errors_that_list_the_columns():
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string"),
                                  "id": datasets.Value("int64")})
    with pytest.raises(DataError) as error:
        _find_columns(features, None, None)
    message = str(error.value)
    assert "No label column" in message and "--label_column" in message
    assert "picture (Image), kind (string), id (int64)" in message
    with pytest.raises(DataError, match=r"--image_column 'photo' is not a column.*picture \(Image\)"):
        _find_columns(features, "photo", "kind")
    with pytest.raises(DataError, match=r"--image_column 'id' holds int64, not images"):
        _find_columns(features, "id", "kind")
    no_images = datasets.Features({"x": datasets.Value("float32"), "label": datasets.ClassLabel(names=["a", "b"])})
    with pytest.raises(DataError, match=r"No image column.*x \(float32\), label \(ClassLabel, 2 classes\)"):
        _find_columns(no_images, None, None)


def test_wrong_column_in_load_data_is_one_readable_paragraph(numbered_dataset_dir, tmp_path):
    with pytest.raises(DataError) as error:
        load_data(args_for(numbered_dataset_dir, tmp_path, label_column="species"), seed=0)
    message = str(error.value)
    assert "\n" not in message
    assert "--label_column 'species' is not a column" in message
    assert "picture (Image), kind (string), id (int64)" in message


def test_missing_path_is_a_data_error_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError) as error:
        load_data(args_for(missing, tmp_path / "cache"), seed=0)
    message = str(error.value)
    assert "\n" not in message
    assert str(missing) in message and "does not exist" in message and "--dataset" in message
    assert "no_such_folder" not in message.split("holds:")[-1]       # the parent's listing, not the name again


def test_folder_of_parquet_files_loads_with_its_splits(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    for split, n in (("train", 30), ("test", 10)):
        table = datasets.Dataset.from_dict({"img": [make_image("RGB", (8, 8), seed=i) for i in range(n)],
                                            "label": [i % 2 for i in range(n)]}, features=features)
        table.to_parquet(str(tmp_path / "parquet" / "plain" / f"{split}-00000-of-00001.parquet"))
    data = load_data(args_for(tmp_path / "parquet", tmp_path / "cache", dataset_config_name="plain"), seed=0)
    assert data.summary["source"] == "data files" and data.summary["image_column"] == "img"
    assert data.summary["dataset_resolved"].endswith("plain")          # the configuration's subfolder
    assert {s: info["rows"] for s, info in data.summary["splits"].items()} == {"train": 27, "validation": 3,
                                                                               "test": 10}


def test_folder_without_data_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"holds no dataset.*notes\.txt"):
        load_data(args_for(tmp_path / "empty", tmp_path / "cache"), seed=0)


@pytest.mark.slow
def test_unreachable_hub_id_is_a_data_error(tmp_path):
    """Offline, a Hub id fails with a DataError that suggests a local folder.

    A subprocess, because huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    """
    script = ("from image_classifier.config import DataArguments\n"
              "from image_classifier.data import load_data, DataError\n"
              "try:\n    load_data(DataArguments(dataset='someone-who-does-not-exist/no-such-dataset'), seed=0)\n"
              "except DataError as e:\n    print('DataError:', e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "DataError: Could not load dataset 'someone-who-does-not-exist/no-such-dataset'" in done.stdout, done.stderr
    assert "local folder" in done.stdout


# ------------------------------------------------------------------------------------------------
# Labels and splits
# ------------------------------------------------------------------------------------------------


def test_string_labels_become_sorted_class_names(numbered_dataset_dir, tmp_path):
    data = load_data(args_for(numbered_dataset_dir, tmp_path, label_column="kind"), seed=0)
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.summary["image_column"] == "picture" and data.summary["label_column"] == "kind"
    assert data.summary["source_splits"]["train"]["class_counts"] == {"bird": 100, "cat": 60, "dog": 40}
    for split in data.splits.values():
        assert split.column_names == ["image", "label"]
        assert split.features["label"] == datasets.ClassLabel(names=["bird", "cat", "dog"])
        assert isinstance(split.features["image"], datasets.Image)


def test_plain_int_labels_get_their_values_as_names(gray_dataset_dir, tmp_path):
    data = load_data(args_for(gray_dataset_dir, tmp_path), seed=0)
    assert data.class_names == ["0", "1", "2"]


def test_carved_splits_are_disjoint_stratified_and_seeded(numbered_dataset_dir, tmp_path):
    args = args_for(numbered_dataset_dir, tmp_path, label_column="kind",
                    validation_split_fraction=0.2, test_split_fraction=0.1)
    data = load_data(args, seed=3)
    ids = {s: row_ids(data, s) for s in ("train", "validation", "test")}
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [140, 40, 20]
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(range(200))       # nothing lost
    # Class proportions (bird 50%, cat 30%, dog 20%) kept in every split.
    assert data.summary["splits"]["validation"]["class_counts"] == {"bird": 20, "cat": 12, "dog": 8}
    assert data.summary["splits"]["test"]["class_counts"] == {"bird": 10, "cat": 6, "dog": 4}
    assert data.summary["splits"]["train"]["class_counts"] == {"bird": 70, "cat": 42, "dog": 28}
    # Row i of a split is row i of its tensor.
    assert data.splits["validation"]["label"][:] == data.tensors["validation"].labels.tolist()
    again = load_data(args, seed=3)
    assert {s: row_ids(again, s) for s in ids} == ids
    other = load_data(args, seed=4)
    assert row_ids(other, "validation") != ids["validation"]


def test_existing_splits_are_used_and_only_missing_ones_carved(gray_dataset_dir, tmp_path):
    data = load_data(args_for(gray_dataset_dir, tmp_path), seed=0)
    rows = {s: info["rows"] for s, info in data.summary["splits"].items()}
    assert rows == {"train": 54, "validation": 6, "test": 15}
    assert data.summary["splits"]["test"]["from"] == "test"


def test_valid_and_val_split_names_are_validation(tmp_path):
    images = [make_image("RGB", (8, 8), seed=i) for i in range(20)]
    part = {"image": images, "label": [i % 2 for i in range(20)]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    for name in ("valid", "val"):
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(part, features=features),
                                    name: datasets.Dataset.from_dict(part, features=features)})
        data = build_image_data(raw, args_for("memory", tmp_path, test_split_fraction=0.2), seed=0)
        assert data.summary["splits"]["validation"]["rows"] == 20 and data.summary["splits"]["test"]["rows"] == 4
        assert data.summary["splits"]["validation"]["from"] == f"{name} (as validation)"


def test_stratified_split_matches_datasets_train_test_split():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    table = datasets.Dataset.from_dict({"label": labels, "position": np.arange(100)},
                                       features=datasets.Features({"label": datasets.ClassLabel(num_classes=4),
                                                                   "position": datasets.Value("int64")}))
    theirs = table.train_test_split(test_size=20, stratify_by_column="label", seed=7)
    kept, holdout = _stratified_split(labels, 20, seed=7, notes=[])
    assert holdout.tolist() == sorted(theirs["test"]["position"][:])
    assert kept.tolist() == sorted(theirs["train"]["position"][:])
    assert np.bincount(labels[holdout]).tolist() == [10, 6, 3, 1]


def test_max_samples_take_seeded_subsets(numbered_dataset_dir, tmp_path):
    args = args_for(numbered_dataset_dir, tmp_path, label_column="kind", max_train_samples=30, max_eval_samples=7)
    data = load_data(args, seed=1)
    assert [len(data.tensors[s]) for s in ("train", "validation", "test")] == [30, 7, 7]
    assert data.summary["splits"]["train"]["rows_before_limit"] == 160
    assert row_ids(load_data(args, seed=1), "train") == row_ids(data, "train")
    # Stratified: each class keeps its share of the train split (within one image).
    full = load_data(args_for(numbered_dataset_dir, tmp_path, label_column="kind"), seed=1)
    k = len(full.class_names)
    share = np.bincount(full.tensors["train"].labels.numpy(), minlength=k) / len(full.tensors["train"])
    counts = np.bincount(data.tensors["train"].labels.numpy(), minlength=k)
    assert np.abs(counts - 30 * share).max() <= 1, (counts, 30 * share)
    assert "(stratified, seed 1)" in data.summary["splits"]["train"]["from"]


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_uint8_of_the_model_shape(mode, channels):
    image = make_image(mode, (20, 14), seed=5)
    out = decode_image(image, channels, 16)
    assert out.dtype == torch.uint8 and out.shape == (channels, 16, 16)
    assert out.is_contiguous()
    if mode != "1":
        assert out.float().std() > 5, "an image of random pixels must not come out flat"


def test_mode_conversions_keep_the_right_values():
    rgba = make_image("RGBA", (4, 4), seed=1)
    assert decode_image(rgba, 3, 4)[:, 0, 0].tolist() == [255, 255, 255]      # transparent -> white
    la = make_image("LA", (4, 4), seed=1)
    assert decode_image(la, 1, 4)[0, 0, 0] == 255
    palette = make_image("P-transparent", (4, 4), seed=1)
    assert decode_image(palette, 3, 4)[:, 0, 0].tolist() == [255, 255, 255]
    opaque = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    assert decode_image(opaque, 3, 4)[:, 0, 0].tolist() == [10, 20, 30]
    deep = Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    assert deep.mode == "I;16"
    assert decode_image(deep, 1, 4)[0, 0].tolist() == [0, 1, 128, 255]       # scaled, not clipped
    assert decode_image(deep, 3, 4)[:, 0, 3].tolist() == [255, 255, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 1.0]], dtype=np.float32))
    assert decode_image(floats, 1, 4)[0, 0].tolist() == [0, 128, 255, 255]
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 0, 0))                           # magenta ink
    assert decode_image(cmyk, 3, 4)[:, 0, 0].tolist() == [255, 0, 255]
    bilevel = Image.new("1", (4, 4), 1)
    assert decode_image(bilevel, 1, 4).unique().tolist() == [255]
    gray = make_image("L", (4, 4), seed=2)
    out = decode_image(gray, 3, 4)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert torch.equal(out[0], torch.from_numpy(np.array(gray)))
    rgb = make_image("RGB", (4, 4), seed=3)
    assert torch.equal(decode_image(rgb, 1, 4)[0], torch.from_numpy(np.array(rgb.convert("L"))))   # ITU-R 601
    assert torch.equal(decode_image(rgb, 3, 4), torch.from_numpy(np.array(rgb)).permute(2, 0, 1))  # no resize


def test_image_tensors_is_a_dataset_of_uint8_and_int():
    data = ImageTensors(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2, 1]))
    image, label = data[1]
    assert len(data) == 3 and image.shape == (1, 4, 4) and image.dtype == torch.uint8 and label == 2
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    images, labels = next(iter(loader))
    assert images.shape == (2, 1, 4, 4) and labels.dtype == torch.int64


def test_every_mode_loads_from_an_image_folder_and_corrupt_files_are_skipped(mixed_image_folder, tmp_path):
    with pytest.warns(CorruptImageWarning) as record:
        data = load_data(args_for(mixed_image_folder, tmp_path), seed=0)
    # Only our warning: a ResourceWarning from an earlier test's garbage (an unclosed event loop) can land here too.
    (message,) = [str(w.message) for w in record if issubclass(w.category, CorruptImageWarning)]
    assert "Skipped 1 image" in message and "broken.png" in message and "train row" in message
    assert "--strict_images" in message
    summary = data.summary
    assert summary["skipped_images"]["count"] == 1 and "broken.png" in summary["skipped_images"]["first"][0]
    assert data.num_channels == 3 and data.image_size == 20        # colour present; 20 is the common side
    assert {"RGB", "L", "1", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F"} <= set(summary["image_modes"])
    assert summary["image_sizes"]["20x20"] > summary["image_sizes"]["24x18"] > 0
    total = sum(len(t) for t in data.tensors.values())
    assert total == 44 == sum(summary["image_modes"].values())
    for name, tensors in data.tensors.items():
        assert tensors.images.shape[1:] == (3, 20, 20) and tensors.images.dtype == torch.uint8
        assert len(data.splits[name]) == len(tensors)
    assert len(data.mean) == len(data.std) == 3 and all(0 < s < 1 for s in data.std)


def test_strict_images_makes_a_corrupt_file_an_error(mixed_image_folder, tmp_path):
    with pytest.raises(DataError) as error:
        load_data(args_for(mixed_image_folder, tmp_path, strict_images=True), seed=0)
    assert "broken.png" in str(error.value) and "--strict_images" in str(error.value)
    # Also when the skip is already in the cache from a lenient run.
    with pytest.warns(CorruptImageWarning):
        load_data(args_for(mixed_image_folder, tmp_path / "second"), seed=0)
    with pytest.raises(DataError, match="broken.png"):
        load_data(args_for(mixed_image_folder, tmp_path / "second", strict_images=True), seed=0)


def test_grayscale_dataset_defaults_to_one_channel(gray_dataset_dir, tmp_path):
    data = load_data(args_for(gray_dataset_dir, tmp_path), seed=0)
    assert data.num_channels == 1 and data.image_size == 12
    assert data.tensors["train"].images.shape[1:] == (1, 12, 12)
    assert data.mean[0] == data.mean[1] == data.mean[2] and data.std[0] == data.std[2]
    images = data.tensors["train"].images.float() / 255
    assert data.mean[0] == pytest.approx(images.mean().item(), abs=1e-5)
    assert data.std[0] == pytest.approx(images.std(unbiased=False).item(), abs=1e-5)
    forced = load_data(args_for(gray_dataset_dir, tmp_path, num_channels=3, image_size=8), seed=0)
    assert forced.tensors["test"].images.shape[1:] == (3, 8, 8)
    assert forced.summary["num_channels_from"] == "--num_channels"


def test_second_load_hits_the_cache(tiny_image_folder, tmp_path):
    args = args_for(tiny_image_folder, tmp_path)
    first = load_data(args, seed=0)
    assert not any(first.cache["hits"].values())
    files = {s: Path(p) for s, p in first.cache["files"].items()}
    assert all(p.is_file() and p.parent == tmp_path for p in files.values())
    stamps = {s: p.stat().st_mtime_ns for s, p in files.items()}
    second = load_data(args, seed=0)
    assert all(second.cache["hits"].values())
    assert {s: p.stat().st_mtime_ns for s, p in files.items()} == stamps       # read, not rewritten
    for split in first.tensors:
        assert torch.equal(first.tensors[split].images, second.tensors[split].images)
        assert torch.equal(first.tensors[split].labels, second.tensors[split].labels)
    assert second.mean == first.mean and second.summary == first.summary
    resized = load_data(args_for(tiny_image_folder, tmp_path, image_size=8), seed=0)
    assert not any(resized.cache["hits"].values())
    reseeded = load_data(args, seed=1)
    assert not reseeded.cache["hits"]["train"]


def test_cache_defaults_to_hf_home(tiny_image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = load_data(DataArguments(dataset=str(tiny_image_folder), max_train_samples=5, max_eval_samples=3), seed=0)
    assert Path(data.cache["dir"]) == tmp_path / "hf" / "image_classifier"
    assert all(Path(p).is_file() for p in data.cache["files"].values())


# ------------------------------------------------------------------------------------------------
# The image processor gives our numbers
# ------------------------------------------------------------------------------------------------


def _processor_matches(data, image_size: int, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    build_image_processor(image_size, data.mean, data.std).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["size"] == {"height": image_size, "width": image_size}
    assert len(config["image_mean"]) == len(config["image_std"]) == 3
    normalize = Normalize(data.mean, data.std)
    rows = data.splits["test"].select(range(min(6, len(data.splits["test"]))))
    for i, row in enumerate(rows):
        theirs = processor(images=row["image"], return_tensors="pt")["pixel_values"][0]          # (3, S, S)
        ours = normalize(decode_image(row["image"], data.num_channels, image_size).unsqueeze(0))[0]
        assert theirs.shape == (3, image_size, image_size)
        torch.testing.assert_close(theirs, ours.expand(3, -1, -1), atol=1e-5, rtol=0)
        # The tensors the training and evaluation loops see are the same decoding.
        torch.testing.assert_close(normalize(data.tensors["test"].images[i:i + 1])[0], ours, atol=0, rtol=0)


@pytest.mark.parametrize("image_size", [16, 11])
def test_image_processor_matches_our_decoding_rgb(tiny_image_folder, tmp_path, image_size):
    data = load_data(args_for(tiny_image_folder, tmp_path / "cache", image_size=image_size), seed=0)
    assert data.num_channels == 3
    _processor_matches(data, image_size, tmp_path / "processor")


@pytest.mark.parametrize("image_size", [12, 20])
def test_image_processor_matches_our_decoding_grayscale(gray_dataset_dir, tmp_path, image_size):
    data = load_data(args_for(gray_dataset_dir, tmp_path / "cache", image_size=image_size), seed=0)
    assert data.num_channels == 1
    _processor_matches(data, image_size, tmp_path / "processor")


def test_image_processor_composites_transparency_like_our_decoding(tmp_path):
    image = make_image("RGBA", (10, 10), seed=9)
    processor = build_image_processor(10, [0.5] * 3, [0.25] * 3)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = Normalize([0.5] * 3, [0.25] * 3)(decode_image(image, 3, 10).unsqueeze(0))[0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# The real datasets (../shared/datasets)
# ------------------------------------------------------------------------------------------------


def test_real_cifar10_columns_classes_and_splits(shared_datasets, tmp_path):
    args = args_for(shared_datasets / "cifar10", tmp_path, max_train_samples=200, max_eval_samples=100)
    data = load_data(args, seed=42)
    summary = data.summary
    assert summary["image_column"] == "img" and summary["label_column"] == "label"
    assert data.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"]
    assert summary["source_splits"]["train"]["rows"] == 50_000 and summary["source_splits"]["test"]["rows"] == 10_000
    assert set(summary["source_splits"]["train"]["class_counts"].values()) == {5_000}
    before = {s: info["rows_before_limit"] for s, info in summary["splits"].items()}
    assert before == {"train": 45_000, "validation": 5_000, "test": 10_000}
    assert [len(data.tensors[s]) for s in ("train", "validation", "test")] == [200, 100, 100]
    assert data.num_channels == 3 and data.image_size == 32


def test_real_mnist_columns_classes_and_splits(shared_datasets, tmp_path):
    args = args_for(shared_datasets / "mnist", tmp_path, max_train_samples=200, max_eval_samples=100)
    data = load_data(args, seed=42)
    summary = data.summary
    assert summary["image_column"] == "image" and summary["label_column"] == "label"
    assert data.class_names == [str(d) for d in range(10)]
    assert summary["source_splits"]["train"]["rows"] == 60_000 and summary["source_splits"]["test"]["rows"] == 10_000
    before = {s: info["rows_before_limit"] for s, info in summary["splits"].items()}
    assert before == {"train": 54_000, "validation": 6_000, "test": 10_000}
    assert data.num_channels == 1 and data.image_size == 28
    assert data.tensors["train"].images.shape[1:] == (1, 28, 28)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real_cache")


@pytest.mark.slow
@pytest.mark.parametrize("name, rows, channels, mean", [
    ("cifar10", (45_000, 5_000, 10_000), 3, (0.491, 0.482, 0.447)),
    ("mnist", (54_000, 6_000, 10_000), 1, (0.131, 0.131, 0.131)),
])
def test_real_dataset_decodes_fully_and_then_loads_from_the_cache(shared_datasets, real_cache, name, rows, channels,
                                                                  mean):
    args = args_for(shared_datasets / name, real_cache)
    started = time.perf_counter()
    data = load_data(args, seed=42)
    decode_seconds = time.perf_counter() - started
    assert tuple(len(data.tensors[s]) for s in ("train", "validation", "test")) == rows
    assert data.tensors["train"].images.shape[1] == channels
    assert data.summary["skipped_images"]["count"] == 0
    assert data.mean == pytest.approx(mean, abs=2e-3)
    assert data.summary["images_counted"].startswith(f"all {sum(rows)} ")
    started = time.perf_counter()
    again = load_data(args, seed=42)
    hit_seconds = time.perf_counter() - started
    assert all(again.cache["hits"].values())
    assert torch.equal(again.tensors["train"].images[:100], data.tensors["train"].images[:100])
    print(f"{name}: decode {decode_seconds:.1f}s, cache hit {hit_seconds:.1f}s")


def test_build_image_data_accepts_a_dataset_in_memory(tmp_path):
    images = [make_image(mode, (10, 10), seed=i) for i, mode in enumerate(["RGB", "L", "RGBA", "P"] * 10)]
    table = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(40)]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.ClassLabel(num_classes=4)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptImageWarning)
        data = build_image_data(table, args_for("in-memory", tmp_path), seed=0)
    assert sum(len(t) for t in data.tensors.values()) == 40
    assert data.summary["source"] == "in memory"
