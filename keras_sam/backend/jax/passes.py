"""SAM's two forward/backward passes, taken with `jax.value_and_grad`.

The same passes as on TensorFlow (see `backend/tensorflow/passes.py`): the
first is Keras's own step up to the gradient, the perturbed one reads the
trainable variables as w + ε̂. Each runs its forward pass in a scope of its
own (`scopes.nested_scope`) whose trainable values are the function's
argument, so that `jax.value_and_grad` differentiates the loss with respect
to them; the state the forward pass updates comes back as auxiliary output.
"""

from __future__ import annotations

import jax
import keras

from keras_sam import _keras_internals as internals
from keras_sam.backend import PassResult
from keras_sam.backend.jax import scopes

__all__ = ["PassResult", "batch_rows", "first_pass", "perturbed_pass"]


def batch_rows(x) -> int:
    """The number of rows of the batch `x` (static under JAX)."""
    return next(t for t in keras.tree.flatten(x) if t is not None).shape[0]


def _differentiate(model, x, y, sample_weight, variables, values):
    """(loss, y_pred, {index: new value} of the state, gradients) at `values`."""
    state = scopes.state_variables(model)
    changed_indices = []

    def scaled_loss(trainable_values):
        with scopes.nested_scope(
            state, zip(variables, trainable_values), collect_losses=True
        ) as scope:
            initial = [scope.get_current_value(v) for v in state]
            y_pred = model(x, training=True)
            loss = internals.compute_loss(
                model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled = model.optimizer.scale_loss(loss)
        trained = {id(v) for v in variables}
        new_values = [scope.get_current_value(v) for v in state]
        # An assignment replaces a variable's value in the scope.
        changed_indices[:] = [
            i for i, (v, new, old) in enumerate(zip(state, new_values, initial))
            if id(v) not in trained and new is not old
        ]  # fmt: skip
        return scaled, (loss, y_pred, [new_values[i] for i in changed_indices])

    (_, (loss, y_pred, updates)), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(
        list(values)
    )
    changed = {id(state[i]): value for i, value in zip(changed_indices, updates)}
    return loss, y_pred, changed, list(gradients)


def _assign(variables, changed) -> None:
    for variable in variables:
        if id(variable) in changed:
            variable.assign(changed[id(variable)])


def first_pass(
    model, x, y, sample_weight, variables, *, model_state, offset=None, collect_state=False
) -> PassResult:
    """Keras's forward/backward at w, or at w + `offset` (see the TensorFlow one)."""
    values = scopes.current_values(variables)
    if offset is not None:
        values = [w if o is None else w + o for w, o in zip(values, offset)]
    loss, y_pred, changed, gradients = _differentiate(
        model, x, y, sample_weight, variables, values
    )
    state_ids = {id(v) for v in model_state}
    state_update = []
    if collect_state:
        state_update = [changed.get(id(v)) for v in model_state]
        changed = {key: value for key, value in changed.items() if key not in state_ids}
    _assign(scopes.state_variables(model), changed)
    internals.loss_tracker(model).update_state(
        internals.unscale_loss_for_distribution(loss), sample_weight=batch_rows(x)
    )
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return PassResult(loss, gradients, state_update)


def perturbed_pass(model, x, y, sample_weight, variables, e_hat) -> PassResult:
    """Loss and scaled gradient at w + ε̂; only the dropout seeds advance."""
    values = [w if e is None else w + e for w, e in zip(scopes.current_values(variables), e_hat)]
    loss, _, changed, gradients = _differentiate(model, x, y, sample_weight, variables, values)
    _assign(internals.seed_states(model), changed)
    return PassResult(loss, gradients, [])
