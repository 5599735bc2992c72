"""The Gradio app: a real server on 127.0.0.1, called through gradio_client and headless Chromium.

One server per module (the model folder is the same realistic one test_inference.py builds). The
browser test needs Debian's chromium (`apt-get install -y chromium`; CI installs it) and skips
with the reason when it is absent. It leaves a screenshot in test-artifacts/app.png.
"""

from __future__ import annotations

import csv
import json
import importlib.util
import os
import shutil
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
from PIL import Image

from image_classifier.app_ui import create_app, resolve_model
from image_classifier.inference import Predictor
from hub_fixtures import USER, hub, hub_env  # noqa: F401  (fixtures: a local Hub stand-in)
from test_inference import CLASSES, example_image, make_model_folder, push_model_folder

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(demo, launch_kwargs) -> str:
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp("app") / "cifar10-cnn-fast")
    demo, launch_kwargs = create_app(str(folder), device="cpu")
    assert launch_kwargs["max_file_size"] and str(folder / "examples") in launch_kwargs["allowed_paths"]
    url = _launch(demo, launch_kwargs)
    files = tmp_path_factory.mktemp("inputs")
    (files / "notes.png").write_text("this is a text file with a .png name")
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (1500, 2000, 3), np.uint8))
    photo.save(files / "photo.jpg", quality=85)
    rgba = np.asarray(example_image(2, 9).convert("RGBA")).copy()
    rgba[:16, :, 3] = 0                                   # top half transparent: white, not black
    Image.fromarray(rgba, "RGBA").save(files / "transparent.png")
    Image.fromarray(np.asarray(example_image(1, 9).convert("L"), np.uint16) * 257).save(files / "deep16.png")
    with Predictor(folder, device="cpu") as predictor:
        yield SimpleNamespace(url=url, folder=folder, files=files, predictor=predictor, demo=demo)
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served.url, verbose=False)


def _as_dict(label_output) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def _check_same(label_output, expected: list[tuple[str, float]]) -> None:
    assert label_output["label"] == expected[0][0]
    got = _as_dict(label_output)
    assert list(got) == [label for label, _ in expected]
    np.testing.assert_allclose(list(got.values()), [p for _, p in expected], atol=1e-5)


def test_api_predict_equals_the_predictor(served, client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/predict" in endpoints and "/predict_batch" in endpoints
    inputs = [served.folder / "examples" / f"{c}_0.png" for c in CLASSES]
    inputs += [served.files / "photo.jpg", served.files / "transparent.png", served.files / "deep16.png"]
    for path in inputs:
        result = client.predict(handle_file(str(path)), api_name="/predict")
        _check_same(result, served.predictor.predict(path, top_k=5))


def test_a_file_that_is_not_an_image_gets_a_clear_error_and_the_server_keeps_serving(served, client):
    with pytest.raises(AppError, match="notes.png is not an image"):
        client.predict(handle_file(str(served.files / "notes.png")), api_name="/predict")
    good = served.folder / "examples" / "ship_1.png"
    _check_same(client.predict(handle_file(str(good)), api_name="/predict"), served.predictor.predict(good))


def _gallery_captions(gallery) -> list[str]:
    return [item.get("caption") if isinstance(item, dict) else item[1] for item in gallery]


def test_api_explain_returns_the_grad_cam_overlay_and_a_grid_per_stage(served, client):
    from image_classifier.interpretation import Explainer

    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/explain" in endpoints
    explainer = Explainer(served.predictor)
    photo = served.files / "photo.jpg"                                # 2000x1500: the overlay keeps its size
    for path, target in ((served.folder / "examples" / "cat_0.png", ""), (photo, "dog")):
        overlay, stages, caption = client.predict(handle_file(str(path)), target, api_name="/explain")
        expected = explainer.explain(path, target or None)
        assert f"**{expected.target}**" in caption
        got = np.asarray(Image.open(overlay).convert("RGB"))
        assert got.shape == expected.overlay.shape
        np.testing.assert_array_equal(got, expected.overlay)
        assert [c.split(":")[0] for c in _gallery_captions(stages)] == ["stem", "blocks.0", "blocks.1"]
    with pytest.raises(AppError, match="notes.png is not an image"):
        client.predict(handle_file(str(served.files / "notes.png")), "", api_name="/explain")


def test_16_concurrent_calls_all_succeed(served, client):
    paths = [served.folder / "examples" / f"{CLASSES[i % 4]}_{i % 2}.png" for i in range(16)]
    jobs = [client.submit(handle_file(str(p)), api_name="/predict") for p in paths]
    results = [job.result(timeout=120) for job in jobs]
    for path, result in zip(paths, results):
        _check_same(result, served.predictor.predict(path))
    # several clients at once, from threads
    with ThreadPoolExecutor(4) as pool:
        labels = list(pool.map(lambda p: Client(served.url, verbose=False).predict(
            handle_file(str(p)), api_name="/predict")["label"], paths[:4]))
    assert labels == [served.predictor.predict(p, top_k=1)[0][0] for p in paths[:4]]


def test_batch_tab_returns_a_table_and_a_csv(served, client):
    paths = [served.folder / "examples" / "cat_0.png", served.files / "notes.png", served.files / "photo.jpg"]
    table, csv_path = client.predict([handle_file(str(p)) for p in paths], api_name="/predict_batch")
    rows = table["data"]
    assert table["headers"][:3] == ["file", "prediction", "probability"]
    assert [r[0] for r in rows] == ["cat_0.png", "notes.png", "photo.jpg"]
    top = served.predictor.predict(paths[0], top_k=1)[0]
    assert rows[0][1] == top[0] and rows[0][2] == pytest.approx(top[1], abs=1e-4) and rows[0][4] == ""
    assert rows[1][1] == "" and "not an image" in rows[1][4]
    with open(csv_path, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert [r["file"] for r in records] == ["cat_0.png", "notes.png", "photo.jpg"]
    probs = [float(records[0][f"p_{c}"]) for c in CLASSES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4) and records[0]["prediction"] == top[0]
    assert "not an image" in records[1]["error"]


def test_missing_model_page_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # no outputs/ here
    monkeypatch.delenv("MODEL_ID", raising=False)
    assert resolve_model(None) is None
    demo, launch_kwargs = create_app(None)
    text = _markdown_text(demo)
    assert "No trained model was found" in text and "make train" in text and "python train.py" in text
    assert "MODEL_ID" in text and "Traceback" not in text

    broken = tmp_path / "broken-model"             # a folder, but no model in it
    broken.mkdir()
    monkeypatch.setenv("MODEL_ID", str(broken))
    assert resolve_model(None) == str(broken)
    text = _markdown_text(create_app(None)[0])
    assert f"`{broken}` could not be loaded" in text and "MODEL_ID" in text

    (tmp_path / "outputs").mkdir()                 # a mistyped folder fails at once (no Hub retries)
    for typo in ("outputs/cifar10-typo", str(tmp_path / "nowhere" / "model")):
        monkeypatch.setenv("MODEL_ID", typo)
        text = _markdown_text(create_app(None)[0])
        assert f"The model folder `{typo}` could not be loaded" in text and "no model folder at" in text

    # and it is served: the page and its config come back over HTTP
    url = _launch(demo, launch_kwargs)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(url + "config", timeout=30) as r:
            body = r.read().decode()
        assert "make train" in body and "No trained model was found" in body
    finally:
        demo.close()


def _markdown_text(demo) -> str:
    return "\n".join(str(c["props"].get("value", "")) for c in demo.get_config_file()["components"]
                     if c["type"] == "markdown")


def test_the_app_loads_a_model_from_a_hub_id(hub, hub_env, served, monkeypatch):
    repo_id = push_model_folder(hub.url, served.folder, f"{USER}/cifar10-demo")
    monkeypatch.setenv("MODEL_ID", repo_id)
    demo, launch_kwargs = create_app(None, device="cpu")
    components = demo.get_config_file()["components"]
    card = next(c["props"]["value"] for c in components if c["props"].get("elem_id") == "model-card")
    assert "81.2 %" in card and "80.3 %" in card and f"<code>{repo_id}</code>" in card
    examples = next(c for c in components if c["type"] == "dataset")
    assert len(examples["props"]["samples"]) == 2 * len(CLASSES)
    assert any(Path(p).name == "examples" for p in launch_kwargs["allowed_paths"])   # the Hub cache is served
    assert "predict" in {d.get("api_name") for d in demo.get_config_file()["dependencies"]}


def _model_card_html(demo) -> str:
    return next(c["props"]["value"] for c in demo.get_config_file()["components"]
                if c["props"].get("elem_id") == "model-card")


def test_the_model_panel_shows_names_and_hub_ids_never_server_paths(served, tmp_path):
    card = _model_card_html(served.demo)
    assert "CIFAR-10" in card and f"<code>{served.folder.name}</code>" in card
    assert str(served.folder.parent) not in card and "../shared" not in card
    # a local run that names its Hub repo shows that id
    folder = tmp_path / "run"
    shutil.copytree(served.folder, folder)
    (folder / "training_config.json").write_text('{"hub_model_id": "someone/cifar10-cnn"}')
    demo, _ = create_app(str(folder), device="cpu")
    card = _model_card_html(demo)
    assert "<code>someone/cifar10-cnn</code>" in card and str(tmp_path) not in card


def test_a_calibrated_model_says_so_and_the_panel_shows_its_calibration_and_robustness(served, tmp_path):
    folder = tmp_path / "calibrated"
    shutil.copytree(served.folder, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(temperature=1.42, test_ece=0.0093, test_ece_uncalibrated=0.0412, mean_corruption_accuracy=0.713,
                   worst_corruption={"name": "gaussian_noise", "mean_accuracy": 0.452})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    demo, _ = create_app(str(folder), device="cpu")
    card = _model_card_html(demo)
    assert "temperature 1.42" in card and "expected calibration error 0.9 % on the test split (4.1 % before)" in card
    assert "71.3 % mean accuracy under common corruptions" in card and "worst: gaussian noise 45.2 %" in card
    labels = [c["props"].get("label") for c in demo.get_config_file()["components"]
              if c["props"].get("elem_id") == "prediction"]
    assert labels == ["Prediction (calibrated probabilities)"]
    assert "Calibration" not in _model_card_html(served.demo)          # an uncalibrated model claims nothing


def test_a_refused_upload_logs_one_line_not_a_traceback(served, client, caplog, capfd):
    with caplog.at_level("WARNING", logger="image_classifier.app_ui"):
        with pytest.raises(AppError, match="notes.png is not an image"):
            client.predict(handle_file(str(served.files / "notes.png")), api_name="/predict")
    refusals = [r for r in caplog.records if r.name == "image_classifier.app_ui"]
    assert len(refusals) == 1 and "notes.png is not an image" in refusals[0].getMessage()
    assert "\n" not in refusals[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err


def test_model_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_ID", "user/from-env")
    assert resolve_model("user/from-flag") == "user/from-flag"
    assert resolve_model(None) == "user/from-env"
    monkeypatch.delenv("MODEL_ID")
    run = tmp_path / "outputs" / "run1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    assert resolve_model(None) == str(Path("outputs") / "run1")


def test_app_py_flags():
    spec = importlib.util.spec_from_file_location("app_entry", REPO / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    args = app.parse_args([])
    assert args.model is None and args.host is None and args.port is None and args.share is False
    args = app.parse_args(["--model", "outputs/x", "--host", "0.0.0.0", "--port", "7000", "--share"])
    assert (args.model, args.host, args.port, args.share) == ("outputs/x", "0.0.0.0", 7000, True)


def test_browser_upload_shows_the_prediction(served):
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's browser with "
                    "`apt-get update && apt-get install -y chromium` (CI does)")
    image = served.folder / "examples" / "dog_0.png"
    expected = served.predictor.predict(image, top_k=1)[0][0]
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served.url, wait_until="domcontentloaded")
            page.locator("#image-input input[type=file]").set_input_files(str(image))
            top = page.locator('#prediction [data-testid="label-output-value"]')
            playwright.expect(top).to_have_text(expected, timeout=60_000)
            playwright.expect(page.locator("#model-card")).to_contain_text("81.2 %")
            playwright.expect(page.locator("#examples")).to_contain_text("Examples from the test set")
            # the Explain view follows the upload: the Grad-CAM of the top class and a grid per stage
            caption = page.locator("#explain-caption")
            playwright.expect(caption).to_contain_text(f"Where the network sees {expected}", timeout=60_000)
            playwright.expect(page.locator("#explain-cam img")).to_have_count(1)
            playwright.expect(page.locator("#feature-maps img")).to_have_count(3, timeout=30_000)
            playwright.expect(page.locator("#filters img")).to_have_count(1)
            page.wait_for_timeout(800)                        # let the result finish fading in
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
            # another class from the picker: the map is redrawn for it
            other = next(c for c in served.predictor.labels if c != expected)
            page.locator("#explain-class input").click()
            page.get_by_role("option", name=other, exact=True).click()
            playwright.expect(caption).to_contain_text(f"Where the network sees {other}", timeout=60_000)

            # a file that is not an image: an error toast with the reason, and the page keeps working
            page.locator("#clear-btn").click()
            playwright.expect(top).to_have_count(0, timeout=30_000)
            page.locator("#image-input input[type=file]").set_input_files(str(served.files / "notes.png"))
            toast = page.locator('[data-testid="toast-text"]')
            playwright.expect(toast).to_contain_text("notes.png is not an image", timeout=60_000)
            page.wait_for_timeout(1000)                       # let the toast finish sliding in
            page.screenshot(path=str(ARTIFACTS / "app-error.png"))
            page.locator("#clear-btn").click()
            other = served.folder / "examples" / "ship_0.png"
            page.locator("#image-input input[type=file]").set_input_files(str(other))
            playwright.expect(top).to_have_text(served.predictor.predict(other, top_k=1)[0][0], timeout=60_000)

            # a 390-px phone: the columns stack, and the prediction comes under the image, on the first screen,
            # before the examples and the model panel
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(served.url, wait_until="domcontentloaded")
            page.locator("#image-input input[type=file]").set_input_files(str(image))
            playwright.expect(top).to_have_text(expected, timeout=60_000)
            page.wait_for_timeout(800)
            box = {name: page.locator(f"#{name}").bounding_box()
                   for name in ("image-input", "classify-btn", "prediction", "examples", "model-card")}
            assert box["image-input"]["y"] < box["classify-btn"]["y"] < box["prediction"]["y"]
            assert box["prediction"]["y"] < box["examples"]["y"] < box["model-card"]["y"]
            assert top.bounding_box()["y"] + top.bounding_box()["height"] <= 844      # the top class is on screen
            page.screenshot(path=str(ARTIFACTS / "app-phone.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
