"""--time_budget: time this host's training steps, then plan the schedule that fits the budget.

A fixed epoch count tuned on one host is the wrong contract on another (a CPU without bf16 trains 2-3x slower), so
a budgeted run measures first: a copy of the model takes a few forward + backward + optimizer steps on random
tensors of one batch (the run's precision and memory format), at each image side the recipe trains at. From those
rates the plan takes the most accurate tier of `recipes.BUDGET_TIERS` whose minimum epochs fit and as many of its
epochs as fit (`recipes.plan_epochs`), the last of them partial where a whole one would overrun the budget
(`recipes.fill_epochs`), and sets them as flags (`Config.apply_plan`): the run's config, card and
metrics.json say what the budget bought, and the same flags spelled out give the same run.

measure_training_rate  images/s of one model's training step at one image side, all processes together
plan_time_budget       measure, choose, set the flags; returns the Plan
replan                 after each epoch, the rest of the plan again from the loop's own seconds per epoch
check_default_speed    without a budget, on a CPU training in float32: the line that says when the default would
                       take past recipes.SLOW_DEFAULT_SECONDS, and what a budget would do
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from . import engine, model_folder, optim
from .config import Config, ConfigError, TrainingArguments
from .engine import progressive_size
from .recipes import (BUDGET_MAX_EPOCHS, BUDGET_TIERS, PLAN_EFFICIENCY, RECIPES, REPLAN_FREELY_UNTIL,
                      REPLAN_MARGIN, REPLAN_RECENT_EPOCHS, SLOW_DEFAULT_SECONDS, fill_epochs, plan_epochs,
                      replan_epochs, rest_seconds)

__all__ = ["Plan", "time_steps", "synchronize", "time_training_step", "measure_training_rate", "plan_time_budget",
           "replan", "resume_plan", "check_default_speed",
           "describe_plan", "describe_duration", "PLANNED_FLAGS"]

# The flags a plan may set; a resumed run reads them back from its training_config.json.
PLANNED_FLAGS = ("num_train_epochs", "progressive_resize_epochs", "widths", "per_device_train_batch_size",
                 "random_erasing")


@dataclass
class Plan:
    """What a budget buys on this host: the tier, its epochs and the predicted training seconds."""

    budget_seconds: float           # --time_budget
    tier: str                       # recipes.BUDGET_TIERS name
    epochs: float                   # the last may be partial (recipes.fill_epochs): 5.85
    resized_epochs: int             # of which at `small_side`
    side: int                       # pixels: the full training side
    small_side: int                 # pixels: the reduced side (== side without progressive resizing)
    epoch_seconds: float            # predicted training seconds of one epoch at `side`
    small_epoch_seconds: float      # ... at `small_side`
    images_per_second: dict[int, float]     # measured bare rate per side, all processes
    measure_seconds: float          # spent measuring (counted in the budget)
    max_epochs: int                 # the most a plan trains (recipes.BUDGET_MAX_EPOCHS)
    flags: dict[str, Any] = field(default_factory=dict)     # what the plan set
    passed_over: list[str] = field(default_factory=list)    # why the more accurate tiers were not taken
    resize_share: tuple[int, int] = (0, 1)      # (small, every): the recipe's share of epochs at `small_side`
    stretch_to: int = 0                         # the recipe's own epochs (recipes.plan_epochs)
    # After each epoch (`replan`): the predicted end of training as then planned, and a line per change of plan.
    replanned_seconds: Optional[float] = None
    replans: list[str] = field(default_factory=list)

    @property
    def predicted_seconds(self) -> float:
        """Training seconds of the whole plan made at the start, as history.json counts them."""
        return rest_seconds(0, self.epochs, self.resized_epochs, self.epoch_seconds, self.small_epoch_seconds)

    def to_metrics(self) -> dict[str, Any]:
        """The metrics.json keys that record the budget, its plan at the start and the re-plans after."""
        found = {"time_budget_seconds": self.budget_seconds, "planned_train_seconds": round(self.predicted_seconds, 1),
                 "time_budget_plan": describe_plan(self)}
        if self.replanned_seconds is not None:
            found.update(replanned_train_seconds=round(self.replanned_seconds, 1), time_budget_replans=self.replans)
        return found


def time_steps(step: Callable[[], None], device: torch.device, images_per_step: int, steps: int,
               min_seconds: float = 0.0, warmup: int = 0) -> dict:
    """Run `warmup` untimed steps, then time at least `steps` steps and at least `min_seconds`.

    A GPU step lasts milliseconds, so a fixed count of steps would time a fraction of a second there. No sync
    per step: that would time the launch queue running dry between steps; the final sync drains the queue, so
    the seconds cover all the work. Returns images_per_second with the steps and seconds it was measured over.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    started, done = time.perf_counter(), 0
    while done < steps or time.perf_counter() - started < min_seconds:
        step()
        done += 1
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"images_per_second": done * images_per_step / seconds, "steps": done, "seconds": seconds}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (on a CPU nothing is queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_step(model: torch.nn.Module, args: TrainingArguments, accelerator: Accelerator,
                       shape: tuple[int, int, int], steps: int, min_seconds: float, warmup: int = 2) -> dict:
    """Forward + backward + optimizer step of `model` (changed by it) on random (C, H, W) tensors of one batch
    (no data, no augmentation) under the run's autocast, on this process; `time_steps`' figures."""
    optimizer = optim.build_optimizer(model, args)
    batch = args.per_device_train_batch_size
    x = torch.randn(batch, *shape, device=accelerator.device)
    y = torch.randint(0, accelerator.unwrap_model(model).config.num_labels, (batch,), device=accelerator.device)
    model.train()

    def step() -> None:
        with accelerator.autocast():
            loss = F.cross_entropy(model(pixel_values=x).logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, accelerator.device, batch, steps, min_seconds, warmup)


def measure_training_rate(model: torch.nn.Module, args: TrainingArguments, accelerator: Accelerator,
                          shape: tuple[int, int, int], steps: int = 2, min_seconds: float = 2.0) -> float:
    """Images/s, all processes together, of `time_training_step` on a copy of `model` in the run's precision and
    memory format; the model itself is untouched.

    Each process times its own copy outside DDP: a time-bounded loop runs a different number of steps on each, so
    a collective per step would leave them out of step (the gradient all-reduce is not timed). The main process's
    figure is everyone's (one plan)."""
    trial = copy.deepcopy(model).to(accelerator.device)     # a bare copy: no DDP, nothing registered
    if args.channels_last:
        trial = trial.to(memory_format=torch.channels_last)
    rate = time_training_step(trial, args, accelerator, shape, steps, min_seconds)["images_per_second"]
    return broadcast_object_list([rate * accelerator.num_processes])[0]


def _resize_share(config: Config, on_cuda: bool) -> tuple[int, int]:
    """(small, every): the recipe's share of epochs at the reduced size; none on a GPU or where the user gave 0."""
    if on_cuda or "progressive_resize_epochs" not in config.unset:
        return 0, 1
    return RECIPES[config.train.recipe]["resize_epochs_cpu"]


def _measure_tier(config: Config, build: Callable[[Config], torch.nn.Module], accelerator: Accelerator,
                  shape: tuple[int, int, int], num_train_images: int, share: tuple[int, int],
                  hopeless: Optional[Callable[[float], bool]] = None) -> tuple[dict[int, float], float, float, int]:
    """(rate per side, epoch seconds at full and reduced side, reduced side) of `config`'s model.

    The reduced side is timed first. Where `hopeless(its epoch seconds)` says the tier is out of the running even
    if a full-size epoch took no longer, the full side is not timed (its rate is left out, its epoch seconds are
    the reduced side's: a lower bound): timing the default net's 32x32 step took 15 s of a 15-minute budget on a
    float32 host, where the reduced side alone showed it too slow."""
    channels, side, _ = shape
    small = progressive_size(config.train, 0, side) if share[0] else side
    model = build(config)
    # Each size timed for 4 s (after 2 warm-up steps), or 1 % of a shorter budget: measuring stays a few % of it.
    # Two seconds were too few: successive 2-s timings of one cnn-fast step at 32x32 spread over 789-837 images/s.
    timed_for = min(4.0, (config.train.time_budget_seconds or 900) / 100)
    global_batch = config.train.per_device_train_batch_size * accelerator.num_processes
    images = max(1, num_train_images // global_batch) * global_batch    # the last partial batch is dropped

    def timed(s: int) -> float:
        return measure_training_rate(model, config.train, accelerator, (channels, s, s), min_seconds=timed_for)

    rates = {small: timed(small)}
    small_seconds = images / (rates[small] * PLAN_EFFICIENCY)
    if side != small:
        # The main process's answer is everyone's: a process that timed on alone would wait in its broadcast.
        if hopeless is not None and broadcast_object_list([hopeless(small_seconds)])[0]:
            return rates, small_seconds, small_seconds, small
        rates[side] = timed(side)
    return rates, images / (rates[side] * PLAN_EFFICIENCY), small_seconds, small


def plan_time_budget(config: Config, build: Callable[[Config], torch.nn.Module], accelerator: Accelerator,
                     shape: tuple[int, int, int], num_train_images: int) -> Plan:
    """Measure, choose the tier and the epochs that fit --time_budget, and set them on `config`.

    `build(config)` makes the model a config describes; `shape` is (C, side, side) of the training images.
    """
    started = time.perf_counter()
    budget = config.train.time_budget_seconds
    share = _resize_share(config, accelerator.device.type == "cuda")
    chosen, passed_over, default_epochs = None, [], 0
    tiers = _tiers(config)
    for tier in _timing_order(tiers):
        trial = copy.deepcopy(config)
        trial.apply_plan(tier["flags"])
        skip = chosen and _not_worth_timing(tier, chosen[0], default_epochs, budget, chosen[1][1])
        if skip:
            passed_over.append(f"{tier['name']} ({_flags(tier['flags'])}): {skip} (not timed)")
            continue
        measured = _measure_tier(trial, build, accelerator, shape, num_train_images, share,
                                 None if chosen else _too_slow_for(tiers, budget, started, share, config))
        epochs, resized = plan_epochs(_budget_left(budget, started), measured[1], measured[2], share,
                                      _max_epochs(config), _recipe_epochs(config))
        if chosen is None:                # the default tier: the yardstick of a tier without min_epochs
            default_epochs = epochs
        needed = tier["min_epochs"] or default_epochs
        if chosen is None or epochs >= needed:
            chosen = (tier, measured, epochs, resized)
        else:
            whose = "its" if tier["min_epochs"] else "the default's"
            passed_over.append(f"{tier['name']} ({_flags(tier['flags'])}): {epochs} of its epochs fit, fewer than "
                               f"{whose} {needed}")
    # The chosen tier's epochs again with what the tiers timed after it spent, the last one filling the budget. The
    # seconds spent measuring differ a little between processes: the main process's plan is everyone's.
    tier, measured = chosen[:2]
    left = _budget_left(budget, started)
    epochs, resized = plan_epochs(left, *measured[1:3], share, _max_epochs(config), _recipe_epochs(config))
    epochs = fill_epochs(epochs, left - rest_seconds(0, epochs, resized, *measured[1:3]), measured[1],
                         _max_epochs(config))
    tier, (rates, epoch_seconds, small_seconds, small), epochs, resized = broadcast_object_list(
        [(tier, measured, epochs, resized)])[0]
    if epochs < 1 or shape[1] not in rates:     # (the full side untimed: even the cheapest tier fits no epoch)
        raise ConfigError("time_budget", f"is too short for one epoch on this host: one takes about "
                                         f"{describe_duration(min(epoch_seconds, small_seconds))} of training here. "
                                         "Give a longer budget, or --max_train_steps for part of an epoch")
    values = {**tier["flags"], "num_train_epochs": epochs}
    if "progressive_resize_epochs" in config.unset:
        values["progressive_resize_epochs"] = resized
    config.apply_plan(values)
    return Plan(budget_seconds=budget, tier=tier["name"], epochs=epochs, resized_epochs=resized,
                side=shape[1], small_side=small, epoch_seconds=epoch_seconds, small_epoch_seconds=small_seconds,
                images_per_second=rates, measure_seconds=time.perf_counter() - started,
                max_epochs=_max_epochs(config), flags=values,
                passed_over=passed_over, resize_share=share, stretch_to=_recipe_epochs(config))


def replan(plan: Plan, config: Config, loop: "engine.Loop") -> Optional[str]:
    """After an epoch of a budgeted run: plan the rest again from the loop's own seconds per epoch at each image
    side (the mean of its recent ones; a side not yet trained keeps the start-of-run timing), keeping
    REPLAN_MARGIN of the budget in hand, the last epoch partial where a whole one does not fit. Where the plan
    would end past the budget, or the new one trains longer by REPLAN_MARGIN of the budget (or a whole epoch
    where that is less), set it (`Config.apply_plan`) and give the schedule its new length (`engine.reschedule`).
    Returns the line that says so, else None.

    The timing at the start is of a bare copy on random tensors, before the host settles: the loop itself runs
    up to 10 % faster or 5 % slower. Past REPLAN_FREELY_UNTIL of the epochs a plan is only cut, where it would
    end past the budget. A schedule outside RETARGETABLE_SCHEDULES (one-cycle, plateau) keeps its plan.
    """
    state, args = loop.state, config.train
    done, planned, resized = state.epoch, args.num_train_epochs, args.progressive_resize_epochs
    if done >= loop.num_epochs or args.lr_scheduler_type not in engine.RETARGETABLE_SCHEDULES:
        return None
    seconds = _recent_epoch_seconds(state.history, {plan.side: plan.epoch_seconds,
                                                    plan.small_side: plan.small_epoch_seconds})
    full, small = seconds.get(plan.side, plan.epoch_seconds), seconds.get(plan.small_side, plan.small_epoch_seconds)
    left = plan.budget_seconds * (1 - REPLAN_MARGIN) - plan.measure_seconds - state.train_seconds
    epochs, resized_now = replan_epochs(left, done, int(planned), resized, full, small, plan.resize_share,
                                        plan.max_epochs, plan.stretch_to)
    epochs = fill_epochs(epochs, left - rest_seconds(done, epochs, resized_now, full, small), full, plan.max_epochs)
    if done > REPLAN_FREELY_UNTIL * planned:
        epochs = min(epochs, planned)
    end, was = (state.train_seconds + rest_seconds(done, e, r, full, small) for e, r in
                ((epochs, resized_now), (planned, resized)))
    over = plan.measure_seconds + was > plan.budget_seconds
    worth = min(REPLAN_MARGIN * plan.budget_seconds, full)      # seconds of training a change must add
    change = (epochs, resized_now) != (planned, resized) and (over or end - was >= worth)
    # Each process clocked its own epochs: the main process's plan is everyone's.
    epochs, resized_now, end, change = broadcast_object_list([(epochs, resized_now, end if change else was,
                                                               change)])[0]
    plan.replanned_seconds = end
    if not change:
        return None
    config.apply_plan({"num_train_epochs": epochs,
                       **({"progressive_resize_epochs": resized_now} if "progressive_resize_epochs" in plan.flags
                          else {})})
    engine.reschedule(loop, args)
    plan.replans.append(_describe_replan(plan, done, seconds, (epochs, resized_now), (planned, resized), end))
    return plan.replans[-1]


def _describe_replan(plan: Plan, done: int, seconds: dict[int, float], now: tuple[float, int],
                     before: tuple[float, int], end: float) -> str:
    """'Re-planned after epoch 10: its epochs took ...; 21 epochs fit (10 at 24x24), not 20 (9 at 24x24), ...'."""
    def at_small(resized: int) -> str:
        return f" ({resized} at {plan.small_side}x{plan.small_side})" if plan.small_side != plan.side else ""
    measured = " and ".join(f"{seconds[side]:.1f} s at {side}x{side}" for side in sorted(seconds))
    return (f"Re-planned after epoch {done}: its epochs took {measured} (the mean of the last "
            f"{REPLAN_RECENT_EPOCHS} at each size after the first epoch); {now[0]:g} epochs fit{at_small(now[1])}, not "
            f"{before[0]:g}{at_small(before[1]) if before[1] != now[1] else ''}, ending at about "
            f"{describe_duration(end)} of training")


def _recent_epoch_seconds(history: list[dict[str, Any]], timed: dict[int, float]) -> dict[int, float]:
    """Per image side trained at: the mean training seconds of its last REPLAN_RECENT_EPOCHS epochs.

    The run's first epoch carries a warm-up (first touches of memory, kernel choices): it took 1.1-1.7x the next
    one at its side here (141 s against 83 on a float32 host), and a re-plan after it alone cut two small epochs
    the run could not get back. So it counts only while no later epoch has run at its side, and then only where it
    ran faster than `timed` (the start-of-run timing per side) says."""
    ends = [h["seconds"] for h in history]      # cumulative training seconds after each epoch
    by_side: dict[int, list[float]] = {}
    for record, begun, ended in zip(history, [0.0, *ends], ends):
        by_side.setdefault(record["train_image_size"], []).append(ended - begun)
    found = {}
    for side, spans in by_side.items():
        if side == history[0]["train_image_size"]:       # the side the run's first epoch trained at
            first, spans = spans[0], spans[1:]
            if not spans:
                found[side] = min(first, timed.get(side, first))
                continue
        found[side] = statistics.fmean(spans[-REPLAN_RECENT_EPOCHS:])
    return found


def resume_plan(config: Config) -> str:
    """A resumed budget run keeps its plan: the planned flags read back from its training_config.json (the budget
    left is what the plan has not yet trained). Returns the line to print."""
    saved = model_folder.read_json(config.train.output_dir, model_folder.TRAINING_CONFIG)
    if saved is None:
        raise ConfigError("time_budget", f"cannot resume the plan: {config.train.output_dir}/"
                                         f"{model_folder.TRAINING_CONFIG}, written when the run started, is missing. "
                                         "Resume without --time_budget, giving the run's --num_train_epochs and "
                                         "--progressive_resize_epochs")
    values = {name: saved[name] for name in PLANNED_FLAGS if name in saved and _left_default(config, name)}
    config.apply_plan(values)
    return (f"Time budget {config.train.time_budget}: resuming the plan of {config.train.output_dir} "
            f"({_flags(values)})")


def _budget_left(budget: float, started: float) -> float:
    """Training seconds a plan made now may fill: the budget less REPLAN_MARGIN and the seconds since `started`."""
    return budget * (1 - REPLAN_MARGIN) - (time.perf_counter() - started)


def _timing_order(tiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default first (the fallback, and the others' yardstick), then from the cheapest to the most accurate."""
    return sorted(tiers, key=lambda t: (t["name"] != "default", -BUDGET_TIERS.index(t)))


def _too_slow_for(tiers: list[dict[str, Any]], budget: float, started: float, share: tuple[int, int],
                  config: Config) -> Optional[Callable[[float], bool]]:
    """For the default tier's timing: given its reduced-side epoch seconds, whether fewer epochs of it fit than a
    cheaper tier's `below_default` even at that rate throughout (then that tier is taken whatever the full side's
    rate). None where no such tier may be taken."""
    below = max((t["below_default"] for t in tiers if t.get("below_default")), default=0)
    if not below:
        return None
    return lambda small_seconds: plan_epochs(_budget_left(budget, started), small_seconds, small_seconds, share,
                                             _max_epochs(config), _recipe_epochs(config))[0] < below


def _not_worth_timing(tier: dict[str, Any], chosen: dict[str, Any], default_epochs: int, budget: float,
                      chosen_epoch_seconds: float) -> Optional[str]:
    """Why `tier` is passed over without timing it, given the tier chosen so far; None where it is worth timing."""
    if chosen.get("below_default"):
        return f"fewer than {chosen['below_default']} epochs of the default fit, so the {chosen['name']} net is taken"
    if tier.get("below_default") and default_epochs >= tier["below_default"]:
        return f"{default_epochs} epochs of the default fit, at least {tier['below_default']}"
    if tier["min_epochs"] and budget < 0.8 * tier["min_epochs"] * tier["cost"] * chosen_epoch_seconds:
        return f"far fewer than its {tier['min_epochs']} epochs fit"
    return None


def _max_epochs(config: Config) -> int:
    """The most epochs a plan trains: recipes.BUDGET_MAX_EPOCHS times the recipe's own."""
    return int(BUDGET_MAX_EPOCHS * _recipe_epochs(config))


def _recipe_epochs(config: Config) -> int:
    """The recipe's own epoch count (11 for airbench)."""
    return int(RECIPES[config.train.recipe]["num_train_epochs"])


def _tiers(config: Config) -> list[dict[str, Any]]:
    """The BUDGET_TIERS this run may take, most accurate per epoch first: on an airbench model, those whose flags
    the user left at their defaults; otherwise only the default (more or fewer epochs of the run as given)."""
    if config.train.recipe != "airbench":
        return [t for t in BUDGET_TIERS if t["name"] == "default"]
    return [t for t in BUDGET_TIERS if all(_left_default(config, name) for name in t["flags"])]


def _left_default(config: Config, name: str) -> bool:
    """Whether flag `name` is at its default (unset, or equal to a non-None default) in `config`."""
    if name in config.unset:
        return True
    for part in (config.data, config.model, config.train, config.hub):
        for f in dataclasses.fields(part):
            if f.name == name:
                return f.default is not None and getattr(part, name) == f.default
    return False


def _flags(values: dict[str, Any]) -> str:
    """'--widths 128 384 384 --per_device_train_batch_size 500' (floats without a needless .0)."""
    def show(v):
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"--{k} {show(v)}" for k, v in values.items())


def describe_duration(seconds: float) -> str:
    """'8 min 40 s', '45 s', '1 h 05 min'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def describe_plan(plan: Plan) -> str:
    """The line a run prints: the budget, the measured rates, what fits and why, and the predicted end."""
    rates = " and ".join(f"{rate:,.0f} images/s at {side}x{side}" for side, rate in sorted(plan.images_per_second.items()))
    sizes = (f"{plan.resized_epochs} at {plan.small_side}x{plan.small_side}, "
             f"{round(plan.epochs - plan.resized_epochs, 2):g} at {plan.side}x{plan.side}" if plan.resized_epochs else
             f"all at {plan.side}x{plan.side}")
    skipped = f"; passed over: {'; '.join(plan.passed_over)}" if plan.passed_over else ""
    if plan.epochs == plan.max_epochs:
        skipped += (f"; {plan.max_epochs} epochs is the most a plan trains ({BUDGET_MAX_EPOCHS}x the recipe's): the "
                    f"rest of the budget is left unused")
    return (f"Time budget {describe_duration(plan.budget_seconds)}: the {plan.tier} tier ({_flags(plan.flags)}); "
            f"this host trains it at {rates} (timed in {plan.measure_seconds:.1f} s, counted in the budget); "
            f"{plan.epochs:g} epochs fit: {sizes}, ending at about {describe_duration(plan.predicted_seconds)} of "
            f"training{skipped}")


def check_default_speed(config: Config, build: Callable[[Config], torch.nn.Module], accelerator: Accelerator,
                        shape: tuple[int, int, int], num_train_images: int) -> Optional[str]:
    """Without --time_budget, on a CPU training the airbench default in float32 (no native bf16 here): time it,
    and where its epochs would train past recipes.SLOW_DEFAULT_SECONDS return the line that says so and what
    `--time_budget 15m` would train instead. None where nothing needs saying (then nothing is timed)."""
    args = config.train
    if (accelerator.device.type == "cuda" or accelerator.mixed_precision != "no" or args.recipe != "airbench"
            or "num_train_epochs" not in config.unset or args.max_train_steps):
        return None
    share = _resize_share(config, False)
    _, full, small, side = _measure_tier(config, build, accelerator, shape, num_train_images, share)
    resized = args.progressive_resize_epochs
    predicted = resized * small + (args.num_train_epochs - resized) * full
    if predicted <= SLOW_DEFAULT_SECONDS:
        return None
    epochs, fewer = plan_epochs(SLOW_DEFAULT_SECONDS, full, small, share, _max_epochs(config), _recipe_epochs(config))
    would = f"would train {epochs} epochs ({fewer} at {side}x{side}) and end within it"
    cheaper = [t for t in _tiers(config) if t.get("below_default", 0) > epochs]
    if cheaper:
        would = (f"would fit {epochs} epochs of it ({fewer} at {side}x{side}), fewer than "
                 f"{cheaper[0]['below_default']}, so it would train the {cheaper[0]['name']} net "
                 f"({_flags(cheaper[0]['flags'])}) for as many epochs of it as fit instead, ending within it")
    return (f"This host trains in float32 (no native bf16): the default {args.num_train_epochs:g} epochs would take "
            f"about {describe_duration(predicted)} of training, past {describe_duration(SLOW_DEFAULT_SECONDS)}. "
            f"`--time_budget {SLOW_DEFAULT_SECONDS / 60:g}m` {would}.")
