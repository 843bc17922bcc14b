"""Schedules for ρ (and AE-SAM's threshold), evaluated at the optimizer's step.

A step whose ρ is 0 costs one forward/backward pass, the plain Keras step: a
schedule that switches SAM off for part of training saves that part's
second pass. Each is a `keras.optimizers.schedules.LearningRateSchedule`, so
it is saved with the model and can be given wherever Keras takes a schedule.
Steps are the optimizer's iterations: multiply epochs by the steps per epoch.

- `LatePhase(rho, start_step)`: plain steps first, SAM from `start_step` on
  (late-phase SAM, Zhou et al. 2025; also a SAM-free warm-up);
- `EarlyPhase(rho, stop_step)`: SAM until `stop_step`, plain steps after;
- `Linear(start, end, steps)`: from `start` to `end` over `steps` steps, then
  `end` (ρ warm-up from 0, or AE-SAM's threshold from 1 to −1).

Example:

>>> from keras_sam.schedules import LatePhase
>>> rho = LatePhase(0.05, start_step=300)
>>> [round(float(rho(step)), 6) for step in (0, 299, 300)]
[0.0, 0.0, 0.05]
"""

from __future__ import annotations

import keras

from keras_sam import _validation as check

__all__ = ["EarlyPhase", "LatePhase", "Linear"]

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _step(step):
    return keras.ops.cast(step, "float32")


@keras.saving.register_keras_serializable(package="keras_sam")
class LatePhase(_Schedule):
    """0 before `start_step` (one pass per step), `rho` from it on.

    Args:
        rho: ρ of the SAM phase, 0 <= rho <= 1e4.
        start_step: the first SAM step (an optimizer iteration), >= 0.
    """

    def __init__(self, rho: float, start_step: int):
        self.rho = check.check_rho_value(rho)
        self.start_step = check.check_int("start_step", start_step, minimum=0)

    def __call__(self, step):
        return keras.ops.where(_step(step) >= self.start_step, self.rho, 0.0)

    def get_config(self):
        return {"rho": self.rho, "start_step": self.start_step}


@keras.saving.register_keras_serializable(package="keras_sam")
class EarlyPhase(_Schedule):
    """`rho` before `stop_step`, 0 from it on (one pass per step).

    Args:
        rho: ρ of the SAM phase, 0 <= rho <= 1e4.
        stop_step: the first plain step (an optimizer iteration), >= 0.
    """

    def __init__(self, rho: float, stop_step: int):
        self.rho = check.check_rho_value(rho)
        self.stop_step = check.check_int("stop_step", stop_step, minimum=0)

    def __call__(self, step):
        return keras.ops.where(_step(step) < self.stop_step, self.rho, 0.0)

    def get_config(self):
        return {"rho": self.rho, "stop_step": self.stop_step}


@keras.saving.register_keras_serializable(package="keras_sam")
class Linear(_Schedule):
    """From `start` at step 0 to `end` at step `steps`, then `end`.

    Args:
        start: the value at step 0 (a finite float).
        end: the value from step `steps` on (a finite float).
        steps: the length of the ramp, >= 1.
    """

    def __init__(self, start: float, end: float, steps: int):
        self.start = check.check_real("start", start)
        self.end = check.check_real("end", end)
        self.steps = check.check_int("steps", steps, minimum=1)

    def __call__(self, step):
        progress = keras.ops.minimum(_step(step) / float(self.steps), 1.0)
        return self.start + (self.end - self.start) * progress

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}
