"""The fixed models of the step-time benchmark, built alike in Keras 3 and tf-keras.

Each builder takes the Keras module to build with (`keras`, or `tf_keras` for
Keras 2), so that the Keras 2 SAM is timed on exactly the same architecture,
layer by layer, as ours.

- `small_cnn`: 32x32x3 -> conv32-BN-ReLU-pool -> conv32-BN-ReLU-pool ->
  conv64-BN-ReLU -> global average pooling -> dense 10 (logits).
- `small_cnn_no_bn` (a diagnostic, not in the default table): the small CNN
  without BatchNormalization.
- `tiny_cnn` (for the tests, not a benchmark): 32x32x3 -> conv4 (stride 4)
  -BN-ReLU -> global average pooling -> dense 10; compiles and steps in
  moments, with a BatchNormalization layer for `perturb="normalization"`.
- `resnet20`: the CIFAR ResNet-20 of He et al. (2016) exactly as
  `keras_sam.models.resnet.resnet(20, 10)` builds it (3 stages of 3 basic
  blocks with 16/32/64 filters, option-A zero-padded identity shortcuts,
  BatchNorm momentum 0.9 and epsilon 1e-5; 0.27 M weights). In Keras 3 that
  function itself is used when it exists; `tf_keras` gets this module's copy.

The Keras 3 models are built from Keras layers and `keras.ops` only, so they
build on any Keras backend (the JAX rows of `step_time.py` build them with
`KERAS_BACKEND=jax`); TensorFlow is imported only for the tf-keras copy of the
ResNet's shortcut.

Example:

>>> import keras
>>> from benchmarks.models import build
>>> build("small_cnn", keras).count_params()
29674
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "MODEL_NAMES",
    "build",
    "resnet20",
    "small_cnn",
    "small_cnn_no_bn",
    "tiny_cnn",
    "weight_shapes",
]

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def _conv_bn_relu(layers, x, filters: int, strides: int = 1, batch_norm: bool = True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    if batch_norm:
        x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def small_cnn(api: ModuleType, batch_norm: bool = True):
    """The small CNN, in `api` (the `keras` or `tf_keras` module)."""
    layers = api.layers
    inputs = api.Input(INPUT_SHAPE)
    x = _conv_bn_relu(layers, inputs, 32, batch_norm=batch_norm)
    x = layers.MaxPooling2D()(x)
    x = _conv_bn_relu(layers, x, 32, batch_norm=batch_norm)
    x = layers.MaxPooling2D()(x)
    x = _conv_bn_relu(layers, x, 64, batch_norm=batch_norm)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES)(x)
    return api.Model(inputs, outputs, name="small_cnn" if batch_norm else "small_cnn_no_bn")


def tiny_cnn(api: ModuleType):
    """A very small CNN of the same input and output, for smoke tests."""
    layers = api.layers
    inputs = api.Input(INPUT_SHAPE)
    x = layers.Conv2D(4, 3, strides=4, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    outputs = layers.Dense(NUM_CLASSES)(layers.GlobalAveragePooling2D()(x))
    return api.Model(inputs, outputs, name="tiny_cnn")


def small_cnn_no_bn(api: ModuleType):
    """The small CNN without its BatchNormalization layers (a diagnostic).

    Keras 3 builds BatchNormalization from unfused ops where tf-keras calls
    TensorFlow's fused kernel, and the Keras 2 SAM runs its first pass with
    BatchNorm in inference mode. Without BatchNorm both differences vanish, so
    this model compares the frameworks' SAM steps on equal terms.
    """
    return small_cnn(api, batch_norm=False)


@functools.cache
def _zero_pad_shortcut_class(api: ModuleType):
    """Option-A shortcut layer for `api`: every 2nd pixel, new channels zero.

    Padded with `keras.ops.pad` in Keras 3 (any backend), `tf.pad` in tf-keras.
    """
    if hasattr(api, "ops"):  # Keras 3
        pad = api.ops.pad
    else:  # tf-keras, which runs on TensorFlow only
        import tensorflow as tf

        pad = tf.pad

    class ZeroPadShortcut(api.layers.Layer):
        def __init__(self, filters: int, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters

        def call(self, inputs):
            extra = self.filters - inputs.shape[-1]
            before = extra // 2  # half the new channels before, half after
            return pad(
                inputs[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [before, extra - before]]
            )

        def compute_output_shape(self, input_shape):
            batch, height, width, _ = input_shape
            half = lambda size: None if size is None else -(-size // 2)
            return (batch, half(height), half(width), self.filters)

    return ZeroPadShortcut


def _resnet_conv_bn(layers, x, filters: int, kernel_size: int, strides: int):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
    )(x)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def _basic_block(api, x, filters: int, strides: int):
    layers = api.layers
    residual = layers.ReLU()(_resnet_conv_bn(layers, x, filters, 3, strides))
    residual = _resnet_conv_bn(layers, residual, filters, 3, 1)
    if strides != 1 or x.shape[-1] != filters:
        x = _zero_pad_shortcut_class(api)(filters)(x)
    return layers.ReLU()(layers.Add()([x, residual]))


def resnet20(api: ModuleType):
    """CIFAR ResNet-20 (depth 6n+2, n=3), in `api` (`keras` or `tf_keras`).

    For `keras`, `keras_sam.models.resnet.resnet(20, 10)` when it exists.
    """
    if api.__name__ == "keras":
        try:
            from keras_sam.models.resnet import resnet
        except ImportError:
            pass
        else:
            return resnet(20, NUM_CLASSES, INPUT_SHAPE)
    layers = api.layers
    inputs = api.Input(INPUT_SHAPE)
    x = layers.ReLU()(_resnet_conv_bn(layers, inputs, 16, 3, 1))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(api, x, filters, strides)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES)(x)
    return api.Model(inputs, outputs, name="resnet20")


def weight_shapes(model) -> list[tuple[int, ...]]:
    """Shapes of all weights, in order: equal lists mean the same architecture."""
    return [tuple(int(d) for d in w.shape) for w in model.weights]


_BUILDERS: dict[str, Callable] = {
    "small_cnn": small_cnn,
    "resnet20": resnet20,
    "small_cnn_no_bn": small_cnn_no_bn,
    "tiny_cnn": tiny_cnn,
}
MODEL_NAMES = tuple(_BUILDERS)
# The two models of the benchmark's table; the others are diagnostics.
DEFAULT_MODEL_NAMES = ("small_cnn", "resnet20")


def build(name: str, api: ModuleType):
    """Builds model `name` (one of `MODEL_NAMES`) with the Keras module `api`."""
    if name not in _BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}."
        )
    return _BUILDERS[name](api)
