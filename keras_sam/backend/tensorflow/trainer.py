"""How a SAM step runs on TensorFlow: `tf.function`, XLA and `tf.distribute`.

`Trainer` is mixed into `SAMModel` before `keras.Model`. It
turns Keras's calls (`train_step`, `make_train_function`, ...) into the
backend-neutral step of `SAMModel`, and gives that step its mechanics:

- the passes (`passes.py`), each compiled as its own XLA program when
  `jit_compile=True`; the optimizer's update runs between them as TensorFlow
  ops. Compiled as one program, XLA:CPU allocates both passes' MaxPool-gradient
  buffers at its start (`benchmarks/xla_memory.py` measures it); and Keras
  cannot run a `jit_compile=True` step under `MirroredStrategy` at all, while
  per replica the passes compile fine;
- `branch`, the choice between one pass and two inside the compiled step
  (`tf.cond`; each branch its own XLA program, since XLA:CPU runs the
  convolutions of a compiled conditional many times slower);
- the replica operations (`replicas.py`).
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf

from keras_sam import _keras_internals as internals
from keras_sam import batch_splits
from keras_sam.backend.tensorflow import passes, replicas
from keras_sam.gradient_math import as_dense

__all__ = ["Trainer", "check_strategy", "supported_strategies"]


def supported_strategies() -> tuple[type, ...]:
    """The `tf.distribute` strategies a SAM step runs under (tested, except
    `TPUStrategy`, which runs the same replica code as `MirroredStrategy`)."""
    return (
        tf.distribute.OneDeviceStrategy,
        tf.distribute.MirroredStrategy,
        tf.distribute.MultiWorkerMirroredStrategy,
        tf.distribute.TPUStrategy,
    )


def check_strategy(strategy) -> None:
    """Raises a `ValueError` naming `strategy` unless a SAM step runs under it."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return  # the default strategy: one device
    if isinstance(strategy, supported_strategies()):
        return
    names = ", ".join(
        f"`tf.distribute.{name}`"
        for name in ("OneDeviceStrategy", "MirroredStrategy", "MultiWorkerMirroredStrategy")
    ) + " and `tf.distribute.TPUStrategy`"
    name = type(strategy).__name__.removesuffix("V2").removesuffix("V1")
    raise ValueError(
        f"keras-sam does not support `{name}`: its training step "
        "runs on replicas that hold the variables and compute both passes "
        f"together. Supported: {names}, or no strategy (one device). "
        "`ParameterServerStrategy` fails for plain Keras 3 `fit` as well."
    )


def _named(function, name: str):
    """`function` under `name` (XLA names its program after it)."""

    def named():
        return function()

    named.__name__ = name
    return named


def _select(condition, if_true, if_false):
    """The `PassResult` `if_true` where `condition`, else `if_false`."""
    gradients = [
        None if a is None else tf.where(condition, as_dense(a), as_dense(b))
        for a, b in zip(if_true.gradients, if_false.gradients)
    ]
    return passes.PassResult(tf.where(condition, if_true.loss, if_false.loss), gradients, [])

# Without XLA, TensorFlow's graph executor orders ready ops by their names,
# which Keras derives from the model's name: under one fixed scope a SAM
# step's peak memory does not depend on what the model is called.
_STEP_SCOPE = "training_pass"


class Trainer:
    """The TensorFlow half of `SAMModel` (see the module docstring)."""

    # ----------------------------------------------------- Keras's entry points
    def __init__(self, *args, **kwargs):
        check_strategy(tf.distribute.get_strategy())
        super().__init__(*args, **kwargs)

    def train_step(self, data):
        with tf.name_scope(_STEP_SCOPE):
            logs = self._sam_train_step(data)
        return replicas.logs_for_reduction(logs, self.distribute_strategy)

    def test_step(self, data):
        logs = super().test_step(data)
        return replicas.logs_for_reduction(logs, self.distribute_strategy)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._check_strategy_support()
        batch_splits.warn_if_misweighted(self.num_batch_splits, getattr(self, "loss", None))
        self._build_optimizer()
        self._build_variant_state()
        if self.jit_compile and not self._xla_per_pass():
            warnings.warn(
                f"{type(self).__name__}: `jit_compile=True` is ignored under "
                f"{type(self.distribute_strategy).__name__}: a replica's passes "
                "all-reduce (`sync_perturbation=True` or a synchronized "
                "BatchNormalization), which TensorFlow cannot run inside a "
                "per-replica XLA function. Training runs without XLA.",
                stacklevel=2,
            )
        with self._outer_jit_off(bool(self.jit_compile)):
            return super().make_train_function(force)

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        with self._outer_jit_off(self._multi_replica_jit()):
            return super().make_test_function(force)

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        with self._outer_jit_off(self._multi_replica_jit()):
            return super().make_predict_function(force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras reduces the first distributed batch across replicas with
        # `strategy.reduce("MEAN")`, which fails across workers; only its
        # shapes and dtypes are needed, so build from one replica's batch.
        if iterator is not None and internals.distribute_strategy_if_set(self) is not None:
            batch = internals.first_batch(iterator)
            data_batch = replicas.first_local_value(self.distribute_strategy, batch)
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _read_state(self):
        """Variables hold the running state on TensorFlow: nothing to do."""

    # ------------------------------------------------- the step's mechanics
    def _first_pass(self, x, y, sample_weight, variables, *, offset, collect_state):
        def clean_pass():
            return passes.first_pass(
                self, x, y, sample_weight, variables,
                model_state=self._model_state(), offset=offset, collect_state=collect_state,
            )

        return self._compiled(clean_pass)()

    def _perturbed_pass(self, x, y, sample_weight, variables, e_hat):
        return passes.perturbed_pass(self, x, y, sample_weight, variables, e_hat)

    def _branch(self, condition, if_true, if_false):
        """`if_true()` or `if_false()` (each a `PassResult`) by `condition`.

        A tensor `condition` chooses inside the compiled step (`tf.cond`;
        `if_true` its own XLA program). Where a branch cannot hold the passes
        (they all-reduce: a synchronized BatchNormalization under a strategy)
        both run and the results are selected.
        """
        if isinstance(condition, bool):
            return self._compiled(_named(if_true, "perturbed_pass"))() if condition else if_false()
        if replicas.num_replicas() > 1 and self._branches_all_reduce():
            return _select(condition, if_true(), if_false())
        present = None

        def outputs(function, name):
            def run():
                nonlocal present
                result = function()
                if present is None:
                    present = [g is not None for g in result.gradients]
                return result.loss, [g for g, keep in zip(result.gradients, present) if keep]

            return _named(run, name)

        loss, kept = tf.cond(
            condition,
            self._compiled(outputs(if_true, "perturbed_pass")),
            outputs(if_false, "one_pass"),
        )
        kept = iter(kept)
        gradients = [next(kept) if keep else None for keep in present]
        return passes.PassResult(loss, gradients, [])

    def _after(self, tensors, function):
        """`function()`, run once `tensors` are computed."""
        with tf.control_dependencies(tensors):
            return function()

    def _same_rows_checks(self, pairs):
        """A function tying a tensor to run-time checks that each `(message, a,
        b)` of `pairs` has as many rows in `a` as in `b`."""
        checks = [
            tf.debugging.assert_equal(tf.shape(a)[0], tf.shape(b)[0], message=message)
            for message, a, b in pairs
        ]

        def checked(t):
            with tf.control_dependencies(checks):
                return tf.identity(t)

        return checked

    def _compiled(self, function):
        """`function` as its own XLA program when the passes are compiled apart."""
        if self._xla_per_pass():
            return tf.function(function, jit_compile=True, autograph=False)
        return function

    def _batch_rows(self, x):
        return passes.batch_rows(x)

    # ------------------------------------------------------------- checks
    def _xla_per_pass(self) -> bool:
        """Whether XLA compiles each pass (`jit_compile=True` and possible)."""
        return bool(self.jit_compile) and not (
            self._multi_replica_jit() and self._passes_all_reduce()
        )

    def _passes_all_reduce(self) -> bool:
        # A synced ε̂ or a synchronized BatchNorm all-reduce inside a replica's
        # step: a merge_call, which a nested XLA function cannot hold.
        return self.sync_perturbation or self._branches_all_reduce()

    def _branches_all_reduce(self) -> bool:
        # A synchronized BatchNorm all-reduces inside the perturbed pass, which
        # a `tf.cond` branch cannot hold.
        return any(
            getattr(layer, "synchronized", False) for layer in internals.flatten_layers(self)
        )

    def _multi_replica_jit(self) -> bool:
        return bool(self.jit_compile) and replicas.num_replicas(self.distribute_strategy) > 1

    @contextlib.contextmanager
    def _outer_jit_off(self, off: bool):
        jit_compile = self.jit_compile
        if off:
            self.jit_compile = False
        try:
            yield
        finally:
            self.jit_compile = jit_compile

    def _check_strategy_support(self):
        check_strategy(self.distribute_strategy)
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        steps = getattr(optimizer, "gradient_accumulation_steps", None)
        strategy = self.distribute_strategy
        mirrored = isinstance(strategy, tf.distribute.MirroredStrategy) and (
            strategy.num_replicas_in_sync > 1
        )
        if mirrored and self.steps_per_execution > 1:
            raise ValueError(
                f"`steps_per_execution={self.steps_per_execution}` (a `compile` argument) "
                f"is not supported under MirroredStrategy with {strategy.num_replicas_in_sync} "
                f"replicas: Keras {keras.__version__}'s multi-step loop fails there for every "
                "model (\"You must feed a value for placeholder tensor\"). Use "
                "`steps_per_execution=1` under MirroredStrategy."
            )
        if steps and mirrored:
            raise ValueError(
                f"`gradient_accumulation_steps={steps}` (an optimizer argument) is not "
                f"supported under MirroredStrategy with {strategy.num_replicas_in_sync} "
                f"replicas: Keras {keras.__version__} updates the weights inside a "
                "`tf.cond` there, which TensorFlow rejects for every model. Use a "
                f"global batch {steps}x larger instead, or train on one device."
            )
