"""AE-SAM: SAM only where the gradient norm is unusually large (Jiang et al., ICLR 2023)."""

from __future__ import annotations

import numbers

import keras

from keras_sam import _validation as check
from keras_sam.gradient_math import global_dot
from keras_sam.sam_model import SAMModel

__all__ = ["AESAMModel"]

_Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="keras_sam")
class AESAMModel(SAMModel):
    """An adaptive policy to employ SAM: a SAM step only where ‖g‖² stands out.

    It keeps exponential moving statistics of s = ‖g‖², the squared norm of
    the clean batch gradient, updated with each step's s before it decides:

        μ_t  = δ·μ_{t−1} + (1 − δ)·s
        σ²_t = δ·σ²_{t−1} + (1 − δ)·(s − μ_t)²
        SAM step iff s >= μ_t + c_t·σ_t

    where c_t is `threshold` (a float, or a schedule of the optimizer's step:
    the paper lowers it linearly from 1 to −1, `keras_sam.schedules.Linear(1.0,
    -1.0, total_steps)`, so that SAM is used more late in training). A step
    that is not a SAM step costs one pass. μ and σ² (from 0 and 1e-10) are
    model state, saved with the model; they move on every step the optimizer
    takes. Under a `tf.distribute` strategy each replica keeps its own unless
    `sync_perturbation=True`, and a step is a SAM step on every replica if it
    is on one.

    Example:

    >>> import keras
    >>> from keras_sam import AESAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = AESAMModel(base, rho=0.05, decay=0.9, threshold=0.0)
    >>> model.decay, model.threshold
    (0.9, 0.0)

    Args:
        base_model: the `keras.Model` to train.
        rho: neighbourhood radius (float or schedule). Defaults to `0.05`.
        decay: δ, the statistics' decay, 0 <= decay < 1. Defaults to `0.9`.
        threshold: c, how many standard deviations above the mean s must
            be, a finite float or a schedule. Defaults to `0.0`.
        **kwargs: every other `SAMModel` argument except `num_batch_splits`.

    Reference:
        Jiang, Yang, Zhang and Kwok, "An Adaptive Policy to Employ
        Sharpness-Aware Minimization", ICLR 2023.
    """

    supports_batch_splits = False

    def __init__(self, base_model, rho=0.05, decay: float = 0.9, threshold=0.0, **kwargs):
        decay = check.check_fraction_below_one("decay", decay)
        if not isinstance(threshold, _Schedule):
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
                raise check.InvalidArgumentError(
                    "`threshold` must be a finite number or a "
                    "`keras.optimizers.schedules.LearningRateSchedule`. Received: "
                    f"threshold={threshold!r} (of type {type(threshold).__name__})."
                )
            threshold = check.check_real("threshold", threshold)
        super().__init__(base_model, rho, **kwargs)
        self.decay = decay
        self.threshold = threshold
        self._mean = keras.Variable(0.0, trainable=False, dtype="float32", name="aesam_mean")
        self._variance = keras.Variable(
            1e-10, trainable=False, dtype="float32", name="aesam_variance"
        )

    def _statistics(self, gradients):
        """(s, μ_t, σ²_t) with this step's s."""
        squared_norm = global_dot(gradients, gradients)
        mean = self.decay * self._mean.value + (1.0 - self.decay) * squared_norm
        deviation = squared_norm - mean
        variance = self.decay * self._variance.value + (1.0 - self.decay) * deviation * deviation
        return squared_norm, mean, variance

    def takes_second_pass(self, gradients):
        squared_norm, mean, variance = self._statistics(gradients)
        threshold = self.threshold
        if isinstance(threshold, _Schedule):
            threshold = keras.ops.cast(threshold(self.optimizer.iterations), "float32")
        stands_out = squared_norm >= mean + threshold * keras.ops.sqrt(variance)
        return keras.ops.logical_and(stands_out, super().takes_second_pass(gradients))

    def updated_state(self, clean_gradients, perturbed_gradients, second_pass):
        _, mean, variance = self._statistics(clean_gradients)
        return [(self._mean, mean), (self._variance, variance)]

    def get_config(self):
        threshold = self.threshold
        if isinstance(threshold, _Schedule):
            threshold = keras.saving.serialize_keras_object(threshold)
        return {**super().get_config(), "decay": self.decay, "threshold": threshold}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("threshold"), dict):
            config["threshold"] = keras.saving.deserialize_keras_object(
                config["threshold"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects)
