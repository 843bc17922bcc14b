"""The non-finite and loss-scale guard around a SAM step's update.

Keras's `LossScaleOptimizer` wraps an optimizer: it scales the loss, and it
applies a step only when the gradient is finite (lowering its scale when not).
SAM needs the same decision taken over more evidence, which this guard wraps
around the step instead of threading branches through it:

- the ascent's gradient: a non-finite first gradient gives ε̂ = 0, and the
  second pass (another dropout mask) may then be finite, yet the step must be
  skipped, as plain Keras skips a step whose gradient overflowed;
- with `skip_nonfinite=True`, the losses of both passes, and the decision
  taken on every replica together; the model's state (BatchNorm statistics,
  metrics, the loss tracker, the sharpness) is put back as it was, and the
  skip is counted;
- under a strategy with a loss scaler: the scaler checks replica 0's gradient
  only, so every replica's direction is made non-finite when any replica's is.

Example:

>>> import keras, numpy as np
>>> from keras_sam.guard import StepGuard
>>> w = keras.Variable(np.ones(2, "float32"))
>>> guard = StepGuard(keras.optimizers.SGD(1.0), skip_nonfinite=True)
>>> with guard.transaction([]) as step:
...     applied = step.apply([keras.ops.array([float("nan"), 1.0])], [w],
...                          checked_gradients=[], checked_losses=[])
>>> bool(applied), w.numpy().tolist(), int(guard.skipped_steps.numpy())
(False, [1.0, 1.0], 1)
"""

from __future__ import annotations

import contextlib

import keras

from keras_sam import backend

__all__ = ["StepGuard"]


class StepGuard:
    """Applies a step's direction, or skips the step, for one optimizer.

    Args:
        optimizer: the compiled optimizer (a `LossScaleOptimizer` or not).
        skip_nonfinite: skip a step whose gradients or losses are not
            finite, restoring the state it changed.
        skipped_steps: the counter of skipped steps (a model variable, so that
            it is saved); created here if not given.
    """

    def __init__(self, optimizer, *, skip_nonfinite: bool, skipped_steps=None):
        self.optimizer = optimizer
        self.skip_nonfinite = skip_nonfinite
        if skipped_steps is None:
            skipped_steps = keras.Variable(
                0, trainable=False, dtype=backend.counter_dtype(), name="skipped_steps"
            )
        self.skipped_steps = skipped_steps

    @property
    def loss_scaled(self) -> bool:
        return isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)

    def loss_scale(self):
        """The factor `optimizer.scale_loss` multiplies the loss by, or None."""
        if self.loss_scaled:
            return self.optimizer.dynamic_scale
        return self.optimizer.loss_scale_factor

    @contextlib.contextmanager
    def transaction(self, state):
        """A step whose changes to `state` are undone if `apply` skips it.

        Yields a `GuardedStep`; `state` (variables) is copied first only with
        `skip_nonfinite` (nothing else restores it).
        """
        step = GuardedStep(self, state if self.skip_nonfinite else [])
        yield step
        if self.skip_nonfinite:
            step.restore_unless_applied()


class GuardedStep:
    """One step inside `StepGuard.transaction`."""

    def __init__(self, guard: StepGuard, state):
        self.guard = guard
        self.state = list(state)
        self.saved = [keras.ops.copy(v.value) for v in self.state]
        self.applied = None

    def apply(self, direction, variables, *, checked_gradients, checked_losses):
        """Applies `direction` to `variables` unless the step must be skipped.

        `checked_gradients` (the ascent's gradient) and, with
        `skip_nonfinite`, `checked_losses` must be finite too. Returns
        whether the optimizer took the step (a bool tensor): under a loss
        scaler a step with a non-finite direction is skipped by the scaler.
        """
        guard, replicas = self.guard, backend.replicas()
        optimizer = guard.optimizer
        evidence = list(checked_gradients)
        if guard.skip_nonfinite:
            evidence += list(checked_losses)
        distributed = replicas.num_replicas() > 1
        if not guard.skip_nonfinite and not guard.loss_scaled:
            replicas.apply(optimizer, direction, variables)
            self.applied = keras.ops.convert_to_tensor(True)
        elif not guard.skip_nonfinite and not distributed:
            # The scaler skips (and lowers its scale) on a non-finite direction.
            direction = replicas.poison_unless(replicas.all_finite(evidence), direction)
            replicas.apply(optimizer, direction, variables)
            self.applied = replicas.all_finite(direction)
        else:
            finite = replicas.all_replicas_finite(list(direction) + evidence)
            if guard.loss_scaled:
                replicas.apply(optimizer, replicas.poison_unless(finite, direction), variables)
            else:
                replicas.apply_if(finite, optimizer, direction, variables)
            self.applied = finite
        return self.applied

    def restore_unless_applied(self):
        """Puts `state` back and counts the skip, if the step was skipped."""
        applied = self.applied
        for variable, value in zip(self.state, self.saved):
            variable.assign(keras.ops.where(applied, variable.value, value))
        skipped = self.guard.skipped_steps
        skipped.assign_add(keras.ops.cast(keras.ops.logical_not(applied), skipped.dtype))
