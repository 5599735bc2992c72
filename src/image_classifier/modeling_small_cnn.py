"""The small CNN as a `transformers` image classifier (`AutoModelForImageClassification`).

This file travels beside the weights (`auto_map` in config.json) and is imported by stock
`transformers` with `trust_remote_code=True`: besides torch and transformers it imports only the
configuration file next to it.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_small_cnn import SmallCNNConfig

# ITU-R 601 luminance weights for R, G, B (what PIL's convert("L") uses); they sum to 1.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU}[name]()


class SmallCNNBlock(nn.Sequential):
    """conv -> 2x2 pool -> [BN] -> act, (conv -> [BN] -> act) x (n - 1), [dropout]: (B, C_in, H, W) -> (B, C_out, H/2, W/2).

    Pooling right after the first convolution does the later convolutions and the norm at a
    quarter of the pixels; with ReLU and max pooling it equals conv -> ReLU -> pool exactly.
    """

    def __init__(self, config: SmallCNNConfig, in_channels: int, out_channels: int):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        pool = nn.MaxPool2d if config.pooling == "max" else nn.AvgPool2d
        bn = config.batch_norm
        for i in range(1, config.convs_per_block + 1):
            layers[f"conv{i}"] = nn.Conv2d(in_channels if i == 1 else out_channels, out_channels,
                                           config.kernel_size, padding=config.kernel_size // 2, bias=not bn)
            if i == 1:
                layers["pool"] = pool(kernel_size=2, stride=2)
            if bn:
                layers[f"norm{i}"] = nn.BatchNorm2d(out_channels, momentum=config.batch_norm_momentum)
            layers[f"act{i}"] = _activation(config.activation)
        if config.block_dropout > 0:
            layers["dropout"] = nn.Dropout(config.block_dropout)
        super().__init__(layers)


class SmallCNNPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the `transformers` plumbing shared by the small-CNN models."""

    config_class = SmallCNNConfig
    base_model_prefix = "small_cnn"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules = ["SmallCNNBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # He init for layers followed by an activation; a small normal for the output layer (logits ~ 0 at start).
        if isinstance(module, nn.Conv2d) and self.config.identity_init:
            # PyTorch's default (std 1/sqrt(3 fan_in)), then filter i of the first C_in passes input channel i.
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            nn.init.dirac_(module.weight[:module.in_channels])
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d) or (isinstance(module, nn.Linear) and module is not self._output_layer()):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if module.running_mean is not None:
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)

    def _output_layer(self) -> nn.Module | None:
        return getattr(self, "classifier", None)


class SmallCNNForImageClassification(SmallCNNPreTrainedModel):
    """Blocks -> global pool / flatten -> [dense + act] -> [dropout] -> linear: (B, C, H, W) -> (B, num_labels) logits."""

    def __init__(self, config: SmallCNNConfig):
        super().__init__(config)
        if config.stem == "whiten":
            # (B, C, H, W) -> (B, 8C, H - 1, W - 1); weights set by `init_whitening`, then fixed.
            self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(config.num_channels, config.stem_width, 2),
                                                  act=_activation(config.activation)))
        else:
            self.stem = None
        blocks, in_channels = [], config.stem_width
        for width in config.widths:
            blocks.append(SmallCNNBlock(config, in_channels, width))
            in_channels = width
        self.blocks = nn.ModuleList(blocks)

        if config.global_pool == "flatten":
            self.pooler = nn.Flatten(1)  # (B, C, s, s) -> (B, C*s*s)
            features = in_channels * config.feature_map_size ** 2
        else:
            pool = nn.AdaptiveMaxPool2d(1) if config.global_pool == "max" else nn.AdaptiveAvgPool2d(1)
            self.pooler = nn.Sequential(OrderedDict(pool=pool, flatten=nn.Flatten(1)))  # (B, C, h, w) -> (B, C)
            features = in_channels
        if config.hidden_size > 0:
            self.hidden = nn.Sequential(OrderedDict(dense=nn.Linear(features, config.hidden_size),
                                                    act=_activation(config.activation)))
            features = config.hidden_size
        else:
            self.hidden = None
        self.dropout = nn.Dropout(config.classifier_dropout) if config.classifier_dropout > 0 else None
        self.classifier = nn.Linear(features, config.num_labels)
        self.post_init()
        self.freeze_fixed_weights()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading makes fresh parameters, all trainable: fix again the ones this network never trains.
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_fixed_weights()
        return model

    def freeze_fixed_weights(self) -> None:
        """requires_grad off for the weights that never train: the whitening stem's filters (set from the data)
        and, without `norm_scale`, BatchNorm's scale (held at 1)."""
        if self.stem is not None:
            self.stem.conv.weight.requires_grad_(False)
        if not self.config.norm_scale:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.requires_grad_(False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening stem from normalized training images (N, C, H, W), a few thousand suffice.

        The filters are the eigenvectors of the 2x2 patches' covariance scaled by 1/sqrt(eigenvalue + eps),
        and their negatives, so the stem's output channels are decorrelated with unit variance.
        """
        weight = self.stem.conv.weight                                 # (8C, C, 2, 2)
        c = weight.shape[1]
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)      # (N, C, H-1, W-1, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, c * 4)           # (N * (H-1) * (W-1), C*2*2)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)      # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).reshape(c * 4, c, 2, 2)
        weight.copy_(torch.cat([filters, -filters]).to(weight))

    def _to_model_channels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Reduce (B, 3, H, W) RGB to (B, 1, H, W) luminance for a grayscale model; check the channel count."""
        channels, expected = pixel_values.shape[1], self.config.num_channels
        if channels == expected:
            return pixel_values
        if channels == 3 and expected == 1:
            r, g, b = pixel_values[:, 0:1], pixel_values[:, 1:2], pixel_values[:, 2:3]
            return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b
        raise ValueError(f"pixel_values has {channels} channels; this model takes {expected}"
                         + (" (or 3, reduced to luminance)" if expected == 1 else ""))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        """pixel_values (B, C, H, W) normalized floats; labels (B,) class ids or (B, num_labels) probabilities.

        Returns logits (B, num_labels), the cross-entropy loss when labels are given, and with
        `output_hidden_states` the input and every block's output, (B, C_i, H_i, W_i) each.
        """
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)

        x = self._to_model_channels(pixel_values)
        hidden_states = (x,) if output_hidden_states else None
        if self.stem is not None:
            x = self.stem(x)  # (B, 8C, H - 1, W - 1)
        for block in self.blocks:
            x = block(x)  # (B, C_i, H / 2**i, W / 2**i)
            if output_hidden_states:
                hidden_states = hidden_states + (x,)
        if self.config.global_pool == "flatten" and x.shape[-1] != self.config.feature_map_size:
            raise ValueError(f"global_pool='flatten' needs {self.config.image_size}x{self.config.image_size} inputs, "
                             f"got {tuple(pixel_values.shape[-2:])}")
        x = self.pooler(x)  # (B, features)
        if self.hidden is not None:
            x = self.hidden(x)  # (B, hidden_size)
        if self.dropout is not None:
            x = self.dropout(x)
        logits = self.classifier(x)  # (B, num_labels)
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))

        if not return_dict:
            output = tuple(v for v in (logits, hidden_states) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)


# `save_pretrained` then copies this file (and the configuration file it imports) beside the
# weights and writes `auto_map["AutoModelForImageClassification"]` into config.json.
SmallCNNForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["SmallCNNPreTrainedModel", "SmallCNNForImageClassification", "SmallCNNBlock"]
