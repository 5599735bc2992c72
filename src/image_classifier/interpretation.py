"""Interpretation: where the network looks (Grad-CAM), what each stage computes (feature maps), what its first
layer learned (filters), and which test images a run gets most wrong.

Grad-CAM (Selvaraju et al., 2017) is `pytorch-grad-cam`'s, on the last convolutional stage: `stage_layers`
finds the stages by module name (the small CNN's stem and blocks; a timm model's `feature_info`), since the
layers its tutorials name moved in transformers 5. `_Logits` hands the library the plain logits tensor it needs
(a transformers model returns an output object), and `GradCAM` is always used inside `with`, which removes its
hooks (they would otherwise keep every activation alive).

`Explainer` answers the app and the `explain` command one image at a time, beside a `Predictor` (its processor
and labels) with a copy of the network of its own, so Grad-CAM's hooks and backward pass never run inside the
Predictor's batched forward passes. Maps and grids come back as images (uint8 arrays or PIL); `plots` lays out
the run's figures from them.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .images import ImageLike, load_image

__all__ = ["stage_layers", "stage_name", "first_conv", "describe_filters", "grad_cam", "feature_maps", "channel_grid", "filter_grid", "overlay_cam", "visible_box",
           "Explanation", "Explainer", "top_losses", "cam_overlays", "write_top_losses", "write_cam_grid",
           "write_filters", "add_explain_command", "explain_command"]

CAM_BATCH = 32          # images per Grad-CAM pass: bounds the activations kept for the backward pass
# --method NAME -> pytorch-grad-cam's class. Score-CAM runs a forward pass per channel of the last stage (192 for
# cnn-fast, 512 for resnet18): seconds per 32x32 image and minutes per 224x224 on a CPU, so never the default.
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}
MAX_CHANNELS = 32       # feature maps shown per stage, the most active first
MIN_TILE = 40           # px: small maps (3x3 at the last stage of a 32x32 input) are enlarged to at least this
OUTSIDE_DIM = 0.35      # brightness of the parts of a photo the processor cropped away (the model never saw them)


# --------------------------------------------------------------------------------------------
# The network's stages and Grad-CAM
# --------------------------------------------------------------------------------------------

def stage_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolutional stages in order, as (module name, module): the small CNN's stem and blocks, or the stages
    a timm model lists in its `feature_info`. Grad-CAM uses the last; the feature maps show each."""
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        info = getattr(timm_model, "feature_info", None) or []
        names = [f"timm_model.{stage['module']}" for stage in info if stage.get("module")]
    else:
        names = (["stem"] if getattr(model, "stem", None) is not None else []) + \
                [f"blocks.{i}" for i in range(len(getattr(model, "blocks", [])))]
    if not names:   # a model that lists no stages: its last convolution
        names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][-1:]
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolutional layer to explain")
    return [(name, model.get_submodule(name)) for name in names]


def stage_name(name: str) -> str:
    """'timm_model.layer4' -> 'layer4': the name a reader knows the stage by."""
    return name.removeprefix("timm_model.")


class _Logits(nn.Module):
    """model(pixel_values=x).logits as a plain tensor (N, K), the output pytorch-grad-cam expects."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits.float()


def grad_cam(model: nn.Module, pixels: torch.Tensor, targets: Optional[Sequence[int]] = None,
             method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (or another of `CAM_METHODS`) of the last stage: maps (N, H, W) float32 in [0, 1] at the input's
    size (H, W), and the logits (N, K). pixels: normalized float (N, C, H, W); targets: the class id to explain per
    image, default the predicted one. The model is left in eval mode (BatchNorm uses its running statistics)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"no CAM method {method!r}; one of {', '.join(CAM_METHODS)}")
    layer = stage_layers(model)[-1][1]
    maps, logits = [], []
    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    with torch.enable_grad(), cam_class(model=_Logits(model), target_layers=[layer]) as cam:
        cam.compute_input_gradient = True    # the input's gradient: the maps exist even where every weight is frozen
        for start in range(0, len(pixels), CAM_BATCH):
            chosen = None if targets is None else [ClassifierOutputTarget(int(t))
                                                   for t in targets[start:start + CAM_BATCH]]
            maps.append(cam(input_tensor=pixels[start:start + CAM_BATCH].float(), targets=chosen))
            logits.append(cam.outputs.detach().float().cpu().numpy())
    model.zero_grad(set_to_none=True)
    k = getattr(model.config, "num_labels", 0)
    if not maps:
        return np.zeros((0, *pixels.shape[-2:]), np.float32), np.zeros((0, k), np.float32)
    return np.concatenate(maps).astype(np.float32), np.concatenate(logits)


@torch.no_grad()
def feature_maps(model: nn.Module, pixels: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """Each stage's output for one image (pixels (1, C, H, W), normalized): [(stage name, (C_i, H_i, W_i))]."""
    outputs: dict[str, np.ndarray] = {}
    stages = stage_layers(model)

    def keep(name: str):
        return lambda module, inputs, output: outputs.__setitem__(name, output[0].float().cpu().numpy())

    handles = [module.register_forward_hook(keep(name)) for name, module in stages]
    try:
        model.eval()
        model(pixel_values=pixels[:1].float())
    finally:
        for handle in handles:
            handle.remove()
    return [(stage_name(name), outputs[name]) for name, _ in stages if name in outputs]


# --------------------------------------------------------------------------------------------
# Pictures: uint8 RGB arrays
# --------------------------------------------------------------------------------------------

def _tile(tiles: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """(n, h, w, 3) uint8 -> one (rows*(h+gap)-gap, cols*(w+gap)-gap, 3) grid on white."""
    n, h, w = tiles.shape[:3]
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return grid


def _enlarge(tiles: np.ndarray, min_side: int) -> np.ndarray:
    """(n, h, w, ...) -> each side repeated (nearest neighbour) until the smaller side is at least min_side."""
    factor = max(1, math.ceil(min_side / max(1, min(tiles.shape[1:3]))))
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2)


def channel_grid(activations: np.ndarray, max_channels: int = MAX_CHANNELS) -> np.ndarray:
    """One stage's (C, H, W) output as a grid of its most active channels (mean activation, highest first), each
    scaled to its own range and coloured with viridis: uint8 (rows, cols, 3)."""
    import matplotlib

    order = np.argsort(-activations.mean(axis=(1, 2)), kind="stable")[:max_channels]
    maps = activations[order]
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    scaled = (maps - low) / np.maximum(high - low, 1e-8)
    coloured = (matplotlib.colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)   # (n, H, W, 3)
    return _tile(_enlarge(coloured, MIN_TILE), cols=min(8, len(order)), gap=2)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution in module order, with its name: the layer that looks at the pixels."""
    return next((name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def describe_filters(model: nn.Module) -> str:
    """'conv1: 64 filters, 3x7x7 each': the first convolution, for a caption."""
    name, conv = first_conv(model)
    out, c, kh, kw = conv.weight.shape
    fixed = " of the whitening stem, set from the training images' 2x2 patches" if name == "stem.conv" else ""
    return f"{stage_name(name)}: {out} filters{fixed}, {c}x{kh}x{kw} each"


def filter_grid(model: nn.Module, max_filters: int = 64) -> np.ndarray:
    """The first convolution's filters (out, in, kh, kw) as a grid: RGB for 3 input channels, gray for 1, each
    filter scaled to its own range. uint8 (rows, cols, 3)."""
    conv = first_conv(model)[1]
    weight = conv.weight.detach().float().cpu().numpy()[:max_filters]           # (n, C_in, kh, kw)
    if weight.shape[1] != 3:
        weight = weight.mean(axis=1, keepdims=True).repeat(3, axis=1)
    low, high = weight.min(axis=(1, 2, 3), keepdims=True), weight.max(axis=(1, 2, 3), keepdims=True)
    scaled = ((weight - low) / np.maximum(high - low, 1e-8) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return _tile(_enlarge(scaled, 24), cols=min(8, len(scaled)), gap=2)


def overlay_cam(image: Image.Image | np.ndarray, cam: np.ndarray,
                box: Optional[tuple[int, int, int, int]] = None) -> np.ndarray:
    """The Grad-CAM map (h, w) in [0, 1] as a jet heat map over `image` (PIL, or uint8 (H, W, 3)), stretched over
    `box` (left, top, right, bottom: the part of the image the model saw; default all of it). Outside the box the
    image is dimmed. uint8 (H, W, 3)."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.float32) / 255.0
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        rgb = np.repeat(rgb.reshape(*rgb.shape[:2], 1), 3, axis=-1)
    height, width = rgb.shape[:2]
    left, top, right, bottom = box or (0, 0, width, height)
    heat = cv2.resize(np.asarray(cam, np.float32), (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    out = (rgb * OUTSIDE_DIM * 255).astype(np.uint8)
    out[top:bottom, left:right] = show_cam_on_image(rgb[top:bottom, left:right], np.clip(heat, 0, 1), use_rgb=True)
    return out


def visible_box(processor, width: int, height: int) -> tuple[int, int, int, int]:
    """The part of a width x height image that the saved processor keeps, in its pixels (left, top, right,
    bottom): all of it when the processor squashes, the centre crop when it resizes the shorter side and crops
    (BitImageProcessor with do_center_crop; timm's crop_mode 'center'). Within a pixel of the processors' own
    rounding."""
    timm_data = getattr(processor, "data_config", None)
    if isinstance(timm_data, dict):
        if timm_data.get("crop_mode") != "center":
            return 0, 0, width, height
        crop_h, crop_w = timm_data["input_size"][-2:]
        scale_size = math.floor(min(crop_h, crop_w) / timm_data.get("crop_pct", 1.0))
    elif getattr(processor, "do_center_crop", False) and "shortest_edge" in (getattr(processor, "size", None) or {}):
        scale_size = processor.size["shortest_edge"]
        crop_h, crop_w = processor.crop_size["height"], processor.crop_size["width"]
    else:
        return 0, 0, width, height
    short = min(width, height)
    scale = scale_size / short
    resized_w, resized_h = ((scale_size, int(scale_size * height / width)) if width <= height
                            else (int(scale_size * width / height), scale_size))
    left, top = max(0, (resized_w - crop_w) // 2), max(0, (resized_h - crop_h) // 2)
    right, bottom = min(resized_w, left + crop_w), min(resized_h, top + crop_h)
    return (round(left / scale), round(top / scale), min(width, round(right / scale)),
            min(height, round(bottom / scale)))


# --------------------------------------------------------------------------------------------
# One image at a time: the app and the command line
# --------------------------------------------------------------------------------------------

@dataclass
class Explanation:
    """What `Explainer.explain` found for one image."""

    image: Image.Image                             # the image as decoded (RGB, original size up to MAX_SIDE)
    top: list[tuple[str, float]]                   # (label, probability), most probable first
    target: str                                    # the class the map explains
    probability: float                             # the model's probability of that class
    cam: np.ndarray                                # (H, W) in [0, 1] at the model's input size
    overlay: np.ndarray                            # uint8 (image height, image width, 3)
    stages: list[tuple[str, np.ndarray]]           # (stage name, (C, h, w) activations)

    def describe(self) -> str:
        """One line on what the map shows, for a caption: an empty map (no part of the image raises that class's
        score, as for a class the model rules out) is said to be empty rather than drawn as a blue image."""
        if not self.cam.max() > 0:
            return (f"Nothing in this image raises the score of **{self.target}** (p = {self.probability:.2f}): "
                    "the map is empty")
        return f"Where the network sees **{self.target}** (p = {self.probability:.2f}); red: most"

    def feature_map_images(self) -> list[tuple[np.ndarray, str]]:
        """(grid, caption) per stage, for a gallery: 'blocks.0: 48 channels, 15x15 (the 32 most active)'."""
        out = []
        for name, maps in self.stages:
            shown = f" (the {MAX_CHANNELS} most active)" if len(maps) > MAX_CHANNELS else ""
            out.append((channel_grid(maps), f"{name}: {len(maps)} channels, {maps.shape[2]}x{maps.shape[1]}{shown}"))
        return out


class Explainer:
    """Grad-CAM, feature maps and first-layer filters for a `Predictor`'s model, one image at a time.

    >>> explainer = Explainer(predictor)
    >>> explanation = explainer.explain("cat.png")                 # or target="dog"
    >>> explanation.top[0], explanation.overlay.shape
    (('cat', 0.91), (375, 500, 3))

    Holds a float32 copy of the network (explanations never disturb the Predictor's batching), and runs one
    explanation at a time.
    """

    def __init__(self, predictor):
        self.predictor = predictor
        self.model = copy.deepcopy(predictor.model).float().eval()
        self.labels = list(predictor.labels)
        self._lock = threading.Lock()

    def class_id(self, target: Optional[str | int]) -> Optional[int]:
        """The class id of a label (or of an id given as a number); None for the predicted class. Raises
        ValueError naming the labels for one the model does not know."""
        if target is None or (isinstance(target, str) and not target.strip()):
            return None
        if isinstance(target, str) and target in self.labels:
            return self.labels.index(target)
        if str(target).isdigit() and int(target) < len(self.labels):
            return int(target)
        raise ValueError(f"no class {target!r}: this model's classes are {', '.join(self.labels)}")

    def explain(self, image: ImageLike, target: Optional[str | int] = None, top_k: int = 5,
                method: str = "gradcam") -> Explanation:
        """Grad-CAM (or `method`, one of CAM_METHODS) for `target` (default: the top class), the feature maps and the
        top-k of one image. Raises ImageError for an input that is not an image."""
        picture = load_image(image)
        target_id = self.class_id(target)
        pixels = self.predictor.preprocess([picture]).to(next(self.model.parameters()).device)
        with self._lock:
            cams, logits = grad_cam(self.model, pixels, None if target_id is None else [target_id], method)
            stages = feature_maps(self.model, pixels)
        probs = torch.softmax(torch.from_numpy(logits[0]).float(), dim=0).numpy()     # as the Predictor computes them
        order = np.argsort(-probs, kind="stable")[:max(1, min(top_k, len(self.labels)))]
        chosen = int(order[0]) if target_id is None else target_id
        box = visible_box(self.predictor.processor, picture.width, picture.height)
        return Explanation(image=picture, top=[(self.labels[i], float(probs[i])) for i in order],
                           target=self.labels[chosen], probability=float(probs[chosen]), cam=cams[0],
                           overlay=overlay_cam(picture, cams[0], box),
                           stages=stages)

    def filters(self) -> np.ndarray:
        """The first layer's filters as one uint8 RGB grid (see `filter_grid`)."""
        return filter_grid(self.model)


# --------------------------------------------------------------------------------------------
# A run's interpretation: plots/top_losses.png and plots/gradcam.png
# --------------------------------------------------------------------------------------------

TOP_LOSSES = 12         # images in plots/top_losses.png
CAM_PER_KIND = 3        # plots/gradcam.png: correct and wrong predictions shown per class
CAM_CLASSES = 10        # plots/gradcam.png: classes (rows) shown


def top_losses(labels: np.ndarray, probs: np.ndarray, k: int = TOP_LOSSES) -> np.ndarray:
    """Positions of the misclassified images with the highest cross-entropy (-log p[true class]), highest first."""
    labels = np.asarray(labels)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    loss = -np.log(np.maximum(probs[wrong, labels[wrong]], 1e-12))
    return wrong[np.argsort(-loss, kind="stable")][:k]


def cam_overlays(model: nn.Module, normalize, images: torch.Tensor, targets: Sequence[int]) -> list[np.ndarray]:
    """Grad-CAM overlays (uint8 (H, W, 3)) of uint8 model-input images (n, C, H, W) for the given classes."""
    cams, _ = grad_cam(model, normalize(images), targets)
    return [overlay_cam(image.permute(1, 2, 0).numpy(), cam) for image, cam in zip(images, cams)]


def write_top_losses(model: nn.Module, normalize, view, labels: np.ndarray, probs: np.ndarray,
                     class_names: Sequence[str], path) -> None:
    """plots/top_losses.png: the `TOP_LOSSES` most confident mistakes of the test split (`view.images_at`, in the
    order of labels (N,) and probs (N, K)), each with the Grad-CAM of the class the model chose."""
    from . import plots

    labels, preds = np.asarray(labels), probs.argmax(axis=1)
    index = top_losses(labels, probs)
    images = view.images_at(index)
    overlays = cam_overlays(model, normalize, images, preds[index]) if len(index) else []
    titles = [f"true: {class_names[labels[i]]}\npred: {class_names[preds[i]]} (p={probs[i, preds[i]]:.2f})\n"
              f"loss {-np.log(max(probs[i, labels[i]], 1e-12)):.2f}" for i in index]
    plots.plot_top_losses(images, overlays, titles, int((preds != labels).sum()), len(labels), path)


def write_cam_grid(model: nn.Module, normalize, view, labels: np.ndarray, probs: np.ndarray,
                   class_names: Sequence[str], path) -> None:
    """plots/gradcam.png: per true class (the first `CAM_CLASSES`), Grad-CAM of `CAM_PER_KIND` correct predictions
    (the first in the split's order, not the easiest) and of its most confident mistakes."""
    from . import plots

    labels, preds = np.asarray(labels), probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    chosen: list[tuple[int, list[int]]] = []
    for c in range(min(len(class_names), CAM_CLASSES)):
        correct = np.flatnonzero((labels == c) & (preds == c))[:CAM_PER_KIND]
        wrong = np.flatnonzero((labels == c) & (preds != c))
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:CAM_PER_KIND]
        chosen.append((c, [*correct.tolist(), *wrong.tolist()]))
    index = np.array([i for _, cells in chosen for i in cells], dtype=np.int64)
    overlays = iter(cam_overlays(model, normalize, view.images_at(index), preds[index]) if len(index) else [])
    rows = []
    for c, cells in chosen:
        rows.append((class_names[c], [(next(overlays), ("✓ " if preds[i] == c else f"✗ {class_names[preds[i]]} ")
                                       + f"{confidence[i]:.2f}") for i in cells]))
    note = (f"the first {CAM_CLASSES} of {len(class_names)} classes" if len(class_names) > CAM_CLASSES else "")
    plots.plot_cam_grid(rows, 2 * CAM_PER_KIND, path, note=note)


def write_filters(model: nn.Module, path) -> None:
    """plots/filters.png: the first convolution's filters."""
    from . import plots

    plots.plot_picture(filter_grid(model), f"First-layer filters ({describe_filters(model)})", path)


# --------------------------------------------------------------------------------------------
# Command line: `python -m image_classifier explain IMAGE... [--model M] [--target_class NAME]`
# --------------------------------------------------------------------------------------------

def add_explain_command(subparsers) -> None:
    """Add the `explain` sub-command (see `image_classifier.__main__`)."""
    from .inference import add_model_arguments

    parser = subparsers.add_parser(
        "explain", help="show where a trained model looks: Grad-CAM, feature maps and the top classes",
        description="For each image: the Grad-CAM overlay of its top class (or --target_class) at the image's own "
                    "size, the feature maps of every convolutional stage and the top classes, written to "
                    "--output_dir as NAME.gradcam.png, NAME.feature_maps.png and NAME.json; the first layer's "
                    "filters once, as filters.png. Files that are not readable images are reported on stderr "
                    "(exit status 1) and the others explained.")
    add_model_arguments(parser)
    parser.add_argument("--target_class", default=None, metavar="NAME",
                        help="the class whose evidence the map shows (default: each image's top class)")
    parser.add_argument("--output_dir", default="explanations", help="folder for the pictures (default explanations)")
    parser.add_argument("--top_k", type=int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--method", default="gradcam", choices=list(CAM_METHODS),
                        help="gradcam (default), gradcam++, or scorecam (a forward pass per channel: seconds per "
                             "small image, minutes per photo on a CPU)")
    parser.set_defaults(run=explain_command)


def explain_command(args) -> int:
    """Run `explain` for parsed arguments; return the exit status (0 ok, 1 some file failed, 2 no model)."""
    import sys
    from pathlib import Path

    from . import plots
    from .files import atomic_path, write_json
    from .images import ImageError
    from .inference import expand_image_paths, open_predictor

    paths = expand_image_paths(args.images)
    predictor = open_predictor(args)
    if predictor is None:
        return 2
    out = Path(args.output_dir)
    status, used = 0, set()
    with predictor:
        explainer = Explainer(predictor)
        try:
            explainer.class_id(args.target_class)
        except ValueError as error:
            print(f"error: --target_class: {error}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        write_filters(explainer.model, out / "filters.png")
        for path in paths:
            try:
                explanation = explainer.explain(path, args.target_class, top_k=args.top_k, method=args.method)
            except ImageError as error:
                print(f"error: {path}: {error}", file=sys.stderr)
                status = 1
                continue
            stem = _unique_stem(Path(path).stem, used)
            with atomic_path(out / f"{stem}.gradcam.png") as tmp:
                Image.fromarray(explanation.overlay).save(tmp, format="PNG")
            plots.plot_feature_maps(explanation.feature_map_images(), out / f"{stem}.feature_maps.png",
                                    title=f"{Path(path).name}: the output of each stage")
            record = {"file": path, "target": explanation.target, "method": args.method,
                      "predictions": [{"label": label, "score": round(p, 6)} for label, p in explanation.top]}
            write_json(out / f"{stem}.json", record)
            print(f"{path}\t" + "\t".join(f"{label} {p:.3f}" for label, p in explanation.top)
                  + f"\t{args.method} of {explanation.target}: {out / stem}.gradcam.png"
                  + ("" if explanation.cam.max() > 0 else " (empty: nothing in the image raises its score)"))
    return status


def _unique_stem(stem: str, used: set[str]) -> str:
    """`stem`, or `stem_2`, `stem_3`... when another input had the same file name."""
    name, i = stem, 1
    while name in used:
        i += 1
        name = f"{stem}_{i}"
    used.add(name)
    return name
