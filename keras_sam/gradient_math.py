"""Inner products and projections over lists of gradients, as one flat vector.

A list of per-variable gradients is treated as a single vector; `None` entries
are zeros and sparse entries (`tf.IndexedSlices`, the gradient of an
`Embedding`) are taken as the dense tensors they stand for. Reductions run in
float32 whatever the gradient dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

__all__ = ["all_finite", "as_dense", "global_dot", "global_norm", "orthogonal_part"]


def as_dense(t: tf.Tensor | tf.IndexedSlices | None) -> tf.Tensor | None:
    """`t` as a dense tensor (an `IndexedSlices` scattered into zeros)."""
    return tf.convert_to_tensor(t) if isinstance(t, tf.IndexedSlices) else t


def _float32(t: tf.Tensor) -> tf.Tensor:
    t = as_dense(t)
    return t if t.dtype == tf.float32 else tf.cast(t, tf.float32)


def global_dot(a: Sequence[tf.Tensor | None], b: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """Σ aᵢ·bᵢ over every variable (float32 scalar)."""
    terms = [
        tf.reduce_sum(_float32(x) * _float32(y))
        for x, y in zip(a, b)
        if x is not None and y is not None
    ]
    return tf.add_n(terms) if terms else tf.constant(0.0)


def all_finite(a: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """True iff every entry of every tensor is finite (a bool scalar).

    >>> import tensorflow as tf
    >>> bool(all_finite([tf.constant([1.0, 2.0]), None, tf.constant(float("inf"))]))
    False
    """
    checks = [
        tf.reduce_all(tf.math.is_finite(x.values if isinstance(x, tf.IndexedSlices) else x))
        for x in a
        if x is not None
    ]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def global_norm(a: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """‖a‖₂ over every variable (float32 scalar)."""
    return tf.sqrt(global_dot(a, a))


def orthogonal_part(
    u: Sequence[tf.Tensor | None], onto: Sequence[tf.Tensor | None]
) -> list[tf.Tensor | None]:
    """u − (u·v / ‖v‖²)·v with v = `onto`: the part of u orthogonal to v.

    When v is zero the whole of u is orthogonal to it and u is returned.

    >>> import tensorflow as tf
    >>> [t.numpy().tolist() for t in orthogonal_part([tf.constant([1.0, 1.0])],
    ...                                              [tf.constant([2.0, 0.0])])]
    [[0.0, 1.0]]
    """
    squared = global_dot(onto, onto)
    coefficient = tf.math.divide_no_nan(global_dot(u, onto), squared)
    return [
        None if x is None else (
            as_dense(x) if y is None else as_dense(x) - tf.cast(coefficient, x.dtype) * as_dense(y)
        )
        for x, y in zip(u, onto)
    ]
