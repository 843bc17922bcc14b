"""m-sharpness: how much the loss rises at SAM's first-order worst point."""

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
    weighted_mean,
)
from keras_sam.perturbation import perturbation, validate_p

__all__ = ["sharpness"]


def sharpness(
    model: keras.Model,
    data,
    rho: float = 0.05,
    *,
    p: float = 2,
    adaptive: bool = False,
    eta: float = 0.01,
    batches: int | None = None,
    batch_size: int | None = None,
) -> float:
    """The SAM paper's m-sharpness of `model` on `data`, with m the batch size.

    For each batch b, the worst weights in the ρ-ball are approximated by one
    first-order ascent step ε̂_b = `keras_sam.perturbation(∇L_b(w), w, rho)`,
    and the sharpness is the rise of the loss there,

        sharpness = mean_b [ L_b(w + ε̂_b) − L_b(w) ],

    the mean weighted by batch size, as `model.evaluate` averages. L is the
    compiled loss with `model.losses`, in inference mode (`training=False`):
    deterministic, and no BatchNorm statistic is touched. The weights are never
    assigned (see `keras_sam.diagnostics`). The traced graph (`tf.function`,
    or `jax.jit` on JAX) is kept with the model, so that repeated calls (a
    sweep over `rho`) trace only once.

    Example:

    >>> import keras, numpy as np
    >>> from keras_sam.diagnostics import sharpness
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(loss="mse")
    >>> x, y = np.ones((16, 3), "float32"), np.zeros((16, 1), "float32")
    >>> value = sharpness(model, (x, y), rho=0.05)
    >>> value > 0
    True

    Args:
        model: a compiled `keras.Model`, plain or `SAMModel`.
        data: a `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batches (one ε̂ per batch), such a tuple of arrays (one batch,
            unless `batch_size` is given), or another iterable of such
            batches (a generator is read once and kept).
        rho: radius 0 <= ρ <= 1e4 of the neighbourhood. Defaults to `0.05`.
        p: norm of the ball, 1 < p <= inf. Defaults to `2`.
        adaptive: ASAM's scale-invariant ball. Defaults to `False`.
        eta: ASAM's η. Defaults to `0.01`.
        batches: use only the first `batches` batches; `None` uses all.
            Defaults to `None`.
        batch_size: rows per batch when `data` is arrays; `None` takes the
            arrays as one batch, the sharpness of the whole set. Defaults to
            `None`. (Large arrays: pass a batch size, or a batched dataset.)

    Returns:
        The sharpness, a Python float; positive near a minimum, it can be
        negative where the loss curves down along ε̂.

    Reference:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021, Sections 2 and 4.1 (m-sharpness).
    """
    model = check_compiled_model(model)
    rho = check.check_rho_value(rho)
    p = validate_p(p)
    adaptive = check.check_bool("adaptive", adaptive)
    eta = check.check_real("eta", eta, minimum=0.0)
    dataset = dataset_of(data, batches=check_batches(batches), batch_size=batch_size)
    rise_of = traced_for_model(
        model, ("sharpness", p, adaptive, eta), lambda m: _traced_rise(m, p, adaptive, eta)
    )(dataset)
    rho = np.float32(rho)  # an argument: a sweep over rho traces once
    rises = ((np.asarray(d), np.asarray(n)) for d, n in (rise_of(b, rho) for b in dataset))
    return float(weighted_mean(rises))


def _traced_rise(model: keras.Model, p: float, adaptive: bool, eta: float) -> Callable:
    """(L_b(w + ε̂_b) − L_b(w), rows) of one batch, traced per dataset."""
    gradients_of = backend().value_and_gradients
    rows_of = backend().batch_rows

    def rise(weights, state, batch, rho):
        x, y, sample_weight = unpack(batch)

        def loss_at(values):
            return stateless_loss(model, x, y, sample_weight, values, state)

        loss, gradients = gradients_of(loss_at, weights)
        e_hat = perturbation(gradients, weights, rho, p=p, adaptive=adaptive, eta=eta)
        moved = [w if e is None else w + e for w, e in zip(weights, e_hat, strict=True)]
        return loss_at(moved) - loss, rows_of(x)

    return traced_per_dataset(model, rise, Spec(()))
