"""Ascent rules: the weight perturbation ε̂ that SAM climbs to before descending.

SAM (Foret et al., 2021) approximates the worst weights in a ρ-ball around w by
one first-order step. For the ball of the p-norm, the maximiser of gᵀε subject
to ‖ε‖_p ≤ ρ is the dual-norm direction

    ε̂ = ρ · sign(g) · |g|^(q-1) / (‖g‖_q^q)^(1/p),      1/p + 1/q = 1,

which is ρ·g/‖g‖₂ for p = 2 and ρ·sign(g) (the FGSM step) for p = ∞.

ASAM (Kwon et al., 2021) takes the same step in a space rescaled elementwise by
T_w = |w| + η, which makes the ball scale-invariant: ε̂ = T_w · dual_p(T_w · g).
For p = 2 this is ρ·T_w²·g / ‖T_w·g‖₂.

Every function here is pure: it reads gradient and weight tensors and returns
new tensors; nothing is assigned. Norms are always taken in float32 over all
variables together, and a non-finite norm gives ε̂ = 0 so that a bad batch can
never move the weights to NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import keras

from keras_sam import _validation as check
from keras_sam._validation import InvalidArgumentError
from keras_sam.gradient_math import all_finite, as_dense

__all__ = ["perturbation", "validate_p"]

ops = keras.ops


def validate_p(p: float) -> float:
    """Returns `p` as a float, or raises unless 1 < p <= inf."""
    try:
        value = None if isinstance(p, bool) or not isinstance(p, numbers.Real) else float(p)
    except OverflowError:  # an int beyond any float
        value = None
    if value is None or not value > 1:
        raise InvalidArgumentError(
            "`p` must be a number with 1 < p <= inf (2 for SAM, "
            "float('inf') for sign ascent). "
            f"Received: p={p!r} (of type {type(p).__name__})."
        )
    return value


def _as_float32(tensor):
    tensor = ops.convert_to_tensor(as_dense(tensor))
    return tensor if tensor.dtype == "float32" else ops.cast(tensor, "float32")


def _is_tensor_like(value) -> bool:
    """A tensor, or a variable of Keras or of the backend (read as is)."""
    return ops.is_tensor(value) or isinstance(value, keras.Variable) or (
        type(value).__name__ in ("ResourceVariable", "UninitializedVariable")
    )


def _sum(terms):
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _dual_direction(gradients: list, rho, p: float, eps: float) -> list:
    """ρ times the unit dual-norm direction of float32 `gradients` (no Nones)."""
    rho = _as_float32(rho)
    zero = ops.zeros_like(rho)
    if p == 2.0:
        # The SAM paper's rule, literally: ρ·g / (‖g‖₂ + eps).
        norm = ops.sqrt(_sum([ops.sum(ops.square(g)) for g in gradients]))
        # No ascent from a zero (or non-finite) gradient: with eps flushed to
        # zero in float32, rho / (0 + eps) * 0 would be NaN.
        usable = ops.logical_and(ops.isfinite(norm), norm > 0)
        scale = ops.where(usable, rho / (norm + eps), zero)
        # Non-finite entries would turn 0 * inf into NaN: zero them when skipping.
        return [scale * ops.where(usable, g, ops.zeros_like(g)) for g in gradients]
    finite = all_finite(gradients)
    gradients = [ops.where(finite, g, ops.zeros_like(g)) for g in gradients]
    scale = ops.where(finite, rho, zero)
    if math.isinf(p):
        return [scale * ops.sign(g) for g in gradients]
    # ε̂ does not change when g is scaled: dividing by the largest |g| first
    # keeps |g|^q inside float32 for p near 1, and eps relative to a norm >= 1.
    largest = ops.max(ops.stack([ops.max(ops.abs(g)) for g in gradients]))
    units = [ops.divide_no_nan(g, largest) for g in gradients]
    q_minus_1 = 1.0 / (p - 1.0)  # q - 1 where 1/p + 1/q = 1
    magnitudes = [ops.abs(u) for u in units]
    sum_q = _sum([ops.sum(ops.power(m, q_minus_1 + 1.0)) for m in magnitudes])
    norm = ops.power(sum_q, 1.0 / p)
    scale = ops.where(norm > 0, scale / (norm + eps), ops.zeros_like(norm))  # as for p = 2
    return [scale * ops.sign(u) * ops.power(m, q_minus_1) for u, m in zip(units, magnitudes)]


def perturbation(
    gradients: Sequence,
    variables: Sequence,
    rho,
    *,
    p: float = 2,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> list:
    """Returns the SAM ascent ε̂ for each variable (None where gradient is None).

    Args:
        gradients: one gradient per variable, or `None` for a variable the loss
            does not depend on (it counts as zero and gets `None` back).
        variables: the variables (or their value tensors) the gradients belong
            to. Only read when `adaptive=True`.
        rho: radius of the neighbourhood; a Python float in [0, 1e4] or a scalar
            tensor (read as is, e.g. a schedule's value).
        p: the norm of the ball, 1 < p ≤ ∞. Defaults to `2`.
        adaptive: ASAM's scale-invariant ball (T_w = |w| + η). Defaults to
            `False`.
        eta: ASAM's η. Defaults to `0.01`.
        eps: added to the norm to keep a zero gradient finite. Defaults to
            `1e-12`.

    Returns:
        A list as long as `gradients`, each ε̂ in its variable's dtype.

    Example:

    >>> import keras
    >>> from keras_sam import perturbation
    >>> g = [keras.ops.array([3.0, 4.0]), None]
    >>> e = perturbation(g, [keras.ops.zeros(2), keras.ops.zeros(1)], rho=0.5)
    >>> [round(float(v), 6) for v in keras.ops.convert_to_numpy(e[0])], e[1]
    ([0.3, 0.4], None)

    A custom training loop:

    ```python
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    e_hat = keras_sam.perturbation(grads, model.trainable_variables, rho=0.05)
    w = [tf.identity(v) for v in model.trainable_variables]   # exact copy of w
    for v, e in zip(model.trainable_variables, e_hat):
        v.assign_add(e)                           # climb to w + ε̂
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    sam_grads = tape.gradient(loss, model.trainable_variables)
    for v, saved in zip(model.trainable_variables, w):
        v.assign(saved)                           # back to w, bit for bit
    optimizer.apply(sam_grads, model.trainable_variables)
    ```
    """
    p = validate_p(p)
    if not _is_tensor_like(rho):
        rho = check.check_rho_value(rho)
    adaptive = check.check_bool("adaptive", adaptive)
    eta = check.check_real("eta", eta, minimum=0.0)
    eps = check.check_real("eps", eps, minimum=0.0, exclusive_minimum=True)
    gradients = list(gradients)
    variables = list(variables)
    if len(gradients) != len(variables):
        raise ValueError(
            "`gradients` and `variables` must have the same length. Received "
            f"{len(gradients)} gradients for {len(variables)} variables."
        )
    present = [i for i, g in enumerate(gradients) if g is not None]
    result: list = [None] * len(gradients)
    if not present:
        return result
    grads32 = [_as_float32(gradients[i]) for i in present]
    if adaptive:
        scales = [ops.abs(_as_float32(variables[i])) + eta for i in present]
        grads32 = [t * g for t, g in zip(scales, grads32)]
        directions = _dual_direction(grads32, rho, p, eps)
        directions = [t * d for t, d in zip(scales, directions)]
    else:
        directions = _dual_direction(grads32, rho, p, eps)
    for i, direction in zip(present, directions):
        dtype = keras.backend.standardize_dtype(gradients[i].dtype)
        result[i] = direction if dtype == "float32" else ops.cast(direction, dtype)
    return result
