"""The frame a variant's hooks see gradients in: unscaled, and global when synced.

A replica's gradients, as its passes produce them, carry the loss scale of a
`LossScaleOptimizer` (or a `loss_scale_factor`), and under a `tf.distribute`
strategy each is only its replica's share: the optimizer all-reduces them
(sums) inside `apply`. SAM's hooks see them in one frame instead:

- divided by the loss scale, so that norms and ε̂ are those of the loss;
- with `sync_perturbation=True`, summed over the replicas: the global batch's
  gradient, the same on every replica (the run equals one device's).

A direction a hook returns in that frame goes back to the optimizer's frame
multiplied by the loss scale and, when synced, divided among the replicas,
whose shares the optimizer sums again.

Example:

>>> import keras
>>> from keras_sam.gradient_frame import GradientFrame
>>> frame = GradientFrame(loss_scale=4.0, synced=False)
>>> [float(g) for g in frame.to_hooks([keras.ops.array(8.0), None])[:1]]
[2.0]
>>> float(frame.from_hooks([keras.ops.array(2.0)])[0])
8.0
"""

from __future__ import annotations

import keras

from keras_sam import backend

__all__ = ["GradientFrame"]


class GradientFrame:
    """Converts between a replica's gradients and the hooks' frame.

    Args:
        loss_scale: the factor the loss was multiplied by, or `None`.
        synced: sum the hooks' gradients over replicas.
    """

    def __init__(self, loss_scale, synced: bool):
        self.loss_scale = loss_scale
        self.replicas = backend.replicas().num_replicas() if synced else 1

    def to_hooks(self, gradients: list) -> list:
        if self.loss_scale is not None:
            inverse = 1.0 / self.loss_scale
            gradients = [
                None if g is None else g * keras.ops.cast(inverse, g.dtype) for g in gradients
            ]
        if self.replicas > 1:
            gradients = backend.replicas().all_reduce_sum(gradients)
        return list(gradients)

    def from_hooks(self, direction: list) -> list:
        factor = 1.0 if self.loss_scale is None else self.loss_scale
        if self.replicas > 1:
            factor = factor / self.replicas
        if self.loss_scale is None and self.replicas == 1:
            return list(direction)
        return [None if d is None else d * keras.ops.cast(factor, d.dtype) for d in direction]
