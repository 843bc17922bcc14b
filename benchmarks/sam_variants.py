"""Variants of `SAMModel`'s step, for finding where its time goes (not for training).

Each subclass changes one thing in the step; `benchmarks/anatomy.py` times
them against `SAMModel` in paired rounds. They override the core's private
hooks (`_clean_pass`, `_perturbed_pass`, `_ascent`), so they follow the core
as it is today.

- `InferenceAscentSAM`: the clean (ascent) pass runs with `training=False`, as
  the Keras 2 SAM's does (it calls `self(x)` without `training`): BatchNorm
  uses its moving statistics there and computes no batch moments. This is a
  different algorithm (the ascent direction of another function, the moving
  statistics then updated at w + ε̂); it only shows what that choice saves.
- `AssignPerturbationSAM`: w += ε̂ by `assign_add`, the second pass on the
  variables themselves, then w restored from a `tf.identity` copy, instead
  of reading w + ε̂ through a `keras.StatelessScope`. (Its second pass also
  updates the BatchNorm statistics: timing only.)
- `UnguardedAscentSAM`: ε̂ = ρ·g / (‖g‖ + eps) with the norm from one
  `tf.linalg.global_norm` and none of the finiteness guards.

Example:

>>> import keras
>>> from benchmarks.sam_variants import VARIANTS
>>> base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> type(VARIANTS["sam_unguarded"].wrap(base)).__name__
'UnguardedAscentSAM'
"""

from __future__ import annotations

import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from benchmarks.modes import RHO, Mode
from keras_sam import SAMModel

__all__ = ["AssignPerturbationSAM", "InferenceAscentSAM", "UnguardedAscentSAM", "VARIANTS"]


def _batch_rows(x):
    return tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]


class InferenceAscentSAM(SAMModel):
    """SAM whose clean pass runs BatchNorm/Dropout in inference mode (as Keras 2's)."""

    def _clean_pass(self, x, y, sample_weight, variables, collect_state=False):
        if collect_state:
            raise NotImplementedError("timing variant: num_batch_splits must be 1")
        with tf.GradientTape() as tape:
            y_pred = self(x, training=False)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(loss), sample_weight=_batch_rows(x)
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return loss, gradients, []


class AssignPerturbationSAM(SAMModel):
    """SAM that assigns w + ε̂ to the variables and restores w from a copy."""

    def _perturbed_pass(self, x, y, sample_weight, variables, e_hat):
        moved = [i for i, e in enumerate(e_hat) if e is not None]
        saved = [tf.identity(variables[i].value) for i in moved]
        for i in moved:
            variables[i].assign_add(e_hat[i])
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        moved_gradients = tape.gradient(scaled_loss, [variables[i] for i in moved])
        for i, value in zip(moved, saved):
            variables[i].assign(value)
        gradients = [None] * len(variables)
        for i, g in zip(moved, moved_gradients):
            gradients[i] = g
        return loss, gradients


class UnguardedAscentSAM(SAMModel):
    """SAM with ε̂ = ρ·g / (‖g‖ + eps): one fused norm, no finiteness guards."""

    def _ascent(self, gradients, variables):
        present = [g for g in gradients if g is not None]
        scale = self._current_rho() / (tf.linalg.global_norm(present) + self.eps)
        return [None if g is None else g * scale for g in gradients]


VARIANTS: dict[str, Mode] = {
    "sam_inference_ascent": Mode(
        "sam_inference_ascent", "variant: ascent pass in inference mode", "keras",
        lambda base: InferenceAscentSAM(base, rho=RHO),
    ),
    "sam_assign": Mode(
        "sam_assign", "variant: assign w + ε̂, restore from copy", "keras",
        lambda base: AssignPerturbationSAM(base, rho=RHO),
    ),
    "sam_unguarded": Mode(
        "sam_unguarded", "variant: ε̂ with one global_norm, no guards", "keras",
        lambda base: UnguardedAscentSAM(base, rho=RHO),
    ),
}
