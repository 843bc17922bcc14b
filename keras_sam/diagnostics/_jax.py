"""The diagnostics' JAX mechanics: NumPy batches, jax.jit, jax.grad and jax.jvp.

The same names as `keras_sam.diagnostics._tensorflow`; `_common.backend()`
picks one. Batches come as a `_common.Batches` of NumPy arrays (a
`tf.data.Dataset` is read with `as_numpy_iterator`), each per-batch function
is a `jax.jit` (traced once per batch shape), and it receives the values of
the model's trainable and non-trainable variables as arguments: a traced
function that read a variable would keep its value of the first call as a
constant.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import keras
import numpy as np

from keras_sam import _validation as check
from keras_sam.diagnostics import _philox
from keras_sam.diagnostics._common import Batches, as_batch

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
def from_dataset(dataset) -> Batches:
    """A `tf.data.Dataset`, read as NumPy at every pass (as Keras reads it)."""
    return Batches(dataset.as_numpy_iterator)


def _as_array(value):
    return value if isinstance(value, (np.ndarray, jax.Array)) else np.asarray(value)


def from_arrays(parts: tuple, *, batches: int | None, batch_size: int | None) -> Batches:
    """`(x, y[, sample_weight])` arrays cut into batches of `batch_size` rows
    (views, not copies), the last one shorter if need be."""
    parts = as_batch(keras.tree.map_structure(_as_array, parts))
    rows = {int(a.shape[0]) if a.ndim else None for a in keras.tree.flatten(parts)}
    if len(rows) != 1 or None in rows:
        raise check.InvalidArgumentError(
            "The arrays of `data` must all have the same number of rows (their "
            f"first dimension). Received arrays with {sorted(rows, key=str)} rows."
        )
    (count,) = rows
    size = max(1, count) if batch_size is None else batch_size
    starts = range(0, count, size)[:batches]
    return Batches(
        [keras.tree.map_structure(lambda a, i=i: a[i : i + size], parts) for i in starts]
    )


def from_iterable(data, *, batches: int | None) -> Batches:
    """An iterable of batches: a list is kept, a re-iterable read at every pass."""
    if isinstance(data, list):
        return Batches([as_batch(batch) for batch in data])
    return Batches(lambda: iter(data)).first(batches)


def batch_rows(x) -> int:
    """The number of rows of a batch (static under `jax.jit`)."""
    return next(t for t in keras.tree.flatten(x) if t is not None).shape[0]


# ------------------------------------------------------------ traced graphs
def traced_per_dataset(model: keras.Model, function: Callable, *extra_signature) -> Callable:
    """See `_common.traced_per_dataset`: one `jax.jit` for every dataset,
    called with the current values of the model's variables."""
    del extra_signature  # jax.jit traces from the arguments themselves
    trainable, non_trainable = model.trainable_variables, model.non_trainable_variables
    compiled = jax.jit(function)

    def per_batch(batch, *extra):
        return compiled(
            [v.value for v in trainable], [v.value for v in non_trainable], batch, *extra
        )

    return lambda dataset: per_batch


# ---------------------------------------------------------------- gradients
def value_and_gradients(loss_of: Callable, weights: list):
    """`(loss_of(weights), ∇loss_of(weights))`, by `jax.value_and_grad`."""
    loss, gradients = jax.value_and_grad(loss_of)(list(weights))
    return loss, list(gradients)


def hessian_vector_product(loss_of: Callable, weights: list, vector: list) -> list:
    """H·`vector` (float32) of `loss_of` at `weights`, forward over reverse:
    the directional derivative (`jax.jvp`) of the gradient (`jax.grad`)."""
    weights = list(weights)
    tangents = [v.astype(w.dtype) for w, v in zip(weights, vector, strict=True)]
    _, products = jax.jvp(jax.grad(loss_of), (weights,), (tangents,))
    return [h.astype(jnp.float32) for h in products]


def map_losses(loss_at: Callable, offsets) -> jax.Array:
    """`[loss_at(o) for o in offsets]` (float32), one offset after another."""
    return jax.lax.map(loss_at, offsets)


def stateless_normal(shape, seed: list) -> jax.Array:
    """`tf.random.stateless_normal(shape, seed)`'s numbers, drawn in NumPy."""
    return jnp.asarray(_philox.stateless_normal(shape, seed))
