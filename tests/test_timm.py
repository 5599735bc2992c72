"""timm architectures (`--model timm/NAME`): a real run end to end, the saved folder in stock transformers and
stock timm in a process that never imports this project, the push round trip through the local Hub stand-in
(`hf-hub:` and `pipeline()`), `--pretrained` (from the stand-in, and refused at once without a network), and
the transfer-learning split of the parameters (backbone learning rate, frozen backbone).

`test_resnet` is timm's tiny test network (0.37M parameters): every run here takes seconds.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hub_fixtures import USER, WRITE_TOKEN, hub, hub_env  # noqa: F401
from image_classifier import models, optim
from image_classifier.config import ConfigError, parse_config
from image_classifier.runner import run

ARCH = "test_resnet"
CLASSES = ["blue", "green", "red"]          # the tiny_image_folder classes, sorted


def timm_args(dataset, output_dir, *extra) -> list[str]:
    return ["--dataset", str(dataset), "--output_dir", str(output_dir), "--model", f"timm/{ARCH}",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
            "--learning_rate", "0.05", "--validation_split_fraction", "0.2", "--test_split_fraction", "0.2",
            "--cache_dir", str(Path(output_dir).parent / "cache"), *map(str, extra)]


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory, tiny_image_folder):
    """One finished run of timm/test_resnet from scratch; also hands back the trained model as it was saved."""
    out = tmp_path_factory.mktemp("timm_run") / "model"
    saved = {}
    original = models.save_pretrained

    def keep_a_copy(model, folder):
        saved["model"] = copy.deepcopy(model).cpu().eval()
        return original(model, folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "save_pretrained", keep_a_copy)
        results = run(parse_config(timm_args(tiny_image_folder, out)))
    return out, saved["model"], results


def _images(folder: Path) -> list[Path]:
    """Two images per class, and one non-square photo-sized image that every loader has to resize."""
    paths = [p for name in CLASSES for p in sorted((folder / name).glob("*.png"))[:2]]
    odd = folder.parent / "odd.png"
    if not odd.exists():
        rng = np.random.default_rng(3)
        Image.fromarray(rng.integers(0, 255, size=(30, 44, 3), dtype=np.uint8)).save(odd)
    return paths + [odd]


def _reference(model, paths: list[Path], out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The training/evaluation preprocessing (decode_image + Normalize) and the trained model's logits on it."""
    from image_classifier.augment import Normalize
    from image_classifier.images import decode_image

    config = json.loads((out / "config.json").read_text())
    size = config["pretrained_cfg"]["input_size"][-1]
    mean, std = config["pretrained_cfg"]["mean"], config["pretrained_cfg"]["std"]
    pixels = Normalize(mean, std)(torch.stack([decode_image(Image.open(p), 3, size) for p in paths]))
    with torch.no_grad():
        return pixels, model(pixel_values=pixels).logits


# Stock transformers and stock timm only: the model from a folder or a Hub id, on the same pixels and through
# each library's own preprocessing. Prints one JSON line.
LOAD_BOTH = r"""
import json, sys
import numpy as np, timm, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

ref, timm_ref, pixels_path, paths = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
pixels = torch.from_numpy(np.load(pixels_path))
images = [Image.open(p).convert("RGB") for p in paths]
hf = AutoModelForImageClassification.from_pretrained(ref).eval()          # no trust_remote_code
tm = timm.create_model(timm_ref, pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=tm))
processor = AutoImageProcessor.from_pretrained(ref)
classify = pipeline("image-classification", model=ref)
with torch.no_grad():
    out = {
        "hf_class": type(hf).__name__, "processor_class": type(processor).__name__,
        "hf_labels": [hf.config.id2label[i] for i in range(hf.config.num_labels)],
        "timm_labels": list(tm.pretrained_cfg.get("label_names") or []),
        "timm_num_classes": tm.num_classes,
        "hf_logits": hf(pixel_values=pixels).logits.tolist(),
        "timm_logits": tm(pixels).tolist(),
        "hf_processor_logits": hf(**processor(images=images, return_tensors="pt")).logits.tolist(),
        "timm_transform_logits": tm(torch.stack([transform(im) for im in images])).tolist(),
        "pipeline_top1": [classify(p, top_k=1)[0]["label"] for p in paths],
    }
out["project_imported"] = sorted(m for m in sys.modules if m.startswith("image_classifier"))
print("RESULT " + json.dumps(out))
"""


def _load_both(ref: str, timm_ref: str, pixels: torch.Tensor, paths: list[Path], tmp_path: Path,
               env: dict | None = None) -> dict:
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    cwd = tmp_path / "elsewhere"          # not the repository: nothing of this project is importable by path
    cwd.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-c", LOAD_BOTH, ref, timm_ref, str(tmp_path / "pixels.npy"),
                             json.dumps([str(p) for p in paths])], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT ", 1)[1])


def _check_same_model(got: dict, reference: torch.Tensor, native: int) -> None:
    """Both loaders give the trained model's logits; their own preprocessing agrees with training's."""
    assert got["project_imported"] == []
    assert got["hf_class"] == "TimmWrapperForImageClassification"
    assert got["hf_labels"] == CLASSES and got["timm_labels"] == CLASSES and got["timm_num_classes"] == 3
    for key in ("hf_logits", "timm_logits"):         # the same input tensor: the same network, to float precision
        torch.testing.assert_close(torch.tensor(got[key]), reference, rtol=0, atol=1e-5, msg=key)
    # Each library's own preprocessing (both timm's eval transform from config.json's data config) is the
    # training preprocessing: the same numbers where no resize happens; where one does (the odd-sized image),
    # PIL and torchvision round the antialiased resize differently, by at most 1/255.
    for key in ("hf_processor_logits", "timm_transform_logits"):
        logits = torch.tensor(got[key])
        torch.testing.assert_close(logits[:native], reference[:native], rtol=0, atol=1e-4, msg=key)
        torch.testing.assert_close(logits[native:], reference[native:], rtol=0, atol=0.05, msg=key)
    torch.testing.assert_close(torch.tensor(got["hf_processor_logits"]), torch.tensor(got["timm_transform_logits"]),
                               rtol=0, atol=1e-5)
    assert got["pipeline_top1"] == [CLASSES[i] for i in reference.argmax(-1).tolist()]
    assert got["processor_class"] == "TimmWrapperImageProcessor"


# ------------------------------------------------------------------------------------------------
# The folder a run writes
# ------------------------------------------------------------------------------------------------


def test_run_writes_a_folder_that_timm_and_transformers_both_describe(timm_run):
    import timm

    out, model, results = timm_run
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    assert results["test_accuracy"] > 0 and results["num_parameters"] == models.count_parameters(model)
    assert not list(out.glob("*.py"))                                     # no remote code travels with it
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "timm_wrapper" and config["architectures"] == ["TimmWrapperForImageClassification"]
    assert config["architecture"] == ARCH and "auto_map" not in config
    assert config["label_names"] == CLASSES and config["num_classes"] == 3
    assert "num_classes" not in (config.get("model_args") or {})          # TimmWrapper passes it itself
    assert "tag" not in config["pretrained_cfg"]                          # these are not the tag's weights
    # One preprocessing truth: timm's data config (in config.json) drives the saved processor (transformers
    # reads it from config.json for a folder, from preprocessor_config.json for a Hub repo: both say the same).
    data_cfg, processor = config["pretrained_cfg"], json.loads((out / "preprocessor_config.json").read_text())
    source = timm.models.get_pretrained_cfg(ARCH)
    assert data_cfg["input_size"] == [3, 16, 16]
    assert data_cfg["mean"] == list(source.mean) and data_cfg["std"] == list(source.std)
    assert (data_cfg["interpolation"], data_cfg["crop_pct"], data_cfg["crop_mode"]) == ("bilinear", 1.0, "squash")
    assert processor == {"image_processor_type": "TimmWrapperImageProcessor", "architecture": ARCH,
                         "pretrained_cfg": data_cfg}
    weights = load_file(out / "model.safetensors")
    assert "fc.weight" in weights and not any(k.startswith("timm_model.") for k in weights)   # timm's names
    assert json.loads((out / "training_config.json").read_text())["num_channels"] == 3

    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "trust_remote_code" not in card
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in card and "Trained from scratch" in card
    assert f"normalised with mean {list(source.mean)}" in card and "(the timm model's data config)" in card


def test_both_loaders_in_a_fresh_process_give_the_trained_logits(timm_run, tiny_image_folder, tmp_path):
    out, model, _ = timm_run
    paths = _images(tiny_image_folder)
    pixels, reference = _reference(model, paths, out)
    got = _load_both(str(out), f"local-dir:{out}", pixels, paths, tmp_path)
    _check_same_model(got, reference, native=len(paths) - 1)


@pytest.mark.slow
def test_push_round_trip_loads_with_timm_hf_hub_and_the_pipeline(timm_run, tiny_image_folder, hub, hub_env,
                                                                   tmp_path):
    import shutil

    from image_classifier.hub import push_to_hub

    out, model, _ = timm_run
    folder = Path(shutil.copytree(out, tmp_path / "model"))     # the module's run folder stays as it was
    repo = f"{USER}/timm-tiny"
    push_to_hub(folder, repo, token=WRITE_TOKEN)
    pushed = hub.files(repo)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(pushed)
    assert f'timm.create_model("hf-hub:{repo}", pretrained=True)' in pushed["README.md"].decode()

    paths = _images(tiny_image_folder)
    pixels, reference = _reference(model, paths, folder)
    got = _load_both(repo, f"hf-hub:{repo}", pixels, paths, tmp_path, env=hub_env)
    _check_same_model(got, reference, native=len(paths) - 1)
    assert hub.unhandled == []


# ------------------------------------------------------------------------------------------------
# --pretrained
# ------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """The Hub endpoint refuses connections and the Hugging Face cache is empty."""
    import huggingface_hub.constants as constants

    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return url


def test_pretrained_without_network_fails_at_once_and_says_how_to_train_from_scratch(tiny_image_folder, tmp_path,
                                                                                  no_network):
    out = tmp_path / "model"
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        run(parse_config(timm_args(tiny_image_folder, out, "--pretrained")))
    message = str(error.value)
    assert time.perf_counter() - started < 15          # one refused request, not a minute of retries
    assert error.value.flag == "pretrained" and message.startswith("--pretrained: ")
    assert f"timm/{ARCH}.r160_in1k" in message and no_network in message and "cannot be reached" in message
    assert f"drop --pretrained to train {ARCH} from scratch" in message
    assert not (out / "data_summary.json").exists()     # it failed before loading any data


def test_pretrained_with_hf_hub_offline_says_so(tiny_image_folder, tmp_path, no_network, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set.*drop --pretrained to train"):
        run(parse_config(timm_args(tiny_image_folder, tmp_path / "model", "--pretrained")))


@pytest.fixture
def timm_weights_on_hub(hub, hub_env, tmp_path):
    """timm's test_resnet.r160_in1k (1000 ImageNet classes, random weights) served by the stand-in as the
    `timm` organisation's repo, where `--pretrained` looks for it."""
    import timm
    from huggingface_hub import HfApi

    source = timm.create_model(f"{ARCH}.r160_in1k", pretrained=False)
    timm.models.save_for_hf(source, tmp_path / "source", safe_serialization=True)
    hub.add_token("hf_timm_org_token_0123456789", "timm", "write")
    api = HfApi(endpoint=hub.url, token="hf_timm_org_token_0123456789")
    api.create_repo(f"timm/{ARCH}.r160_in1k")
    api.upload_folder(repo_id=f"timm/{ARCH}.r160_in1k", folder_path=tmp_path / "source")
    return source


@pytest.mark.slow
def test_pretrained_from_the_hub_starts_from_its_weights_with_a_new_classifier(timm_weights_on_hub,
                                                                              tiny_image_folder, tmp_path):
    """The backbone is frozen for the whole (one-epoch) run, so the saved backbone is exactly the pretrained
    one and only the new head learned."""
    source = timm_weights_on_hub
    out = tmp_path / "model"
    run(parse_config(timm_args(tiny_image_folder, out, "--pretrained", "--num_train_epochs", "1",
                               "--freeze_backbone_epochs", "1", "--image_size", "32")))
    saved, pretrained = load_file(out / "model.safetensors"), source.state_dict()
    parameters = {name for name, _ in source.named_parameters()}
    for name in parameters - {"fc.weight", "fc.bias"}:
        torch.testing.assert_close(saved[name], pretrained[name], rtol=0, atol=0, msg=name)
    assert saved["fc.weight"].shape == (3, source.num_features)            # re-initialized for 3 classes
    assert not torch.equal(saved["fc.weight"], pretrained["fc.weight"][:3])
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]           # --image_size overrides 160
    card = (out / "README.md").read_text()
    assert f"base_model: timm/{ARCH}.r160_in1k" in card and "Fine-tuned from" in card


def test_pretrained_input_size_is_the_weights_own_by_default(timm_weights_on_hub):
    """Without --image_size, --pretrained resizes to the input size the weights were trained at (and the
    resolved size is what training_config.json records)."""
    config = parse_config(["--dataset", "anything", "--model", f"timm/{ARCH}", "--pretrained"])
    notes = models.prepare_model_config(config)
    assert config.data.image_size == 160 and config.data.num_channels == 3
    assert any("160x160" in note for note in notes) and any(f"timm/{ARCH}.r160_in1k" in note for note in notes)


# ------------------------------------------------------------------------------------------------
# Options checked before anything is loaded
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag, text", [
    (["--model", "cnn-fast", "--pretrained"], "pretrained", "timm models only"),
    (["--model", "cnn-fast", "--freeze_backbone_epochs", "2"], "freeze_backbone_epochs", "timm models only"),
    (["--model", "cnn-fast", "--backbone_learning_rate", "0.01"], "backbone_learning_rate", "timm models only"),
    (["--model", "timm/resnet10x"], "model", "close names: resnet10t"),
    (["--model", "timm/resnet10t.nope"], "model", "its tags: c3_in1k"),
    (["--model", "resnet-9000"], "model", "cnn-basic, cnn-fast, cnn-wide, a timm architecture"),
    (["--model", "timm/resnet10t", "--widths", "8", "16"], "widths", "small-CNN presets"),
    (["--model", "timm/resnet10t", "--num_channels", "1"], "num_channels", "RGB"),
    (["--model", "cnn-basic", "--progressive_resize_epochs", "2"], "progressive_resize_epochs", "fixed-size feature map"),
])
def test_model_options_are_checked_before_loading(argv, flag, text):
    config = parse_config(["--dataset", "anything", *argv])
    with pytest.raises(ConfigError, match=text) as error:
        models.prepare_model_config(config)
    assert error.value.flag == flag


def test_a_bare_timm_name_works_too_and_classifier_dropout_becomes_drop_rate():
    config = parse_config(["--dataset", "anything", "--model", ARCH, "--classifier_dropout", "0.25"])
    assert models.prepare_model_config(config) == [] and config.data.num_channels == 3
    model = models.create_model(ARCH, class_names=CLASSES, num_channels=3, image_size=24,
                                overrides=config.model.overrides())
    assert model.timm_model.drop_rate == 0.25 and model.config.model_args == {"drop_rate": 0.25}
    assert model(pixel_values=torch.randn(2, 3, 24, 24)).logits.shape == (2, 3)


def test_timm_initialization_is_timms_own():
    """TimmWrapperForImageClassification(config) would redraw every weight with normal(0, 0.02); training from
    scratch needs timm's initialization (kaiming convolutions, zero-initialized last BatchNorm of each block)."""
    import timm

    torch.manual_seed(0)
    ours = models.create_model(f"timm/{ARCH}", class_names=CLASSES, num_channels=3, image_size=16)
    torch.manual_seed(0)
    theirs = timm.create_model(ARCH, num_classes=3)
    for (name, a), (_, b) in zip(ours.timm_model.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------------------------------
# Transfer learning: parameter groups and the frozen backbone
# ------------------------------------------------------------------------------------------------


def test_parameter_groups_split_head_and_backbone_with_their_learning_rates():
    model = models.create_model(f"timm/{ARCH}", class_names=CLASSES, num_channels=3, image_size=16)
    groups = optim.parameter_groups(model, lr=0.1, backbone_lr=0.01, weight_decay=5e-4)
    assert [(g["backbone"], g["lr"]) for g in groups][0] == (False, 0.1)      # the logged lr is the head's
    head = {id(p) for p in model.timm_model.fc.parameters()}
    for g in groups:
        assert g["lr"] == (0.01 if g["backbone"] else 0.1)
        assert all((id(p) in head) != g["backbone"] for p in g["params"])
        assert g["weight_decay"] == (5e-4 if all(p.ndim > 1 for p in g["params"]) else 0.0)
        assert all(p.ndim > 1 for p in g["params"]) or all(p.ndim <= 1 for p in g["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)
    same = optim.parameter_groups(model, lr=0.1)                             # default: one learning rate
    assert {g["lr"] for g in same} == {0.1}


def test_freeze_backbone_keeps_the_backbone_still_until_released():
    torch.manual_seed(0)
    model = models.create_model(f"timm/{ARCH}", class_names=CLASSES, num_channels=3, image_size=16)
    optimizer = torch.optim.SGD(optim.parameter_groups(model, lr=0.1, weight_decay=5e-4), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
        optimizer.step()

    params = lambda: {n: p.detach().clone() for n, p in model.timm_model.named_parameters()}   # noqa: E731
    assert optim.freeze_backbone(optimizer, True) is True
    before = params()
    step()
    step()
    after = params()
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == name.startswith("fc."), name
    assert all(not optimizer.state.get(p) for g in optimizer.param_groups if g["backbone"] for p in g["params"])
    assert optim.freeze_backbone(optimizer, True) is False                   # nothing changed
    assert optim.freeze_backbone(optimizer, False) is True
    step()
    assert not torch.equal(after["conv1.0.weight"], model.timm_model.conv1[0].weight.detach())
