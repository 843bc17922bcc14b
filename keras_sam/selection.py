"""Which weights SAM's ascent moves: all of them, or a chosen subset (SAM-ON).

SAM-ON (Mueller et al., NeurIPS 2023) perturbs only the normalization layers'
affine parameters, under 0.1% of the weights, and matched or beat full SAM on
ResNets and ViTs. The ascent's norm is then taken over the chosen weights
only, so that ‖ε̂‖ = ρ; every weight still gets its gradient from the second
pass, taken at the partly perturbed point.

`perturb` is one of:

- `None`: every trainable weight (SAM);
- `"normalization"`: every trainable weight of a Keras normalization layer
  (`BatchNormalization`, `LayerNormalization`, `GroupNormalization`,
  `UnitNormalization`, `RMSNormalization`, or a subclass), nested models
  included;
- a callable taking a `keras.Variable` and returning whether ε̂ moves it. A
  callable cannot be saved in a `.keras` file (`get_config` says so).

Example:

>>> import keras
>>> from keras_sam.selection import chosen_weights
>>> base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
...                          keras.layers.LayerNormalization()])
>>> chosen_weights("normalization", base, base.trainable_variables)
[False, False, True, True]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras

from keras_sam import _keras_internals as internals
from keras_sam._validation import InvalidArgumentError

__all__ = ["GROUPS", "any_chosen", "check_perturb", "chosen_weights"]


def _normalization_layers() -> tuple[type, ...]:
    names = (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "RMSNormalization",  # Keras 3.9 and later
    )
    return tuple(getattr(keras.layers, name) for name in names if hasattr(keras.layers, name))


#: The named groups `perturb` accepts, each a test of a layer.
GROUPS: dict[str, Callable] = {
    "normalization": lambda layer: isinstance(layer, _normalization_layers()),
}


def check_perturb(value):
    """Returns `value` if `perturb` accepts it, or raises `InvalidArgumentError`."""
    if value is None or callable(value) or (isinstance(value, str) and value in GROUPS):
        return value
    accepted = ", ".join(repr(name) for name in GROUPS)
    raise InvalidArgumentError(
        "`perturb` must be None (every trainable weight), a group name "
        f"({accepted}) or a callable that takes a `keras.Variable` and returns a "
        f"bool. Received: perturb={value!r} (of type {type(value).__name__})."
    )


def chosen_weights(perturb, base_model: keras.Model, variables) -> list[bool]:
    """Whether ε̂ moves each of `variables` (aligned with them)."""
    if perturb is None:
        return [True] * len(variables)
    if isinstance(perturb, str):
        test = GROUPS[perturb]
        chosen = {
            id(v)
            for layer in internals.flatten_layers(base_model)
            if test(layer)
            for v in layer.trainable_variables
        }
        return [id(v) in chosen for v in variables]
    return [bool(perturb(v)) for v in variables]


def any_chosen(perturb, base_model: keras.Model, variables) -> bool:
    """Whether ε̂ moves any of `variables`; warns when `perturb` chooses none
    (every step is then the plain step, one pass)."""
    chosen = any(chosen_weights(perturb, base_model, variables))
    if not chosen and variables:
        warnings.warn(
            f"`perturb={perturb!r}` chooses none of the {len(variables)} trainable "
            f"variables of {base_model.name!r}: every step is the plain step (one pass).",
            stacklevel=2,
        )
    return chosen
