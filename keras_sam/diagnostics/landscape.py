"""Loss along random filter-normalized directions (Li et al., NeurIPS 2018)."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

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
    weighted_mean,
)

__all__ = ["LossLandscape", "loss_landscape", "random_direction"]

NORMALIZATIONS = ("filter", "layer", None)


@dataclasses.dataclass(frozen=True, eq=False)
class LossLandscape:
    """Losses on a line or a plane through the weights w.

    Attributes:
        alphas: offsets along the first direction d, shape `(points,)`.
        betas: offsets along the second direction e, or `None` for a line.
        losses: `losses[i]` = L(w + alphas[i]·d) for a line; for a plane
            `losses[i, j]` = L(w + alphas[i]·d + betas[j]·e).
        center_loss: L(w), equal to `model.evaluate`'s loss on the same data.
        directions: the direction(s) used, each a list of arrays shaped like
            `model.trainable_variables`.
        normalization: `"filter"`, `"layer"` or `None`.
        span: the offsets run from −span to span.
        seed: seed of the random directions.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    losses: np.ndarray
    center_loss: float
    directions: tuple[list[np.ndarray], ...]
    normalization: str | None
    span: float
    seed: int

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return self.losses.ndim


def _check_normalization(normalization):
    if normalization not in NORMALIZATIONS:
        raise check.InvalidArgumentError(
            '`normalization` must be "filter", "layer" or None. '
            f"Received: normalization={normalization!r}."
        )
    return normalization


def random_direction(
    weights: Sequence, normalization: str | None = "filter", seed: int = 0
) -> list[np.ndarray]:
    """A Gaussian direction in weight space, normalized as Li et al. do.

    Args:
        weights: the weights (arrays or variables) the direction is for.
        normalization: `"filter"` rescales each filter of the direction to the
            norm of the same filter of the weights. A filter is a slice along
            the last axis, the output unit of a Keras `Dense` or `Conv` kernel.
            `"layer"` rescales each whole tensor to the norm of its weights.
            Both zero the direction on 1-D weights (biases, BatchNorm), the
            paper's default. `None` leaves the N(0, 1) direction as drawn.
            Defaults to `"filter"`.
        seed: seed of the NumPy generator. Defaults to `0`.

    Returns:
        One float32 array per weight, of its shape.

    Example:

    >>> import numpy as np
    >>> from keras_sam.diagnostics import random_direction
    >>> kernel, bias = np.array([[3.0, 0.0], [4.0, 1.0]]), np.ones(2)
    >>> d_kernel, d_bias = random_direction([kernel, bias], "filter")
    >>> np.linalg.norm(d_kernel, axis=0).round(5).tolist(), d_bias.tolist()
    ([5.0, 1.0], [0.0, 0.0])
    """
    normalization = _check_normalization(normalization)
    seed = check.check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    direction = []
    for weight in weights:
        weight = np.asarray(keras.ops.convert_to_numpy(weight), np.float64)
        d = rng.standard_normal(weight.shape)
        if normalization is not None and weight.ndim <= 1:
            d = np.zeros_like(d)
        elif normalization == "filter":
            axes = tuple(range(weight.ndim - 1))
            d *= np.sqrt(np.sum(weight**2, axis=axes)) / (np.sqrt(np.sum(d**2, axis=axes)) + 1e-10)
        elif normalization == "layer":
            d *= np.linalg.norm(weight) / (np.linalg.norm(d) + 1e-10)
        direction.append(d.astype(np.float32))
    return direction


def _offsets(span: float, points: int) -> np.ndarray:
    # Integer numerators: the middle offset of an odd grid is exactly 0.
    return span * (2 * np.arange(points) - (points - 1)) / (points - 1)


def loss_landscape(
    model: keras.Model,
    data,
    *,
    directions: int = 1,
    span: float = 1.0,
    points: int = 21,
    normalization: str | None = "filter",
    seed: int = 0,
    batches: int | None = None,
    batch_size: int = 32,
) -> LossLandscape:
    """The loss on a line or plane of random directions through the weights.

    L(w + α·d) for `points` offsets α in [−span, span] (one direction), or
    L(w + α·d + β·e) on a `points` × `points` grid (two), where d and e are
    `random_direction`s. Filter normalization makes the scale of α comparable
    across models and so is what lets landscapes of SAM and SGD be compared.

    The compiled loss (with `model.losses`) is evaluated in inference mode and
    averaged over batches exactly as `model.evaluate` does, so the loss at
    offset 0 equals `model.evaluate(data)` on the same batches. Every offset is
    evaluated inside a `keras.StatelessScope`: the weights are never assigned,
    and the model is bit-for-bit unchanged afterwards, even if an error stops
    the computation. All offsets are evaluated in one pass over `data`, by a
    graph traced once per model (`tf.function`, or `jax.jit` on JAX).

    Example:

    >>> import keras, numpy as np
    >>> from keras_sam.diagnostics import loss_landscape
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.compile(loss="mse")
    >>> x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    >>> line = loss_landscape(model, (x, y), points=5)
    >>> line.alphas.tolist(), line.losses.shape
    ([-1.0, -0.5, 0.0, 0.5, 1.0], (5,))
    >>> bool(np.isclose(line.losses[2], line.center_loss))
    True

    Args:
        model: a compiled `keras.Model`, plain or `SAMModel`.
        data: a `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batches, such a tuple of arrays (batched by `batch_size`), or
            another iterable of such batches (a generator is read once).
        directions: 1 for a line, 2 for a plane. Defaults to `1`.
        span: offsets run over [−span, span], span > 0. Defaults to `1.0`.
        points: offsets per direction, >= 2; odd includes 0. Defaults to `21`.
        normalization: `"filter"`, `"layer"` or `None`, see
            `random_direction`. Defaults to `"filter"`.
        seed: seed of the directions (direction i uses `seed + i`).
            Defaults to `0`.
        batches: use only the first `batches` batches; `None` uses all.
            Defaults to `None`.
        batch_size: rows per batch when `data` is arrays. Defaults to `32`,
            as `model.evaluate`'s: offset 0 then equals `model.evaluate(x, y)`
            bit for bit.

    Returns:
        A `LossLandscape`.

    Reference:
        Li et al., "Visualizing the Loss Landscape of Neural Nets",
        NeurIPS 2018.
    """
    model = check_compiled_model(model)
    integer = isinstance(directions, numbers.Integral) and not isinstance(directions, bool)
    if not integer or directions not in (1, 2):
        raise check.InvalidArgumentError(
            f"`directions` must be 1 (a line) or 2 (a plane). Received: directions={directions!r}."
        )
    span = check.check_real("span", span, minimum=0.0, exclusive_minimum=True)
    points = check.check_int("points", points, minimum=2)
    normalization = _check_normalization(normalization)
    seed = check.check_int("seed", seed, minimum=0)
    dataset = dataset_of(data, batches=check_batches(batches), batch_size=batch_size)
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    drawn = tuple(random_direction(weights, normalization, seed + i) for i in range(directions))
    alphas = _offsets(span, points)
    betas = alphas.copy() if directions == 2 else None
    grid = np.meshgrid(alphas, betas if betas is not None else [0.0], indexing="ij")
    offsets = np.stack(grid, -1).reshape(-1, 2).astype(np.float32)
    # One direction is a plane whose second direction is zero.
    second = drawn[1] if directions == 2 else [np.zeros_like(d) for d in drawn[0]]
    losses_of = traced_for_model(model, ("loss_landscape",), _traced_losses)(dataset)
    per_batch = (
        (np.asarray(losses), np.asarray(rows))
        for losses, rows in (losses_of(b, offsets, drawn[0], second) for b in dataset)
    )
    mean_losses = weighted_mean(per_batch)
    shape = (points, points) if directions == 2 else (points,)
    return LossLandscape(
        alphas=alphas,
        betas=betas,
        losses=mean_losses[:-1].reshape(shape),
        center_loss=float(mean_losses[-1]),
        directions=drawn,
        normalization=normalization,
        span=span,
        seed=seed,
    )


def _traced_losses(model: keras.Model) -> Callable:
    """(L_b at each offset, then L_b(w); rows) of one batch, traced per dataset.

    Offsets and directions are arguments, so every landscape of a model shares
    one trace.
    """
    ops = keras.ops
    map_losses = backend().map_losses
    rows_of = backend().batch_rows

    def losses_at_offsets(centre, state, batch, offsets, first, second):
        x, y, sample_weight = unpack(batch)

        def loss_at(offset):
            moved = [
                w + ops.cast(offset[0] * d + offset[1] * e, w.dtype)
                for w, d, e in zip(centre, first, second, strict=True)
            ]
            return ops.cast(stateless_loss(model, x, y, sample_weight, moved, state), "float32")

        losses = map_losses(loss_at, offsets)
        # The centre is read as is (w + 0·d could turn -0.0 into 0.0).
        centre_loss = ops.cast(stateless_loss(model, x, y, sample_weight, centre, state), "float32")
        return ops.concatenate([losses, ops.reshape(centre_loss, (1,))], 0), rows_of(x)

    direction_spec = [Spec(tuple(v.shape)) for v in model.trainable_variables]
    return traced_per_dataset(
        model, losses_at_offsets, Spec((None, 2)), direction_spec, direction_spec
    )
