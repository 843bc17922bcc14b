"""The fixed models of the step-time benchmark, built alike in Keras 3 and tf-keras.

Each builder takes the Keras module to build with (`keras`, or `tf_keras` for
Keras 2), so that the Keras 2 SAM is timed on exactly the same architecture,
layer by layer, as ours.

- `small_cnn`: 32x32x3 -> conv32-BN-ReLU-pool -> conv32-BN-ReLU-pool ->
  conv64-BN-ReLU -> global average pooling -> dense 10 (logits).
- `resnet20`: the CIFAR ResNet-20 of He et al. (2016), 3 stages of 3 basic
  blocks with 16/32/64 filters; where a block changes the shape, the shortcut
  is a strided 1x1 convolution with BatchNorm ("option B"). 0.27 M weights.

Example:

>>> import keras
>>> from benchmarks.models import build
>>> build("small_cnn", keras).count_params()
29546
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

__all__ = ["MODEL_NAMES", "build", "resnet20", "small_cnn"]

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def _conv_bn_relu(layers, x, filters: int, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def small_cnn(api: ModuleType):
    """The small CNN, in `api` (the `keras` or `tf_keras` module)."""
    layers = api.layers
    inputs = api.Input(INPUT_SHAPE)
    x = _conv_bn_relu(layers, inputs, 32)
    x = layers.MaxPooling2D()(x)
    x = _conv_bn_relu(layers, x, 32)
    x = layers.MaxPooling2D()(x)
    x = _conv_bn_relu(layers, x, 64)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES)(x)
    return api.Model(inputs, outputs, name="small_cnn")


def _basic_block(layers, x, filters: int, strides: int):
    shortcut = x
    y = _conv_bn_relu(layers, x, filters, strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet20(api: ModuleType):
    """CIFAR ResNet-20 (depth 6n+2, n=3), in `api` (`keras` or `tf_keras`)."""
    layers = api.layers
    inputs = api.Input(INPUT_SHAPE)
    x = _conv_bn_relu(layers, inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(layers, x, filters, strides)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES)(x)
    return api.Model(inputs, outputs, name="resnet20")


_BUILDERS: dict[str, Callable] = {"small_cnn": small_cnn, "resnet20": resnet20}
MODEL_NAMES = tuple(_BUILDERS)


def build(name: str, api: ModuleType):
    """Builds model `name` (one of `MODEL_NAMES`) with the Keras module `api`."""
    if name not in _BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}."
        )
    return _BUILDERS[name](api)
