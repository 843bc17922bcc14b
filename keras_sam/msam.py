"""MSAM: SAM's ascent along the momentum, at one pass per step (Becker et al., 2024)."""

from __future__ import annotations

import keras

from keras_sam import _validation as check
from keras_sam.gradient_math import as_dense
from keras_sam.sam_model import SAMModel
from keras_sam.variant_state import PerWeightState

__all__ = ["MSAMModel"]


@keras.saving.register_keras_serializable(package="keras_sam")
class MSAMModel(SAMModel):
    """Momentum-SAM: one forward/backward per step, at w − ρ·v/‖v‖.

    MSAM replaces SAM's ascent along the batch gradient by a step against v,
    a momentum of past gradients, which costs no extra pass: step t takes
    its one gradient g_t at

        w_t − ρ·v_t / (‖v_t‖₂ + eps)        (w_t itself while ‖v_t‖ = 0)

    then v_{t+1} = momentum·v_t + g_t, and the optimizer applies g_t at w_t:
    the weights never hold the perturbed values (the pass reads them through
    a `keras.StatelessScope`). This is the rule of the official code
    (MarlonBecker/MSAM, `optimizer/msam.py`) with a buffer of its own, so
    that any Keras optimizer works; the official code reuses SGD's momentum
    buffer (which also holds the weight decay, and is `−v/lr` in Keras's
    SGD). The one pass updates BatchNorm statistics, metrics and the loss,
    at the perturbed point, as in the official code. The first step is a
    plain step. `p`, `adaptive` and `perturb` shape the step against v as
    they shape SAM's ascent. v is model state, one variable per weight
    (saved in `.keras` files, weight files, checkpoints and backups); it
    moves on every step the optimizer takes. Under a `tf.distribute`
    strategy each replica keeps the v of its own gradients; with
    `sync_perturbation=True`, the global batch's.

    Use it for SAM's gain at a plain step's cost; its ρ is larger than SAM's
    (the official runs use 3 with SGD on CIFAR-100; see the docs for the
    settings measured here).

    Example:

    >>> import keras
    >>> from keras_sam import MSAMModel
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = MSAMModel(base, rho=0.3, momentum=0.9)
    >>> model.momentum
    0.9

    Args:
        base_model: the `keras.Model` to train.
        rho: the step against the momentum (float or schedule).
            Defaults to `0.3`, the official code's.
        momentum: v's decay, 0 <= momentum < 1. Defaults to `0.9`.
        **kwargs: every other `SAMModel` argument except `num_batch_splits`
            (`p`, `adaptive`, `eta`, `sync_perturbation`, `skip_nonfinite`,
            `eps`, `perturb`, `name`).

    Reference:
        Becker, Altrock and Risse, "Momentum-SAM: Sharpness Aware Minimization
        without Computational Overhead", 2024 (arXiv:2401.12033).
    """

    supports_batch_splits = False

    def __init__(self, base_model, rho=0.3, momentum: float = 0.9, **kwargs):
        momentum = check.check_fraction_below_one("momentum", momentum)
        super().__init__(base_model, rho, **kwargs)
        self.momentum = momentum
        self._velocity = PerWeightState(self, "msam_v")

    def first_pass_offset(self, variables):
        """−ρ·v/(‖v‖ + eps): SAM's ascent rule applied to −v."""
        velocity = [-v.value for v in self._velocity.of(variables)]
        return self.ascent(velocity, variables)

    def takes_second_pass(self, gradients):
        return False

    def updated_state(self, clean_gradients, perturbed_gradients, second_pass):
        """v ← momentum·v + g."""
        variables = self.trainable_variables
        return [
            (v, self.momentum * v.value + as_dense(g))
            for v, g in zip(self._velocity.of(variables), clean_gradients)
            if g is not None
        ]

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}
