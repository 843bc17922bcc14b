"""State a SAM variant keeps per weight: LookSAM's direction, MSAM's momentum.

`PerWeightState` holds one variable per weight the base model created
trainable, frozen now or not, so that freezing or unfreezing layers between
fits (fine-tuning) keeps each weight's own state. The variables are the
wrapper's own (saved in `.keras` and weight files, and, through
`SAMModel._trackable_children`, in `tf.train.Checkpoint`s), created once the
base model is built. A variant keeps it as an attribute; `SAMModel` finds it
there to build and save it.

Example:

>>> import keras
>>> from keras_sam import SAMModel
>>> from keras_sam.variant_state import PerWeightState
>>> base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> model = SAMModel(base)
>>> momentum = PerWeightState(model, "momentum")
>>> [tuple(v.shape) for v in momentum.of(base.trainable_variables)]
[(3, 2), (2,)]
"""

from __future__ import annotations

import keras

from keras_sam import _keras_internals as internals

__all__ = ["PerWeightState"]


class PerWeightState:
    """One zero-initialized, non-trainable variable per trainable weight of the base.

    Args:
        model: the `SAMModel` that owns the variables.
        name: the variables' name (also their key in checkpoints,
            `{name}_{index}`).
        dtype: the variables' dtype; `None` takes each weight's.
    """

    def __init__(self, model: keras.Model, name: str, dtype: str | None = None):
        self.model = model
        self.name = name
        self.dtype = dtype
        self.variables: list | None = None
        self._index: dict[int, int] = {}
        if model.base_model.built:
            self.build()

    def _weights(self) -> list:
        """The base's weights created trainable, in `base_model.weights` order
        (that of `trainable_weights` when nothing is frozen)."""
        created = {
            id(v)
            for layer in internals.flatten_layers(self.model.base_model)
            for v in internals.created_trainable_variables(layer)
        }
        return [v for v in self.model.base_model.weights if id(v) in created]

    def build(self) -> None:
        """Creates the variables, once the base model's weights exist."""
        if self.variables is not None or not self.model.base_model.built:
            return
        weights = self._weights()
        # The wrapper may be built already: called before its subclassed base
        # had created its weights.
        with internals.state_unlocked(self.model):
            self.variables = [
                self.model.add_weight(
                    shape=v.shape,
                    initializer="zeros",
                    dtype=self.dtype or v.dtype,
                    trainable=False,
                    name=self.name,
                )
                for v in weights
            ]
        self._index = {id(v): i for i, v in enumerate(weights)}

    def of(self, weights) -> list:
        """The state variable of each of `weights` (the weights trained now)."""
        self.build()
        missing = [v.path for v in weights if id(v) not in self._index]
        if missing:
            raise ValueError(
                f"{type(self.model).__name__} keeps its {self.name!r} state for each "
                f"weight created trainable; these are trained now but were not: {missing}."
            )
        return [self.variables[self._index[id(v)]] for v in weights]
