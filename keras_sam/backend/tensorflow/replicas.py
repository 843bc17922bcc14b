"""Replica-context operations for a SAM step under `tf.distribute`.

Everything here is called from inside a replica function (`strategy.run`),
or from a single-device step, where it reduces to the obvious operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from keras_sam import _keras_internals as internals
from keras_sam.gradient_math import all_finite

__all__ = [
    "all_finite",
    "all_reduce_sum",
    "all_replicas_finite",
    "any_replica",
    "apply",
    "apply_if",
    "first_local_value",
    "is_multi_worker",
    "logs_for_reduction",
    "num_replicas",
    "poison_unless",
]


def num_replicas(strategy: tf.distribute.Strategy | None = None) -> int:
    """Replicas in sync for `strategy`, or for the current replica context."""
    if strategy is not None:
        return strategy.num_replicas_in_sync
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.distribute.get_strategy().num_replicas_in_sync
    return context.num_replicas_in_sync


def _replica_context():
    """The replica context when there are several replicas, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def all_reduce_sum(tensors: Sequence[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """Sums `tensors` over replicas (Nones stay None); identity on one replica."""
    tensors = list(tensors)
    context = _replica_context()
    if context is None:
        return tensors
    present = [t for t in tensors if t is not None]
    reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
    return [None if t is None else next(reduced) for t in tensors]


def any_replica(flag) -> tf.Tensor | bool:
    """True on every replica iff `flag` is true on some replica.

    A Python bool is returned as is: it is the same on every replica.
    """
    context = _replica_context()
    if context is None or isinstance(flag, bool):
        return flag
    votes = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(flag, tf.float32))
    return votes > 0.0


def all_replicas_finite(tensors: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """True on every replica iff every tensor on every replica is finite."""
    finite = all_finite(tensors)
    context = _replica_context()
    if context is None:
        return finite
    failures = context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
    )
    return tf.equal(failures, 0.0)


def poison_unless(finite: tf.Tensor, gradients: Sequence[tf.Tensor | None]) -> list:
    """Gradients unchanged when `finite`, else all NaN (for a loss scaler)."""

    def poisoned(g):
        nan = tf.constant(float("nan"), g.dtype)
        factor = tf.where(finite, tf.ones((), g.dtype), nan)
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape)
        return g * factor

    return [None if g is None else poisoned(g) for g in gradients]


def apply(optimizer, gradients, variables) -> None:
    """`optimizer.apply(gradients, variables)`."""
    optimizer.apply(gradients, variables)


def apply_if(finite: tf.Tensor, optimizer, gradients, variables) -> None:
    """`optimizer.apply(gradients, variables)` only when `finite`.

    A plain `tf.cond` around `apply` fails under `MirroredStrategy` (apply
    calls `merge_call`), so there the condition is taken in cross-replica
    context, as Keras's `LossScaleOptimizer` does.
    """
    context = _replica_context()
    if context is None or internals.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: optimizer.apply(gradients, variables), lambda: None)
        return

    def cross_replica(strategy, gradients, finite):
        # Every replica computed the same all-reduced flag: take the first.
        agreed = strategy.experimental_local_results(finite)[0]

        def apply_on_every_replica():
            internals.run_on_each_replica(strategy, optimizer.apply, args=(gradients, variables))

        tf.cond(agreed, apply_on_every_replica, lambda: None)

    context.merge_call(cross_replica, args=(gradients, finite))


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a `MultiWorkerMirroredStrategy` whose cluster has several workers."""
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and internals.in_multi_worker_mode(strategy)


def first_local_value(strategy: tf.distribute.Strategy, structure):
    """`structure` with each distributed value replaced by its first local copy."""
    local = strategy.experimental_local_results
    return tf.nest.map_structure(
        lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
        structure,
    )


def logs_for_reduction(logs: dict, strategy: tf.distribute.Strategy) -> dict:
    """Scalar logs as shape [1] under multi-worker training.

    Keras reduces logs across workers with `strategy.reduce("MEAN", v,
    axis=0)`, which fails on a scalar; on shape [1] it is the mean over every
    replica of the cluster. Elsewhere the logs are returned unchanged.
    """
    if not is_multi_worker(strategy):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
