"""What every diagnostic shares: argument checks, batches, and a stateless loss.

The loss at any weights is evaluated inside a `keras.StatelessScope` that maps
each trainable variable to a tensor. No variable is ever assigned, so a
diagnostic leaves the model bit-for-bit as it found it, even if it is
interrupted; metric-tracker updates made by `compute_loss` are captured by the
scope and dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sam import _validation as check

__all__ = [
    "batch_rows",
    "check_batches",
    "check_compiled_model",
    "dataset_of",
    "stateless_loss",
    "weighted_mean",
]


def check_compiled_model(model) -> keras.Model:
    """Returns `model` if it is a compiled `keras.Model` with trainable weights."""
    if not isinstance(model, keras.Model):
        raise check.InvalidArgumentError(
            "`model` must be a compiled `keras.Model` (plain or `SAMModel`). "
            f"Received: model={model!r} (of type {type(model).__name__})."
        )
    if not getattr(model, "compiled", False):
        raise check.InvalidArgumentError(
            f"`model` {model.name!r} is not compiled: the diagnostics measure the "
            "compiled loss. Call `model.compile(loss=...)` first."
        )
    if not model.trainable_variables:
        raise check.InvalidArgumentError(
            f"`model` {model.name!r} has no trainable weights to measure (is it "
            "frozen or unbuilt? Call it once on data to build it)."
        )
    return model


def check_batches(batches) -> int | None:
    """Returns `batches` as None (all) or an int >= 1, or raises."""
    return None if batches is None else check.check_int("batches", batches, minimum=1)


def dataset_of(data, *, batches: int | None, batch_size: int) -> tf.data.Dataset:
    """`data` as a dataset of `(x, y)` or `(x, y, sample_weight)` batches.

    Args:
        data: a `tf.data.Dataset` of batches, or a tuple `(x, y)` /
            `(x, y, sample_weight)` of arrays (batched here by `batch_size`).
        batches: keep only the first `batches` batches; `None` keeps all.
            A cut dataset is cached, so that every pass of a multi-pass
            diagnostic sees the same batches even if `data` reshuffles.
        batch_size: rows per batch when `data` is arrays.
    """
    batch_size = check.check_int("batch_size", batch_size, minimum=1)
    if isinstance(data, tf.data.Dataset):
        dataset = data
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        dataset = tf.data.Dataset.from_tensor_slices(tuple(data)).batch(batch_size)
    else:
        raise check.InvalidArgumentError(
            "`data` must be a `tf.data.Dataset` of (x, y) or (x, y, sample_weight) "
            "batches, or a tuple (x, y) or (x, y, sample_weight) of arrays. "
            f"Received: data of type {type(data).__name__}."
        )
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise check.InvalidArgumentError(
            "`data` must yield (x, y) or (x, y, sample_weight) batches: the loss "
            f"needs targets. Received a dataset whose elements are {spec}."
        )
    if batches is not None:
        dataset = dataset.take(batches).cache()
    return dataset


def unpack(batch: Sequence) -> tuple:
    """`(x, y, sample_weight)` of one batch, `sample_weight` None if absent."""
    return keras.utils.unpack_x_y_sample_weight(tuple(batch))


def batch_rows(x) -> tf.Tensor:
    """The number of rows of a batch, read from its first input tensor."""
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


def stateless_loss(model: keras.Model, x, y, sample_weight, values: Sequence) -> tf.Tensor:
    """The compiled loss (with `model.losses`) in inference mode at `values`.

    `values[i]` stands in for `model.trainable_variables[i]`; nothing is
    assigned. This is the loss `model.evaluate` computes, batch by batch.
    """
    mapping = list(zip(model.trainable_variables, values))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        y_pred = model(x, training=False)
        # `_compute_loss` is what `evaluate` calls: it also serves
        # `compute_loss` overrides written before Keras 3.3 (no `training`).
        return model._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )


def weighted_mean(values: Iterable[tuple]) -> np.ndarray:
    """Mean of per-batch values weighted by batch rows, as `evaluate` reduces.

    `values` yields `(value, rows)` pairs; a value may be a scalar or an array
    (averaged elementwise). Accumulated in float32 exactly like
    `keras.metrics.Mean`, so that a loss averaged here equals
    `model.evaluate`'s to the last bit.
    """
    total = count = np.float32(0.0)
    for value, rows in values:
        total = total + np.asarray(value, np.float32) * np.float32(rows)
        count = count + np.float32(rows)
    if count == 0:
        raise ValueError("`data` yielded no batches: there is nothing to measure.")
    return total / count
