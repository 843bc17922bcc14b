"""The small 1D CNN of the MNIST-1D paper (Greydanus & Kobak, 2024).

Three convolutions with stride 2 halve the 40-step signal three times
(40 -> 20 -> 10 -> 5), each followed by a ReLU; a dense layer maps the
flattened features to class logits. 8,010 weights with 32 channels.

>>> from keras_sam.models import mnist1d_cnn
>>> model = mnist1d_cnn()
>>> model.output_shape
(None, 10)
>>> model.count_params()
8010
"""

from __future__ import annotations

import keras

__all__ = ["mnist1d_cnn"]


def mnist1d_cnn(
    num_classes: int = 10,
    *,
    channels: int = 32,
    input_length: int = 40,
    name: str = "mnist1d_cnn",
) -> keras.Sequential:
    """Builds the MNIST-1D convolutional network; it outputs logits.

    Train it with `SparseCategoricalCrossentropy(from_logits=True)`. Weights
    are drawn from Keras's default initializers: call
    `keras.utils.set_random_seed` first for a reproducible start.

    Args:
        num_classes: number of output logits. Defaults to `10`.
        channels: filters of each convolution. Defaults to `32`.
        input_length: length of the one-channel input signal. Defaults to
            `40`, MNIST-1D's length.
        name: the model's name. Defaults to `"mnist1d_cnn"`.
    """
    for argument, value in (
        ("num_classes", num_classes),
        ("channels", channels),
        ("input_length", input_length),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{argument}` must be a positive integer. Received: {argument}={value!r}."
            )
    return keras.Sequential(
        [
            keras.Input((input_length, 1)),
            keras.layers.Conv1D(channels, 5, strides=2, padding="same", activation="relu"),
            keras.layers.Conv1D(channels, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv1D(channels, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ],
        name=name,
    )
