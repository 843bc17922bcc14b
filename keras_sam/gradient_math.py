"""Inner products and projections over lists of gradients, as one flat vector.

A list of per-variable gradients is treated as a single vector; `None` entries
are zeros and sparse entries (TensorFlow's `tf.IndexedSlices`, the gradient
of an `Embedding`) are taken as the dense tensors they stand for. Reductions
run in float32 whatever the gradient dtype. Written with `keras.ops`, for
every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

__all__ = ["all_finite", "as_dense", "global_dot", "global_norm", "orthogonal_part"]


def _is_indexed_slices(t) -> bool:
    return type(t).__name__ == "IndexedSlices"


def as_dense(t):
    """`t` as a dense tensor (an `IndexedSlices` scattered into zeros)."""
    if _is_indexed_slices(t):
        import tensorflow as tf  # only TensorFlow makes them

        return tf.convert_to_tensor(t)
    return t


def _float32(t):
    t = as_dense(t)
    return t if t.dtype == "float32" else keras.ops.cast(t, "float32")


def _sum(terms):
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def global_dot(a: Sequence, b: Sequence):
    """Σ aᵢ·bᵢ over every variable (float32 scalar)."""
    terms = [
        keras.ops.sum(_float32(x) * _float32(y))
        for x, y in zip(a, b)
        if x is not None and y is not None
    ]
    return _sum(terms) if terms else keras.ops.convert_to_tensor(0.0, "float32")


def all_finite(a: Sequence):
    """True iff every entry of every tensor is finite (a bool scalar).

    >>> import keras
    >>> bool(all_finite([keras.ops.array([1.0, 2.0]), None, keras.ops.array(float("inf"))]))
    False
    """
    checks = [
        keras.ops.all(keras.ops.isfinite(x.values if _is_indexed_slices(x) else x))
        for x in a
        if x is not None
    ]
    return keras.ops.all(keras.ops.stack(checks)) if checks else keras.ops.convert_to_tensor(True)


def global_norm(a: Sequence):
    """‖a‖₂ over every variable (float32 scalar)."""
    return keras.ops.sqrt(global_dot(a, a))


def orthogonal_part(u: Sequence, onto: Sequence) -> list:
    """u − (u·v / ‖v‖²)·v with v = `onto`: the part of u orthogonal to v.

    When v is zero the whole of u is orthogonal to it and u is returned.

    >>> import keras
    >>> [keras.ops.convert_to_numpy(t).tolist()
    ...  for t in orthogonal_part([keras.ops.array([1.0, 1.0])], [keras.ops.array([2.0, 0.0])])]
    [[0.0, 1.0]]
    """
    squared = global_dot(onto, onto)
    coefficient = keras.ops.divide_no_nan(global_dot(u, onto), squared)
    return [
        None if x is None else (
            as_dense(x)
            if y is None
            else as_dense(x) - keras.ops.cast(coefficient, x.dtype) * as_dense(y)
        )
        for x, y in zip(u, onto)
    ]
