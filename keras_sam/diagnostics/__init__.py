"""Sharpness diagnostics: how flat is the minimum a model has found?

Three measures of the loss L around the trained weights w, all of the
model's compiled loss (with `model.losses`) in inference mode
(`training=False`), averaged over batches weighted by batch size exactly as
`model.evaluate` averages:

- `sharpness` — the SAM paper's m-sharpness: the rise of the loss at SAM's
  first-order worst point of the ρ-ball, mean_b [L_b(w + ε̂_b) − L_b(w)] with
  ε̂_b = `keras_sam.perturbation(∇L_b(w), w, rho)` and m the batch size. It is
  what SAM minimises, so it is the number to watch while training with SAM.
- `hessian_eigenvalues` — the top eigenvalues of ∇²L (curvature along the
  sharpest directions), by Lanczos iteration on exact Hessian-vector
  products; λ_max is the classic sharpness of Keskar et al.
  For small ρ, sharpness ≈ ρ‖g‖ + ½ρ²·ĝᵀHĝ.
- `loss_landscape` — the loss along one or two random filter-normalized
  directions (Li et al., 2018), drawn by `plot_loss_landscape`: a flat
  minimum is a wide basin.

`keras_sam.callbacks.SharpnessMonitor` logs the first two every few epochs.

They run on Keras's TensorFlow and JAX backends alike, with the same
numbers up to float32 rounding (the Hessian's random start included), on
data given as a `tf.data.Dataset`, as arrays or as any iterable of batches.

None of them assigns a weight: losses at moved weights are evaluated inside a
`keras.StatelessScope` that reads each trainable variable as a given tensor.
The model is bit-for-bit unchanged afterwards, even when an error interrupts a
measurement, and BatchNorm statistics, dropout seeds and metrics are untouched.

Example:

>>> import keras, numpy as np
>>> from keras_sam import diagnostics
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
>>> model.compile(loss="mse")
>>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
>>> y = x.sum(axis=1, keepdims=True)
>>> s = diagnostics.sharpness(model, (x, y), rho=0.05)
>>> top = diagnostics.hessian_eigenvalues(model, (x, y), k=2)
>>> line = diagnostics.loss_landscape(model, (x, y), points=11)
>>> s > 0, top[0] >= top[1], line.losses.shape
(True, True, (11,))
"""

from keras_sam.diagnostics.hessian import hessian_eigenvalues
from keras_sam.diagnostics.landscape import LossLandscape, loss_landscape, random_direction
from keras_sam.diagnostics.m_sharpness import sharpness
from keras_sam.diagnostics.plotting import plot_loss_landscape

__all__ = [
    "LossLandscape",
    "hessian_eigenvalues",
    "loss_landscape",
    "plot_loss_landscape",
    "random_direction",
    "sharpness",
]
