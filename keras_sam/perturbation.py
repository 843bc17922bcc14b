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
import tensorflow as tf

from keras_sam import _validation as check
from keras_sam._validation import InvalidArgumentError
from keras_sam.gradient_math import all_finite

__all__ = ["perturbation", "validate_p"]


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


def _as_float32(tensor) -> tf.Tensor:
    tensor = tf.convert_to_tensor(tensor)
    return tensor if tensor.dtype == tf.float32 else tf.cast(tensor, tf.float32)


def _dual_direction(
    gradients: list[tf.Tensor], rho, p: float, eps: float
) -> list[tf.Tensor]:
    """ρ times the unit dual-norm direction of float32 `gradients` (no Nones)."""
    rho = _as_float32(rho)
    if p == 2.0:
        # The SAM paper's rule, literally: ρ·g / (‖g‖₂ + eps).
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in gradients]))
        # No ascent from a zero (or non-finite) gradient: with eps flushed to
        # zero in float32, rho / (0 + eps) * 0 would be NaN.
        usable = tf.logical_and(tf.math.is_finite(norm), norm > 0)
        scale = tf.where(usable, rho / (norm + eps), tf.zeros_like(norm))
        # Non-finite entries would turn 0 * inf into NaN: zero them when skipping.
        return [scale * tf.where(usable, g, tf.zeros_like(g)) for g in gradients]
    finite = all_finite(gradients)
    gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
    scale = tf.where(finite, rho, tf.zeros_like(rho))
    if math.isinf(p):
        return [scale * tf.sign(g) for g in gradients]
    # ε̂ does not change when g is scaled: dividing by the largest |g| first
    # keeps |g|^q inside float32 for p near 1, and eps relative to a norm >= 1.
    largest = tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(g)) for g in gradients]))
    units = [tf.math.divide_no_nan(g, largest) for g in gradients]
    q_minus_1 = 1.0 / (p - 1.0)  # q - 1 where 1/p + 1/q = 1
    magnitudes = [tf.abs(u) for u in units]
    sum_q = tf.add_n([tf.reduce_sum(tf.pow(m, q_minus_1 + 1.0)) for m in magnitudes])
    norm = tf.pow(sum_q, 1.0 / p)
    scale = tf.where(norm > 0, scale / (norm + eps), tf.zeros_like(norm))  # as for p = 2
    return [scale * tf.sign(u) * tf.pow(m, q_minus_1) for u, m in zip(units, magnitudes)]


def perturbation(
    gradients: Sequence[tf.Tensor | None],
    variables: Sequence,
    rho,
    *,
    p: float = 2,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
) -> list[tf.Tensor | None]:
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

    >>> import tensorflow as tf
    >>> from keras_sam import perturbation
    >>> g = [tf.constant([3.0, 4.0]), None]
    >>> e = perturbation(g, [tf.zeros(2), tf.zeros(1)], rho=0.5)
    >>> [round(float(v), 6) for v in e[0]], e[1]
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
    if not (tf.is_tensor(rho) or isinstance(rho, (tf.Variable, keras.Variable))):
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
    result: list[tf.Tensor | None] = [None] * len(gradients)
    if not present:
        return result
    grads32 = [_as_float32(gradients[i]) for i in present]
    if adaptive:
        scales = [tf.abs(_as_float32(variables[i])) + eta for i in present]
        grads32 = [t * g for t, g in zip(scales, grads32)]
        directions = _dual_direction(grads32, rho, p, eps)
        directions = [t * d for t, d in zip(scales, directions)]
    else:
        directions = _dual_direction(grads32, rho, p, eps)
    for i, direction in zip(present, directions):
        dtype = tf.as_dtype(gradients[i].dtype)
        result[i] = direction if dtype == tf.float32 else tf.cast(direction, dtype)
    return result
