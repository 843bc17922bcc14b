"""Top Hessian eigenvalues by power iteration on exact Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_sam import _validation as check
from keras_sam.diagnostics._common import (
    batch_rows,
    check_batches,
    check_compiled_model,
    dataset_of,
    stateless_loss,
    traced_for_model,
    traced_per_dataset,
    unpack,
)

__all__ = ["hessian_eigenvalues"]


def _dot(a, b) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(u * v) for u, v in zip(a, b, strict=True)])


def _normalized(vector):
    norm = tf.sqrt(_dot(vector, vector))
    return [v / norm for v in vector], norm


def _project_out(vector, basis):
    """`vector` minus its components along the orthonormal `basis` vectors."""
    for u in basis:
        coefficient = _dot(u, vector)
        vector = [v - coefficient * b for v, b in zip(vector, u, strict=True)]
    return vector


def hessian_eigenvalues(
    model: keras.Model,
    data,
    k: int = 1,
    *,
    iterations: int = 20,
    batches: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
) -> list[float]:
    """The top-`k` eigenvalues of the Hessian of the loss, largest first.

    The Hessian H of the compiled loss (with `model.losses`, inference mode)
    with respect to the trainable weights, averaged over the batches used
    (weighted by batch size), is never formed: each power-iteration step needs
    only the product Hv, computed exactly by double backpropagation (the
    gradient of ∇L·v), in float32 under `tf.function` (traced once per model
    and kept with it, like `model.predict_function`). Eigenvalue j is found by
    `iterations` steps of power iteration on H restricted to the orthogonal
    complement of eigenvectors 1..j-1 (deflation), from a fixed random start,
    and is the Rayleigh quotient vᵀHv of the last iterate.

    Power iteration finds the eigenvalues of largest *magnitude*; near a
    minimum these are the top positive ones. The error of eigenvalue j falls
    like (λ_{j+1}/λ_j)^(2·iterations): raise `iterations` when they are close.

    Example:

    >>> import keras, numpy as np
    >>> from keras_sam.diagnostics import hessian_eigenvalues
    >>> model = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.compile(loss="mse")
    >>> x = np.array([[2, 0], [0, 1]], "float32")   # H = 2 xᵀx / 2 = diag(4, 1)
    >>> y = np.zeros((2, 1), "float32")
    >>> [round(v, 4) for v in hessian_eigenvalues(model, (x, y), k=2)]
    [4.0, 1.0]

    Args:
        model: a compiled `keras.Model`, plain or `SAMModel`.
        data: a `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batches, or such a tuple of arrays (batched by `batch_size`).
        k: how many eigenvalues, >= 1. Defaults to `1`.
        iterations: power-iteration steps per eigenvalue, >= 1. Each step is
            one pass over the batches. Defaults to `20`.
        batches: use only the first `batches` batches; `None` uses all.
            Defaults to `None`.
        seed: seed of the random start vectors. Defaults to `0`.
        batch_size: rows per batch when `data` is arrays. Defaults to `128`.

    Returns:
        `k` Python floats, in descending order.

    Reference:
        Yao et al., "PyHessian: Neural Networks Through the Lens of the
        Hessian", IEEE BigData 2020 (power iteration with deflation).
    """
    model = check_compiled_model(model)
    k = check.check_int("k", k, minimum=1)
    iterations = check.check_int("iterations", iterations, minimum=1)
    seed = check.check_int("seed", seed, minimum=0)
    dataset = dataset_of(data, batches=check_batches(batches), batch_size=batch_size)
    variables = model.trainable_variables
    size = sum(int(np.prod(v.shape)) for v in variables)
    if k > size:
        raise check.InvalidArgumentError(
            f"`k` must be at most the number of trainable weights ({size}). Received: k={k}."
        )
    hvp_of = traced_for_model(model, ("hessian_vector_product",), _traced_hvp)(dataset)

    def hvp(vector):
        """Hv for the batch-size-weighted mean of the batches' Hessians."""
        total, count = [tf.zeros_like(v) for v in vector], 0
        for batch in dataset:
            products, rows = hvp_of(batch, vector)
            rows = int(rows)
            total = [t + h * rows for t, h in zip(total, products, strict=True)]
            count += rows
        if count == 0:
            raise ValueError("`data` yielded no batches: there is nothing to measure.")
        return [t / count for t in total]

    return _top_eigenvalues(hvp, [v.shape for v in variables], k, iterations, seed)


def _top_eigenvalues(hvp: Callable, shapes: list, k: int, iterations: int, seed: int):
    """Power iteration with deflation on the symmetric operator `hvp`."""
    eigenvalues, eigenvectors = [], []
    for j in range(k):
        vector = [
            tf.random.stateless_normal(shape, seed=[seed, j * len(shapes) + i])
            for i, shape in enumerate(shapes)
        ]
        vector, _ = _normalized(_project_out(vector, eigenvectors))
        eigenvalue = tf.constant(0.0)
        for _ in range(iterations):
            product = _project_out(hvp(vector), eigenvectors)
            eigenvalue = _dot(vector, product)  # the Rayleigh quotient vᵀHv
            next_vector, norm = _normalized(product)
            if not norm > 0:  # H is zero on what is left: the rest are 0.
                break
            vector = next_vector
        eigenvalues.append(float(eigenvalue))
        eigenvectors.append(vector)
    return sorted(eigenvalues, reverse=True)


def _traced_hvp(model: keras.Model) -> Callable:
    """(Hv, rows) of one batch by double backpropagation, traced per dataset."""
    variables = model.trainable_variables

    def batch_hvp(batch, vector):
        x, y, sample_weight = unpack(batch)
        weights = [v.value for v in variables]
        with tf.GradientTape() as outer:
            outer.watch(weights)
            with tf.GradientTape() as inner:
                inner.watch(weights)
                loss = stateless_loss(model, x, y, sample_weight, weights)
            gradients = inner.gradient(
                loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            gradient_dot_vector = _dot([tf.cast(g, tf.float32) for g in gradients], vector)
        products = outer.gradient(
            gradient_dot_vector, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return [tf.cast(h, tf.float32) for h in products], batch_rows(x)

    return traced_per_dataset(batch_hvp, [tf.TensorSpec(v.shape, tf.float32) for v in variables])
