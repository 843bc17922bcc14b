"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) for CIFAR-sized images.

WRN-d-k: a 3x3 convolution with 16 filters, three groups of n = (d - 4) / 6
pre-activation blocks (BatchNorm-ReLU-conv3x3, BatchNorm-ReLU, dropout,
conv3x3) with 16k, 32k and 64k filters, the second and third group starting
with stride 2, then BatchNorm-ReLU, global average pooling and a dense
classifier. Where a block changes the shape its shortcut is a 1x1 convolution
of the pre-activated input, as in the authors' code. WRN-28-10 (the SAM
paper's CIFAR model) has 36.5M parameters, WRN-16-8 11.0M.
"""

from __future__ import annotations

import keras

from keras_sam._validation import InvalidArgumentError, check_real

__all__ = ["wide_resnet"]


# Layer factories shared with keras_sam.models.resnet. Weight decay is coupled
# L2, 0.5·wd·‖w‖² in the loss (gradient wd·w, as PyTorch's SGD(weight_decay=wd)
# and the SAM paper's code), on every trainable weight: kernels, biases and
# BatchNorm's gamma and beta. SAM's ascent step then sees it too.
def _l2(weight_decay: float):
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def _conv(filters, kernel_size, strides, weight_decay, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=_l2(weight_decay),
        name=name,
    )


def _batch_norm(weight_decay, name):
    # PyTorch's defaults (momentum 0.1 there is 0.9 here), as in both papers' code.
    return keras.layers.BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        gamma_regularizer=_l2(weight_decay),
        beta_regularizer=_l2(weight_decay),
        name=name,
    )


def _classifier(num_classes, weight_decay):
    return keras.layers.Dense(
        num_classes,
        kernel_regularizer=_l2(weight_decay),
        bias_regularizer=_l2(weight_decay),
        dtype="float32",  # float32 logits under mixed precision
        name="logits",
    )


def _bn_relu(x, weight_decay, name):
    x = _batch_norm(weight_decay, f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _wide_block(x, filters, strides, dropout, weight_decay, name):
    activated = _bn_relu(x, weight_decay, f"{name}_pre1")
    residual = _conv(filters, 3, strides, weight_decay, f"{name}_conv1")(activated)
    residual = _bn_relu(residual, weight_decay, f"{name}_pre2")
    if dropout:
        residual = keras.layers.Dropout(dropout, name=f"{name}_dropout")(residual)
    residual = _conv(filters, 3, 1, weight_decay, f"{name}_conv2")(residual)
    if strides != 1 or x.shape[-1] != filters:
        x = _conv(filters, 1, strides, weight_decay, f"{name}_shortcut")(activated)
    return keras.layers.Add(name=f"{name}_add")([x, residual])


def _is_wrn_depth(depth) -> bool:
    """Whether `depth` is 6n + 4 for an integer n >= 1."""
    return not isinstance(depth, bool) and isinstance(depth, int) and depth >= 10 and (
        depth - 4
    ) % 6 == 0


def _is_wrn_width(width) -> bool:
    """Whether `width` is an integer >= 1."""
    return not isinstance(width, bool) and isinstance(width, int) and width >= 1


def wide_resnet(
    depth: int,
    width: int,
    num_classes: int,
    input_shape: tuple[int, ...] = (32, 32, 3),
    dropout: float = 0.0,
    *,
    weight_decay: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """WRN-`depth`-`width`; outputs logits (float32 under mixed precision too).

    Example:

    >>> model = wide_resnet(16, 1, num_classes=10, input_shape=(32, 32, 3))
    >>> model.name, model.output_shape
    ('wrn16_1', (None, 10))

    Args:
        depth: 6n + 4 for n >= 1 (10, 16, 22, 28, 40, ...).
        width: widening factor k >= 1.
        num_classes: width of the final dense layer.
        input_shape: (height, width, channels). Defaults to `(32, 32, 3)`.
        dropout: dropout rate between the two convolutions of each block,
            0 <= dropout < 1 (the paper uses 0.3 in some runs). Defaults to `0.0`.
        weight_decay: coupled L2 weight decay wd: 0.5·wd·‖w‖² is added to the
            loss for every trainable weight (kernels, biases, BatchNorm gamma
            and beta). Defaults to `0.0`.
        name: model name. Defaults to `f"wrn{depth}_{width}"`.

    Reference:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
    """
    if not _is_wrn_depth(depth):
        raise InvalidArgumentError(
            "`depth` of a Wide ResNet must be 6n + 4 for an integer n >= 1 "
            f"(10, 16, 22, 28, 40, ...). Received: depth={depth!r}."
        )
    if not _is_wrn_width(width):
        raise InvalidArgumentError(f"`width` must be an integer >= 1. Received: width={width!r}.")
    dropout = check_real("dropout", dropout, minimum=0.0)
    if dropout >= 1:
        raise InvalidArgumentError(f"`dropout` must be < 1. Received: dropout={dropout!r}.")
    blocks_per_group = (depth - 4) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv(16, 3, 1, weight_decay, "stem_conv")(inputs)
    for group, filters in enumerate((16 * width, 32 * width, 64 * width), start=1):
        for block in range(blocks_per_group):
            strides = 2 if group > 1 and block == 0 else 1
            x = _wide_block(
                x, filters, strides, dropout, weight_decay, f"group{group}_block{block + 1}"
            )
    x = _bn_relu(x, weight_decay, "final")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _classifier(num_classes, weight_decay)(x)
    return keras.Model(inputs, outputs, name=name or f"wrn{depth}_{width}")
