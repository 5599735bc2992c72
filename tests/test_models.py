"""The small CNN: presets, overrides, channel handling, summary, and the `save_pretrained` folder loading
through stock `transformers` in a process that never imports this project."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from image_classifier.config import ModelArguments
from image_classifier.configuration_small_cnn import SmallCNNConfig
from image_classifier.models import PRESETS, count_parameters, create_model, summarize_model
from image_classifier.modeling_small_cnn import SmallCNNForImageClassification

CLASSES = ["airplane", "car", "bird", "cat", "deer"]
SMALL = {"widths": [8, 16], "stem": "none"}  # narrow nets keep the tests fast; pixels straight in


def make(name="cnn-fast", channels=3, size=32, classes=CLASSES, **overrides):
    torch.manual_seed(0)
    return create_model(name, class_names=classes, num_channels=channels, image_size=size, overrides=overrides)


@pytest.mark.parametrize("name, channels, size", [
    ("cnn-basic", 1, 28), ("cnn-basic", 3, 32), ("cnn-basic", 3, 64),
    ("cnn-fast", 1, 28), ("cnn-fast", 3, 32), ("cnn-fast", 3, 64), ("cnn-wide", 3, 32),
])
def test_logits_shape_for_presets_and_sizes(name, channels, size):
    model = make(name, channels, size)
    assert model.config.id2label == dict(enumerate(CLASSES)) and model.config.label2id["cat"] == 3
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, channels, size, size)).logits
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


def test_presets_have_the_documented_structure():
    basic = make("cnn-basic", 1, 28)
    convs = [m for m in basic.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in basic.modules())
    assert basic.hidden.dense.out_features == 128 and basic.dropout.p == 0.5
    fast = make("cnn-fast")
    assert [c.out_channels for c in fast.modules() if isinstance(c, nn.Conv2d)] == [24, 48, 48, 192, 192, 192, 192]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 6
    assert fast.hidden is None and fast.classifier.in_features == 192
    config = fast.config                                  # airbench94's choices
    assert (config.stem, config.identity_init, config.norm_scale, config.batch_norm_momentum) == ("whiten", True, False, 0.4)
    assert config.logit_scale == 1 / 192 and fast.classifier.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert make("cnn-wide").config.widths == [64, 256, 256]
    assert set(PRESETS) >= {"cnn-basic", "cnn-fast", "cnn-wide"}


def test_a_width_override_rescales_the_logits_unless_logit_scale_is_given():
    assert make("cnn-wide", widths=[16, 48, 48]).config.logit_scale == 1 / 48    # the presets' rule: 1/(last width)
    assert make("cnn-fast", widths=[16, 48, 48], logit_scale=0.5).config.logit_scale == 0.5
    assert make("cnn-fast", kernel_size=5).config.logit_scale == 1 / 192         # widths unchanged: the preset's
    assert make("cnn-basic", widths=[8, 16]).config.logit_scale == 1.0           # no logit scale in the preset


def test_overrides_from_model_arguments_are_applied():
    args = ModelArguments(model="cnn-fast", widths=[8, 16], stem="none", convs_per_block=3, kernel_size=5, pooling="avg",
                          batch_norm=False, activation="relu", block_dropout=0.1, classifier_dropout=0.2)
    model = make("cnn-fast", **args.overrides())
    config = model.config
    assert (config.widths, config.convs_per_block, config.kernel_size, config.pooling, config.batch_norm,
            config.activation, config.block_dropout, config.classifier_dropout) == ([8, 16], 3, 5, "avg", False,
                                                                                    "relu", 0.1, 0.2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(c.kernel_size == (5, 5) and c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 2
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GELU, nn.MaxPool2d)) for m in model.modules())
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.1, 0.2]
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, len(CLASSES))


def test_unknown_preset_or_option_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cnn-basic, cnn-fast, cnn-wide"):
        make("resnet-9000")
    with pytest.raises(ValueError, match="unknown model option"):
        make("cnn-fast", width=[8])
    with pytest.raises(ValueError, match="pooling"):
        make("cnn-fast", pooling="median")
    with pytest.raises(ValueError, match="too small"):
        make("cnn-fast", size=4)


def test_gray_model_takes_rgb_as_luminance():
    model = make("cnn-basic", 1, 28).eval()
    gray = torch.rand(3, 1, 28, 28)
    rgb = torch.rand(3, 3, 28, 28)
    luminance = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]
    with torch.no_grad():
        torch.testing.assert_close(model(gray.expand(-1, 3, -1, -1)).logits, model(gray).logits)
        torch.testing.assert_close(model(rgb).logits, model(luminance).logits)
        with pytest.raises(ValueError, match="channels"):
            make("cnn-basic", 3, 28)(gray)
        with pytest.raises(ValueError, match="28x28 inputs"):
            model(torch.rand(1, 1, 32, 32))


def test_forward_loss_hidden_states_and_tuple_output():
    model = make("cnn-fast", **SMALL).eval()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 4])
    out = model(x, labels=labels, output_hidden_states=True)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(3, 32, 32), (8, 16, 16), (16, 8, 8)]
    loss, logits = model(x, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    # Fresh weights: near-uniform predictions.
    assert abs(make("cnn-fast").train()(x, labels=labels).loss.item() - math.log(len(CLASSES))) < 0.2


def test_block_pools_before_activation_like_the_textbook_order():
    model = make("cnn-basic", 1, 28).eval()
    x = torch.randn(2, 1, 28, 28)
    block = model.blocks[0]
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.max_pool2d(F.relu(block.conv1(x)), 2))


def test_channels_last_gives_the_same_logits():
    model = make("cnn-fast", **SMALL).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_gives_the_same_logits():
    model = make("cnn-fast", size=16, widths=[4, 8]).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x).logits, model(x).logits, rtol=1e-4, atol=1e-5)


def test_summary_lists_layers_totals_and_flops_without_touching_the_model():
    model = make("cnn-basic", 1, 28).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = summarize_model(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for name, module in model.named_modules():
        if name and not any(module.children()):
            assert name in summary
    assert "32x14x14" in summary and "3136" in summary  # pool output, flatten output
    total = count_parameters(model)
    assert total == 320 + 18_496 + 401_536 + 645  # conv 1->32, conv 32->64, dense 3136->128, output 128->5
    assert f"Total parameters:     {total:,}" in summary and f"Trainable parameters: {total:,}" in summary
    macs = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 5  # one image, 'same' padding
    assert f"Forward FLOPs per image: {2 * macs:,}" in summary
    assert "1 multiply-add = 2 FLOPs" in summary


def test_count_parameters_trainable_only():
    model = make("cnn-fast", norm_scale=True, **SMALL)          # every parameter trainable until frozen here
    model.blocks[0].requires_grad_(False)
    frozen = sum(p.numel() for p in model.blocks[0].parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen > 0


def test_config_round_trips_through_json(tmp_path):
    config = make("cnn-fast", 1, 28, global_pool="avg", hidden_size=32).config
    config.save_pretrained(tmp_path)
    loaded = SmallCNNConfig.from_pretrained(tmp_path)
    for key in ("num_channels", "image_size", "widths", "convs_per_block", "kernel_size", "pooling", "batch_norm",
                "activation", "block_dropout", "classifier_dropout", "hidden_size", "global_pool", "id2label"):
        assert getattr(loaded, key) == getattr(config, key), key


LOAD_SCRIPT = textwrap.dedent("""
    import sys

    class Refuse:  # prove the project is never needed, even though it is installed in this venv
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "image_classifier":
                raise ImportError("image_classifier must not be imported")

    sys.meta_path.insert(0, Refuse())
    import torch
    from transformers import AutoModelForImageClassification

    folder = sys.argv[1]
    try:
        AutoModelForImageClassification.from_pretrained(folder)
    except ValueError as error:
        assert "trust_remote_code" in str(error), error
    else:
        raise AssertionError("loaded custom code without trust_remote_code=True")
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    io = torch.load(folder + "/io.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"]).logits, io["logits"], rtol=0, atol=1e-6)
        torch.testing.assert_close(model(io["rgb"]).logits, io["rgb_logits"], rtol=0, atol=1e-6)
    assert model.config.id2label == io["id2label"], model.config.id2label
    assert "image_classifier" not in sys.modules
    print("LOADED", type(model).__name__)
""")


@pytest.fixture()
def saved_gray_model(tmp_path):
    """A 1-channel BatchNorm model with trained-looking running stats, saved with `save_pretrained`."""
    model = make("cnn-fast", 1, 28, widths=[8, 16], hidden_size=12, classifier_dropout=0.1)
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 28, 28) * 2 + 1)  # moves the BatchNorm running statistics
    model.eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    x, rgb = torch.randn(3, 1, 28, 28), torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        io = {"x": x, "logits": model(x).logits, "rgb": rgb, "rgb_logits": model(rgb).logits,
              "id2label": model.config.id2label}
    torch.save(io, folder / "io.pt")
    return folder


def test_save_pretrained_writes_a_self_contained_folder(saved_gray_model):
    import json

    names = {p.name for p in saved_gray_model.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_small_cnn.py", "modeling_small_cnn.py"} <= names
    config = json.loads((saved_gray_model / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_small_cnn.SmallCNNConfig",
        "AutoModelForImageClassification": "modeling_small_cnn.SmallCNNForImageClassification",
    }
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    assert config["label2id"]["cat"] == 3 and config["model_type"] == "small_cnn"
    for source in ("configuration_small_cnn.py", "modeling_small_cnn.py"):
        text = (saved_gray_model / source).read_text()
        assert "image_classifier" not in text and "from .. " not in text and "from ..." not in text


def test_from_pretrained_in_process_gives_the_same_weights(saved_gray_model):
    io = torch.load(saved_gray_model / "io.pt")
    model = SmallCNNForImageClassification.from_pretrained(saved_gray_model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["x"]).logits, io["logits"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_stock_transformers_loads_the_folder_in_a_fresh_process(saved_gray_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(saved_gray_model)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "LOADED SmallCNNForImageClassification" in done.stdout


def test_whitening_stem_decorrelates_patches_stays_fixed_and_round_trips(tmp_path):
    from image_classifier.models import init_from_data

    torch.manual_seed(1)
    # Correlated "images": smooth noise, so neighbouring pixels and channels co-vary strongly.
    images = F.avg_pool2d(torch.randn(64, 3, 20, 20), 3, stride=1) + 0.5 * torch.randn(64, 1, 18, 18)
    model = make("cnn-fast", size=18, **{**SMALL, "stem": "whiten"})
    assert model.config.stem_width == 24 and model.config.stem_size == 17
    assert not model.stem.conv.weight.requires_grad and model.stem.conv.bias.requires_grad
    init_from_data(model, images)
    out = F.conv2d(images, model.stem.conv.weight).permute(0, 2, 3, 1).reshape(-1, 24)[:, :12]
    covariance = out.T @ out / len(out)
    assert torch.allclose(covariance, torch.diag(covariance.diagonal()), atol=0.02)     # decorrelated
    assert covariance.diagonal().max() < 1.01                                            # unit variance at most
    torch.testing.assert_close(model.stem.conv.weight[12:], -model.stem.conv.weight[:12])
    with torch.no_grad():
        expected = model.eval()(images[:4]).logits
    model.save_pretrained(tmp_path)
    loaded = SmallCNNForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images[:4]).logits, expected)
    init_from_data(make("cnn-fast", size=18, **SMALL), images)                            # no stem: nothing to do


def test_airbench_options_identity_init_fixed_norm_scale_momentum_and_logit_scale(tmp_path):
    options = dict(identity_init=True, norm_scale=False, batch_norm_momentum=0.4, logit_scale=1 / 9, **SMALL)
    model = make("cnn-fast", **options)
    conv = model.blocks[1].conv2                                   # 16 -> 16 channels, 3x3
    identity = torch.zeros_like(conv.weight)
    identity[torch.arange(16), torch.arange(16), 1, 1] = 1
    torch.testing.assert_close(conv.weight, identity)              # every filter passes its own channel
    wider = model.blocks[1].conv1                                  # 8 -> 16: the first 8 filters are the identity
    assert torch.equal(wider.weight[:8, :, 1, 1], torch.eye(8)) and wider.weight[8:].abs().sum() > 0
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(n.momentum == 0.4 and not n.weight.requires_grad and n.bias.requires_grad for n in norms)

    torch.manual_seed(3)
    x = torch.randn(4, 3, 32, 32)
    plain = make("cnn-fast", **{**options, "logit_scale": 1.0}).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).logits, plain(x).logits / 9)
    model.save_pretrained(tmp_path)
    loaded = SmallCNNForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.logit_scale == 1 / 9 and loaded.config.identity_init and not loaded.config.norm_scale
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_bad_airbench_options_are_refused():
    with pytest.raises(ValueError, match="batch_norm_momentum"):
        SmallCNNConfig(batch_norm_momentum=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        SmallCNNConfig(logit_scale=-1.0)


def test_parameter_groups_scale_the_bias_learning_rate_with_the_same_decay_per_step():
    from image_classifier.optim import parameter_groups

    model = make("cnn-fast", **SMALL)
    plain = parameter_groups(model, lr=0.5, weight_decay=1e-3)
    assert [(g["lr"], g["weight_decay"]) for g in plain] == [(0.5, 1e-3), (0.5, 0.0)]
    weights, biases = parameter_groups(model, lr=0.5, weight_decay=1e-3, bias_lr_scale=64)
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
    assert (weights["lr"], weights["weight_decay"]) == (0.5, 1e-3)
    assert biases["lr"] == 32.0 and biases["lr"] * biases["weight_decay"] == pytest.approx(0.5 * 1e-3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(weights["params"]) + len(biases["params"]) == len(trainable)
    kernels = [p for p in trainable if p.ndim == 4]
    rest = parameter_groups(model, lr=0.5, exclude=kernels)
    assert {id(p) for g in rest for p in g["params"]} == {id(p) for p in trainable} - {id(p) for p in kernels}


def test_train_stem_bias_holds_the_whole_stem_fixed_and_stops_its_gradient():
    from image_classifier.models import train_stem_bias

    model = make("cnn-fast", **{**SMALL, "stem": "whiten"})
    x = torch.randn(4, 3, 32, 32)
    assert train_stem_bias(model, False) and not model.stem.conv.bias.requires_grad
    stem_output = model.stem(x)
    assert not stem_output.requires_grad                                 # so no gradient is computed into it
    model(x).logits.sum().backward()
    assert model.stem.conv.bias.grad is None and model.blocks[0].conv1.weight.grad is not None
    assert train_stem_bias(model, True) and model.stem.conv.bias.requires_grad
    assert not train_stem_bias(make("cnn-basic"), True)                  # no stem: nothing to do
