"""Friendly SAM: the ascent without the full gradient's component (Li et al., CVPR 2024)."""

from __future__ import annotations

import keras

from keras_sam import _validation as check
from keras_sam import backend
from keras_sam.gradient_math import as_dense
from keras_sam.sam_model import SAMModel
from keras_sam.variant_state import PerWeightState

__all__ = ["FriendlySAMModel"]


@keras.saving.register_keras_serializable(package="keras_sam")
class FriendlySAMModel(SAMModel):
    """SAM whose ascent drops the full-gradient component of the batch gradient.

    The batch gradient g holds an estimate of the full gradient, which F-SAM
    finds harms generalization when SAM climbs along it. It keeps m, an
    exponential moving average of past gradients, and climbs along what is
    left of g, in the order of the official code:

        step 0:   d = g,            m = g
        step t:   d = g − σ·m,      m ← λ·m + (1 − λ)·g     (m of step t − 1 in d)
        ε̂ = ρ·d / (‖d‖₂ + eps)

    then takes the gradient at w + ε̂ as SAM does. `p`, `adaptive` and
    `perturb` apply to d as they do to SAM's g. m is model state, one
    variable per weight: saved in `.keras` files, weight files, checkpoints
    and backups. It moves on every step the optimizer takes (not on a skipped
    one). Under a `tf.distribute` strategy each replica keeps the m of its own
    gradients; with `sync_perturbation=True` every replica keeps the global
    batch's. `sigma=0` is SAM exactly.

    Example:

    >>> import keras
    >>> from keras_sam import FriendlySAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = FriendlySAMModel(base, rho=0.05, sigma=1.0, lmbda=0.9)
    >>> model.sigma, model.lmbda
    (1.0, 0.9)

    Args:
        base_model: the `keras.Model` to train.
        rho: neighbourhood radius (float or schedule). Defaults to `0.05`.
        sigma: how much of the moving average is removed from g,
            0 <= sigma <= 1e4. Defaults to `1.0`.
        lmbda: the moving average's decay λ, 0 <= lmbda < 1. Defaults to `0.9`.
        **kwargs: every other `SAMModel` argument except `num_batch_splits`
            (`p`, `adaptive`, `eta`, `sync_perturbation`, `skip_nonfinite`,
            `eps`, `perturb`, `name`).

    Reference:
        Li et al., "Friendly Sharpness-Aware Minimization", CVPR 2024.
    """

    supports_batch_splits = False

    def __init__(self, base_model, rho=0.05, sigma: float = 1.0, lmbda: float = 0.9, **kwargs):
        sigma = check.check_real("sigma", sigma, minimum=0.0, maximum=check.MAX_ALPHA)
        lmbda = check.check_fraction_below_one("lmbda", lmbda)
        super().__init__(base_model, rho, **kwargs)
        self.sigma = sigma
        self.lmbda = lmbda
        self._steps = keras.Variable(
            0, trainable=False, dtype=backend.counter_dtype(), name="friendly_step"
        )
        self._average = PerWeightState(self, "friendly_m")

    def ascent(self, gradients, variables):
        """ε̂ along d = g − σ·m (d = g on the first step)."""
        started = self._steps.value > 0
        averages = self._averages(gradients, variables)
        directions = [
            None if g is None else keras.ops.where(started, as_dense(g) - self.sigma * m, g)
            for g, m in zip(gradients, averages)
        ]
        return super().ascent(directions, variables)

    def updated_state(self, clean_gradients, perturbed_gradients, second_pass):
        """m ← λ·m + (1 − λ)·g (m = g on the first step)."""
        started = self._steps.value > 0
        variables = self.trainable_variables
        updates = [(self._steps, self._steps.value + 1)]
        for g, m, v in zip(clean_gradients, self._averages(clean_gradients, variables), variables):
            if g is not None:
                g = as_dense(g)
                moved = self.lmbda * m + (1.0 - self.lmbda) * g
                updates.append((self._average.of([v])[0], keras.ops.where(started, moved, g)))
        return updates

    def _averages(self, gradients, variables):
        """m of each variable with a gradient (None for the others)."""
        present = [v for v, g in zip(variables, gradients) if g is not None]
        state = iter(self._average.of(present))
        return [None if g is None else next(state).value for g in gradients]

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma, "lmbda": self.lmbda}
