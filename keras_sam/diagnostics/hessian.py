"""Top Hessian eigenvalues by Lanczos iteration on exact Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from keras_sam import _validation as check
from keras_sam.diagnostics._common import (
    Spec,
    backend,
    check_batches,
    check_compiled_model,
    dataset_of,
    stateless_loss,
    traced_for_model,
    traced_per_dataset,
    unpack,
)

__all__ = ["hessian_eigenvalues"]


ops = keras.ops


def _dot(a, b):
    """Σ_i sum(a_i·b_i), added left to right (as `tf.add_n` adds: the same bits)."""
    total = None
    for u, v in zip(a, b, strict=True):
        term = ops.sum(u * v)
        total = term if total is None else total + term
    return total


def _normalized(vector):
    norm = ops.sqrt(_dot(vector, vector))
    return [v / norm for v in vector], float(norm)


def _project_out(vector, basis):
    """`vector` minus its components along the orthonormal `basis` vectors,
    and those components (modified Gram–Schmidt)."""
    coefficients = []
    for u in basis:
        coefficient = _dot(u, vector)
        vector = [v - coefficient * b for v, b in zip(vector, u, strict=True)]
        coefficients.append(float(coefficient))
    return vector, np.array(coefficients)


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
    (weighted by batch size), is never formed: each iteration needs only the
    product Hv, computed exactly in float32: on TensorFlow by double
    backpropagation (the gradient of ∇L·v) under `tf.function`, on JAX
    forward over reverse (`jax.jvp` of `jax.grad`) under `jax.jit`, traced
    once per model and kept with it, like `model.predict_function`.

    The iteration is Lanczos's: power iteration that keeps every iterate.
    From a fixed random start v, the products Hv, H²v, … span a Krylov
    subspace; each new vector is orthogonalized (twice) against all before
    it, and the eigenvalues of H restricted to the subspace (Rayleigh–Ritz,
    in float64) approximate H's extreme ones. The subspace of m vectors
    contains the m-th power iterate, so the estimate is never worse than
    power iteration's with deflation at the same number of products, and
    usually far better: power iteration's error falls like
    (λ₂/λ₁)^(2·iterations), which stalls when λ₂ is close to λ₁, as in most
    real spectra. With m ≥ the number of weights the result is exact up to
    float32 rounding. If the subspace stops growing (H is zero or of low
    rank along it), it restarts from a new random direction. The random
    directions are `tf.random.stateless_normal`'s on every backend (drawn in
    NumPy on JAX), so that an estimate that has not converged is the same
    on TensorFlow and JAX too, up to float32 rounding.

    The m = min(k·iterations, number of weights) vectors are kept: memory
    for m copies of the trainable weights.

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
            batches, such a tuple of arrays (batched by `batch_size`), or
            another iterable of such batches (a generator is read once and
            kept; the iteration passes over the batches once per step).
        k: how many eigenvalues, >= 1. Defaults to `1`.
        iterations: Lanczos steps per eigenvalue asked for, >= 1: the
            subspace grows to k·iterations vectors (at most the number of
            weights), each one Hessian-vector product, i.e. one pass over the
            batches: the cost of as many power-iteration steps. Defaults to
            `20`.
        batches: use only the first `batches` batches; `None` uses all.
            Defaults to `None`.
        seed: seed of the random start vectors. Defaults to `0`.
        batch_size: rows per batch when `data` is arrays. Defaults to `128`.

    Returns:
        `k` Python floats, in descending order.

    Reference:
        Yao et al., "PyHessian: Neural Networks Through the Lens of the
        Hessian", IEEE BigData 2020 (Hessian-vector products, power and
        Lanczos iterations). Golub and Van Loan, "Matrix Computations",
        §10.1 (Lanczos), §10.3 (full reorthogonalization).
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
        total, count = [ops.zeros_like(v) for v in vector], 0
        for batch in dataset:
            products, rows = hvp_of(batch, vector)
            rows = int(rows)
            total = [t + h * rows for t, h in zip(total, products, strict=True)]
            count += rows
        if count == 0:
            raise ValueError("`data` yielded no batches: there is nothing to measure.")
        return [t / count for t in total]

    steps = min(k * iterations, size)
    return _top_eigenvalues(hvp, [v.shape for v in variables], k, steps, seed)


# A residual this small relative to the largest entry of VᵀHV so far is
# float32 rounding: the subspace is (numerically) invariant under H.
_BREAKDOWN = 1e-5


def _random_direction(shapes: list, seed: int, draw: int, basis: list):
    """A fixed random unit vector orthogonal to `basis`."""
    draw_normal = backend().stateless_normal  # the same numbers on every backend
    vector = [
        draw_normal(shape, seed=[seed, draw * len(shapes) + i]) for i, shape in enumerate(shapes)
    ]
    vector, _ = _project_out(_project_out(vector, basis)[0], basis)
    return _normalized(vector)[0]


def _top_eigenvalues(hvp: Callable, shapes: list, k: int, steps: int, seed: int):
    """The k largest Ritz values of the symmetric operator `hvp` from a Krylov
    subspace of `steps` orthonormal vectors (Lanczos with full
    reorthogonalization; the projections VᵀHV are kept whole, so no
    tridiagonal structure is assumed)."""
    basis, draws = [], 0
    projected = np.zeros((steps, steps))  # upper triangle of VᵀHV
    vector = _random_direction(shapes, seed, draws, basis)
    for j in range(steps):
        basis.append(vector)
        product = hvp(vector)
        # Against every vector so far, twice ("twice is enough"): the
        # coefficients are column j of VᵀHV, the rest the next direction.
        product, first = _project_out(product, basis)
        product, second = _project_out(product, basis)
        projected[: j + 1, j] = first + second
        if j + 1 == steps:
            break
        vector, norm = _normalized(product)
        if not norm > _BREAKDOWN * np.abs(projected).max():
            draws += 1  # invariant subspace: go on from a new direction
            vector = _random_direction(shapes, seed, draws, basis)
    ritz = np.triu(projected) + np.triu(projected, 1).T
    return [float(value) for value in np.linalg.eigvalsh(ritz)[::-1][:k]]


def _traced_hvp(model: keras.Model) -> Callable:
    """(Hv, rows) of one batch from exact second derivatives, traced per dataset."""
    product_of = backend().hessian_vector_product
    rows_of = backend().batch_rows

    def batch_hvp(weights, state, batch, vector):
        x, y, sample_weight = unpack(batch)

        def loss_at(values):
            return stateless_loss(model, x, y, sample_weight, values, state)

        return product_of(loss_at, weights, vector), rows_of(x)

    return traced_per_dataset(
        model, batch_hvp, [Spec(tuple(v.shape)) for v in model.trainable_variables]
    )
