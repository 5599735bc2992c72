"""The Gradio demo: classify one image, or a batch of files, with a trained model.

`create_app(model)` returns `(blocks, launch_kwargs)`; `app.py` at the repository root only parses
its flags and calls it, so the same file runs locally and as a Hugging Face Space. When no model
can be found or loaded, the page says how to train one or which `MODEL_ID` to set instead of
showing a traceback.

Every image, uploaded or from an example, goes through `images.load_image` (EXIF rotation,
transparency on white, 16-bit scaling, size limits), then the model's own saved image processor.
"""

from __future__ import annotations

import csv
import html
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import gradio as gr

from .files import atomic_path, looks_like_local_path
from .images import ImageError, load_image
from .inference import Predictor, model_info
from .interpretation import Explainer, describe_filters
from .model_folder import find_examples, find_latest_model, is_local_model

__all__ = ["create_app", "build_app", "explain_image", "build_missing_model_app", "resolve_model", "image_input",
           "launch_kwargs", "LAUNCH_KWARGS", "QUEUE_KWARGS", "MAX_BATCH_FILES"]

# Bounds on what one request may carry, and how many run at once (the Predictor batches them).
LAUNCH_KWARGS: dict[str, Any] = {"max_file_size": "20mb"}
QUEUE_KWARGS: dict[str, Any] = {"default_concurrency_limit": 8, "max_size": 256}
MAX_BATCH_FILES = 500
TOP_K = 5

log = logging.getLogger(__name__)

TRAIN_HINT = """\
Train one (it lands in `outputs/`), then start the app again:

```bash
make train                                    # the default recipe (CIFAR-10)
# or, offline, from a local copy of a dataset:
python train.py --dataset ../shared/datasets/cifar10 --output_dir outputs/cifar10
python app.py                                 # serves the newest model under outputs/
```

Or point the app at a model: `python app.py --model outputs/cifar10`, or set the `MODEL_ID`
environment variable to a local model folder or a Hugging Face Hub id such as `user/cifar10-cnn`
(on a Space: *Settings → Variables*; add an `HF_TOKEN` secret for a private model)."""

CSS = """
.gradio-container { max-width: 1120px !important; margin: 0 auto !important; }
#header h1 { margin-bottom: 0.1em; }
#header p { font-size: 1.05em; color: var(--body-text-color-subdued); }
.model-card h3 { margin: 0 0 0.6em 0; font-size: 1.05em; }
.model-card .stats { display: flex; gap: 0.6em; margin-bottom: 0.9em; }
.model-card .stat { flex: 1; padding: 0.6em 0.8em; border-radius: var(--radius-lg);
    background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.model-card .num { font-size: 1.5em; font-weight: 700; color: var(--color-accent); line-height: 1.2; }
.model-card .cap { font-size: 0.85em; color: var(--body-text-color-subdued); }
.model-card dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.35em 1em; margin: 0; }
.model-card dt { font-weight: 600; color: var(--body-text-color-subdued); }
.model-card dd { margin: 0; overflow-wrap: anywhere; }
.model-card code { font-size: 0.85em; }
.model-card .chip { display: inline-block; margin: 0 0.3em 0.3em 0; padding: 0.05em 0.55em;
    border-radius: 999px; background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);
    font-size: 0.9em; }
/* small dataset-sized images (32x32) are shown large and crisp rather than as a postage stamp */
#image-input .image-frame, #image-input .image-container { width: 100%; height: 100%; }
#image-input .image-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* the Grad-CAM overlay of a 32x32 image and the filter grid: shown large, each pixel a crisp square */
#explain-cam .image-frame, #explain-cam .image-container, #filters .image-frame, #filters .image-container {
    width: 100%; height: 100%; }
#explain-cam .image-frame img, #filters .image-frame img { width: 100%; height: 100%; object-fit: contain;
    image-rendering: pixelated; }
#feature-maps img { image-rendering: pixelated; }
#missing { max-width: 780px; margin: 2em auto; }
/* Phones: the two columns stack, and the prediction comes right under the image and its buttons, before the
   examples and the model panel (otherwise it lands below all 20 examples, off-screen after an upload). */
@media (max-width: 720px) {
  #classify-row { flex-direction: column; flex-wrap: nowrap; }
  #input-column, #result-column { display: contents; }
  #input-column > *, #result-column > * { order: 4; width: 100%; }
  #classify-row #image-input { order: 1; height: 300px !important; }
  #classify-row #buttons { order: 2; flex-wrap: nowrap; }
  #buttons > button { min-width: 0; }
  #classify-row #prediction, #classify-row #explain { order: 3; }
  #classify-row #model-card { order: 5; }
  #header p { font-size: 0.95em; }
}
"""


def _theme():
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate")


def image_input(**kwargs) -> gr.Image:
    """`gr.Image(type="pil", image_mode="RGB", ...)` whose decoding is the project's `load_image`.

    Gradio's own conversion drops transparency onto black, clips 16-bit images and fails on a
    non-image with a bare exception; here every upload becomes an RGB PIL image the same way the
    rest of the project reads images, and an unreadable file raises a `gr.Error` the user sees.
    (The method is replaced on the instance: subclassing a Gradio component makes Gradio write a
    .pyi stub beside the module that defines the subclass.)
    """
    component = gr.Image(type="pil", image_mode="RGB", **kwargs)
    base_preprocess = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        try:
            if payload.path is not None and not (payload.url or "").startswith("data:"):
                return load_image(payload.path)
            return load_image(base_preprocess(payload))       # data: URLs (webcam, clipboard)
        except ImageError as e:
            raise refuse(_user_message(e, getattr(payload, "orig_name", None)))
        except Exception as e:  # noqa: BLE001 - anything PIL or Gradio raised while decoding
            raise refuse(f"Could not read this file as an image: {e}")

    component.preprocess = preprocess
    return component


def refuse(message: str, title: str = "Not an image we can read") -> gr.Error:
    """The error a refused input shows the user, logged as one line (Gradio would print a whole traceback)."""
    log.warning("refused: %s", " ".join(message.split()))
    return gr.Error(message, title=title, print_exception=False)


def _user_message(error: Exception, name: Optional[str]) -> str:
    text = str(error)
    return f"{name}: {text}" if name and name not in text else text


def resolve_model(model: Optional[str] = None) -> Optional[str]:
    """The model to serve: the argument, else `MODEL_ID`, else the newest finished run under outputs/."""
    for candidate in (model, os.environ.get("MODEL_ID")):
        if candidate and candidate.strip():
            return candidate.strip()
    latest = find_latest_model("outputs")
    return str(latest) if latest else None


def create_app(model: Optional[str] = None, device: Optional[str] = None,
               max_batch_size: int = 32) -> tuple[gr.Blocks, dict[str, Any]]:
    """Blocks for `model` (see `resolve_model`) and the keyword arguments for `launch`.

    Never raises for a missing or broken model: it returns the page that explains what to do.
    """
    model_id = resolve_model(model)
    if model_id is None:
        return build_missing_model_app(
            "No trained model was found: there is no finished run under `outputs/`, "
            "and neither `--model` nor `MODEL_ID` was given."), launch_kwargs()
    try:
        predictor = Predictor(model_id, device=device, max_batch_size=max_batch_size)
    except Exception as e:  # noqa: BLE001 - any failure to load becomes an explanation, not a traceback
        where = "folder" if is_local_model(model_id) or looks_like_local_path(model_id) else "Hub id"
        return build_missing_model_app(
            f"The model {where} `{model_id}` could not be loaded:\n\n> {_first_lines(e)}\n\n"
            "Check the name, or set `MODEL_ID` to a folder holding `config.json` and `model.safetensors` "
            "(a finished training run) or to a Hub id you can access."), launch_kwargs()
    blocks = build_app(predictor)
    launch = launch_kwargs()
    examples = find_examples(model_id)
    if examples:
        launch["allowed_paths"] = sorted({str(p.parent.resolve()) for p in examples})
    return blocks, launch


def launch_kwargs() -> dict[str, Any]:
    """What `launch` needs besides host and port: upload bound, theme and CSS (Gradio 6 takes them there)."""
    return {**LAUNCH_KWARGS, "theme": _theme(), "css": CSS}


def _first_lines(error: Exception, limit: int = 400) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    lines = [line for line in text.splitlines() if line.strip()][:3]
    text = " ".join(lines)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _header(info: dict[str, Any]) -> str:
    dataset = info.get("dataset")
    title = f"{_pretty_dataset(dataset)} image classifier" if dataset else "Image classifier"
    n = info.get("num_classes")
    classes = f"which of its {n} classes" if n else "which class"
    return (f"# {title}\n"
            f"Upload a photo, paste one, use your webcam or click an example: a convolutional network trained "
            f"with Hugging Face Accelerate tells you {classes} it sees, with a probability for each. "
            f"The **Batch** tab classifies many files at once and gives you a CSV.")


def _pretty_dataset(name: str) -> str:
    base = Path(str(name).rstrip("/")).name or str(name)
    pretty = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
    return pretty.get(base.lower().replace("-", "_"), base)


def _model_card(info: dict[str, Any], predictor: Predictor) -> str:
    """The model panel (HTML): headline scores, then what the model's own files say about it."""
    esc = html.escape
    classes = [str(c) for c in (info.get("class_names") or predictor.labels)]
    stats = []
    if "test_accuracy" in info:
        stats.append((_percent(info["test_accuracy"]), "test accuracy"))
    if "test_f1" in info:
        stats.append((_percent(info["test_f1"]), "test F1 (macro)"))
    stats.append((str(len(classes)), "classes"))
    facts: list[tuple[str, str]] = []
    if info.get("dataset"):
        dataset = str(info["dataset"])
        shown = f" <code>{esc(dataset)}</code>" if is_hub_id(dataset) else ""      # a Hub id, never a server path
        facts.append(("Dataset", f"{esc(_pretty_dataset(dataset))}{shown}"))
    chips = "".join(f'<span class="chip">{esc(c)}</span>' for c in classes[:30])
    if len(classes) > 30:
        chips += f'<span class="chip more">+{len(classes) - 30} more</span>'
    facts.append(("Classes", chips))
    if "test_num_samples" in info:
        facts.append(("Test set", f"{int(info['test_num_samples']):,} images"))
    if "image_size" in info:
        kind = {1: "grayscale", 3: "RGB"}.get(info.get("num_channels"), "")
        facts.append(("Input", esc(f"{info['image_size']}×{info['image_size']} {kind}".strip())))
    if "temperature" in info and "test_ece" in info:
        facts.append(("Calibration", esc(f"temperature {float(info['temperature']):.2f}, folded into the classifier: "
                                         f"expected calibration error {100 * float(info['test_ece']):.1f} % on the "
                                         f"test split ({100 * float(info.get('test_ece_uncalibrated', 0)):.1f} % "
                                         "before)")))
    if "mean_corruption_accuracy" in info:
        worst = info.get("worst_corruption") or {}
        facts.append(("Robustness", esc(f"{_percent(info['mean_corruption_accuracy'])} mean accuracy under common "
                                        "corruptions (noise, blur, fog, contrast, JPEG...); worst: "
                                        f"{str(worst.get('name', '?')).replace('_', ' ')} "
                                        f"{_percent(worst.get('mean_accuracy'))}")))
    if "architecture" in info:     # timm models
        facts.append(("Architecture", f"<code>{esc(str(info['architecture']))}</code>"))
    if "num_parameters" in info:
        facts.append(("Parameters", f"{int(info['num_parameters']):,}"))
    trained = [str(info["hardware"])] if "hardware" in info else []
    if "train_seconds" in info:
        trained.append(_duration(float(info["train_seconds"])))
    if trained:
        facts.append(("Trained on", esc(", ".join(trained))))
    facts.append(("Model", f"<code>{esc(_public_model_name(info))}</code>"))
    if "test_accuracy" not in info:
        facts.append(("Note", "this model has no <code>metrics.json</code>, so no test scores are shown"))
    stat_html = "".join(f'<div class="stat"><div class="num">{esc(n)}</div><div class="cap">{esc(c)}</div></div>'
                        for n, c in stats)
    fact_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<div class="model-card"><h3>About this model</h3><div class="stats">{stat_html}</div>'
            f'<dl class="facts">{fact_html}</dl></div>')


def is_hub_id(name: str) -> bool:
    """"name" or "owner/name" that is not a local path: safe to show, unlike a path on the server."""
    return not looks_like_local_path(name) and not Path(name).expanduser().exists()


def _public_model_name(info: dict[str, Any]) -> str:
    """The Hub id the model was loaded from or pushed to, else its folder's name: a Space never shows server paths."""
    source = str(info["source"])
    if is_hub_id(source):
        return source
    return str(info.get("hub_model_id") or Path(source.rstrip("/")).name)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s of training"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min of training"
    return f"{seconds / 3600:.1f} h of training"


def _percent(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f} %"
    except (TypeError, ValueError):
        return str(value)


def build_app(predictor: Predictor, title: Optional[str] = None) -> gr.Blocks:
    """The demo for a loaded `Predictor`: a Classify tab (API endpoint `predict`) and a Batch tab."""
    info = model_info(predictor.model_id)
    examples = find_examples(predictor.model_id)
    page_title = title or (f"{_pretty_dataset(info['dataset'])} classifier" if info.get("dataset") else "Image classifier")
    top_k = min(TOP_K, predictor.num_labels)

    def predict(image):
        """Classify one image: {class name: probability} for the most probable classes."""
        if image is None:
            raise refuse("Upload an image first (or click one of the examples).", title="No image")
        try:
            return dict(predictor.predict(image, top_k=top_k))
        except ImageError as e:
            raise refuse(str(e))

    def predict_on_upload(image):
        return None if image is None else predict(image)

    def predict_example(image):
        """An example clicked: its prediction and its explanation at once."""
        return (predict(image), *explain(image, ""))

    explainer = Explainer(predictor)

    def explain(image, target):
        return explain_image(explainer, image, target)

    with gr.Blocks(title=page_title) as demo:
        gr.Markdown(_header(info), elem_id="header")
        with gr.Tabs():
            with gr.Tab("Classify", id="classify"):
                # made first so that the examples (left column) can name them; shown in the right column
                calibrated = "temperature" in info            # its probabilities were calibrated (temperature scaling)
                label = gr.Label(num_top_classes=top_k, elem_id="prediction", render=False,
                                 label="Prediction (calibrated probabilities)" if calibrated else "Prediction")
                view = _ExplainView(predictor.labels)
                with gr.Row(equal_height=False, elem_id="classify-row"):
                    with gr.Column(scale=5, elem_id="input-column"):
                        image = image_input(label="Image", sources=["upload", "clipboard", "webcam"], height=360,
                                           elem_id="image-input")
                        with gr.Row(elem_id="buttons"):
                            clear = gr.ClearButton(value="Clear", size="lg", elem_id="clear-btn")
                            run = gr.Button("Classify", variant="primary", size="lg", elem_id="classify-btn")
                        # under the image, where the eye already is (rather than below both columns)
                        if examples:
                            gr.Examples(examples=[[str(p)] for p in examples], inputs=image, outputs=[label, *view.outputs],
                                        fn=predict_example, run_on_click=True, cache_examples=False,
                                        examples_per_page=20, label="Examples from the test set: click one",
                                        api_visibility="private", elem_id="examples")
                        else:
                            gr.Markdown("*This model folder has no `examples/`: upload an image of your own.*")
                    with gr.Column(scale=4, elem_id="result-column"):
                        label.render()
                        view.render()
                        gr.HTML(_model_card(info, predictor), elem_id="model-card")
                        gr.Image(value=explainer.filters(), label="First-layer filters", type="numpy", format="png",
                                 interactive=False, height=180, elem_id="filters")
                        gr.Markdown(f"<small>{html.escape(describe_filters(predictor.model))}</small>",
                                    elem_id="filters-caption")
                clear.add([image, label, *view.outputs])
            with gr.Tab("Batch", id="batch"):
                _batch_tab(predictor)
        # The explanation follows each prediction that succeeded (one error toast for an unreadable upload), and
        # each class picked.
        explain_inputs = [image, view.target]
        run.click(predict, inputs=image, outputs=label, api_name="predict").success(
            explain, inputs=explain_inputs, outputs=view.outputs, api_name="explain")
        image.upload(predict_on_upload, inputs=image, outputs=label, api_visibility="private").success(
            explain, inputs=explain_inputs, outputs=view.outputs, api_visibility="private")
        view.target.change(explain, inputs=explain_inputs, outputs=view.outputs, api_visibility="private")
    return demo.queue(**QUEUE_KWARGS)


def _batch_tab(predictor: Predictor) -> None:
    """The Batch tab: many files in, a table and a CSV of every class probability out (API `predict_batch`)."""
    gr.Markdown(f"Classify up to {MAX_BATCH_FILES} image files at once; files that are not images "
                "are listed with the reason instead of a prediction.")
    with gr.Row():
        files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                        label="Images", height=200, elem_id="batch-files")
    batch_run = gr.Button("Classify all", variant="primary", size="lg", elem_id="batch-btn")
    table = gr.Dataframe(headers=_TABLE_HEADERS, datatype=["str", "str", "number", "str", "str"],
                         interactive=False, label="Predictions", wrap=True, elem_id="batch-table",
                         column_widths=["20%", "14%", "14%", "26%", "26%"])
    csv_file = gr.File(label="Download all class probabilities (CSV)", interactive=False,
                       height=80, elem_id="batch-csv")
    batch_run.click(lambda paths: _predict_files(predictor, paths), inputs=files, outputs=[table, csv_file],
                    api_name="predict_batch")


class _ExplainView:
    """The Explain view's components: made before the layout (the examples name them as outputs), rendered under
    the prediction. Outputs: the Grad-CAM overlay, the feature-map grids, the line naming the class explained."""

    def __init__(self, labels: Sequence[str]):
        self.target = gr.Dropdown(choices=[("the top class", ""), *labels], value="", label="Show the evidence for",
                                  elem_id="explain-class", render=False)
        self.caption = gr.Markdown(elem_id="explain-caption", render=False)
        self.cam = gr.Image(label="Grad-CAM", type="numpy", format="png", interactive=False, height=300,
                            elem_id="explain-cam", render=False)
        self.stages = gr.Gallery(label="Feature maps of each stage (the most active channels first)", columns=2,
                                 height="auto", format="png", elem_id="feature-maps", render=False)
        self.outputs = [self.cam, self.stages, self.caption]

    def render(self) -> None:
        with gr.Accordion("Explain: where the network looks", open=True, elem_id="explain"):
            for component in (self.target, self.caption, self.cam, self.stages):
                component.render()


def explain_image(explainer: Explainer, image, target: Optional[str]):
    """The Explain view for one image: the Grad-CAM overlay for `target` ("" or None: the top class), the feature
    maps of each stage as (picture, caption) pairs, and a line naming the class the map explains."""
    if image is None:
        return None, [], ""
    try:
        explanation = explainer.explain(image, target or None)
    except ImageError as e:
        raise refuse(str(e))
    except ValueError as e:
        raise refuse(str(e), title="Unknown class")
    return explanation.overlay, explanation.feature_map_images(), explanation.describe()


_TABLE_HEADERS = ["file", "prediction", "probability", "top 3", "error"]


def _predict_files(predictor: Predictor, files: Optional[Sequence[Any]]):
    """Rows for the Batch table and the path of a CSV with every class probability."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    if not paths:
        raise refuse("Add some image files first.", title="No files")
    if len(paths) > MAX_BATCH_FILES:
        raise refuse(f"{len(paths)} files is more than the {MAX_BATCH_FILES} one batch may hold; "
                     "split them up.", title="Too many files")
    images, errors = {}, {}
    for i, path in enumerate(paths):
        try:
            images[i] = load_image(path)
        except ImageError as e:
            errors[i] = str(e)
    probs = predictor.predict_proba(list(images.values())) if images else []
    prob_of = dict(zip(images.keys(), probs))
    labels = predictor.labels
    rows, csv_rows = [], []
    for i, path in enumerate(paths):
        name = Path(path).name
        if i in errors:
            rows.append([name, "", None, "", errors[i]])
            csv_rows.append([name, "", ""] + [""] * len(labels) + [errors[i]])
            continue
        p = prob_of[i]
        order = p.argsort()[::-1]
        top = order[0]
        rows.append([name, labels[top], round(float(p[top]), 4),
                     ", ".join(f"{labels[j]} {p[j]:.2f}" for j in order[:3]), ""])
        csv_rows.append([name, labels[top], f"{p[top]:.6f}"] + [f"{v:.6f}" for v in p] + [""])
    out_dir = Path(tempfile.mkdtemp(prefix="predictions-"))
    out = out_dir / "predictions.csv"
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prediction", "probability"] + [f"p_{c}" for c in labels] + ["error"])
        writer.writerows(csv_rows)
    return rows, str(out)


def build_missing_model_app(problem: str) -> gr.Blocks:
    """A page that says what is missing and how to get a model, instead of a traceback."""
    with gr.Blocks(title="Image classifier: no model yet") as demo:
        with gr.Column(elem_id="missing"):
            gr.Markdown("# Image classifier\n## No model to serve yet\n\n" + problem + "\n\n" + TRAIN_HINT,
                        elem_id="missing-model")
    return demo.queue(**QUEUE_KWARGS)
