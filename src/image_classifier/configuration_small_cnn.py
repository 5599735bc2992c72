"""Configuration of the small CNN (`model_type = "small_cnn"`).

This file travels beside the weights (`auto_map` in config.json) and is imported by stock
`transformers` with `trust_remote_code=True`: it must import nothing from the rest of the package.
"""

from __future__ import annotations

from transformers import PretrainedConfig

POOLINGS = ("max", "avg")
ACTIVATIONS = ("relu", "gelu")
GLOBAL_POOLS = ("flatten", "max", "avg")
STEMS = ("none", "whiten")


class SmallCNNConfig(PretrainedConfig):
    """A stack of convolutional blocks, then a (global) pool and a small classifier head.

    Each block: conv -> 2x2 pool -> [BatchNorm] -> activation, then (conv -> [BatchNorm] ->
    activation) x (convs_per_block - 1), then dropout. Every block halves the feature map side.

    Args:
        num_channels: input channels, 1 (grayscale) or 3 (RGB). A 1-channel model also accepts
            3-channel input and reduces it to luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B).
        image_size: input side in pixels (square images). Only the "flatten" global pool depends
            on it; the "max" and "avg" global pools accept any size of at least 2**len(widths).
        widths: output channels of each block (one entry per block).
        convs_per_block: convolutions in each block (>= 1).
        kernel_size: convolution kernel side in pixels (odd; 'same' padding keeps the side).
        pooling: 2x2, stride-2 pooling in every block: "max" or "avg".
        batch_norm: BatchNorm after every convolution (the convolutions then have no bias).
        activation: "relu" or "gelu", used in the blocks and in the hidden layer.
        block_dropout: dropout probability at the end of each block (0 = no dropout layer).
        classifier_dropout: dropout probability before the output layer (0 = no dropout layer).
        hidden_size: units of a dense layer (with activation) before the output layer; 0 = none.
        global_pool: how the last feature map (widths[-1] x s x s) becomes a vector: "flatten"
            (widths[-1] * s * s features), or global "max" / "avg" pooling (widths[-1] features).
        initializer_range: standard deviation of the output layer's initial weights.
        stem: "none", or "whiten": a 2x2 convolution (no padding, so the side shrinks by one pixel)
            with 2 * num_channels * 4 filters, set from the training images before training to the
            whitening transform of their 2x2 patches (and its negative) and then kept fixed; only its
            bias trains. It decorrelates the input so the first block learns faster (airbench).
        batch_norm_momentum: weight of each new batch in BatchNorm's running statistics (PyTorch's
            convention; 0.1 is PyTorch's default, airbench uses 0.4 for its short runs).
        norm_scale: learn BatchNorm's per-channel scale; False fixes it at 1, so only the shift
            learns (airbench: the next convolution can rescale, and the shift then trains faster).
        identity_init: initialise each convolution as PyTorch does, then set its first C_in filters
            to the identity (Dirac), so every block starts as an implicit residual (airbench).
        logit_scale: factor on the logits (airbench: 1/9, which slows the output layer's learning
            relative to the convolutions and softens the initial predictions).
        kwargs: the usual `PretrainedConfig` arguments (`id2label`, `label2id`, `num_labels`, ...).
    """

    model_type = "small_cnn"

    def __init__(
        self,
        num_channels: int = 3,
        image_size: int = 32,
        widths: list[int] | tuple[int, ...] = (32, 64),
        convs_per_block: int = 1,
        kernel_size: int = 3,
        pooling: str = "max",
        batch_norm: bool = False,
        activation: str = "relu",
        block_dropout: float = 0.0,
        classifier_dropout: float = 0.5,
        hidden_size: int = 128,
        global_pool: str = "flatten",
        initializer_range: float = 0.01,
        stem: str = "none",
        batch_norm_momentum: float = 0.1,
        norm_scale: bool = True,
        identity_init: bool = False,
        logit_scale: float = 1.0,
        **kwargs,
    ):
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.widths = [int(w) for w in widths]
        self.convs_per_block = int(convs_per_block)
        self.kernel_size = int(kernel_size)
        self.pooling = pooling
        self.batch_norm = bool(batch_norm)
        self.activation = activation
        self.block_dropout = float(block_dropout)
        self.classifier_dropout = float(classifier_dropout)
        self.hidden_size = int(hidden_size)
        self.global_pool = global_pool
        self.initializer_range = float(initializer_range)
        self.stem = stem
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.norm_scale = bool(norm_scale)
        self.identity_init = bool(identity_init)
        self.logit_scale = float(logit_scale)
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"SmallCNNConfig: {message}")

        check(self.num_channels in (1, 3), f"num_channels must be 1 or 3, got {self.num_channels}")
        check(len(self.widths) > 0 and all(w > 0 for w in self.widths), f"widths must be positive, got {self.widths}")
        check(self.convs_per_block >= 1, f"convs_per_block must be >= 1, got {self.convs_per_block}")
        check(self.kernel_size > 0 and self.kernel_size % 2 == 1, f"kernel_size must be odd, got {self.kernel_size}")
        check(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        check(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        check(self.stem in STEMS, f"stem must be one of {STEMS}, got {self.stem!r}")
        check(self.global_pool in GLOBAL_POOLS, f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        for name in ("block_dropout", "classifier_dropout"):
            check(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1), got {getattr(self, name)}")
        check(0.0 < self.batch_norm_momentum <= 1.0,
              f"batch_norm_momentum must be in (0, 1], got {self.batch_norm_momentum}")
        check(self.logit_scale > 0, f"logit_scale must be > 0, got {self.logit_scale}")
        check(self.hidden_size >= 0, f"hidden_size must be >= 0, got {self.hidden_size}")
        check(self.stem_size >= 2 ** len(self.widths),
              f"image_size {self.image_size} is too small for {len(self.widths)} blocks "
              f"(each halves the side; need >= {2 ** len(self.widths)})")

    @property
    def stem_width(self) -> int:
        """Channels out of the stem: the input's, or 2 x (channels x 2 x 2) for the whitening stem."""
        return 8 * self.num_channels if self.stem == "whiten" else self.num_channels

    @property
    def stem_size(self) -> int:
        """Side in pixels of the stem's output (the whitening convolution has no padding)."""
        return self.image_size - 1 if self.stem == "whiten" else self.image_size

    @property
    def feature_map_size(self) -> int:
        """Side in pixels of the last block's output for an `image_size` input."""
        return self.stem_size >> len(self.widths)  # each 2x2 pool floors side / 2


# `save_pretrained` then copies this file beside the weights and writes `auto_map["AutoConfig"]`.
SmallCNNConfig.register_for_auto_class()

__all__ = ["SmallCNNConfig"]
