"""Replica operations of a SAM step on JAX.

A JAX step under `keras.distribution` is one program over global arrays:
XLA partitions it across the devices and inserts the collectives. Every
gradient the step sees is already the global batch's, so the reductions of
the TensorFlow backend are identities here, and the step equals one device's
run on the global batch (`sync_perturbation=True` semantics).

The optimizer is applied through `stateless_apply`, as Keras's JAX trainer
does (a `LossScaleOptimizer` chooses its branch statelessly there), and its
new values are assigned inside the step's `keras.StatelessScope`.
"""

from __future__ import annotations

import keras

from keras_sam.gradient_math import all_finite

__all__ = [
    "all_finite",
    "all_reduce_sum",
    "all_replicas_finite",
    "any_replica",
    "apply",
    "apply_if",
    "num_replicas",
    "poison_unless",
]


def num_replicas(strategy=None) -> int:
    """1: a JAX step computes on global arrays."""
    return 1


def all_reduce_sum(tensors):
    return list(tensors)


def any_replica(flag):
    return flag


def all_replicas_finite(tensors):
    return all_finite(tensors)


def poison_unless(finite, gradients) -> list:
    """Gradients unchanged when `finite`, else all NaN (for a loss scaler)."""
    factor = keras.ops.where(finite, 1.0, float("nan"))
    return [None if g is None else g * keras.ops.cast(factor, g.dtype) for g in gradients]


def apply(optimizer, gradients, variables) -> None:
    """`optimizer.apply(gradients, variables)` inside the step's scope."""
    if not optimizer.built:  # outside a step, as `optimizer.apply` builds it
        optimizer.build(variables)
    trainable = [v.value for v in variables]
    own = [v.value for v in optimizer.variables]
    gradients = [keras.ops.zeros_like(w) if g is None else g for g, w in zip(gradients, trainable)]
    new_trainable, new_own = optimizer.stateless_apply(own, gradients, trainable)
    for variable, value in zip(variables, new_trainable):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_own):
        variable.assign(value)


def apply_if(finite, optimizer, gradients, variables) -> None:
    """The update of `apply` where `finite`, else nothing changes."""
    touched = list(variables) + list(optimizer.variables)
    before = [v.value for v in touched]
    apply(optimizer, gradients, variables)
    for variable, old in zip(touched, before):
        variable.assign(keras.ops.where(finite, variable.value, old))
