"""--time_budget: the duration flag, the epoch arithmetic, the plan applied as flags, and real budgeted runs (the
plan written beside the model, a resumed run keeping its plan). Timings are printed by bench/time_to_accuracy.py,
never asserted here."""

import json
import math
import re
import shutil

import pytest
from safetensors.torch import load_file

from image_classifier import budget
from image_classifier.config import ConfigError, parse_config, parse_duration
from image_classifier.recipes import BUDGET_TIERS, fill_epochs, optimizer_defaults, plan_epochs, replan_epochs
from image_classifier.runner import run
from test_engine import tiny_args


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("900s", 900), ("900", 900), ("1h30m", 5400),
                                           ("1.5h", 5400), ("2min", 120), ("1h 5m 30s", 3930), ("45M", 2700)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text, "time_budget") == seconds


@pytest.mark.parametrize("text", ["fast", "15 minutes", "", "m", "1h30", "-5m", "5m!"])
def test_a_bad_duration_names_the_flag_and_the_form(text):
    with pytest.raises(ConfigError, match=r"--time_budget.*not a duration.*15m"):
        parse_duration(text, "time_budget")


@pytest.mark.parametrize("flags, flag", [(["--num_train_epochs", "3"], "time_budget"),
                                         (["--max_train_steps", "30"], "time_budget"),
                                         (["--progressive_resize_epochs", "2"], "progressive_resize_epochs")])
def test_a_budget_refuses_the_flags_it_plans(flags, flag):
    with pytest.raises(ConfigError, match=f"--{flag}"):
        parse_config(["--dataset", "x", "--time_budget", "5m", *flags])


def test_a_budget_under_ten_seconds_is_refused():
    with pytest.raises(ConfigError, match="--time_budget.*at least 10 seconds"):
        parse_config(["--dataset", "x", "--time_budget", "5s"])


def test_the_most_epochs_that_fit_with_the_recipe_s_share_small():
    # 5 of every 11 epochs at the reduced size, each costing half a full one here: 13 epochs with 5 small
    # (5.9 rounded down) = 5 x 20 + 8 x 40 = 420 s do not fit in 400, with 6 (rounded up) = 400 s they do;
    # 14 = 7 x 20 + 7 x 40 = 420 s do not
    assert plan_epochs(400, epoch_seconds=40, small_epoch_seconds=20, resize_share=(5, 11), max_epochs=99) == (13, 6)


def test_the_share_small_is_rounded_up_where_that_lets_one_more_epoch_fit():
    # 6 epochs with 2 small: 2 x 31 + 4 x 62 = 310 s > 290; with 3 small (5/11 of 6 = 2.7, rounded up): 279 s
    assert plan_epochs(290, epoch_seconds=62, small_epoch_seconds=31, resize_share=(5, 11), max_epochs=99) == (6, 3)


def test_short_of_the_recipe_s_epochs_more_are_trained_small_where_that_fits_one_more():
    # The float32 host with AVX2 kernels at batch 500 (117 and 58 s an epoch), 880 s left: the recipe's share fits
    # 10 epochs (5 small: 873.5 s); with up to all but 4 small, 11 (7 small: 872.2 s). Past 11 epochs, the share.
    assert plan_epochs(880, 116.9, 57.8, (5, 11), max_epochs=44) == (10, 5)
    assert plan_epochs(880, 116.9, 57.8, (5, 11), max_epochs=44, stretch_to=11) == (11, 7)
    assert plan_epochs(400, 40, 20, (5, 11), max_epochs=99, stretch_to=11) == (13, 6)
    assert plan_epochs(880, 116.9, 57.8, (0, 1), max_epochs=44, stretch_to=11) == (7, 0)


def test_plan_epochs_takes_the_largest_count_whose_seconds_fit():
    def seconds(e, r, full, small):
        return r * small + (e - r) * full

    for budget_s, full, small in [(400, 40, 20), (1000, 57, 31), (95, 10, 10), (5, 10, 6), (2700, 170, 93)]:
        epochs, resized = plan_epochs(budget_s, full, small, (5, 11), max_epochs=99)
        assert epochs * 5 // 11 <= resized <= -(-epochs * 5 // 11) and resized < max(epochs, 1)
        assert seconds(epochs, resized, full, small) <= budget_s
        more = epochs + 1
        assert seconds(more, -(-more * 5 // 11), full, small) > budget_s


def test_plan_epochs_stops_at_its_most_and_at_none():
    assert plan_epochs(10_000, 1, 1, (0, 1), max_epochs=44) == (44, 0)
    assert plan_epochs(5, 10, 8, (0, 1), max_epochs=44) == (0, 0)


def test_a_plan_s_batch_sets_the_learning_rates_that_follow_it_and_keeps_the_user_s():
    config = parse_config(["--dataset", "x", "--time_budget", "5m", "--weight_decay", "1e-5"])
    config.apply_plan({"per_device_train_batch_size": 500, "num_train_epochs": 7.0, "progressive_resize_epochs": 3})
    t = config.train
    expected = optimizer_defaults("muon", 500)
    assert (t.per_device_train_batch_size, t.num_train_epochs, t.progressive_resize_epochs) == (500, 7.0, 3)
    assert (t.learning_rate, t.sgd_learning_rate) == (expected["learning_rate"], expected["sgd_learning_rate"])
    assert t.weight_decay == 1e-5                # the user's flag stays


def test_the_wide_tier_is_left_out_where_the_user_chose_its_flags():
    wide = BUDGET_TIERS[0]
    assert budget._tiers(parse_config(["--dataset", "x", "--time_budget", "1h"]))[0] is wide
    assert wide not in budget._tiers(parse_config(["--dataset", "x", "--time_budget", "1h", "--widths", "8", "16"]))
    assert wide not in budget._tiers(parse_config(["--dataset", "x", "--time_budget", "1h", "--model", "cnn-basic"]))


def test_where_fewer_than_11_default_epochs_fit_the_narrow_net_is_taken_and_nothing_else_timed(monkeypatch):
    # 5 minutes of 70-s default epochs (35 s small) fit 5; the narrow net at half the seconds fits more, and is taken
    from accelerate import Accelerator

    timed = []

    def measured(config, build, accelerator, shape, num_train_images, share, hopeless=None):
        timed.append(config.model.widths)
        seconds = 35.0 if config.model.widths == [32, 128, 128] else 70.0
        return {32: 1000.0, 24: 2000.0}, seconds, seconds / 2, 24

    monkeypatch.setattr(budget, "_measure_tier", measured)
    config = parse_config(["--dataset", "x", "--time_budget", "5m"])
    plan = budget.plan_time_budget(config, None, Accelerator(cpu=True), (3, 32, 32), 45_000)
    assert timed == [None, [32, 128, 128]] and plan.tier == "narrow" and config.model.widths == [32, 128, 128]
    assert int(plan.epochs) == plan_epochs(297, 35.0, 17.5, (5, 11), 44, 11)[0] > 5
    assert [p.split(" (")[0] for p in plan.passed_over] == ["batch-500", "wide"]
    assert all(p.endswith("fewer than 11 epochs of the default fit, so the narrow net is taken (not timed)")
               for p in plan.passed_over)
    # 15 minutes fit 16 default epochs: the narrow net is not timed
    timed.clear()
    plan = budget.plan_time_budget(parse_config(["--dataset", "x", "--time_budget", "15m"]), None,
                                   Accelerator(cpu=True), (3, 32, 32), 45_000)
    assert [None, [32, 128, 128]] != timed[:2] and plan.tier != "narrow"
    assert "narrow (--widths 32 128 128): 16 epochs of the default fit, at least 11 (not timed)" in plan.passed_over


@pytest.mark.parametrize("minutes, timed_sides", [
    (15, [("default", 24), ("narrow", 24), ("narrow", 32)]),    # 11 small default epochs of 90 s do not fit
    (45, [("default", 24), ("default", 32), ("batch-500", 24), ("batch-500", 32)])])   # as fast: batch-500 taken
def test_the_default_s_full_size_is_not_timed_where_its_reduced_size_alone_rules_it_out(monkeypatch, minutes,
                                                                                        timed_sides):
    # The real _measure_tier on stand-in steps: the default net at 500 images/s at 24x24 (a 90-s small epoch of 45,000
    # images) and 270 at 32x32, the narrow net twice that, as on the float32 host without AVX-512
    from accelerate import Accelerator

    timed = []

    def rate(model, args, accelerator, shape, min_seconds):
        name = ("narrow" if model == [32, 128, 128] else
                "batch-500" if args.per_device_train_batch_size == 500 else "default")
        timed.append((name, shape[1]))
        return (500.0 if shape[1] == 24 else 270.0) * (2 if name == "narrow" else 1)

    monkeypatch.setattr(budget, "measure_training_rate", rate)
    config = parse_config(["--dataset", "x", "--time_budget", f"{minutes}m"])
    config.train.resolve_defaults("cnn-fast")       # as the run does: 5 of 11 epochs at 24x24
    plan = budget.plan_time_budget(config, lambda c: c.model.widths, Accelerator(cpu=True), (3, 32, 32), 45_000)
    assert timed == timed_sides
    assert plan.tier == ("narrow" if minutes == 15 else "batch-500") and sorted(plan.images_per_second) == [24, 32]


@pytest.mark.parametrize("batch_500_seconds, tier", [(60.0, "batch-500"), (75.0, "default")])
def test_batch_500_is_taken_where_as_many_of_its_epochs_fit_as_of_the_default_s(monkeypatch, batch_500_seconds, tier):
    # The budgeted runs below time real steps; here each tier's epoch seconds are given, to check the choice alone.
    # 15 minutes: 16 default epochs of 70 s (7 of them small, 35 s) fit; batch 500 at 60 s fits more, at 75 s fewer.
    # The wide tier's 10 epochs cannot fit (4x the default's cost): it is passed over without being timed.
    from accelerate import Accelerator

    timed = []

    def measured(config, build, accelerator, shape, num_train_images, share, hopeless=None):
        seconds = batch_500_seconds if config.train.per_device_train_batch_size == 500 else 70.0
        timed.append(config.train.per_device_train_batch_size)
        return {32: 1000.0, 24: 2000.0}, seconds, seconds / 2, 24

    monkeypatch.setattr(budget, "_measure_tier", measured)
    config = parse_config(["--dataset", "x", "--time_budget", "15m"])
    plan = budget.plan_time_budget(config, None, Accelerator(cpu=True), (3, 32, 32), 45_000)
    assert plan.tier == tier and len(timed) == 2
    assert config.train.per_device_train_batch_size == (500 if tier == "batch-500" else 1000)
    assert any(p.startswith("wide") and "not timed" in p for p in plan.passed_over)
    if tier == "default":
        assert any(re.match(r"batch-500 .*: 1[0-5] of its epochs fit, fewer than the default's 16", p)
                   for p in plan.passed_over), plan.passed_over
    assert plan.epochs >= 16


def budget_args(dataset, out, *extra):
    """tiny_args without its fixed epochs, with a 10-second budget."""
    args = tiny_args(dataset, out, *extra)
    at = args.index("--num_train_epochs")
    return [*args[:at], *args[at + 2:], "--time_budget", "10s"]


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, tiny_image_folder):
    out = tmp_path_factory.mktemp("budget") / "model"
    run(parse_config(budget_args(tiny_image_folder, out)))
    return out


def test_a_budgeted_run_records_its_plan_beside_the_model(budgeted):
    training = json.loads((budgeted / "training_config.json").read_text())
    metrics = json.loads((budgeted / "metrics.json").read_text())
    history = json.loads((budgeted / "history.json").read_text())
    assert training["time_budget"] == "10s"
    assert len(history) == math.ceil(training["num_train_epochs"]) == metrics["epochs_trained"] >= 1
    assert sum(h["train_image_size"] < 16 for h in history) == training["progressive_resize_epochs"]
    assert metrics["time_budget_seconds"] == 10
    assert 0 < metrics["planned_train_seconds"] <= 9.9        # the budget less its 1 % margin
    assert re.search(r"\b\d+(\.\d+)? epochs fit", metrics["time_budget_plan"])
    assert "| Time budget (planned the epochs) | `10s` |" in (budgeted / "README.md").read_text()


def test_a_resumed_budget_run_keeps_its_plan_and_ends_with_the_same_weights(budgeted, tiny_image_folder, tmp_path):
    resumed = tmp_path / "resumed"
    first = sorted((budgeted / "checkpoints").glob("step_*"))[0]
    shutil.copytree(first, resumed / "checkpoints" / first.name)
    shutil.copy(budgeted / "training_config.json", resumed / "training_config.json")   # written at the start
    run(parse_config(budget_args(tiny_image_folder, resumed, "--resume_from_checkpoint", "latest")))
    expected, got = load_file(budgeted / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all((expected[k] == got[k]).all() for k in expected)
    assert json.loads((resumed / "training_config.json").read_text())["num_train_epochs"] == \
        json.loads((budgeted / "training_config.json").read_text())["num_train_epochs"]


def test_resuming_a_budget_run_without_its_config_says_what_is_missing(tiny_image_folder, tmp_path):
    config = parse_config(budget_args(tiny_image_folder, tmp_path / "gone"))
    with pytest.raises(ConfigError, match="--time_budget.*training_config.json"):
        budget.resume_plan(config)


def test_a_float32_default_that_would_train_past_the_limit_says_so_and_what_a_budget_would_do(
        tiny_image_folder, tmp_path, monkeypatch, capsys):
    # The limit is 15 minutes; this tiny run's 11 default epochs take well under a second, so the limit is lowered.
    monkeypatch.setattr(budget, "SLOW_DEFAULT_SECONDS", 1e-4)
    args = budget_args(tiny_image_folder, tmp_path / "slow", "--mixed_precision", "no")
    run(parse_config(args[:args.index("--time_budget")]))
    out = capsys.readouterr().out
    assert "This host trains in float32 (no native bf16): the default 11 epochs would take about" in out
    assert re.search(r"`--time_budget \S+m` would train \d+ epochs \(\d+ at 12x12\) and end within it", out)


def test_where_few_default_epochs_fit_the_slow_default_s_line_names_the_narrow_net(monkeypatch):
    # cnn-fast at its own widths, 150 s a full-size epoch and 90 s a small one (a float32 host without AVX-512):
    # 11 epochs (5 small) take 22.5 minutes; 15 minutes fit 7 of them (3 small), fewer than 11
    from accelerate import Accelerator

    monkeypatch.setattr(budget, "_measure_tier", lambda *a: ({32: 300.0, 24: 500.0}, 150.0, 90.0, 24))
    config = parse_config(["--dataset", "x", "--mixed_precision", "no"])
    line = budget.check_default_speed(config, None, Accelerator(cpu=True, mixed_precision="no"), (3, 32, 32), 45_000)
    assert "the default 11 epochs would take about 22 min 30 s of training, past 15 min 0 s" in line
    assert line.endswith("`--time_budget 15m` would fit 7 epochs of it (3 at 24x24), fewer than 11, so it would train "
                         "the narrow net (--widths 32 128 128) for as many epochs of it as fit instead, ending within it.")


def test_a_default_run_in_bf16_times_nothing(tiny_image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "SLOW_DEFAULT_SECONDS", 1e-4)
    args = budget_args(tiny_image_folder, tmp_path / "bf16", "--mixed_precision", "bf16")
    run(parse_config(args[:args.index("--time_budget")]))
    assert "would take about" not in capsys.readouterr().out


def test_two_processes_share_one_plan(tiny_image_folder, tmp_path):
    # Each process times its own copy; the main process's rate is broadcast, so both train the same epochs (had
    # they planned apart, DDP would hang or fail at the first epoch one of them does not train).
    from test_distributed import recipe, train

    out = tmp_path / "two"
    done = train(recipe(tiny_image_folder, out, "--time_budget", "10s"), processes=2)
    training = json.loads((out / "training_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert len(json.loads((out / "history.json").read_text())) == math.ceil(training["num_train_epochs"]) >= 1
    assert (done.stdout + done.stderr).count("Time budget 10 s:") == 1       # printed by the main process only


def test_a_re_plan_ahead_of_the_small_epochs_plans_the_whole_run_again():
    # 1 small epoch done, 300 s left; counted as small (20 s), plan_epochs has 320 s: 10 epochs with 4 small
    # (4 x 20 + 6 x 40 = 320 s); 11 with 5 small would be 340 s
    assert replan_epochs(300, done=1, planned=9, resized=4, epoch_seconds=40, small_epoch_seconds=20,
                         resize_share=(5, 11), max_epochs=99) == (10, 4)


def test_a_re_plan_that_keeps_the_epochs_keeps_their_split_where_it_fits():
    # As above with 10 epochs planned, 5 of them small: 4 x 20 + 5 x 40 = 280 s fit in 300, so the split stays
    # (plan_epochs alone would now take 4 small); where it no longer fits (270 s left), the new split
    assert replan_epochs(300, 1, planned=10, resized=5, epoch_seconds=40, small_epoch_seconds=20,
                         resize_share=(5, 11), max_epochs=99) == (10, 5)
    assert replan_epochs(270, 1, planned=10, resized=5, epoch_seconds=40, small_epoch_seconds=20,
                         resize_share=(5, 11), max_epochs=99) == (9, 4)


def test_a_re_plan_after_the_small_epochs_sets_how_many_full_ones_fit():
    assert replan_epochs(130, done=6, planned=8, resized=4, epoch_seconds=40, small_epoch_seconds=20,
                         resize_share=(5, 11), max_epochs=99) == (9, 4)           # 3 more of 40 s fit in 130
    assert replan_epochs(1000, 6, 8, 4, 40, 20, (5, 11), max_epochs=12) == (12, 4)     # no more than the most
    assert replan_epochs(-5, 6, 8, 4, 40, 20, (5, 11), max_epochs=12) == (6, 4)        # over already: it ends now


def test_the_last_epoch_fills_what_a_whole_one_would_overrun():
    assert fill_epochs(5, spare_seconds=50, epoch_seconds=58.9, max_epochs=44) == 5.84     # hundredths, rounded down
    assert fill_epochs(5, 100, 58.9, 44) == 5.99            # never a whole epoch: plan_epochs would have taken it
    assert fill_epochs(44, 50, 1, max_epochs=44) == 44      # none past the most a plan trains
    assert fill_epochs(5, -3, 58.9, 44) == 5 and fill_epochs(0, 5, 10, 44) == 0


def test_a_re_plan_keeps_the_small_epochs_already_trained():
    # 3 of 4 small epochs done and 50 s left: one small and one full (60 s) do not fit, so the run ends now; the
    # epochs done stay counted as small
    assert replan_epochs(50, done=3, planned=5, resized=4, epoch_seconds=40, small_epoch_seconds=20,
                         resize_share=(5, 11), max_epochs=99) == (3, 3)


def test_a_run_whose_start_timing_read_slow_trains_the_epochs_its_own_seconds_fit(tiny_image_folder, tmp_path,
                                                                                  monkeypatch, capsys):
    # The start-of-run timing is replaced by one 20-50x too slow (4 s an epoch): the 10 s budget less its 1 % margin
    # then fits 2 epochs and 0.47 of a third. After epoch 1 the loop's own seconds (well under a second) fit the most
    # a plan trains, 11 (1x the recipe's): the run trains them, its linear schedule stretched to 11 epochs' steps
    # from where it was, and a resume from the checkpoint after epoch 1 (taken after the re-plan) ends with the same
    # weights.
    monkeypatch.setattr(budget, "_measure_tier", lambda config, *a: ({16: 1.0}, 4.0, 4.0, 16))
    monkeypatch.setattr(budget, "BUDGET_MAX_EPOCHS", 1)
    out = tmp_path / "replanned"
    run(parse_config(budget_args(tiny_image_folder, out, "--progressive_resize_epochs", "0")))
    printed = capsys.readouterr().out
    planned = float(re.search(r"(2\.4\d) epochs fit: all at 16x16", printed)[1])    # 9.9 s less the timing's
    assert re.search(rf"Re-planned after epoch 1: its epochs took \d+\.\d s at 16x16 .*; 11 epochs fit, not "
                     rf"{planned:g}, ending at about \d+ s", printed), printed
    training = json.loads((out / "training_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    steps = len(history[0]["learning_rates"])           # optimizer steps per epoch
    assert len(history) == training["num_train_epochs"] == 11 and metrics["global_steps"] == 11 * steps
    assert f"{planned:g} epochs fit" in metrics["time_budget_plan"] and len(metrics["time_budget_replans"]) == 1
    assert metrics["planned_train_seconds"] == pytest.approx(4 * planned, abs=0.05) and 0 < metrics["replanned_train_seconds"] < 10
    peak, first = history[0]["learning_rates"][0], math.ceil(planned * steps)    # the first plan's optimizer steps
    lrs = [lr for h in history for lr in h["learning_rates"]]
    assert lrs[:steps] == pytest.approx([peak * (first - k) / first for k in range(steps)])   # 2.4x epochs'
    assert lrs[steps:] == pytest.approx([peak * (11 * steps - k) / (11 * steps) for k in range(steps, 11 * steps)])
    resumed = tmp_path / "resumed"
    first = sorted((out / "checkpoints").glob("step_*"))[0]
    shutil.copytree(first, resumed / "checkpoints" / first.name)
    shutil.copy(out / "training_config.json", resumed / "training_config.json")
    run(parse_config(budget_args(tiny_image_folder, resumed, "--progressive_resize_epochs", "0",
                                 "--resume_from_checkpoint", "latest")))
    expected, got = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all((expected[k] == got[k]).all() for k in expected)


def after_four_epochs(planned: float, full_seconds: float):
    """A 5-minute plan (10 s of it timing, 60 s full-size epochs) of `planned` epochs, 3 of them at 24x24, after
    3 small epochs of 30 s and one full one of `full_seconds`; the loop (10 optimizer steps an epoch) with its
    real linear schedule."""
    import torch
    from image_classifier import engine

    config = parse_config(["--dataset", "x", "--time_budget", "5m"])
    config.apply_plan({"num_train_epochs": planned, "progressive_resize_epochs": 3})
    plan = budget.Plan(budget_seconds=300, tier="default", epochs=planned, resized_epochs=3, side=32, small_side=24,
                       epoch_seconds=60, small_epoch_seconds=30, images_per_second={}, measure_seconds=10,
                       max_epochs=44, flags=dict(config.to_dict(), num_train_epochs=planned,
                                                 progressive_resize_epochs=3), resize_share=(5, 11), stretch_to=11)
    spans = [30, 30, 30, full_seconds]
    history = [{"seconds": sum(spans[:i + 1]), "train_image_size": 24 if i < 3 else 32} for i in range(4)]
    state = engine.TrainerState(epoch=4, global_step=40, train_seconds=sum(spans), history=history)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    steps = math.ceil(planned * 10)
    scheduler = engine.build_scheduler(optimizer, config.train, steps)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    loop = engine.Loop(model=None, optimizer=optimizer, scheduler=scheduler, train_loader=[None] * 10,
                       eval_loader=None, unwrapped=None, state=state, num_epochs=math.ceil(planned), max_steps=steps,
                       side=32, tta="none", epoch_tta="none")
    return plan, config, loop


def test_a_re_plan_within_the_budget_changes_only_what_buys_real_training():
    # 150 s trained + 2.25 x 60 s planned + 10 s timing = 295 s: within the 300. Filling the 137 s left of the budget
    # less its 1 % margin would train 6.28 epochs, 1.8 s more: under the 3-s margin, so the plan stands.
    plan, config, loop = after_four_epochs(6.25, full_seconds=60)
    assert budget.replan(plan, config, loop) is None
    assert config.train.num_train_epochs == 6.25 and plan.replanned_seconds == pytest.approx(285)
    # Planned 5.5 (240 s): 6.28 trains 46.8 s more, so the run takes them, its schedule stretched in place.
    plan, config, loop = after_four_epochs(5.5, full_seconds=60)
    line = budget.replan(plan, config, loop)
    assert "6.28 epochs fit (3 at 24x24), not 5.5, ending at about 4 min 47 s" in line
    assert config.train.num_train_epochs == 6.28 and loop.max_steps == 63 and loop.num_epochs == 7
    assert loop.scheduler.get_last_lr()[0] == pytest.approx(1 - 40 / 63)


def test_a_re_plan_cuts_a_plan_that_would_end_past_the_budget():
    # The full-size epoch took 66 s: 6.25 epochs would end at 156 + 2.25 x 66 + 10 = 314.5 s, past the 300. The
    # 131 s left less the margin fit one more whole epoch and 0.98 of the next.
    plan, config, loop = after_four_epochs(6.25, full_seconds=66)
    line = budget.replan(plan, config, loop)
    assert "its epochs took 30.0 s at 24x24 and 66.0 s at 32x32" in line and "5.98 epochs fit (3 at 24x24), not 6.25" in line
    assert config.train.num_train_epochs == 5.98 and loop.max_steps == 60
    assert plan.replanned_seconds == pytest.approx(156 + 1.98 * 66) and plan.replanned_seconds + 10 <= 297


def test_the_run_s_first_epoch_counts_only_alone_and_only_where_it_ran_faster_than_timed():
    timed = {24: 90.0, 32: 150.0}

    def history(*spans):            # (side, seconds) per epoch -> history.json records, seconds cumulative
        ends = [sum(s for _, s in spans[:i + 1]) for i in range(len(spans))]
        return [{"train_image_size": side, "seconds": end} for (side, _), end in zip(spans, ends)]

    # the warm-up epoch (141 s) alone is slower than timed: the timing stands; once a second ran, it alone counts
    assert budget._recent_epoch_seconds(history((24, 141.0)), timed) == {24: 90.0}
    assert budget._recent_epoch_seconds(history((24, 141.0), (24, 83.0)), timed) == {24: 83.0}
    # alone and faster than timed (the timing read slow): it counts
    assert budget._recent_epoch_seconds(history((24, 60.0)), timed) == {24: 60.0}
    # the mean of the last 3 at each side; the first epoch is left out at its own side only
    spans = history((24, 141.0), (24, 80.0), (24, 84.0), (24, 82.0), (24, 90.0), (32, 160.0))
    assert budget._recent_epoch_seconds(spans, timed) == {24: pytest.approx(256 / 3), 32: 160.0}
