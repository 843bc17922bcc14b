"""Every use of Keras's and TensorFlow's private API, in one place.

keras-sam needs a few things Keras does not make public. Each is wrapped
here with the reason and the versions it was checked on, so that a new Keras
release is adapted to in one file. Checked on Keras 3.10–3.15 and TensorFlow
2.18–2.21 (the range `setup.cfg` declares and CI tests at both ends).
"""

from __future__ import annotations

import contextlib

import keras

__all__ = [
    "compile_arguments",
    "compute_loss",
    "compute_output_spec",
    "created_trainable_variables",
    "distribute_strategy_if_set",
    "calling_callback_list",
    "first_batch",
    "flatten_layers",
    "in_multi_worker_mode",
    "kerashub_pipeline_model",
    "legacy_config_requested",
    "loss_tracker",
    "own_variables",
    "replica_copies",
    "run_on_each_replica",
    "seed_states",
    "state_unlocked",
    "strategy_supports_no_merge_call",
    "unscale_loss_for_distribution",
]


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The `loss` metric of `model`.

    Keras's own `train_step` updates it by hand (`compute_loss` does not);
    SAM's clean pass must too, or `fit` logs `loss: 0.0`. A `Mean` of our
    own named "loss" would collide with it in `evaluate`. Keras 3.10–3.15.
    """
    return model._loss_tracker


def compute_loss(model: keras.Model, **kwargs):
    """`model.compute_loss(**kwargs)` as Keras's step calls it.

    `Trainer._compute_loss` passes `training` only to a `compute_loss`
    override that accepts it (KerasHub tasks and older user code do not).
    Keras 3.10–3.15.
    """
    return model._compute_loss(**kwargs)


def unscale_loss_for_distribution(loss):
    """The loss without Keras's 1/replicas factor, as Keras's step logs it.

    Under a `tf.distribute` strategy `compute_loss` divides the loss by the
    number of replicas; Keras's step undoes it for the loss tracker with this
    function of `keras.src.losses.loss`. Keras 3.10–3.15.
    """
    from keras.src.losses.loss import unscale_loss_for_distribution as unscale

    return unscale(loss)


def compute_output_spec(function, *args):
    """Runs `function` symbolically (on `KerasTensor`s), building its layers.

    `keras.src.backend.compute_output_spec` rather than the model's public
    `compute_output_spec`, so that bad data raises the base model's own error
    without a preface blaming the wrapper. Keras 3.10–3.15.
    """
    from keras.src import backend

    return backend.compute_output_spec(function, *args)


def flatten_layers(layer, include_self: bool = True):
    """Every layer inside `layer`, nested models included (`_flatten_layers`).

    Keras's own traversal; `layer.layers` stops at the first level of a
    nested model. Keras 3.10–3.15.
    """
    return list(layer._flatten_layers(include_self=include_self))


def created_trainable_variables(layer) -> list:
    """The variables `layer` created as trainable, frozen now or not.

    `layer.trainable_variables` is empty for a frozen layer; state kept per
    weight (LookSAM's direction) must survive freezing and unfreezing.
    Keras 3.10–3.15 keep them in `_trainable_variables`.
    """
    return list(layer._trainable_variables)


def seed_states(model: keras.Model) -> list:
    """The state variables of every `SeedGenerator` in `model` (dropout masks).

    Keras saves none of them (keras-team/keras#19796): a restored model would
    draw its first masks again, so keras-sam saves them itself. The
    generators are in each layer's `_seed_generators`. Keras 3.10–3.15.
    """
    return [
        generator.state
        for layer in flatten_layers(model)
        for generator in getattr(layer, "_seed_generators", [])
    ]


def first_batch(epoch_iterator):
    """The first batch of the iterator Keras's `_maybe_symbolic_build` is given.

    On TensorFlow it yields `(step, iterator)` pairs in Keras 3.10 and
    `(begin, end, iterator)` triples from Keras 3.11: the batch iterator is
    last in both.
    """
    for item in epoch_iterator:
        return next(item[-1])
    return None


@contextlib.contextmanager
def state_unlocked(layer):
    """Lets a built `layer` create variables (its tracker unlocked, then relocked).

    Keras locks a layer's state once it is built. A wrapper whose first call
    came before its subclassed base had created its weights was built without
    the state it keeps per weight, and creates it later; Keras's own
    `_untrack_variable` unlocks the `_tracker` the same way. Keras 3.10–3.15.
    """
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        yield
    finally:
        if locked:
            layer._lock_state()


def own_variables(layer) -> list:
    """The variables `layer` itself holds, in the order Keras saves them.

    `Layer.save_own_variables` stores `_trainable_variables +
    _non_trainable_variables` under their index. Keras 3.10–3.15.
    """
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def replica_copies(variable) -> list:
    """The per-replica copies of a variable created under a `tf.distribute`
    strategy (one element elsewhere).

    Keras keeps the backend variable in `_value`; under `MirroredStrategy` it
    is a `MirroredVariable` whose `.values` are the replicas' copies, which
    may differ for a variable with `aggregation="none"` (state kept per
    replica). TensorFlow 2.18–2.21, Keras 3.10–3.15.
    """
    value = getattr(variable, "_value", None)
    copies = getattr(value, "values", None)
    return list(copies) if isinstance(copies, (list, tuple)) and len(copies) > 1 else [variable]


def compile_arguments(model: keras.Model) -> dict:
    """The arguments `model.compile` resolved and recorded (optimizer, loss,
    metrics, ...), as `compile_from_config` reads them (`_compile_config`).

    KerasHub tasks resolve their "auto" defaults in their own `compile`; the
    wrapper compiles itself with what the task's compile recorded.
    Keras 3.10–3.15.
    """
    return dict(model._compile_config.config)


def kerashub_pipeline_model():
    """KerasHub's `PipelineModel` (the base of every Task, which preprocesses
    in `fit`/`evaluate`/`predict`), or None when keras_hub is not imported.

    It lives in `keras_hub.src.utils.pipeline_model` in keras-hub 0.17–0.32;
    elsewhere it is found among the Task's bases. A Task base model means
    keras_hub was imported already, so this never imports it.
    """
    import sys

    hub = sys.modules.get("keras_hub")
    if hub is None:
        return None
    try:
        from keras_hub.src.utils.pipeline_model import PipelineModel
    except ImportError:
        return next(
            (
                c
                for c in hub.models.Task.__mro__
                if "preprocess_samples" in vars(c) and "fit" in vars(c)
            ),
            None,
        )
    return PipelineModel


def legacy_config_requested() -> bool:
    """Whether Keras's legacy HDF5 writer is asking for a config.

    `keras.saving.save_model(model, "x.h5")` skips `model.save`; the global
    attribute is the only sign of it when `get_config` is called.
    Keras 3.10–3.15.
    """
    from keras.src.backend.common import global_state

    return bool(global_state.get_global_attribute("use_legacy_config", False))


def distribute_strategy_if_set(model: keras.Model):
    """The strategy `model` was created under, or None (TensorFlow only).

    `model.distribute_strategy` falls back to the default strategy; Keras's
    symbolic build only runs when one was set. Keras 3.10–3.15.
    """
    return getattr(model, "_distribute_strategy", None)


def calling_callback_list(depth: int = 5):
    """The `keras.callbacks.CallbackList` among the callers' frames, or None.

    Keras has no public way for a callback to see its siblings; a callback
    that must run first (`SharpnessMonitor`) finds the list calling it.
    `CallbackList.on_train_begin` is the caller in Keras 3.10–3.15.
    """
    import sys

    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            return owner
        frame = frame.f_back
    return None


# TensorFlow ---------------------------------------------------------------


def strategy_supports_no_merge_call() -> bool:
    """Whether the current strategy runs cross-replica code without `merge_call`.

    `tf.__internal__.distribute.strategy_supports_no_merge_call`, which
    Keras's own `LossScaleOptimizer` consults for the same decision.
    TensorFlow 2.18–2.21.
    """
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def in_multi_worker_mode(strategy) -> bool:
    """Whether a `MultiWorkerMirroredStrategy` spans several workers.

    `strategy.extended._in_multi_worker_mode()`; the cluster resolver's task
    list says the same but is absent for a strategy built without one.
    TensorFlow 2.18–2.21.
    """
    return bool(strategy.extended._in_multi_worker_mode())


def run_on_each_replica(strategy, function, args=()):
    """`function(*args)` on every replica, from cross-replica context.

    `StrategyExtended.call_for_each_replica`, as Keras's `LossScaleOptimizer`
    calls it to apply a step only when every replica's gradient is finite.
    TensorFlow 2.18–2.21.
    """
    return strategy.extended.call_for_each_replica(function, args=args)
