"""The training modes the benchmark times, and how each is built and compiled.

A mode wraps a freshly built base model: plain Keras `fit` (the base itself),
keras-sam's `SAMModel` and its variants, and the Keras 2 SAM
(`tf_keras.models.experimental.SharpnessAwareMinimization`) with its own
plain baseline. Every mode is compiled alike: SGD with momentum 0.9, sparse
categorical cross-entropy on logits, accuracy, and `jit_compile=xla`.

Each compiled model counts how often its `train_step` is traced (the Python
body only runs while `tf.function` traces), which is how the benchmark checks
that nothing retraces after the first epoch.

Example:

>>> from benchmarks.modes import MODES, unavailable_reason
>>> MODES["sam"].label
'SAMModel'
>>> unavailable_reason(MODES["plain"]) is None
True
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType

from benchmarks.models import build

__all__ = ["MODES", "DEFAULT_MODES", "Mode", "TracedModel", "compile_mode", "unavailable_reason"]

RHO = 0.05
LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Mode:
    """One row kind of the table.

    Attributes:
        name: the `--modes` name.
        label: what the table prints.
        framework: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2).
        wrap: turns the base model into the model to `fit` (`None`: the base).
        requires: `keras_sam` attribute the mode needs (None: nothing).
        baseline: the mode whose step it is compared with in its framework.
    """

    name: str
    label: str
    framework: str
    wrap: Callable | None = None
    requires: str | None = None
    baseline: str = "plain"


def _keras_sam_class(name: str):
    import keras_sam

    return getattr(keras_sam, name)


def _tf_keras_sam(base, **kwargs):
    import tf_keras

    return tf_keras.models.experimental.SharpnessAwareMinimization(base, rho=RHO, **kwargs)


def _tf_keras_sam_training_mode(base):
    """The Keras 2 SAM with its first pass in training mode, as SAM needs.

    `SharpnessAwareMinimization.train_step` calls `self(x)` without
    `training=True` for the ascent gradient, so BatchNorm normalizes with its
    moving statistics and dropout is off in that pass (cheaper, and not the
    gradient of the loss being minimized). This row shows what the exact
    algorithm costs in Keras 2.
    """
    import tf_keras

    class TrainingModeSAM(tf_keras.models.experimental.SharpnessAwareMinimization):
        def call(self, inputs, training=None):
            return self.model(inputs, training=True if training is None else training)

    return TrainingModeSAM(base, rho=RHO)


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("plain", "plain Keras fit", "keras"),
        Mode("sam", "SAMModel", "keras", lambda b: _keras_sam_class("SAMModel")(b, rho=RHO)),
        Mode(
            "asam",
            "SAMModel(adaptive=True)",
            "keras",
            lambda b: _keras_sam_class("SAMModel")(b, rho=10 * RHO, adaptive=True),
        ),
        Mode(
            "looksam",
            "LookSAMModel(k=5)",
            "keras",
            lambda b: _keras_sam_class("LookSAMModel")(b, rho=RHO, k=5, alpha=0.7),
            requires="LookSAMModel",
        ),
        Mode(
            "gsam",
            "GSAMModel(alpha=0.1)",
            "keras",
            lambda b: _keras_sam_class("GSAMModel")(b, rho=RHO, alpha=0.1),
            requires="GSAMModel",
        ),
        Mode(
            "sam_split2",
            "SAMModel(num_batch_splits=2)",
            "keras",
            lambda b: _keras_sam_class("SAMModel")(b, rho=RHO, num_batch_splits=2),
        ),
        Mode("tfk_plain", "tf-keras plain fit", "tf_keras", baseline="tfk_plain"),
        Mode("tfk_sam", "tf-keras SAM", "tf_keras", _tf_keras_sam, baseline="tfk_plain"),
        Mode(
            "tfk_sam_train",
            "tf-keras SAM, 1st pass training=True",
            "tf_keras",
            _tf_keras_sam_training_mode,
            baseline="tfk_plain",
        ),
        Mode(
            "tfk_sam_split2",
            "tf-keras SAM(num_batch_splits=2)",
            "tf_keras",
            lambda b: _tf_keras_sam(b, num_batch_splits=2),
            baseline="tfk_plain",
        ),
    )
}
DEFAULT_MODES = tuple(MODES)


def framework_module(framework: str) -> ModuleType:
    """The Keras module of `framework` (`keras` or `tf_keras`)."""
    return importlib.import_module(framework)


def unavailable_reason(mode: Mode) -> str | None:
    """Why `mode` cannot run in this environment, or None when it can."""
    try:
        framework_module(mode.framework)
    except ImportError:
        return f"{mode.framework} is not installed"
    if mode.requires is not None:
        import keras_sam

        if getattr(keras_sam, mode.requires, None) is None:
            return f"keras_sam.{mode.requires} does not exist (yet)"
    return None


class TracedModel:
    """A compiled model of one mode, counting the traces of its `train_step`."""

    def __init__(self, model, mode: Mode):
        self.model = model
        self.mode = mode
        self.traces = 0
        traced_step = model.train_step

        def counting_train_step(data):
            self.traces += 1  # runs once per trace, never per step
            return traced_step(data)

        # An instance attribute wins over the method when the train function
        # is built (both Keras 3 and tf-keras read `self.train_step` then).
        object.__setattr__(model, "train_step", counting_train_step)

    def fit(self, dataset, steps: int) -> None:
        """One epoch of `steps` steps through the real `fit`."""
        self.model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

    def train_steps(self, iterator, steps: int):
        """`steps` calls of the train function `fit` calls per step; the last logs."""
        train_function = self.model.train_function
        logs = None
        for _ in range(steps):
            logs = train_function(iterator)
        # Waits for the last step (the steps are chained through the weights),
        # so that asynchronous devices are timed to the end.
        next(iter(logs.values())).numpy()
        return logs


def compile_mode(model_name: str, mode: Mode, xla: bool, seed: int = 0) -> TracedModel:
    """Builds `model_name` in the mode's framework, wraps and compiles it."""
    api = framework_module(mode.framework)
    api.utils.set_random_seed(seed)
    model = build(model_name, api)
    if mode.wrap is not None:
        model = mode.wrap(model)
    model.compile(
        optimizer=api.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM),
        loss=api.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=xla,
    )
    return TracedModel(model, mode)
