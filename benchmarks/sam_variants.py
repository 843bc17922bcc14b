"""Variants of a SAM step, for finding where its time goes (not for training).

`benchmarks/anatomy.py` times them against `SAMModel` in paired rounds. Each
changes one thing, through keras-sam's public API only: a documented hook of
`SAMModel`, or a Keras model whose `train_step` is SAM written with
`keras_sam.perturbation`.

- `InferenceAscentSAM`: the clean (ascent) pass runs with `training=False`, as
  the Keras 2 SAM's does (it calls `self(x)` without `training`): BatchNorm
  uses its moving statistics there and computes no batch moments. This is a
  different algorithm (the ascent direction of another function, the moving
  statistics then updated at w + ε̂); it only shows what that choice saves.
- `AssignPerturbationSAM`: w += ε̂ by `assign_add`, the second pass on the
  variables themselves, then w restored from a `tf.identity` copy, instead
  of reading w + ε̂ through a `keras.StatelessScope`. (Its second pass also
  updates the BatchNorm statistics: timing only.)
- `UnguardedAscentSAM`: `SAMModel` whose `ascent` hook is ε̂ = ρ·g / (‖g‖ +
  eps) with the norm from one `tf.linalg.global_norm` and none of the
  finiteness guards.

The first two are plain `keras.Model`s around the base (logs: the compiled metrics).

Example:

>>> import keras
>>> from benchmarks.sam_variants import VARIANTS
>>> base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
>>> type(VARIANTS["sam_unguarded"].wrap(base)).__name__
'UnguardedAscentSAM'
"""

from __future__ import annotations

import keras
import tensorflow as tf

from benchmarks.modes import RHO, Mode
from keras_sam import SAMModel, perturbation

__all__ = ["AssignPerturbationSAM", "InferenceAscentSAM", "UnguardedAscentSAM", "VARIANTS"]


class _KerasLoopSAM(keras.Model):
    """A Keras model whose `train_step` is a hand-written SAM step (TensorFlow)."""

    def __init__(self, base_model, rho=RHO, **kwargs):
        super().__init__(**kwargs)
        self.base_model = base_model
        self.rho = rho

    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def _loss(self, x, y, sample_weight, training):
        y_pred = self(x, training=training)
        return y_pred, self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred, loss = self._loss(x, y, sample_weight, training=self.ascent_training)
        gradients = tape.gradient(loss, variables)
        e_hat = perturbation(gradients, variables, self.rho)
        self.optimizer.apply(self.perturbed_gradients(x, y, sample_weight, e_hat), variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class InferenceAscentSAM(_KerasLoopSAM):
    """SAM whose clean pass runs BatchNorm/Dropout in inference mode (as Keras 2's)."""

    ascent_training = False

    def perturbed_gradients(self, x, y, sample_weight, e_hat):
        variables = self.trainable_variables
        mapping = [(v, v.value + e) for v, e in zip(variables, e_hat) if e is not None]
        sources = [value for _, value in mapping]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
                _, loss = self._loss(x, y, sample_weight, training=True)
        return tape.gradient(loss, sources)


class AssignPerturbationSAM(_KerasLoopSAM):
    """SAM that assigns w + ε̂ to the variables and restores w from a copy."""

    ascent_training = True

    def perturbed_gradients(self, x, y, sample_weight, e_hat):
        variables = self.trainable_variables
        saved = [tf.identity(v.value) for v in variables]
        for v, e in zip(variables, e_hat):
            v.assign_add(e)
        with tf.GradientTape() as tape:
            _, loss = self._loss(x, y, sample_weight, training=True)
        gradients = tape.gradient(loss, variables)
        for v, value in zip(variables, saved):
            v.assign(value)
        return gradients


class UnguardedAscentSAM(SAMModel):
    """SAM with ε̂ = ρ·g / (‖g‖ + eps): one fused norm, no finiteness guards."""

    def ascent(self, gradients, variables):
        present = [g for g in gradients if g is not None]
        scale = self.current_rho() / (tf.linalg.global_norm(present) + self.eps)
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
