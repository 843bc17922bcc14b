"""Constructor argument checks shared by every model class.

Errors are `InvalidArgumentError`, which is both a `ValueError` and a
`TypeError`, so callers may catch either; the message always names the
argument, the value received and what is accepted.
"""

from __future__ import annotations

import math
import numbers

import keras


class InvalidArgumentError(ValueError, TypeError):
    """A constructor argument has the wrong type or value."""


def _describe(value) -> str:
    return f"{value!r} (of type {type(value).__name__})"


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
    value = float(value)
    too_small = minimum is not None and (
        value <= minimum if exclusive_minimum else value < minimum
    )
    too_large = maximum is not None and value > maximum
    if not math.isfinite(value) or too_small or too_large:
        raise InvalidArgumentError(
            f"`{name}` must be {accepted}. Received: {name}={value!r}."
        )
    return value


def check_int(name: str, value, *, minimum: int) -> int:
    """Returns `value` as an int >= `minimum`, or raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={_describe(value)}."
        )
    if value < minimum:
        raise InvalidArgumentError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}."
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
    """Returns a float rho >= 0, or a `LearningRateSchedule` unchanged."""
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            "`rho` must be a finite number >= 0 or a "
            "`keras.optimizers.schedules.LearningRateSchedule`. "
            f"Received: rho={_describe(value)}."
        )
    return check_real("rho", value, minimum=0.0)


def check_base_model(value) -> keras.Model:
    """Returns `value` if it is a `keras.Model`, or raises."""
    if not isinstance(value, keras.Model):
        raise InvalidArgumentError(
            "`base_model` must be a `keras.Model` (Sequential, functional or "
            f"subclassed). Received: base_model={_describe(value)}."
        )
    return value
