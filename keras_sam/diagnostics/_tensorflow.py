"""The diagnostics' TensorFlow mechanics: tf.data, tf.function, tf.GradientTape.

The same names as `keras_sam.diagnostics._jax`; `_common.backend()` picks one.
Batches come as a `tf.data.Dataset`, each per-batch function is a
`tf.function` traced once per dataset (the dataset's `element_spec`, whose
batch size is free, is its input signature), and it reads the trainable
variables inside the graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_sam.diagnostics._common import as_batch, one_shot

__all__ = [
    "batch_rows",
    "from_arrays",
    "from_dataset",
    "from_iterable",
    "hessian_vector_product",
    "map_losses",
    "stateless_normal",
    "traced_per_dataset",
    "value_and_gradients",
]


# ------------------------------------------------------------------ batches
def from_dataset(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A dataset is used as it is."""
    return dataset


def from_arrays(parts: tuple, *, batches: int | None, batch_size: int | None):
    """`(x, y[, sample_weight])` arrays cut into batches of `batch_size` rows."""
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    if batch_size is None:
        batch_size = max(1, int(dataset.cardinality()))
    dataset = dataset.batch(batch_size)
    return dataset if batches is None else dataset.take(batches).cache()


def from_iterable(data, *, batches: int | None) -> tf.data.Dataset:
    """An iterable of batches (a list, or a re-iterable read at every pass)
    as a dataset; its signature is the first batch's, batch size free."""
    assert not one_shot(data)  # `dataset_of` has read a one-shot iterator into a list
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        raise ValueError("`data` yielded no batches: there is nothing to measure.")
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)),
        tf.nest.map_structure(tf.convert_to_tensor, as_batch(first)),
    )
    # The first pass goes on from the batch read for the signature.
    started = [itertools.chain([first], iterator)]

    def generate():
        return (as_batch(batch) for batch in (started.pop() if started else data))

    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return dataset if batches is None else dataset.take(batches).cache()


def batch_rows(x) -> tf.Tensor:
    """The number of rows of a batch, read from its first input tensor."""
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


# ------------------------------------------------------------ traced graphs
def _tensor_spec(spec) -> tf.TensorSpec:
    return tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype))


def traced_per_dataset(model: keras.Model, function: Callable, *extra_signature) -> Callable:
    """See `_common.traced_per_dataset`: a `tf.function` per `element_spec`,
    which reads the trainable variables in the graph (`non_trainable` None)."""
    variables = model.trainable_variables
    signature = [keras.tree.map_structure(_tensor_spec, spec) for spec in extra_signature]

    def per_batch(batch, *extra):
        return function([v.value for v in variables], None, batch, *extra)

    traced: dict[str, Callable] = {}

    def for_dataset(dataset: tf.data.Dataset) -> Callable:
        key = str(dataset.element_spec)
        if key not in traced:
            traced[key] = tf.function(per_batch, input_signature=[dataset.element_spec, *signature])
        return traced[key]

    return for_dataset


# ---------------------------------------------------------------- gradients
def value_and_gradients(loss_of: Callable, weights: list):
    """`(loss_of(weights), ∇loss_of(weights))`; `None` where unconnected."""
    with tf.GradientTape() as tape:
        tape.watch(weights)
        loss = loss_of(weights)
    return loss, tape.gradient(loss, weights)


def hessian_vector_product(loss_of: Callable, weights: list, vector: list) -> list:
    """H·`vector` (float32) of `loss_of` at `weights`, by double backpropagation:
    the gradient of ∇L·v."""
    with tf.GradientTape() as outer:
        outer.watch(weights)
        with tf.GradientTape() as inner:
            inner.watch(weights)
            loss = loss_of(weights)
        gradients = inner.gradient(
            loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        gradient_dot_vector = tf.add_n(
            [tf.reduce_sum(tf.cast(g, tf.float32) * v) for g, v in zip(gradients, vector)]
        )
    products = outer.gradient(
        gradient_dot_vector, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return [tf.cast(h, tf.float32) for h in products]


def map_losses(loss_at: Callable, offsets) -> tf.Tensor:
    """`[loss_at(o) for o in offsets]` (float32), one offset after another."""
    return tf.map_fn(loss_at, offsets, fn_output_signature=tf.float32)


def stateless_normal(shape, seed: list) -> tf.Tensor:
    """A float32 N(0, 1) draw of `shape`, fixed by the two integers `seed`."""
    return tf.random.stateless_normal(shape, seed=seed)
