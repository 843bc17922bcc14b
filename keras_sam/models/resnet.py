"""CIFAR ResNets (He et al., 2016, section 4.2) and `get_model` by name.

The CIFAR ResNet of depth 6n + 2: a 3x3 convolution with 16 filters, three
stages of n basic blocks (two 3x3 convolutions each) with 16, 32 and 64
filters on 32x32, 16x16 and 8x8 maps, global average pooling and a dense
classifier. ResNet-20 (n = 3) has 0.27M parameters, ResNet-56 (n = 9) 0.85M.

Where a stage halves the map and doubles the filters the shortcut is, as in
the paper's CIFAR experiments, **option A** by default: the identity on every
second pixel, with the new channels zero-padded (no parameters). Option B
(`shortcut="B"`) uses a strided 1x1 convolution and BatchNorm instead.

`get_model("resnet20", ...)` or `get_model("wrn28_10", ...)` builds any of
these or a Wide ResNet (`keras_sam.models.wrn`) from its name.
"""

from __future__ import annotations

import re

import keras

from keras_sam._validation import InvalidArgumentError

# The layer factories (and their weight decay) are shared with the Wide ResNets.
from keras_sam.models.wrn import (
    _batch_norm,
    _classifier,
    _conv,
    _is_wrn_depth,
    _is_wrn_width,
    wide_resnet,
)

__all__ = ["ZeroPadShortcut", "check_model_name", "get_model", "resnet", "MODEL_NAMES"]

# The names `keras-sam train --model` lists; `get_model` accepts any
# `resnet{6n+2}` and `wrn{6n+4}_{k}`.
MODEL_NAMES = ("resnet20", "resnet56", "wrn16_8", "wrn28_10")


@keras.saving.register_keras_serializable(package="keras_sam")
class ZeroPadShortcut(keras.layers.Layer):
    """Option-A shortcut: keep every `strides`-th pixel, zero-pad new channels.

    >>> import numpy as np
    >>> layer = ZeroPadShortcut(filters=4, strides=2)
    >>> tuple(layer(np.ones((1, 4, 4, 2), "float32")).shape)
    (1, 2, 2, 4)
    """

    def __init__(self, filters: int, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides

    def call(self, inputs):
        subsampled = inputs[:, :: self.strides, :: self.strides, :]
        extra = self.filters - inputs.shape[-1]
        # Half the new channels before the old ones, half after, as in the
        # paper's reference implementations.
        before = extra // 2
        return keras.ops.pad(subsampled, [[0, 0], [0, 0], [0, 0], [before, extra - before]])

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        shrink = lambda size: None if size is None else -(-size // self.strides)
        return (batch, shrink(height), shrink(width), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def _basic_block(x, filters, strides, shortcut, weight_decay, name):
    residual = _conv(filters, 3, strides, weight_decay, f"{name}_conv1")(x)
    residual = _batch_norm(weight_decay, f"{name}_bn1")(residual)
    residual = keras.layers.ReLU(name=f"{name}_relu1")(residual)
    residual = _conv(filters, 3, 1, weight_decay, f"{name}_conv2")(residual)
    residual = _batch_norm(weight_decay, f"{name}_bn2")(residual)
    if strides != 1 or x.shape[-1] != filters:
        if shortcut == "A":
            x = ZeroPadShortcut(filters, strides, name=f"{name}_shortcut")(x)
        else:
            x = _conv(filters, 1, strides, weight_decay, f"{name}_shortcut_conv")(x)
            x = _batch_norm(weight_decay, f"{name}_shortcut_bn")(x)
    x = keras.layers.Add(name=f"{name}_add")([x, residual])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def _is_resnet_depth(depth) -> bool:
    """Whether `depth` is 6n + 2 for an integer n >= 1."""
    return not isinstance(depth, bool) and isinstance(depth, int) and depth >= 8 and (
        depth - 2
    ) % 6 == 0


def resnet(
    depth: int,
    num_classes: int,
    input_shape: tuple[int, ...] = (32, 32, 3),
    *,
    shortcut: str = "A",
    weight_decay: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """The CIFAR ResNet of `depth` = 6n + 2 layers; outputs logits (float32).

    Example:

    >>> import numpy as np
    >>> model = resnet(20, num_classes=10, input_shape=(32, 32, 3))
    >>> int(sum(np.prod(w.shape) for w in model.trainable_weights))  # the paper's 0.27M
    269722
    >>> model.output_shape
    (None, 10)

    Args:
        depth: 6n + 2 for n >= 1 (20, 32, 44, 56, 110, ...).
        num_classes: width of the final dense layer.
        input_shape: (height, width, channels). Defaults to `(32, 32, 3)`.
        shortcut: `"A"` (zero-padded identity, no parameters, the paper's CIFAR
            choice) or `"B"` (1x1 projection where the shape changes).
            Defaults to `"A"`.
        weight_decay: coupled L2 weight decay wd: 0.5·wd·‖w‖² is added to the
            loss for every trainable weight (kernels, biases, BatchNorm gamma
            and beta), as in the SAM paper's code. Defaults to `0.0`.
        name: model name. Defaults to `f"resnet{depth}"`.

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    if not _is_resnet_depth(depth):
        raise InvalidArgumentError(
            "`depth` of a CIFAR ResNet must be 6n + 2 for an integer n >= 1 "
            f"(8, 14, 20, 32, 44, 56, 110, ...). Received: depth={depth!r}."
        )
    if shortcut not in ("A", "B"):
        raise InvalidArgumentError(
            f'`shortcut` must be "A" or "B". Received: shortcut={shortcut!r}.'
        )
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv(16, 3, 1, weight_decay, "stem_conv")(inputs)
    x = _batch_norm(weight_decay, "stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(
                x, filters, strides, shortcut, weight_decay, f"stage{stage}_block{block + 1}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _classifier(num_classes, weight_decay)(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


_RESNET_NAME = re.compile(r"resnet(\d+)")
_WRN_NAME = re.compile(r"wrn(\d+)_(\d+)")


def get_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...] = (32, 32, 3),
    *,
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    shortcut: str = "A",
) -> keras.Model:
    """Builds a CIFAR ResNet (`"resnet20"`) or Wide ResNet (`"wrn28_10"`) by name.

    `resnet{d}` is `resnet(d, ...)` for any d = 6n + 2; `wrn{d}_{k}` is
    `wide_resnet(d, k, ...)` for any d = 6n + 4. The listed names are
    `MODEL_NAMES`: resnet20, resnet56, wrn16_8, wrn28_10.

    >>> get_model("resnet20", num_classes=10).name
    'resnet20'

    Args:
        name: the model's name, as above.
        num_classes: number of classes (logits).
        input_shape: (height, width, channels). Defaults to `(32, 32, 3)`.
        weight_decay: coupled L2 weight decay on every trainable weight.
            Defaults to `0.0`.
        dropout: dropout rate inside Wide ResNet blocks; must be 0 for a
            ResNet. Defaults to `0.0`.
        shortcut: ResNet shortcut option, `"A"` or `"B"` (Wide ResNets always
            project). Defaults to `"A"`.
    """
    if not isinstance(name, str):
        raise InvalidArgumentError(
            f"`name` must be a string such as {', '.join(MODEL_NAMES)}. Received: name={name!r}."
        )
    if match := _RESNET_NAME.fullmatch(name):
        if dropout:
            raise InvalidArgumentError(
                f"`dropout` is only for Wide ResNets; {name} has no dropout. "
                f"Received: dropout={dropout!r}."
            )
        return resnet(
            int(match[1]), num_classes, input_shape, shortcut=shortcut, weight_decay=weight_decay
        )
    if match := _WRN_NAME.fullmatch(name):
        return wide_resnet(
            int(match[1]),
            int(match[2]),
            num_classes,
            input_shape,
            dropout=dropout,
            weight_decay=weight_decay,
        )
    raise InvalidArgumentError(
        f"Unknown model name {name!r}. Accepted: {', '.join(MODEL_NAMES)}, or any "
        "'resnet{6n+2}' (e.g. resnet32) or 'wrn{6n+4}_{width}' (e.g. wrn40_4)."
    )


def check_model_name(name: str) -> str:
    """Returns `name` if `get_model` builds it, else raises InvalidArgumentError.

    It checks without building (so before any data is loaded) what
    `get_model` finds out when it builds: a CIFAR ResNet has depth 6n + 2, a
    Wide ResNet 6n + 4 and width >= 1.

    >>> check_model_name("wrn40_4")
    'wrn40_4'
    """
    if isinstance(name, str):
        if match := _RESNET_NAME.fullmatch(name):
            if _is_resnet_depth(int(match[1])):
                return name
        elif match := _WRN_NAME.fullmatch(name):
            if _is_wrn_depth(int(match[1])) and _is_wrn_width(int(match[2])):
                return name
    raise InvalidArgumentError(
        f"`model` must be one of {', '.join(MODEL_NAMES)}, or any resnet{{6n+2}} "
        f"(resnet8, resnet14, resnet32, ...) or wrn{{6n+4}}_{{width}} (wrn10_1, wrn40_4, ...). "
        f"Received: model={name!r}."
    )
