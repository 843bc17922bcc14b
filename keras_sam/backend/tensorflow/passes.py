"""SAM's two forward/backward passes, taken with `tf.GradientTape`.

The first pass is Keras's own training step up to the gradient: forward with
`training=True`, `compute_loss` (with `model.losses`), the loss tracker, the
optimizer's `scale_loss`, the gradient, the compiled metrics. The perturbed
pass reads every trainable variable as w + ε̂ inside a `keras.StatelessScope`:
nothing is assigned, so w stays bit for bit the w of the first pass.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from keras_sam import _keras_internals as internals
from keras_sam.backend import PassResult

__all__ = ["PassResult", "first_pass", "perturbed_pass"]


def batch_rows(x) -> tf.Tensor:
    """The number of rows of the batch `x`, as Keras's step counts them."""
    first = next(t for t in tf.nest.flatten(x) if t is not None)
    return tf.shape(first)[0]


def _forward_loss(model, x, y, sample_weight):
    y_pred = model(x, training=True)
    loss = internals.compute_loss(
        model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    return y_pred, loss


def _assign_captured(scope, variables) -> None:
    """Assigns the new values `scope` captured for `variables`, if any."""
    for variable in variables:
        new_value = scope.get_current_value(variable)
        if new_value is not None:
            variable.assign(new_value)


def first_pass(
    model, x, y, sample_weight, variables, *, model_state, offset=None, collect_state=False
) -> PassResult:
    """Keras's forward/backward at w, or at w + `offset` (a variant's look-ahead).

    It updates the loss tracker, the metrics, the dropout seeds and
    `model_state` (BatchNorm statistics) as Keras's step does. With
    `collect_state` the new values of `model_state` are returned, not
    assigned (each m-sharpness piece starts from the same state).
    """
    shifted = offset is not None and any(o is not None for o in offset)
    stateless = shifted or collect_state
    with tf.GradientTape() as tape:
        if shifted:
            sources = [v.value if o is None else v.value + o for v, o in zip(variables, offset)]
            tape.watch(sources)
        else:
            sources = variables
        # Created inside the tape: the reads of w it maps to are recorded.
        scope = (
            keras.StatelessScope(
                state_mapping=[(v, s if shifted else v.value) for v, s in zip(variables, sources)],
                collect_losses=True,
            )
            if stateless
            else contextlib.nullcontext()
        )
        with scope:
            y_pred, loss = _forward_loss(model, x, y, sample_weight)
        state_update = []
        if stateless:
            # The dropout seeds and the per-output loss trackers of
            # `compute_loss` move as usual.
            _assign_captured(scope, internals.seed_states(model))
            _assign_captured(scope, _metric_variables(model))
            if collect_state:
                state_update = [scope.get_current_value(v) for v in model_state]
            else:
                _assign_captured(scope, model_state)
        internals.loss_tracker(model).update_state(
            internals.unscale_loss_for_distribution(loss), sample_weight=batch_rows(x)
        )
        scaled_loss = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, sources)
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return PassResult(loss, gradients, state_update)


def perturbed_pass(model, x, y, sample_weight, variables, e_hat) -> PassResult:
    """Loss and scaled gradient at w + ε̂, without assigning any variable.

    A variable whose ε̂ is None is read as it is (SAM-ON moves only some);
    every variable still gets its gradient from this pass. Only the dropout
    seeds advance: every other state update is captured and dropped.
    """
    moved = [i for i, e in enumerate(e_hat) if e is not None]
    sources = list(variables)
    for i in moved:
        sources[i] = variables[i].value + e_hat[i]
    mapping = [(variables[i], sources[i]) for i in moved]
    with tf.GradientTape() as tape:
        tape.watch([sources[i] for i in moved])
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            _, loss = _forward_loss(model, x, y, sample_weight)
        scaled_loss = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, sources)
    # Keep the random masks advancing; drop every other captured update.
    _assign_captured(scope, internals.seed_states(model))
    return PassResult(loss, gradients, [])


def _metric_variables(model) -> list:
    """The loss tracker's and compiled metrics' variables."""
    return [v for metric in model.metrics for v in metric.variables]
