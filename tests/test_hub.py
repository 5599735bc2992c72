"""The Hub stage: model card, push_to_hub, the CLI, and loading what was pushed in another project.

The Hub is a local stand-in (tests/hub_server.py); the pulling side always runs in a fresh Python
process with HF_ENDPOINT at the stand-in and an empty HF_HOME, as another project would.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from hub_fixtures import (CLASS_NAMES, READ_TOKEN, USER, WRITE_TOKEN, hub, hub_env,  # noqa: F401
                          model_folder, _model_folder_template, python, snapshot)
from image_classifier.hub import HubError, push_to_hub, render_model_card, write_model_card

REPO = f"{USER}/tiny-cnn"
MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_small_cnn.py",
               "modeling_small_cnn.py", "training_config.json", "metrics.json", "history.json",
               "data_summary.json", "model_summary.txt", "README.md"}
PLOTS = {f"plots/{n}.png" for n in ("learning_curves", "confusion_matrix", "reliability", "top_losses", "gradcam", "filters", "samples",
                                    "class_distribution", "augmentation")}
RETRY = "python -m image_classifier push"

# Loads a model twice, from the Hub id and from the local folder, with stock transformers only,
# and prints what each predicts for the same images.
PULL = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

repo, local = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(1)
images = [Image.fromarray(rng.integers(0, 255, size=(20 + i, 24, 3), dtype=np.uint8)) for i in range(3)]
out = {}
for name, ref in (("hub", repo), ("local", local)):
    classifier = pipeline("image-classification", model=ref, trust_remote_code=True)
    top = [[(d["label"], round(d["score"], 5)) for d in classifier(image, top_k=3)] for image in images]
    model = AutoModelForImageClassification.from_pretrained(ref, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(ref)
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    out[name] = {"pipeline": top, "logits": logits.tolist(), "module": type(model).__module__,
                 "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}
out["project_imported"] = sorted(m for m in sys.modules if m.startswith("image_classifier"))
print("RESULT " + json.dumps(out))
"""


def _pull(env, cwd: Path, repo: str, local: Path) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)  # not the test's folder: "USER/NAME" must not resolve locally
    result = subprocess.run([sys.executable, "-c", PULL, repo, str(local)], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT ", 1)[1])


# ------------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------------


def test_card_renders_from_the_run_files_and_parses_back(model_folder):
    path = write_model_card(model_folder)
    assert path == model_folder / "README.md"
    card = ModelCard.load(path)  # a local path: no network
    metrics = json.loads((model_folder / "metrics.json").read_text())

    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0"
    assert {"image-classification", "pytorch", "small-cnn", "cnn-basic", "tiny-images"} <= set(data.tags)
    assert data.metrics == ["accuracy", "precision", "recall", "f1"]
    assert data.datasets is None  # a local dataset is not a Hub id
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "precision", "recall", "f1"}
    for metric, result in results.items():
        assert result.metric_value == pytest.approx(metrics[f"test_{metric}"], abs=5e-5)
        assert result.task_type == "image-classification" and result.dataset_split == "test"
        assert result.dataset_name == "tiny-images"
    assert results["f1"].metric_args == {"average": "macro"}

    text = card.text
    assert "{{" not in text and "{%" not in text and "None" not in text
    for name, values in metrics["test_per_class"].items():  # the per-class table
        assert f"| {name} | {values['precision']:.4f} | {values['recall']:.4f} | {values['f1']:.4f} |" in text
    assert f"| Accuracy | {metrics['eval_accuracy']:.4f} | {metrics['test_accuracy']:.4f} |" in text
    assert f"| F1 (macro) | {metrics['eval_f1']:.4f} | {metrics['test_f1']:.4f} |" in text
    for plot in ("plots/confusion_matrix.png", "plots/learning_curves.png"):
        assert f"]({plot})" in text and (model_folder / plot).is_file()  # relative links that travel with the repo
    # Copy-pasteable snippets name the folder until there is a repo id.
    assert f'pipeline("image-classification", model="{model_folder}", trust_remote_code=True)' in text
    assert f'AutoModelForImageClassification.from_pretrained("{model_folder}", trust_remote_code=True)' in text
    assert "| Peak learning rate | `0.05` |" in text and "| Optimizer | `sgd` |" in text
    assert "random shift: reflect-pad 4 px and crop back" in text  # augmentation from data_summary.json
    assert "| train | 240 | train minus the carved validation and test |" in text  # splits from data_summary.json
    assert "| test | 60 | carved from train (12.5%, stratified, seed 42) |" in text
    assert "Total parameters:" in text and "Forward FLOPs per image" in text  # model_summary.txt
    assert "1 min 23 s on 1x CPU (2 threads, x86_64)" in text
    assert "@misc{" in text


def test_card_names_a_hub_dataset_and_the_repo(model_folder):
    summary = json.loads((model_folder / "data_summary.json").read_text())
    summary.update(dataset="cifar10", dataset_resolved="uoft-cs/cifar10", source="hub", imbalance_ratio=2.5,
                   skipped_images={"count": 3, "first": []})
    (model_folder / "data_summary.json").write_text(json.dumps(summary))
    card = render_model_card(model_folder, hub_model_id=REPO)
    assert "largest / smallest class: 2.5" in card.text and "3 images that could not be decoded" in card.text
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert {r.dataset_type for r in card.data.eval_results} == {"uoft-cs/cifar10"}
    assert "cifar10" in card.data.tags
    assert f'pipeline("image-classification", model="{REPO}", trust_remote_code=True)' in card.text
    assert str(model_folder) not in card.text.split("```json")[0]  # the snippets use the repo id
    assert not (model_folder / "README.md").exists()  # rendering writes nothing


def test_card_of_a_bare_model_folder(tmp_path):
    """Only the model files (no metrics, history, plots): the card still renders, without results."""
    from image_classifier.models import create_model

    create_model("cnn-basic", class_names=["a", "b"], num_channels=1, image_size=8).save_pretrained(tmp_path)
    card = render_model_card(tmp_path)
    assert card.data.eval_results is None and card.data.pipeline_tag == "image-classification"
    assert "No metrics were recorded" in card.text and "(RGB input is reduced to luminance" in card.text
    assert "{{" not in card.text


# ------------------------------------------------------------------------------------------------
# Pushing, and loading the pushed model elsewhere
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_push_then_load_with_stock_transformers_in_a_fresh_process(hub, hub_env, model_folder, tmp_path):
    before = snapshot(model_folder)
    url = push_to_hub(model_folder, REPO, token=WRITE_TOKEN)
    assert url == f"{hub.url}/{REPO}"

    repo = hub.repo(REPO)
    assert not repo.private
    assert len(repo.commits) == 2  # the Hub's initial commit, then one commit for the whole folder
    metrics = json.loads((model_folder / "metrics.json").read_text())
    assert repo.head.title == f"Upload model: test accuracy {metrics['test_accuracy']:.4f}"
    pushed = hub.files(REPO)
    assert set(pushed) == MODEL_FILES | PLOTS | {".gitattributes"}  # no checkpoints/, runs/, hidden or temp files
    for name in MODEL_FILES - {"README.md"}:
        assert pushed[name] == before[name], name
    # The pushed card names the repo; the local card is rewritten to match only after the push.
    assert pushed["README.md"] == (model_folder / "README.md").read_bytes()
    assert f'model="{REPO}"' in pushed["README.md"].decode()
    assert {k: v for k, v in snapshot(model_folder).items() if k != "README.md"} == before

    # The card parses back from the Hub (in this process, through the patched endpoint).
    card = ModelCard.load(REPO)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        m: round(metrics[f"test_{m}"], 4) for m in ("accuracy", "precision", "recall", "f1")}

    result = _pull(hub_env, tmp_path / "elsewhere", REPO, model_folder)
    assert result["hub"]["pipeline"] == result["local"]["pipeline"]
    np.testing.assert_allclose(result["hub"]["logits"], result["local"]["logits"], atol=1e-6)
    assert result["hub"]["labels"] == CLASS_NAMES
    assert result["hub"]["module"].startswith("transformers_modules.")  # the code came with the weights
    assert result["project_imported"] == []  # ... not from this project
    assert any(p.endswith(f"/{REPO}/resolve/{repo.head.oid}/model.safetensors") for _, p, _ in hub.requests)
    assert not any("/checkpoints/" in p for _, p, _ in hub.requests)
    assert hub.unhandled == []


def test_repush_updates_in_one_commit_and_removes_stale_files(hub, hub_env, model_folder):
    push_to_hub(model_folder, REPO, token=WRITE_TOKEN)
    # The next run made no augmentation preview, and an earlier push left a sharded model behind.
    (model_folder / "plots" / "augmentation.png").unlink()
    (model_folder / "metrics.json").write_text(
        json.dumps({**json.loads((model_folder / "metrics.json").read_text()), "test_accuracy": 0.9871}))
    hub.repo(REPO).head.files["model-00001-of-00002.safetensors"] = b"old shard"
    hub.repo(REPO).head.files["model.safetensors.index.json"] = b"{}"
    push_to_hub(model_folder, REPO, token=WRITE_TOKEN, commit_message=None)
    repo = hub.repo(REPO)
    assert len(repo.commits) == 3 and repo.head.title == "Upload model: test accuracy 0.9871"
    files = hub.files(REPO)
    assert "plots/augmentation.png" not in files
    assert "model-00001-of-00002.safetensors" not in files and "model.safetensors.index.json" not in files
    assert "0.9871" in files["README.md"].decode()


def test_private_push_and_no_silent_push_to_an_existing_public_repo(hub, hub_env, model_folder, tmp_path):
    push_to_hub(model_folder, f"{USER}/secret", private=True, token=WRITE_TOKEN)
    assert hub.repo(f"{USER}/secret").private
    anonymous = python(
        "import huggingface_hub as h\n"
        "try:\n h.hf_hub_download('tester/secret', 'config.json')\nexcept Exception as e: print(type(e).__name__)",
        hub_env, tmp_path)
    assert "RepositoryNotFoundError" in anonymous.stdout, anonymous.stderr[-2000:]

    hub.create_repo(f"{USER}/public")  # exists already, public
    before = snapshot(model_folder)
    with pytest.raises(HubError, match="already exists and is public"):
        push_to_hub(model_folder, f"{USER}/public", private=True, token=WRITE_TOKEN)
    assert len(hub.repo(f"{USER}/public").commits) == 1 and snapshot(model_folder) == before


def test_name_without_namespace_uses_the_token_user(hub, hub_env, model_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)  # the token from the environment, as the default
    assert push_to_hub(model_folder, "just-a-name") == f"{hub.url}/{USER}/just-a-name"


# ------------------------------------------------------------------------------------------------
# Failures: one paragraph with the retry command, the local folder untouched
# ------------------------------------------------------------------------------------------------


def _failed_push(folder: Path, repo: str = REPO, **kwargs) -> HubError:
    before = snapshot(folder)
    with pytest.raises(HubError) as info:
        push_to_hub(folder, repo, **kwargs)
    assert snapshot(folder) == before  # byte-identical: no card rewritten, nothing added or removed
    message = str(info.value)
    assert "\n" not in message and f"{RETRY} {folder} --hub_model_id {repo}" in message
    # No chained exception whose text could carry the token into a traceback.
    assert info.value.__cause__ is None and (info.value.__suppress_context__ or info.value.__context__ is None)
    return info.value


def _dead_endpoint() -> str:
    """The URL of a port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_server_down(hub_env, model_folder, monkeypatch):
    import huggingface_hub.constants as constants

    dead = _dead_endpoint()
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    error = _failed_push(model_folder, token=WRITE_TOKEN)
    assert "could not be reached" in str(error) and dead in str(error) and error.status is None


def test_bad_token_401(hub, hub_env, model_folder):
    error = _failed_push(model_folder, token="hf_not_a_valid_token_at_all_123456")
    assert error.status == 401 and "refused the token that was passed in" in str(error)
    assert hub.repo(REPO) is None


def test_read_only_token_403(hub, hub_env, model_folder):
    error = _failed_push(model_folder, token=READ_TOKEN)
    assert error.status == 403 and "may not write" in str(error)


def test_other_namespace_403(hub, hub_env, model_folder):
    error = _failed_push(model_folder, repo="someone-else/model", token=WRITE_TOKEN)
    assert error.status == 403 and "someone-else" in str(error)


def test_commit_refused_after_the_repo_was_created(hub, hub_env, model_folder):
    hub.fail("POST", r"/commit/", 403)
    error = _failed_push(model_folder, token=WRITE_TOKEN)
    assert error.status == 403
    assert hub.repo(REPO) is not None and len(hub.repo(REPO).commits) == 1  # created, nothing committed


def test_no_token_anywhere(hub, hub_env, model_folder):
    error = _failed_push(model_folder)
    assert "no Hub token was found" in str(error) and "HF_TOKEN" in str(error)


def test_not_a_model_folder(hub, hub_env, tmp_path):
    error = _failed_push(tmp_path, token=WRITE_TOKEN)
    assert "not a finished model folder" in str(error)
    assert not hub.requests or all("whoami" not in p for _, p, _ in hub.requests)


# ------------------------------------------------------------------------------------------------
# The token never shows
# ------------------------------------------------------------------------------------------------


def test_token_leaves_no_trace(hub, hub_env, model_folder, tmp_path, caplog, capfd):
    from huggingface_hub.utils import logging as hf_logging

    marker = "MARKERq7Zr2Lx9Wv"
    good, bad = f"hf_{marker}good0000000000000000", f"hf_{marker}bad00000000000000000"
    hub.add_token(good, USER, "write")
    caplog.set_level(logging.DEBUG)
    hf_logging.set_verbosity_debug()  # huggingface_hub's own debug lines (curl commands) included
    try:
        push_to_hub(model_folder, REPO, token=good)
        with pytest.raises(HubError) as info:
            push_to_hub(model_folder, f"{USER}/other", token=bad)
    finally:
        hf_logging.set_verbosity_warning()
    texts = {
        "error": str(info.value) + repr(info.value) + "".join(traceback.format_exception(info.value)),
        "logs": caplog.text, "captured": "".join(capfd.readouterr()),
        "requests": json.dumps(hub.requests),
    }
    files = {**snapshot(model_folder), **{f"hub:{k}": v for k, v in hub.files(REPO).items()},
             **{f"hf_home:{k}": v for k, v in snapshot(Path(hub_env["HF_HOME"])).items()}}
    assert "(401 Unauthorized)" in texts["error"]
    for where, text in texts.items():
        assert marker not in text, where
    for name, content in files.items():
        assert marker.encode() not in content, name

    # The CLI: token on the command line, success and failure, output captured.
    for token, code in ((good, 0), (bad, 1)):
        run = subprocess.run([sys.executable, "-m", "image_classifier", "push", str(model_folder), "--hub_model_id",
                              f"{USER}/cli", "--hub_token", token], env=hub_env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == code, run.stderr[-2000:]
        assert marker not in run.stdout + run.stderr
    for name, content in snapshot(model_folder).items():
        assert marker.encode() not in content, name


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------


def test_cli_push_and_failure_exit_codes(hub, hub_env, model_folder, tmp_path):
    def cli(*args, env=hub_env):
        return subprocess.run([sys.executable, "-m", "image_classifier", *map(str, args)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    ok = cli("push", model_folder, "--hub_model_id", REPO, "--hub_private_repo", env={**hub_env, "HF_TOKEN": WRITE_TOKEN})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip().splitlines()[-1] == f"{hub.url}/{REPO}" and hub.repo(REPO).private

    before = snapshot(model_folder)
    bad = cli("push", model_folder, "--hub_model_id", f"{USER}/again", "--hub_token", "hf_wrong_wrong_wrong_wrong_1")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "401" in lines[0]
    assert f"{RETRY} {model_folder} --hub_model_id {USER}/again" in lines[0]
    assert snapshot(model_folder) == before

    down = cli("push", model_folder, "--hub_model_id", REPO, env={**hub_env, "HF_ENDPOINT": _dead_endpoint(),
                                                                  "HF_TOKEN": WRITE_TOKEN})
    assert down.returncode == 1 and "could not be reached" in down.stderr and "Traceback" not in down.stderr

    usage = cli("push", model_folder)  # --hub_model_id missing: argparse's own usage error
    assert usage.returncode == 2 and "--hub_model_id" in usage.stderr
    assert "push" in cli("--help").stdout


def test_main_in_process(hub, hub_env, model_folder, capsys):
    from image_classifier.__main__ import main

    assert main(["push", str(model_folder), "--hub_model_id", REPO, "--hub_token", WRITE_TOKEN]) == 0
    assert capsys.readouterr().out.strip() == f"{hub.url}/{REPO}"
    assert main(["push", str(model_folder / "missing"), "--hub_model_id", REPO, "--hub_token", WRITE_TOKEN]) == 1
    assert capsys.readouterr().err.startswith("error: Pushing")


# ------------------------------------------------------------------------------------------------
# The stand-in itself: Spaces, for `deploy-space`
# ------------------------------------------------------------------------------------------------


def test_stand_in_serves_a_space(hub, hub_env, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=hub.url, token=WRITE_TOKEN)
    url = api.create_repo(f"{USER}/demo", repo_type="space", space_sdk="gradio")
    assert url == f"{hub.url}/spaces/{USER}/demo"
    (tmp_path / "app.py").write_text("print('hello')\n")
    api.upload_file(path_or_fileobj=tmp_path / "app.py", path_in_repo="app.py", repo_id=f"{USER}/demo",
                    repo_type="space")
    assert api.space_info(f"{USER}/demo").sdk == "gradio"
    assert api.get_space_runtime(f"{USER}/demo").stage == "RUNNING"
    assert sorted(api.list_repo_files(f"{USER}/demo", repo_type="space")) == [".gitattributes", "README.md", "app.py"]
    path = hf_hub_download(f"{USER}/demo", "app.py", repo_type="space")
    assert Path(path).read_text() == "print('hello')\n"
    api.delete_file("app.py", repo_id=f"{USER}/demo", repo_type="space")  # a "deletedFile" commit
    assert "app.py" not in hub.files(f"{USER}/demo", repo_type="space")
    assert hub.unhandled == []


@pytest.mark.slow
def test_stand_in_serves_timm(hub, hub_env, tmp_path):
    """timm's own Hub loading (`hf-hub:` names) works against the stand-in too."""
    import timm
    from huggingface_hub import HfApi

    model = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=3)
    timm.models.save_for_hf(model, tmp_path / "timm", safe_serialization=True)
    api = HfApi(endpoint=hub.url, token=WRITE_TOKEN)
    api.create_repo(f"{USER}/timm-net")
    api.upload_folder(repo_id=f"{USER}/timm-net", folder_path=tmp_path / "timm")
    run = python("import timm\n"
                 "m = timm.create_model('hf-hub:tester/timm-net', pretrained=True)\n"
                 "print(m.num_classes, round(float(m.fc.weight.sum()), 5))", hub_env, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["3", str(round(float(model.fc.weight.detach().sum()), 5))]
    assert hub.unhandled == []


# ------------------------------------------------------------------------------------------------
# End to end: a real (tiny) training run pushed with --push_to_hub
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_push_and_load(hub, hub_env, tiny_image_folder, tmp_path):
    images = tiny_image_folder
    out = tmp_path / "run" / "model"
    root = Path(__file__).resolve().parents[1]
    train = subprocess.run(
        [sys.executable, str(root / "train.py"), "--dataset", str(images), "--output_dir", str(out),
         "--model", "cnn-basic", "--widths", "8", "16", "--num_train_epochs", "1",
         "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
         "--validation_split_fraction", "0.2", "--test_split_fraction", "0.2", "--cache_dir", str(tmp_path / "cache"),
         "--push_to_hub", "--hub_model_id", f"{USER}/trained"],
        env={**hub_env, "HF_TOKEN": WRITE_TOKEN}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert WRITE_TOKEN not in train.stdout + train.stderr
    pushed = hub.files(f"{USER}/trained")
    assert MODEL_FILES <= set(pushed) and not any(p.startswith("checkpoints/") for p in pushed)
    assert WRITE_TOKEN.encode() not in b"".join(snapshot(out).values())
    card = ModelCard(pushed["README.md"].decode())
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == round(
        metrics["test_accuracy"], 4)
    result = _pull(hub_env, tmp_path / "elsewhere", f"{USER}/trained", out)
    assert result["hub"]["pipeline"] == result["local"]["pipeline"]
    np.testing.assert_allclose(result["hub"]["logits"], result["local"]["logits"], atol=1e-6)
    # The Hub id in place of the folder: evaluated with the run's data, and fine-tuned as a starting point.
    evaluated = subprocess.run([sys.executable, "-m", "image_classifier", "evaluate", "--model", f"{USER}/trained"],
                               env={**hub_env, "HF_TOKEN": WRITE_TOKEN}, cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"test accuracy {metrics.get('test_accuracy_without_tta', metrics['test_accuracy']):.4f}" in evaluated.stdout
    tuned = subprocess.run(
        [sys.executable, str(root / "train.py"), "--dataset", str(images), "--output_dir", str(tmp_path / "tuned"),
         "--model", f"{USER}/trained", "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
         "--validation_split_fraction", "0.2", "--test_split_fraction", "0.2", "--cache_dir", str(tmp_path / "cache")],
        env={**hub_env, "HF_TOKEN": WRITE_TOKEN}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert f"Fine-tuning {USER}/trained (built as cnn-basic" in tuned.stdout
    assert json.loads((tmp_path / "tuned" / "training_config.json").read_text())["label_smoothing"] == 0
