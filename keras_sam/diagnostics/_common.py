"""What every diagnostic shares: argument checks, batches, and a stateless loss.

The loss at any weights is evaluated inside a `keras.StatelessScope` that maps
each trainable variable to a tensor. No variable is ever assigned, so a
diagnostic leaves the model bit-for-bit as it found it, even if it is
interrupted; metric-tracker updates made by `compute_loss` are captured by the
scope and dropped.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence

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
    "traced_for_model",
    "traced_per_dataset",
    "unpack",
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


def dataset_of(data, *, batches: int | None, batch_size: int | None) -> tf.data.Dataset:
    """`data` as a dataset of `(x, y)` or `(x, y, sample_weight)` batches.

    Args:
        data: a `tf.data.Dataset` of batches, or a tuple `(x, y)` /
            `(x, y, sample_weight)` of arrays (batched here by `batch_size`).
        batches: keep only the first `batches` batches; `None` keeps all.
            A cut dataset is cached, so that every pass of a multi-pass
            diagnostic sees the same batches even if `data` reshuffles.
        batch_size: rows per batch when `data` is arrays; `None` makes the
            whole arrays one batch.
    """
    if batch_size is not None:
        batch_size = check.check_int("batch_size", batch_size, minimum=1)
    if isinstance(data, tf.data.Dataset):
        dataset = data
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        # A list of input arrays is several inputs, not one stacked array.
        parts = tuple(tuple(part) if isinstance(part, list) else part for part in data)
        dataset = tf.data.Dataset.from_tensor_slices(parts)
        if batch_size is None:
            batch_size = max(1, int(dataset.cardinality()))
        dataset = dataset.batch(batch_size)
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


# model -> {key: (signature objects, built value)}; weak, so no model is kept.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def traced_for_model(model: keras.Model, key: tuple, build: Callable) -> Callable:
    """`build(model_proxy)`, made once per model and `key` and then reused.

    Like Keras's own `model.predict_function`, the traced graphs are kept
    until the model is recompiled (or its trainable variables change), so
    repeated measurements (every epoch, a sweep over rho) trace only once.
    `build` receives a weak proxy of the model, so the cache never keeps a
    model alive.
    """
    # Held (not just their ids) so that an id cannot be reused while cached.
    signature = (model._compile_loss, *model.trainable_variables)
    cache = _TRACED.setdefault(model, {})
    held = cache.get(key)
    if held is None or not _identical(held[0], signature):
        held = cache[key] = (signature, build(weakref.proxy(model)))
    return held[1]


def _identical(a: Sequence, b: Sequence) -> bool:
    # `is`, not `==`: a Keras variable compares elementwise.
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def traced_per_dataset(function: Callable, *extra_signature) -> Callable:
    """`function(batch, *extra)` under `tf.function`, traced once per dataset.

    The input signature is the dataset's `element_spec`, whose batch size is
    free, so a last partial batch reuses the graph instead of retracing.
    Returns `for_dataset(dataset)`, which gives the traced function.
    """
    traced: dict[str, Callable] = {}

    def for_dataset(dataset: tf.data.Dataset) -> Callable:
        key = str(dataset.element_spec)
        if key not in traced:
            traced[key] = tf.function(
                function, input_signature=[dataset.element_spec, *extra_signature]
            )
        return traced[key]

    return for_dataset


def stateless_loss(model: keras.Model, x, y, sample_weight, values: Sequence) -> tf.Tensor:
    """The compiled loss (with `model.losses`) in inference mode at `values`.

    `values[i]` stands in for `model.trainable_variables[i]`; nothing is
    assigned. This is the loss `model.evaluate` computes, batch by batch.
    """
    mapping = list(zip(model.trainable_variables, values, strict=True))
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
