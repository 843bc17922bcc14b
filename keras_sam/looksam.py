"""LookSAM: SAM's ascent only every k-th step (Liu et al., CVPR 2022)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_sam import _validation as check
from keras_sam import distribution
from keras_sam.gradient_math import as_dense, global_norm, orthogonal_part
from keras_sam.sam_model import SAMModel

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

    Use it when SAM's 2x cost is too much: with k=5 a step costs about 1.2x a
    plain step.

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

    def __init__(self, base_model, rho=0.05, k: int = 5, alpha: float = 0.7, **kwargs):
        k = check.check_int("k", k, minimum=1, maximum=2**63 - 1)  # an int64 counter
        alpha = check.check_alpha(alpha)
        if kwargs.get("num_batch_splits", 1) != 1:
            raise check.InvalidArgumentError(
                "LookSAMModel stores one reused direction per step and does not "
                "support m-sharpness: `num_batch_splits` must be 1. Received: "
                f"num_batch_splits={kwargs['num_batch_splits']!r}."
            )
        super().__init__(base_model, rho, **kwargs)
        self.k = k
        self.alpha = alpha
        self._look_step = keras.Variable(0, trainable=False, dtype="int64", name="look_step")
        self._reused_direction = None
        if self.built:
            self._create_reused_direction()

    def _trainable_weights_frozen_or_not(self):
        """The base's weights created trainable, whether frozen now or not,
        in the order of `base_model.weights` (that of `trainable_weights`
        when nothing is frozen)."""
        created_trainable = {
            id(v)
            for layer in self.base_model._flatten_layers(include_self=True)
            for v in layer._trainable_variables
        }
        return [v for v in self.base_model.weights if id(v) in created_trainable]

    def _create_reused_direction(self):
        # Created lazily, once the base model's variables exist.
        if self._reused_direction is not None:
            return
        weights = self._trainable_weights_frozen_or_not()
        self._reused_direction = [
            self.add_weight(
                shape=v.shape, initializer="zeros", dtype=v.dtype, trainable=False, name="look_g_v"
            )
            for v in weights
        ]
        # Which g_v belongs to which weight (kept out of Keras's tracking).
        object.__setattr__(self, "_direction_of", {id(v): i for i, v in enumerate(weights)})

    def _reused_direction_variables(self, variables):
        """The g_v of each of `variables` (the weights trained now)."""
        self._create_reused_direction()
        missing = [v.path for v in variables if id(v) not in self._direction_of]
        if missing:
            raise ValueError(
                "LookSAMModel keeps a stored direction for each weight created "
                f"trainable; these are trained now but were not: {missing}."
            )
        return [self._reused_direction[self._direction_of[id(v)]] for v in variables]

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.base_model.built:
            self._create_reused_direction()

    def _sam_gradients(self, x, y, sample_weight, variables):
        if self.k == 1:
            return super()._sam_gradients(x, y, sample_weight, variables)
        stored = self._reused_direction_variables(variables)
        loss, gradients, ascent_gradients = self._compiled_clean_pass(
            x, y, sample_weight, variables
        )
        present = [i for i, g in enumerate(gradients) if g is not None]
        if self.sync_perturbation and distribution.num_replicas() > 1:
            return self._synced_look_step(
                x, y, sample_weight, variables, stored, loss, gradients, ascent_gradients
            ), loss

        def full_step():
            sam_gradients = self._perturbed_gradients(
                x, y, sample_weight, variables, loss, ascent_gradients
            )
            self._store_direction(
                [stored[i] for i in present],
                [sam_gradients[i] for i in present],
                [gradients[i] for i in present],
            )
            # Dense in both branches: a `tf.cond` needs the same structure.
            return [as_dense(sam_gradients[i]) for i in present]

        def reuse_step():
            clean = [as_dense(gradients[i]) for i in present]
            reused = [stored[i].value for i in present]
            scale = self._reuse_scale(global_norm(clean), reused)
            return [g + tf.cast(scale, g.dtype) * d for g, d in zip(clean, reused)]

        # Each branch is its own XLA program and the cond stays a TensorFlow
        # op: XLA:CPU runs the convolutions of a compiled `tf.cond` branch many
        # times slower than the same ops outside one (measured: 4-9x a plain
        # step).
        chosen = tf.cond(
            tf.equal(self._look_step % self.k, 0), self._xla(full_step), self._xla(reuse_step)
        )
        result = [None] * len(variables)
        for i, g in zip(present, chosen):
            result[i] = g
        return result, loss

    def _synced_look_step(
        self, x, y, sample_weight, variables, stored, loss, gradients, ascent_gradients
    ):
        """LookSAM on the global batch under a strategy with a synced ε̂.

        g_v is taken from the global clean and SAM gradients (the sums of the
        replicas'), so every replica stores the same one, and a reuse step
        scales it by the global ‖g‖: the replicas' directions sum to the
        direction one device would take on the global batch. The all-reduces
        run outside the `tf.cond`, where MirroredStrategy cannot run them; on a
        reuse step the SAM gradient reduced is zero.
        """
        present = [i for i, g in enumerate(gradients) if g is not None]
        full = tf.equal(self._look_step % self.k, 0)

        def perturbed():
            sam_gradients = self._perturbed_gradients(
                x, y, sample_weight, variables, loss, ascent_gradients
            )
            return [as_dense(sam_gradients[i]) for i in present]

        def skipped():
            return [tf.zeros_like(as_dense(gradients[i])) for i in present]

        local_sam = tf.cond(full, perturbed, skipped)
        global_sam = distribution.all_reduce_sum(local_sam)
        # The ascent's gradient is the global clean gradient, unscaled: its
        # direction is all g_v needs; its norm, scaled back, is ‖g‖.
        global_clean = [as_dense(ascent_gradients[i]) for i in present]
        self._store_direction([stored[i] for i in present], global_sam, global_clean, when=full)
        reused = [stored[i].value for i in present]
        clean_norm = self._times_loss_scale(global_norm(global_clean))
        scale = self._reuse_scale(clean_norm, reused) / distribution.num_replicas()
        result = [None] * len(variables)
        for i, s, d in zip(present, local_sam, reused):
            g = as_dense(gradients[i])
            result[i] = tf.where(full, s, g + tf.cast(scale, g.dtype) * d)
        return result

    @staticmethod
    def _store_direction(stored, sam_gradients, clean_gradients, when=None):
        """Stores g_v, the part of g_sam orthogonal to g, into `stored` (one
        variable per gradient): zero at float32 rounding level, and left as it
        was unless it is finite (and `when`)."""
        direction = orthogonal_part(sam_gradients, clean_gradients)
        norm = global_norm(direction)
        keep = tf.math.is_finite(norm)
        if when is not None:
            keep = tf.logical_and(when, keep)
        rounding = tf.logical_not(norm > _ROUNDING * global_norm(sam_gradients))
        for variable, d in zip(stored, direction):
            new = tf.where(rounding, tf.zeros_like(d), d)
            variable.assign(tf.where(keep, new, variable.value))

    def _reuse_scale(self, clean_norm, reused):
        """α·‖g‖/‖g_v‖, the weight of the stored direction on a reuse step."""
        return self.alpha * tf.math.divide_no_nan(clean_norm, global_norm(reused))

    def _apply(self, gradients, variables, losses):
        # The counter counts the steps the optimizer took, as its `iterations`
        # does: a full step a `LossScaleOptimizer` skips (an overflow) comes
        # again at the next step instead of leaving k − 1 steps without a
        # fresh g_v.
        applied = super()._apply(gradients, variables, losses)
        self._look_step.assign_add(tf.cast(applied, "int64"))
        return applied

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # `tf.train.Checkpoint` does not follow a list of variables.
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            for i, direction in enumerate(self._reused_direction or []):
                children[f"look_g_v_{i}"] = direction
        return children

    def get_config(self):
        return {**super().get_config(), "k": self.k, "alpha": self.alpha}
