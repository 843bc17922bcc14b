"""The training modes the benchmark times, and how each is built and compiled.

A mode wraps a freshly built base model: plain Keras `fit` (the base itself),
keras-sam's `SAMModel` and its variants, and the Keras 2 SAM
(`tf_keras.models.experimental.SharpnessAwareMinimization`) with its own
plain baseline. Every mode is compiled alike: SGD with momentum 0.9, sparse
categorical cross-entropy on logits, accuracy, and `jit_compile=xla`.

The modes come in groups (`MODE_GROUPS`, names `--modes` also takes):
`default`, the table of the original SAM, ASAM, GSAM, LookSAM and
m-sharpness against plain Keras and the Keras 2 SAM; `variants`, the later
variants and the steps that must cost one pass (ρ = 0, a `LatePhase`
schedule whose SAM phase starts after the run); `all`.

Each compiled model counts how often its `train_step` is traced (the Python
body only runs while `tf.function` or `jax.jit` traces), which is how the
benchmark checks that nothing retraces after the first epoch. The Keras 3
modes run on TensorFlow and on JAX (`framework == "keras"`), the Keras 2
ones on TensorFlow only.

Example:

>>> from benchmarks.modes import MODE_GROUPS, MODES, expand_modes, unavailable_reason
>>> MODES["sam"].label
'SAMModel'
>>> unavailable_reason(MODES["plain"]) is None
True
>>> expand_modes("variants")[:4]
['plain', 'sam', 'fsam', 'sam_on']
>>> expand_modes("plain,sam,default")[:3]
['plain', 'sam', 'asam']
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
from collections.abc import Callable
from types import ModuleType

from benchmarks.models import build

__all__ = [
    "DEFAULT_MODES",
    "MODES",
    "MODE_GROUPS",
    "Mode",
    "TracedModel",
    "compile_mode",
    "expand_modes",
    "unavailable_reason",
]

RHO = 0.05
# `sam_late`'s SAM phase starts at this optimizer step, far beyond any run of
# the benchmark: every timed step is in its plain phase (ρ = 0, one pass).
LATE_PHASE_START = 1_000_000
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


def _late_phase_sam(base):
    from keras_sam.schedules import LatePhase

    return _keras_sam_class("SAMModel")(base, rho=LatePhase(RHO, start_step=LATE_PHASE_START))


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
# The later variants, each with `requires`: a row appears once its class exists.
_VARIANT_MODES = (
    Mode(
        "fsam", "FriendlySAMModel", "keras",
        lambda b: _keras_sam_class("FriendlySAMModel")(b, rho=RHO),
        requires="FriendlySAMModel",
    ),
    Mode(
        "sam_on", "SAMModel(perturb=\"normalization\")", "keras",
        lambda b: _keras_sam_class("SAMModel")(b, rho=RHO, perturb="normalization"),
    ),
    Mode(
        "msam", "MSAMModel (one pass)", "keras",
        lambda b: _keras_sam_class("MSAMModel")(b), requires="MSAMModel",
    ),
    Mode(
        "rst", "RandomizedSAMModel(probability=0.5)", "keras",
        lambda b: _keras_sam_class("RandomizedSAMModel")(b, rho=RHO, probability=0.5),
        requires="RandomizedSAMModel",
    ),
    Mode(
        "aesam", "AESAMModel", "keras",
        lambda b: _keras_sam_class("AESAMModel")(b, rho=RHO), requires="AESAMModel",
    ),
    Mode(
        "sam_rho0", "SAMModel(rho=0)", "keras",
        lambda b: _keras_sam_class("SAMModel")(b, rho=0.0),
    ),
    Mode(
        "sam_late", f"SAMModel(rho=LatePhase({RHO}, start_step={LATE_PHASE_START:_}))", "keras",
        _late_phase_sam, requires="schedules",
    ),
)
MODES.update((mode.name, mode) for mode in _VARIANT_MODES)
MODE_GROUPS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_MODES,
    # With plain and SAM, the two ends every variant lies between.
    "variants": ("plain", "sam", *(mode.name for mode in _VARIANT_MODES)),
    "all": tuple(MODES),
}


def expand_modes(text: str) -> list[str]:
    """The comma-separated modes and groups in `text` as mode names, each once.

    Raises `argparse.ArgumentTypeError` for a name that is neither.
    """
    import argparse

    given = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in given if n not in MODES and n not in MODE_GROUPS]
    if unknown or not given:
        raise argparse.ArgumentTypeError(
            f"unknown mode {', '.join(unknown) or '(none given)'}; expected a "
            f"comma-separated list of {', '.join(MODES)} or the groups "
            f"{', '.join(MODE_GROUPS)}"
        )
    names = itertools.chain.from_iterable(MODE_GROUPS.get(n, (n,)) for n in given)
    return list(dict.fromkeys(names))


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
    """A compiled model of one mode, counting the traces of its `train_step`.

    On TensorFlow the train function takes an iterator (`steps_iterator`);
    on JAX it takes and returns the state (every variable's value), which
    this class holds between `train_steps` calls, as `fit` does within an
    epoch, and writes back into the variables before the next `fit`.
    """

    def __init__(self, model, mode: Mode):
        import keras

        self.model = model
        self.mode = mode
        self.traces = 0
        self.backend = keras.backend.backend() if mode.framework == "keras" else "tensorflow"
        self._state = None  # JAX: the state the last `train_steps` returned
        traced_step = model.train_step

        def counting_train_step(*args):  # (data), or (state, data) on JAX
            self.traces += 1  # runs once per trace, never per step
            return traced_step(*args)

        # An instance attribute wins over the method when the train function
        # is built (Keras 3 on either backend and tf-keras read
        # `self.train_step` then).
        object.__setattr__(model, "train_step", counting_train_step)

    def fit(self, dataset, steps: int) -> None:
        """One epoch of `steps` steps through the real `fit`.

        `dataset`: a `tf.data.Dataset` of whole batches on TensorFlow, a list
        of (x, y) batches on JAX (taken in turn, without end).
        """
        self._write_back_state()
        if self.backend == "jax":
            dataset = _cycle(dataset)
        self.model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

    def steps_iterator(self, dataset):
        """What `train_steps` reads its batches from, as `fit` would."""
        if self.backend == "jax":
            return _cycle(dataset)
        import tensorflow as tf

        return iter(tf.distribute.get_strategy().experimental_distribute_dataset(dataset))

    def train_steps(self, iterator, steps: int):
        """`steps` calls of the train function `fit` calls per step; the last logs."""
        if self.backend == "jax":
            return self._jax_train_steps(iterator, steps)
        train_function = self.model.train_function
        logs = None
        for _ in range(steps):
            logs = train_function(iterator)
        # Waits for the last step (the steps are chained through the weights),
        # so that asynchronous devices are timed to the end.
        next(iter(logs.values())).numpy()
        return logs

    def _jax_train_steps(self, iterator, steps: int):
        import jax

        if self._state is None:  # as `fit` starts an epoch: every variable's value
            self._state = tuple([v.value for v in group] for group in self._state_groups())
        train_function, state, logs = self.model.train_function, self._state, None
        self._state = None  # donated to the step: only its successor is valid
        for _ in range(steps):
            logs, state = train_function(state, iterator)
        jax.block_until_ready(logs)
        self._state = state
        return logs

    def _state_groups(self):
        """The variables of Keras's JAX state, in its order."""
        model = self.model
        return (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )

    def _write_back_state(self) -> None:
        """JAX: the held state into the variables (as `fit` does after an epoch)."""
        if self._state is None:
            return
        for group, values in zip(self._state_groups(), self._state):
            for variable, value in zip(group, values):
                variable.assign(value)
        self._state = None

    def two_pass_rows(self) -> float | None:
        """Rows of the batches that took SAM's second pass so far (None: no such count).

        keras-sam's sharpness metric is a `keras.metrics.Mean` weighted by
        the rows of each two-pass step (a one-pass step adds nothing), so its
        `count` counts the steps that climbed: divided by the batch size,
        the two-pass steps since `fit` last reset the metrics. On JAX the
        decision is counted even where both branches run. Reads a private
        attribute of keras-sam (the benchmark's only one); None when absent.
        """
        tracker = getattr(self.model, "_sharpness_tracker", None)
        count = getattr(tracker, "count", None)
        if count is None:
            return None
        import numpy as np

        if self._state is not None:  # JAX between steps: the value is in the state
            for variable, value in zip(self.model.metrics_variables, self._state[3]):
                if variable is count:
                    return float(np.asarray(value))
            return None
        import keras

        return float(keras.ops.convert_to_numpy(count.value))


def _cycle(batches):
    """The batches in turn, without end (JAX's `fit` and `train_steps`): a
    generator, which Keras's `fit` takes as data."""
    while True:
        yield from batches


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
