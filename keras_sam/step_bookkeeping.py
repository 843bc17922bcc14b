"""What a SAM step reads and writes besides the weights, and its training logs.

`StepBookkeepingMixin` is mixed into `SAMModel`:

- the trainable variables of a step, after building what it needs first (a
  subclassed base's weights, the optimizer);
- the model's state a step updates (BatchNorm statistics) and what a skipped
  step puts back (that state and the training metrics);
- the training-only logs: `sharpness`, the epoch mean of L(w + ε̂) − L(w)
  over the steps that climbed, and `sam_steps`, the share of SAM steps where
  a policy or a ρ schedule makes some steps plain. Both are kept out of
  `metrics`, so that `evaluate` and validation logs never show them.
"""

from __future__ import annotations

import keras

from keras_sam import _keras_internals as internals

__all__ = ["StepBookkeepingMixin"]


class StepBookkeepingMixin:
    """The bookkeeping half of `SAMModel` (see the module docstring)."""

    @property
    def metrics(self):
        return [m for m in super().metrics if m not in self._step_trackers()]

    def reset_metrics(self):
        super().reset_metrics()
        for tracker in self._step_trackers():
            tracker.reset_state()

    def _step_trackers(self):
        """Training-only logs, kept out of `metrics` (and so of `evaluate`)."""
        return [self._sharpness_tracker, self._sam_steps_tracker]

    def _variables_to_train(self, x):
        """The trainable variables, after building what the step needs first."""
        if not all(layer.built for layer in internals.flatten_layers(self)):
            # A subclassed base creates its weights in its first call; SAM needs
            # them before. Built symbolically: the step gets no extra pass.
            specs = keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), x)
            internals.compute_output_spec(self.call, specs)
        variables = self.trainable_variables
        if not variables:
            raise ValueError(
                "SAMModel has no trainable weights to train: the base model "
                f"{self.base_model.name!r} has none (is it frozen?)."
            )
        if not self.optimizer.built:
            # Built before the passes, so that `scale_loss` reads the live scale.
            self.optimizer.build(variables)
        return variables

    def _logs_sam_steps(self) -> bool:
        """Whether some steps are SAM steps and others not (a policy or a ρ
        schedule): then `sam_steps`, the epoch's share of SAM steps, is logged."""
        return self._overrides("takes_second_pass") or self._rho_schedule is not None

    def _track_sharpness(self, difference, second_pass, x):
        if second_pass is False:
            return
        rows = self._batch_rows(x)
        if not isinstance(second_pass, bool):
            rows = keras.ops.cast(second_pass, "int32") * keras.ops.cast(rows, "int32")
        self._sharpness_tracker.update_state(
            internals.unscale_loss_for_distribution(difference), sample_weight=rows
        )

    def _model_state(self):
        """The base's non-trainable weights a step updates (BatchNorm statistics)."""
        seeds = {id(s) for s in internals.seed_states(self)}
        return [v for v in self.base_model.non_trainable_variables if id(v) not in seeds]

    def _skippable_state(self):
        """What a skipped step puts back: the model's state and the training
        metrics (a skipped batch counts in neither `loss` nor any metric nor
        `sharpness`). The dropout seeds still advance."""
        metrics = [v for m in super().metrics for v in m.variables]
        return self._model_state() + metrics
