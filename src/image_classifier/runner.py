"""One run, top to bottom: data → model → fit → evaluate → model folder (→ Hub).

Each stage is a call into its module; values pass between them, nothing global. Every process
runs this; only the main process writes files or pushes.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from . import data as data_stage
from . import (budget, calibration, card, engine, explore, hub, interpretation, metrics, model_folder, models, plots, recipes,
               robustness)
from .augment import BatchAugment, Normalize, build_batch_mix
from .config import Config, ConfigError, save_config, training_on_cuda
from .files import check_writable, disk_full_is_an_error, write_json, write_text
from .interrupt import StopOnSignal, resume_command
from .transforms import build_photo_processor

__all__ = ["run", "follow_the_data", "plan_schedule", "fit_batch_in_memory", "build_model", "build_saved_model", "train_model",
           "evaluate_model", "calibrate_model", "build_augment", "check_output_dir", "describe_hardware",
           "save_model_folder", "describe_finish", "train_loss_note"]


def check_output_dir(config: Config) -> None:
    """Refuse an output folder that cannot be written, or that already holds a finished model or another run's
    checkpoints unless told to replace it, or that has no checkpoint to resume: before any data is loaded."""
    out = Path(config.train.output_dir)
    problem = check_writable(out)
    if problem:
        raise ConfigError("output_dir", f"{out} cannot be written: {problem}. Choose a folder you can write to "
                                        "with --output_dir (a new one is created).")
    if config.train.resume_from_checkpoint:
        engine.find_checkpoint(out, config.train.resume_from_checkpoint)    # a missing one is an error now
    fresh = not (config.train.overwrite_output_dir or config.train.resume_from_checkpoint)
    if model_folder.is_finished(out) and fresh:
        raise ConfigError("output_dir", f"{out} already holds a finished model ({model_folder.METRICS} exists). "
                                        "Pass --overwrite_output_dir to replace it, or choose another --output_dir.")
    # A fresh run's checkpoints would mix with these, and 'latest' could then pick the old run's.
    checkpoints = sorted((out / model_folder.CHECKPOINTS).glob("step_*"))
    if checkpoints and fresh:
        raise ConfigError("output_dir", f"{out} holds checkpoints of an unfinished run (newest: "
                                        f"{checkpoints[-1].name}). Pass --resume_from_checkpoint latest to continue "
                                        "it, --overwrite_output_dir to start over, or choose another --output_dir.")
    # The default net, batch and resizing schedule follow the device, so a run resumed on other hardware could
    # change them.
    # (--time_budget reads its planned values back from the run itself: budget.resume_plan.)
    if config.train.resume_from_checkpoint and not config.train.overwrite_output_dir and not config.train.time_budget:
        trained = model_folder.read_json(out, model_folder.TRAINING_CONFIG, {})
        now = {"model": config.model.model, "per_device_train_batch_size": config.train.per_device_train_batch_size,
               "progressive_resize_epochs": config.train.progressive_resize_epochs}
        for flag, value in now.items():
            if trained.get(flag) not in (None, value):
                raise ConfigError(flag, f"the run in {out} trains with --{flag} {trained[flag]}, not {value} (the "
                                        "defaults of --model, --per_device_train_batch_size and "
                                        "--progressive_resize_epochs follow the device: a CUDA GPU or not). "
                                        f"Pass --{flag} {trained[flag]} to resume it.")


def describe_hardware(accelerator: Accelerator) -> str:
    """'1x NVIDIA H100 80GB HBM3' or '1x CPU (2 threads, x86_64)', per process count."""
    n = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{n}x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{n}x CPU ({torch.get_num_threads()} threads, {platform.machine()})"


def run(config: Config) -> Optional[dict[str, Any]]:
    """Explore the data, train, evaluate and save the model folder; return the metrics (None for --explore_only)."""
    source, notes = follow_the_data(config)
    accelerator = engine.build_accelerator(config)
    out = Path(config.train.output_dir)
    if accelerator.is_main_process:
        model_folder.clean_leftovers(out)
    set_seed(config.train.seed)    # splits and model initialisation: identical on every process
    for note in notes:
        accelerator.print(note)

    # Data: the main process decodes first and fills the cache that the others then read.
    with accelerator.main_process_first():
        data = data_stage.load_data(config.data, seed=config.train.seed, source=source)
    plan = None if config.data.explore_only else plan_schedule(config, data, accelerator)
    accelerator.print(describe_recipe(config, accelerator))
    set_seed(config.train.seed)    # the model's initialisation as without a plan (it timed copies of models)
    model, normalize = (None, None) if config.data.explore_only else build_model(config, data)
    if model is not None:
        accelerator.print(fit_batch_in_memory(model, data, config, accelerator))
    # Everything that can fail on the user's input has passed: only now may an old run's files go.
    if accelerator.is_main_process and config.train.overwrite_output_dir and not config.train.resume_from_checkpoint:
        model_folder.clear_finished_run(out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        explore.explore(data, config.data, out)
        save_config(config, out / model_folder.TRAINING_CONFIG)
    if config.data.explore_only:
        return None

    summary = models.summarize_model(model, (data.num_channels, data.image_size, data.image_size))
    if accelerator.is_main_process:
        accelerator.print(summary)
        write_text(out / model_folder.MODEL_SUMMARY, summary + "\n")
    if config.train.report_to != "none":
        accelerator.init_trackers("image_classifier", config=_scalars(config.to_dict()))
    # SIGINT/SIGTERM during training: checkpoint at the next step, then `TrainingInterrupted` (see interrupt.py).
    with StopOnSignal() as stop:
        result = train_model(model, normalize, data, data.tensors["train"], data.tensors["validation"], config,
                             accelerator, stop=stop, plan=plan)
    model = engine.plain_model(accelerator, result.model)
    results, test_predictions = evaluate_model(model, normalize, data, result, config, accelerator)
    if config.train.time_budget is not None:
        results.update(plan.to_metrics() if plan else {"time_budget_seconds": config.train.time_budget_seconds})
    report = (robustness.measure_robustness(model, normalize, data.eval_view("test"), config, accelerator)
              if config.train.robustness_report else None)
    if report is not None:
        results.update(mean_corruption_accuracy=report["mean_corruption_accuracy"],
                       worst_corruption=report["worst_corruption"], robustness_num_images=report["num_images"],
                       robustness_clean_accuracy=report["clean_accuracy"])

    if accelerator.is_main_process:
        save_model_folder(model, normalize, data, result.state, results, test_predictions, out, report)
    accelerator.wait_for_everyone()
    if config.train.report_to != "none":
        accelerator.log({f"final/{k}": v for k, v in results.items() if isinstance(v, (int, float))},
                        step=result.state.global_step)
        accelerator.end_training()
    pushed = None
    if config.hub.push_to_hub and accelerator.is_main_process:
        pushed = hub.push_to_hub(out, config.hub.hub_model_id, private=config.hub.hub_private_repo,
                                 token=config.hub.hub_token)
    accelerator.print(describe_finish(out, results, pushed))
    return results


def follow_the_data(config: Config) -> tuple["data_stage.DataSource", list[str]]:
    """Open the dataset (columns, splits, a sample of headers; no pixels) and fill the defaults that follow it
    (photos, imbalance, the model's input size); check the output folder. Returns the source and the lines to
    print. A named --output_dir is checked before any data is read; the default one is named after the model."""
    if "output_dir" not in config.unset:
        check_output_dir(config)
    # The main process opens it first, filling the datasets cache that the others then read.
    with PartialState(cpu=not training_on_cuda()).main_process_first():
        source = data_stage.open_source(config.data, seed=config.train.seed)
    traits = source.traits()
    notes = config.follow_data(traits)
    # timm: RGB input, --pretrained checked now, not after the data; its input size may change the data path
    notes += models.prepare_model_config(config)
    notes.insert(0, config.follow_data_path(traits))
    if "output_dir" in config.unset:
        check_output_dir(config)
    return source, notes


def plan_schedule(config: Config, data: "data_stage.ImageData", accelerator: Accelerator) -> Optional[budget.Plan]:
    """--time_budget: time this host, set the epochs (and tier) that fit, print the plan and return it; resumed, the
    run's own plan read back (None). Without a budget: a line where the default would train slowly here."""
    shape = (data.num_channels, data.image_size, data.image_size)
    images = len(data.tensors["train"])

    def build(trial: Config) -> torch.nn.Module:
        return build_model(trial, data)[0]

    if config.train.time_budget is None:
        line = budget.check_default_speed(config, build, accelerator, shape, images)
        if line:
            accelerator.print(line)
        return None
    if config.train.resume_from_checkpoint:
        accelerator.print(budget.resume_plan(config))
        return None
    plan = budget.plan_time_budget(config, build, accelerator, shape, images)
    accelerator.print(budget.describe_plan(plan))
    return plan


def describe_recipe(config: Config, accelerator: Accelerator) -> str:
    """The start-of-run line: the recipe, the device and model, and the value of each flag it fills."""
    values = {flag: getattr(config.train, flag) for flag in recipes.RECIPE_FLAGS
              if flag != "momentum" or config.train.optimizer in ("sgd", "muon")}    # Adam's betas are not momentum
    return recipes.describe(config.train.recipe, {**values, "mixed_precision": accelerator.mixed_precision},
                            f"{accelerator.device.type} ({config.model.model})")


def evaluate_model(model: torch.nn.Module, normalize: Normalize, data: "data_stage.ImageData",
                   result: "engine.FitResult", config: Config, accelerator: Accelerator):
    """The metrics.json values and the test (logits, labels) of the trained network, calibrated first (--calibrate).

    Validation and test are scored every sample exactly once, in float32: the network as it is saved and as
    pipeline() and the app run it (bf16 logits differ in the last digits).
    """
    results: dict[str, Any] = {}
    # One view per image, as pipeline() and the app see it: calibration is fitted and reported on these. The test
    # split's is always needed (test_accuracy_without_tta); validation's only to calibrate or without TTA.
    needed = ("validation", "test") if config.train.calibrate or result.tta == "none" else ("test",)

    def score(split: str, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
        return engine.predict_float32(model, data.tensors[split], normalize, accelerator, config, tta)

    def score_one_view() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {split: score(split) for split in needed}

    single = score_one_view()
    if config.train.calibrate:
        found, single = calibrate_model(model, single, score_one_view)
        results.update(found)
    predictions = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        predictions[split] = single[split] if result.tta == "none" else score(split, result.tta)
        results.update(metrics.compute_metrics(*predictions[split], data.class_names, prefix=prefix))
    results["tta"] = result.tta
    if result.tta != "none":    # what pipeline() and the app see: one view per image
        results["test_accuracy_without_tta"] = metrics.compute_metrics(*single["test"], data.class_names)["accuracy"]
    state = result.state
    results.update(train_seconds=round(state.train_seconds, 2), num_parameters=models.count_parameters(model),
                   epochs_trained=state.epoch, best_epoch=state.best_epoch, global_steps=state.global_step,
                   hardware=describe_hardware(accelerator), num_processes=accelerator.num_processes,
                   mixed_precision=accelerator.mixed_precision)
    accelerator.print(
        f"test accuracy {results['test_accuracy']:.4f}  f1 {results['test_f1']:.4f}  loss {results['test_loss']:.4f}  "
        f"({results['test_num_samples']} images; best epoch {state.best_epoch}; {state.train_seconds:.1f}s training)")
    if config.train.calibrate:
        accelerator.print(f"calibration: temperature {results['temperature']:.3f} (folded into the classifier); test "
                          f"ECE {100 * results['test_ece_uncalibrated']:.2f} % -> {100 * results['test_ece']:.2f} %, "
                          f"NLL {results['test_nll_uncalibrated']:.4f} -> {results['test_nll']:.4f}")
    return results, predictions["test"]


def calibrate_model(model: torch.nn.Module, single: dict[str, tuple[np.ndarray, np.ndarray]],
                    score: Callable[[], dict[str, tuple[np.ndarray, np.ndarray]]]) -> tuple[dict[str, Any], dict]:
    """Fit a temperature on the validation logits and fold it into the model (`calibration.fold_temperature`).
    `single`: one-view (logits, labels) per split, before; `score()` computes them again. Returns the temperature,
    the test ECE/NLL/Brier before (`_uncalibrated`) and after and the reliability diagram's bins of both; and the
    folded model's one-view scores: exactly what the saved model gives (`evaluate`), not the logits divided by the
    temperature, which differ in the last digits."""
    temperature = calibration.fit_temperature(*single["validation"])
    calibration.fold_temperature(model, temperature)
    after = score()
    found: dict[str, Any] = {"temperature": temperature}
    for suffix, (logits, labels) in (("_uncalibrated", single["test"]), ("", after["test"])):
        found.update({f"test_{k}{suffix}": v for k, v in calibration.calibration_metrics(logits, labels).items()})
        found[f"test_reliability{suffix}"] = calibration.reliability_bins(logits, labels)
    return found, after


def build_model(config: Config, data: "data_stage.ImageData") -> tuple[torch.nn.Module, Normalize]:
    """The --model for this data, and the normalisation its inputs take: the training split's statistics, or a
    timm model's own (its pretrained weights expect them). A patch-whitening stem is fit to the first 5,000
    normalised training images here."""
    if config.model.saved:     # fine-tuning a model this project trained: its weights and normalisation
        return build_saved_model(config, data)
    try:
        model = models.create_model(config.model.model, class_names=data.class_names, num_channels=data.num_channels,
                                    image_size=data.image_size, overrides=config.model.overrides(),
                                    pretrained=bool(config.model.pretrained), crop_pct=data.crop_pct)
    except ValueError as error:
        raise ConfigError("model", str(error)) from error
    normalize = Normalize(*models.input_normalization(model, data.mean, data.std))
    if models.needs_data_init(model):        # decoding 5,000 photos would take a minute: 512
        train = data.eval_view("train")
        sample = range(min(len(train), 5000 if data.path == "resident" else 512))
        models.init_from_data(model, normalize(train.images_at(sample)))
    return model, normalize


def build_saved_model(config: Config, data: "data_stage.ImageData") -> tuple[torch.nn.Module, Normalize]:
    """The model --model names (a folder or Hub id this project wrote) for this data's classes, and the
    normalisation its saved processor applies: the one its weights learned with (its whitening stem is kept)."""
    from transformers import AutoImageProcessor

    model = models.load_trained_model(config.model.model, data.class_names)
    return model, Normalize.from_processor(AutoImageProcessor.from_pretrained(config.model.model))


def fit_batch_in_memory(model: torch.nn.Module, data: "data_stage.ImageData", config: Config,
                        accelerator: Accelerator) -> str:
    """Check before training that a step fits the device's free memory (`models.estimate_training_bytes`); a
    default batch that does not is halved until it does, a chosen one is refused with the batch that fits.
    Returns the line to print."""
    args = config.train
    shape = (data.num_channels, data.image_size, data.image_size)
    free = _free_memory(accelerator)
    per_image, fixed = models.training_bytes(model, shape)
    need = args.per_device_train_batch_size * per_image + fixed
    gib = 2 ** 30
    if need <= free:
        return (f"Memory: a training step at batch {args.per_device_train_batch_size} and {data.image_size}x"
                f"{data.image_size} needs about {need / gib:.1f} GiB; {free / gib:.1f} GiB free")
    batch = args.per_device_train_batch_size
    while batch > 1 and batch * per_image + fixed > free:
        batch //= 2
    if "per_device_train_batch_size" not in config.unset or batch * per_image + fixed > free:
        raise ConfigError("per_device_train_batch_size",
                          f"a training step of {config.model.model} at batch {args.per_device_train_batch_size} and "
                          f"{data.image_size}x{data.image_size} needs about {need / gib:.1f} GiB, but only "
                          f"{free / gib:.1f} GiB is free on {accelerator.device}; pass --per_device_train_batch_size "
                          f"{batch} or less (or a smaller --image_size, or --gradient_accumulation_steps to keep the "
                          "global batch)")
    args.per_device_train_batch_size = batch
    return (f"Memory: the default batch would need about {need / gib:.1f} GiB, {free / gib:.1f} GiB is free: "
            f"training at batch {batch} instead (--per_device_train_batch_size)")


def _free_memory(accelerator: Accelerator) -> int:
    """Bytes free for one process's training step: the GPU's free memory, or the CPU's available memory
    shared among the processes on this machine."""
    if accelerator.device.type == "cuda":
        return torch.cuda.mem_get_info(accelerator.device)[0]
    import psutil

    return psutil.virtual_memory().available // max(1, accelerator.num_processes)


def train_model(model: torch.nn.Module, normalize: Normalize, data: "data_stage.ImageData",
                train: "data_stage.ImageTensors", heldout: "data_stage.ImageTensors", config: Config,
                accelerator: Accelerator, stop: Optional[StopOnSignal] = None,
                plan: Optional[budget.Plan] = None) -> "engine.FitResult":
    """`engine.fit` with this data's augmentation and metrics, scoring `heldout` after every epoch; with a
    --time_budget `plan`, planning the rest again after each epoch."""
    def evaluate_fn(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return metrics.compute_metrics(logits, labels, data.class_names)

    return engine.fit(model, train, heldout, augment=build_augment(config, data, normalize), normalize=normalize,
                      mix=build_batch_mix(config.data, len(data.class_names)), config=config,
                      accelerator=accelerator, evaluate_fn=evaluate_fn, stop=stop,
                      epoch_end=[] if plan is None else [replan_hook(plan, config, accelerator)])


def replan_hook(plan: budget.Plan, config: Config, accelerator: Accelerator) -> Callable[["engine.Loop"], None]:
    """The epoch-end hook of a --time_budget run: `budget.replan`; a changed plan is printed and saved in
    training_config.json, where a resumed run reads it back (budget.resume_plan)."""
    def replan(loop: "engine.Loop") -> None:
        line = budget.replan(plan, config, loop)
        if line:
            accelerator.print(line)
            if accelerator.is_main_process:
                save_config(config, Path(config.train.output_dir) / model_folder.TRAINING_CONFIG)
    return replan


def build_augment(config: Config, data: "data_stage.ImageData", normalize: Normalize) -> BatchAugment:
    """The training augmentation of --augment for this data (per image on the streaming path), ending in
    `normalize`'s mean and std."""
    return BatchAugment(config.data, data.class_names, normalize.mean.tolist(), normalize.std.tolist(),
                        per_sample=data.path == "streaming")


def save_model_folder(model: torch.nn.Module, normalize: Normalize, data: "data_stage.ImageData",
                      state: "engine.TrainerState", results: dict[str, Any],
                      test_predictions: tuple[np.ndarray, np.ndarray], out: Path,
                      robustness_report: Optional[dict[str, Any]] = None) -> None:
    """`model_folder.write_model_folder` with this run's weights, processor, evidence, plots, examples and card.

    A full disk is a `DiskFullError` that says how to finish the run from its last checkpoint.
    """
    def save_weights(tmp: str) -> None:
        models.save_pretrained(model, tmp)     # timm models: a folder stock timm loads too, with its processor
        if not models.is_timm_model(model):
            mean, std = normalize.mean.tolist(), normalize.std.tolist()
            processor = (build_photo_processor(data.image_size, data.crop_pct, mean, std) if data.path == "streaming"
                         else data_stage.build_image_processor(data.image_size, mean, std))
            processor.save_pretrained(tmp)

    logits, labels = test_predictions
    test_view, probs = data_stage.predicted_view(data.eval_view("test"), len(labels)), metrics.softmax(logits)
    plot = model_folder.plot_file
    optional = [   # (path in the folder, its writer); the card last, as it is filled from the files before it
        (plot(".", "learning_curves"), lambda path: plots.plot_learning_curves(
            state.history, path, train_loss_note(model_folder.read_json(out, model_folder.TRAINING_CONFIG, {})))),
        (plot(".", "confusion_matrix"), lambda path: plots.plot_confusion_matrix(
            np.asarray(results["test_confusion_matrix"]), data.class_names, path)),
        *([(plot(".", "reliability"), lambda path: plots.plot_reliability(
            results["test_reliability_uncalibrated"], results["test_reliability"], results["test_ece_uncalibrated"],
            results["test_ece"], results["temperature"], path))] if "temperature" in results else []),
        *([(model_folder.ROBUSTNESS, lambda path: write_json(path, robustness_report)),
           (plot(".", "robustness"), lambda path: plots.plot_robustness(robustness_report, path))]
          if robustness_report else []),
        (plot(".", "top_losses"), lambda path: interpretation.write_top_losses(
            model, normalize, test_view, labels, probs, data.class_names, path)),
        (plot(".", "gradcam"), lambda path: interpretation.write_cam_grid(
            model, normalize, test_view, labels, probs, data.class_names, path)),
        (plot(".", "filters"), lambda path: interpretation.write_filters(model, path)),
        (model_folder.EXAMPLES, lambda path: model_folder.save_examples(data.splits["test"], data.class_names,
                                                                        data.num_channels, path)),
        (model_folder.CARD, lambda path: card.write_model_card(out)),
    ]
    kept = (f"Nothing saved before is lost: the newest checkpoint in {out / model_folder.CHECKPOINTS} holds the "
            f"trained weights. Free some space, then finish the run with:\n  {resume_command()}")
    with disk_full_is_an_error("the model files", out, kept):
        model_folder.write_model_folder(out, save_weights, results, state.history, optional)


def train_loss_note(training: dict[str, Any]) -> Optional[str]:
    """How a run's training loss differs from plain cross-entropy on the images (validation's), or None."""
    notes = [f"label smoothing {training['label_smoothing']:g}" if training.get("label_smoothing") else "",
             "on mixed images" if training.get("mixup_alpha") or training.get("cutmix_alpha") else ""]
    return ", ".join(n for n in notes if n) or None


def describe_finish(out: Path, results: dict[str, Any], pushed: Optional[str] = None) -> str:
    """The end-of-run lines: where the model folder is, the headline test metrics, the commands to go on with."""
    folder = str(out)
    metrics = "  ".join(f"{name} {100 * results[f'test_{key}']:.2f} %" for key, name in (
        ("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1")))
    push = (f"  # pushed to {pushed}" if pushed else
            f"\n  python -m image_classifier push {folder} --hub_model_id USER/NAME        # share it on the Hub")
    return (f"Done. The model folder is {folder} (card: {out / model_folder.CARD}, plots: {out / model_folder.PLOTS}).\n"
            f"Test, {results['test_num_samples']:,} images: {metrics} (macro)  loss {results['test_loss']:.4f}\n"
            f"Next:\n"
            f"  python app.py --model {folder}                                    # try it in the browser\n"
            f"  python -m image_classifier predict IMAGES_OR_FOLDER --model {folder} --output predictions.csv\n"
            f"  python -m image_classifier evaluate --model {folder} --dataset OTHER_DATASET"
            + push)


def _scalars(flat: dict[str, Any]) -> dict[str, Any]:
    """Tracker hyperparameters must be scalars: lists become strings, None is dropped."""
    return {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in flat.items() if v is not None}
