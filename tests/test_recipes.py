"""recipes.py: each recipe's values reach the resolved config, the user's flags win, the run prints the recipe and
saves it, and --help names the values instead of "(default: None)"."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from image_classifier.config import ConfigError, parse_config
from image_classifier.recipes import OPTIMIZERS, RECIPES, recipe_for

REPO = Path(__file__).resolve().parents[1]


def test_the_airbench_recipe_fills_cnn_fast_on_a_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    train = parse_config(["--dataset", "x", "--model", "cnn-fast"]).train
    recipe, muon = RECIPES["airbench"], OPTIMIZERS["muon"]
    assert train.recipe == "airbench" == recipe_for("cnn-fast")
    assert (train.optimizer, train.per_device_train_batch_size, train.num_train_epochs) == \
        (recipe["optimizer"], recipe["batch_cpu"], recipe["num_train_epochs"])
    assert train.progressive_resize_epochs == 5                  # 5 of every 11 epochs on a CPU
    assert train.learning_rate == round(muon["learning_rate_at_2000"] * math.sqrt(1000 / 2000), 4) == 0.1697
    assert train.sgd_learning_rate == muon["sgd_learning_rate_per_image"] * 1000
    assert (train.weight_decay, train.momentum, train.bias_learning_rate_scale) == (3e-6, 0.85, 0.079)


def test_other_models_get_sgd_onecycle_and_the_optimizer_defaults_follow_the_optimizer():
    train = parse_config(["--dataset", "x", "--model", "cnn-basic"]).train
    assert (train.recipe, train.optimizer, train.lr_scheduler_type, train.per_device_train_batch_size) == \
        ("sgd_onecycle", "sgd", "onecycle", 256)
    assert (train.learning_rate, train.weight_decay, train.progressive_resize_epochs) == (0.1, 5e-4, 0)  # no BN
    timm = parse_config(["--dataset", "x", "--model", "timm/resnet18"]).train
    assert (timm.recipe, timm.optimizer, timm.learning_rate) == ("sgd_onecycle", "sgd", 0.2)
    adam = parse_config(["--dataset", "x", "--model", "cnn-basic", "--optimizer", "adam"]).train
    assert adam.learning_rate == 1e-3
    adamw = parse_config(["--dataset", "x", "--model", "cnn-fast", "--optimizer", "adamw"]).train
    assert (adamw.recipe, adamw.learning_rate, adamw.sgd_learning_rate) == ("airbench", 1e-3, None)


def test_a_flag_wins_over_its_recipe_and_recipe_picks_another():
    train = parse_config(["--dataset", "x", "--model", "cnn-fast", "--num_train_epochs", "22",
                          "--per_device_train_batch_size", "500", "--recipe", "airbench"]).train
    assert (train.num_train_epochs, train.per_device_train_batch_size) == (22, 500)
    assert train.sgd_learning_rate == 0.67 * 500 and train.progressive_resize_epochs in (0, 10)   # 0 on a GPU
    other = parse_config(["--dataset", "x", "--model", "cnn-fast", "--recipe", "sgd_onecycle"]).train
    assert (other.optimizer, other.per_device_train_batch_size, other.num_train_epochs) == ("sgd", 256, 10.0)
    with pytest.raises(ConfigError, match="--sgd_learning_rate: applies to --optimizer muon only"):
        parse_config(["--dataset", "x", "--model", "cnn-basic", "--sgd_learning_rate", "1"])


def test_the_resolved_recipe_is_saved_and_reparses(tmp_path):
    from image_classifier.config import save_config

    config = parse_config(["--dataset", "x", "--model", "cnn-basic"])
    save_config(config, tmp_path / "training_config.json")
    again = parse_config([str(tmp_path / "training_config.json")])
    assert again.train.recipe == "sgd_onecycle" and again.to_dict() == config.to_dict()


def test_help_names_the_recipe_values_and_never_says_default_none():
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "default: None" not in text
    assert "Default: 11 for cnn-fast/cnn-wide" in text and "1000 on CPU" in text and "--recipe" in text
