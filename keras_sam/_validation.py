"""Constructor argument checks shared by every model class.

Errors are `InvalidArgumentError`, which is both a `ValueError` and a
`TypeError`, so callers may catch either; the message always names the
argument, the value received and what is accepted.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np

#: The largest ρ accepted. Published runs use 0.01–2 (ASAM up to about 5); a
#: step of 10**4 leaves any model's working range, and near float32's largest
#: value w + ε̂ overflows in the forward pass, so a larger ρ is a mistake.
MAX_RHO = 1e4
#: The largest `alpha` accepted (GSAM, LookSAM), for the same reason: the
#: papers use 0.1–1, and near float32's largest value the step overflows.
MAX_ALPHA = 1e4


class InvalidArgumentError(ValueError, TypeError):
    """A constructor argument has the wrong type or value."""


def _describe(value) -> str:
    return f"{value!r} (of type {type(value).__name__})"


def as_float32(value: float) -> float:
    """`value` rounded to float32, as a variable holding it reads back."""
    return float(np.float32(value))


def check_real(
    name: str,
    value,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
) -> float:
    """Returns `value` as a finite float within the bounds, or raises."""
    accepted = "a finite real number"
    if minimum is not None:
        accepted += f" {'>' if exclusive_minimum else '>='} {minimum}"
    if maximum is not None:
        accepted += f" and <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"`{name}` must be {accepted}. Received: {name}={_describe(value)}."
        )
    received = value
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        value = math.inf
    with np.errstate(over="ignore"):
        # The step computes in float32, where a larger value is inf.
        in_float32 = bool(np.isfinite(np.float32(value)))
    too_small = minimum is not None and (
        value <= minimum if exclusive_minimum else value < minimum
    )
    too_large = maximum is not None and value > maximum
    if not in_float32 or too_small or too_large:
        if maximum is None:
            accepted += " that float32 can hold (|x| < 3.4e38)"
        raise InvalidArgumentError(
            f"`{name}` must be {accepted}. "
            f"Received: {name}={value if math.isfinite(value) else received!r}."
        )
    return value


def check_fraction_below_one(name: str, value) -> float:
    """Returns `value` as a float with 0 <= value < 1 (a decay), or raises."""
    value = check_real(name, value, minimum=0.0)
    if value >= 1.0:
        raise InvalidArgumentError(
            f"`{name}` must be a finite real number >= 0 and < 1. Received: {name}={value!r}."
        )
    return value


def check_int(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
    """Returns `value` as an int >= `minimum` (and <= `maximum`), or raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={_describe(value)}."
        )
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
        raise InvalidArgumentError(
            f"`{name}` must be an integer {bounds}. Received: {name}={value!r}."
        )
    return int(value)


def check_bool(name: str, value) -> bool:
    """Returns `value` if it is a bool, or raises."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(
            f"`{name}` must be True or False. Received: {name}={_describe(value)}."
        )
    return value


def check_rho(value):
    """Returns a float 0 <= rho <= `MAX_RHO`, or a `LearningRateSchedule` unchanged."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"`rho` must be a finite number >= 0 and <= {MAX_RHO:g}, or a "
            "`keras.optimizers.schedules.LearningRateSchedule`. "
            f"Received: rho={_describe(value)}."
        )
    return check_rho_value(value)


def check_rho_value(value) -> float:
    """Returns `value` as a float with 0 <= rho <= `MAX_RHO`, or raises."""
    return check_real("rho", value, minimum=0.0, maximum=MAX_RHO)


def check_alpha(value) -> float:
    """Returns `value` as a float with 0 <= alpha <= `MAX_ALPHA`, or raises."""
    return check_real("alpha", value, minimum=0.0, maximum=MAX_ALPHA)


def check_base_model(value) -> keras.Model:
    """Returns `value` if it is a `keras.Model`, or raises."""
    if not isinstance(value, keras.Model):
        raise InvalidArgumentError(
            "`base_model` must be a `keras.Model` (Sequential, functional or "
            f"subclassed). Received: base_model={_describe(value)}."
        )
    return value
