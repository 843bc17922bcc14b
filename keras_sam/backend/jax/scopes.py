"""Keras state inside a JAX step: the values every variable holds, as a scope.

Keras's JAX trainer is stateless: a step receives the values of the model's
variables and returns their new values. keras-sam runs its (backend-neutral)
step inside a `keras.StatelessScope` that maps every variable of that state
to its value: reads see the values, and assignments (BatchNorm statistics,
metrics, the optimizer's update) are recorded in the scope, from which the
new state is read at the end. A nested computation (a pass under
`jax.value_and_grad`, a branch of `jax.lax.cond`) opens a scope of its own
over the same variables, starting from the values of the scope around it.
"""

from __future__ import annotations

import keras

__all__ = ["state_variables", "current_values", "nested_scope", "assign_all"]


def state_variables(model) -> list:
    """Every variable a training step reads or writes, each once."""
    groups = [model.trainable_variables, model.non_trainable_variables, model.metrics_variables]
    if getattr(model, "optimizer", None) is not None:
        groups.append(model.optimizer.variables)
    seen, variables = set(), []
    for group in groups:
        for v in group:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    return variables


def current_values(variables) -> list:
    """What each variable reads as now (its value in the enclosing scope)."""
    return [v.value for v in variables]


def nested_scope(variables, overrides=(), collect_losses: bool = False):
    """A scope over `variables` with their current values, except `overrides`.

    `overrides` are `(variable, value)` pairs.
    """
    values = {id(v): value for v, value in overrides}
    currents = current_values(variables)
    mapping = [(v, values.get(id(v), current)) for v, current in zip(variables, currents)]
    return keras.StatelessScope(state_mapping=mapping, collect_losses=collect_losses)


def assign_all(variables, values) -> None:
    """Assigns `values` to `variables` (recorded by the enclosing scope)."""
    for variable, value in zip(variables, values):
        variable.assign(value)
