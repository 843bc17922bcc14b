"""LookSAM: SAM's ascent only every k-th step (Liu et al., CVPR 2022)."""

from __future__ import annotations

import keras
import numpy as np

from keras_sam import _validation as check
from keras_sam import backend
from keras_sam.gradient_math import as_dense, global_norm, orthogonal_part
from keras_sam.sam_model import SAMModel
from keras_sam.variant_state import PerWeightState

__all__ = ["LookSAMModel"]

# A stored direction this small relative to the SAM gradient is float32
# rounding (the two passes differ by graph rewrites even at rho = 0).
_ROUNDING = 1e-5


@keras.saving.register_keras_serializable(package="keras_sam")
class LookSAMModel(SAMModel):
    """SAM at a fraction of its cost: one full SAM step every `k` steps.

    On a full step (steps 0, k, 2k, ...) it runs SAM and stores g_v, the part
    of the SAM gradient g_sam orthogonal to the clean gradient g: the direction
    in which sharpness changes the gradient. The k − 1 steps in between take
    one pass and reuse it: g + α·(‖g‖/‖g_v‖)·g_v. The weights are always the
    live weights; nothing is reset to an older copy. `k=1` is SAM exactly.

    The step counter and g_v are variables of the model: they are saved with
    it and restored by `load_model`, checkpoints and `BackupAndRestore`. The
    counter counts the steps the optimizer took: a step a
    `LossScaleOptimizer` or `skip_nonfinite` skips does not advance it, so a
    skipped full step is taken again at the next step. g_v
    is kept per weight for every weight that can be trained, frozen or not,
    so freezing or unfreezing layers between fits (fine-tuning) keeps each
    weight's own direction. A g_v at float32 rounding level (‖g_v‖ below
    1e-5·‖g_sam‖, as with `rho=0`) counts as zero: normalized to α‖g‖ it
    would be a random kick. Under a `tf.distribute` strategy each replica
    keeps the g_v of its own gradients; with `sync_perturbation=True` every
    replica keeps the global batch's, and the run equals one device's on the
    global batch (one more all-reduce on every step, of g_sam, zero on the
    cheap steps: costly where the interconnect is slow).

    Use it when SAM's two passes per step cost too much: with k=5 a step
    takes 1 + 1/5 forward/backward passes on average.

    Example:

    >>> import keras
    >>> from keras_sam import LookSAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = LookSAMModel(base, rho=0.05, k=5, alpha=0.7)
    >>> model.k, model.alpha
    (5, 0.7)

    Args:
        base_model: the `keras.Model` to train.
        rho: neighbourhood radius (float or schedule). Defaults to `0.05`.
        k: a full SAM step every `k` steps, >= 1. Defaults to `5`.
        alpha: weight of the reused direction g_v, 0 <= alpha <= 1e4. Defaults to `0.7`.
        **kwargs: every other `SAMModel` argument except `num_batch_splits`
            (`p`, `adaptive`, `eta`, `sync_perturbation`, `skip_nonfinite`,
            `eps`, `name`).

    Reference:
        Liu et al., "Towards Efficient and Scalable Sharpness-Aware
        Minimization", CVPR 2022.
    """

    supports_batch_splits = False

    def __init__(self, base_model, rho=0.05, k: int = 5, alpha: float = 0.7, **kwargs):
        k = check.check_int("k", k, minimum=1, maximum=2**63 - 1)  # an int64 counter
        alpha = check.check_alpha(alpha)
        super().__init__(base_model, rho, **kwargs)
        self.k = k
        self.alpha = alpha
        self._look_step = keras.Variable(
            0, trainable=False, dtype=backend.counter_dtype(), name="look_step"
        )
        self._reused_direction = PerWeightState(self, "look_g_v")

    def takes_second_pass(self, gradients):
        if self.k == 1:
            return super().takes_second_pass(gradients)
        step = self._look_step.value
        if self.k > np.iinfo(self._look_step.dtype).max:  # the counter never reaches k
            full_step = keras.ops.equal(step, 0)
        else:
            full_step = keras.ops.equal(step % self.k, 0)
        return keras.ops.logical_and(full_step, super().takes_second_pass(gradients))

    def one_pass_direction(self, gradients):
        """g + α·(‖g‖/‖g_v‖)·g_v (g itself while rho is 0)."""
        present = [i for i, g in enumerate(gradients) if g is not None]
        stored = self._stored(present)
        clean = [as_dense(gradients[i]) for i in present]
        scale = self.alpha * keras.ops.divide_no_nan(global_norm(clean), global_norm(stored))
        scale = keras.ops.where(self.current_rho() > 0.0, scale, 0.0)
        direction = list(gradients)
        for i, g, d in zip(present, clean, stored):
            direction[i] = g + keras.ops.cast(scale, g.dtype) * d
        return direction

    def updated_state(self, clean_gradients, perturbed_gradients, second_pass):
        """g_v after a full step (the counter after every step the optimizer takes)."""
        counter = [(self._look_step, self._look_step.value + 1)]
        if self.k == 1:
            return counter
        present = [i for i, g in enumerate(clean_gradients) if g is not None]
        variables = self._reused_direction.of([self.trainable_variables[i] for i in present])
        sam = [as_dense(perturbed_gradients[i]) for i in present]
        direction = orthogonal_part(sam, [as_dense(clean_gradients[i]) for i in present])
        norm = global_norm(direction)
        keep = keras.ops.logical_and(second_pass, keras.ops.isfinite(norm))
        # A g_v at float32 rounding level is no direction: normalized to α‖g‖
        # it would be a random kick.
        rounding = keras.ops.logical_not(norm > _ROUNDING * global_norm(sam))
        new = [keras.ops.where(rounding, keras.ops.zeros_like(d), d) for d in direction]
        return counter + [
            (v, keras.ops.where(keep, d, v.value)) for v, d in zip(variables, new)
        ]

    def _stored(self, present):
        variables = self._reused_direction.of([self.trainable_variables[i] for i in present])
        return [v.value for v in variables]

    def get_config(self):
        return {**super().get_config(), "k": self.k, "alpha": self.alpha}
