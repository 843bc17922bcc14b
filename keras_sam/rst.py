"""RST: each step is SAM with probability p, else plain (Zhao et al., 2022)."""

from __future__ import annotations

import numbers

import keras

from keras_sam import _validation as check
from keras_sam.sam_model import SAMModel

__all__ = ["RandomizedSAMModel", "uniform_draw"]

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _mix(x):
    """A 32-bit integer hash (uint32 tensor in, uint32 tensor out)."""
    multiplier = keras.ops.cast(0x45D9F3B, "uint32")
    sixteen = keras.ops.cast(16, "uint32")
    for _ in range(2):
        x = keras.ops.bitwise_xor(keras.ops.right_shift(x, sixteen), x)
        x = keras.ops.multiply(x, multiplier)
    return keras.ops.bitwise_xor(keras.ops.right_shift(x, sixteen), x)


def _as_uint32(value):
    """`value` modulo 2**32 as uint32 (JAX refuses a Python int out of range)."""
    if isinstance(value, int):
        value %= 2**32
    return keras.ops.cast(value, "uint32")


def uniform_draw(seed: int, step):
    """A number in [0, 1) that depends only on `seed` and `step` (float32).

    The same on every replica and backend, and after a restart: RST's
    decision for a step is `uniform_draw(seed, step) < p`. It is the top 24
    bits of an integer hash of the seed's hash plus the step, so NumPy can
    compute it too.

    >>> float(uniform_draw(0, 0)) == float(uniform_draw(0, 0))
    True
    """
    seed_hash = _mix(_as_uint32(seed))
    mixed = _mix(seed_hash + _as_uint32(step))
    top_bits = keras.ops.right_shift(mixed, keras.ops.cast(8, "uint32"))
    return keras.ops.cast(top_bits, "float32") * (2.0**-24)


@keras.saving.register_keras_serializable(package="keras_sam")
class RandomizedSAMModel(SAMModel):
    """Randomized Sharpness-aware Training: SAM on a random share of the steps.

    Each step is a SAM step with probability p(t) and a plain step (one
    forward/backward pass) otherwise. The draw depends only on `seed` and the
    optimizer's step, so every replica takes the same decision, and a run
    resumed from a checkpoint takes the same ones as the uninterrupted run
    (`uniform_draw`). `probability=1` is SAM; `0` is the plain step.

    Example:

    >>> import keras
    >>> from keras_sam import RandomizedSAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = RandomizedSAMModel(base, rho=0.05, probability=0.5)
    >>> model.probability
    0.5

    Args:
        base_model: the `keras.Model` to train.
        rho: neighbourhood radius (float or schedule). Defaults to `0.05`.
        probability: p, a float in [0, 1], or a schedule of the optimizer's
            step (e.g. `keras_sam.schedules.Linear(0.2, 0.8, total_steps)`).
            Defaults to `0.5`, the paper's share of SAM steps.
        seed: the draws' seed, an integer in [0, 2**32). Defaults to `0`.
        **kwargs: every other `SAMModel` argument.

    Reference:
        Zhao, Zhang and Hu, "Randomized Sharpness-Aware Training for Boosting
        Computational Efficiency in Deep Learning", 2022 (arXiv:2203.09962).
    """

    def __init__(self, base_model, rho=0.05, probability=0.5, seed: int = 0, **kwargs):
        if not isinstance(probability, _Schedule):
            if isinstance(probability, bool) or not isinstance(probability, numbers.Real):
                raise check.InvalidArgumentError(
                    "`probability` must be a number in [0, 1] or a "
                    "`keras.optimizers.schedules.LearningRateSchedule`. Received: "
                    f"probability={probability!r} (of type {type(probability).__name__})."
                )
            probability = check.check_real("probability", probability, minimum=0.0, maximum=1.0)
        seed = check.check_int("seed", seed, minimum=0, maximum=2**32 - 1)
        super().__init__(base_model, rho, **kwargs)
        self.probability = probability
        self.seed = seed

    def takes_second_pass(self, gradients):
        step = self.optimizer.iterations
        probability = self.probability
        if isinstance(probability, _Schedule):
            probability = keras.ops.cast(probability(step), "float32")
        drawn = uniform_draw(self.seed, step) < probability
        return keras.ops.logical_and(drawn, super().takes_second_pass(gradients))

    def get_config(self):
        probability = self.probability
        if isinstance(probability, _Schedule):
            probability = keras.saving.serialize_keras_object(probability)
        return {**super().get_config(), "probability": probability, "seed": self.seed}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("probability"), dict):
            config["probability"] = keras.saving.deserialize_keras_object(
                config["probability"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects)
