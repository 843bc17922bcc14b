"""Keras callbacks of keras-sam."""

from __future__ import annotations

import keras

from keras_sam import _validation as check
from keras_sam._keras_internals import calling_callback_list
from keras_sam.diagnostics import hessian_eigenvalues, sharpness
from keras_sam.diagnostics._common import check_batches, dataset_of
from keras_sam.perturbation import validate_p

__all__ = ["SharpnessMonitor"]


class SharpnessMonitor(keras.callbacks.Callback):
    """Adds the sharpness and the top Hessian eigenvalue to the epoch logs.

    Every `every` epochs (the first epoch included: epochs 0, every,
    2·every, … counted from 0) it measures, on `data` and at the weights the
    epoch ended with, `keras_sam.diagnostics.sharpness` and, if `hessian`,
    the largest eigenvalue from `keras_sam.diagnostics.hessian_eigenvalues`.
    Both are written into the epoch's `logs`, so `History`, `CSVLogger`,
    `TensorBoard` and `EarlyStopping` see them; an epoch that is not measured
    has no such keys (as Keras's `validation_freq` does for `val_*`).
    Keras runs callbacks in list order, so a logger or `EarlyStopping` listed
    first would see the epoch's logs before the keys exist: wherever the
    monitor is listed, `fit` runs it first, before every other callback (but
    after a `SwapEMAWeights` listed before it, so that it measures the EMA
    weights that callback swaps in).

    Log keys: `"hessian_max_eigenvalue"`, and `"sharpness"` unless the logs
    already hold a `"sharpness"` — `SAMModel` logs its own, the mean over the
    epoch's training steps at moving weights, in training mode — in which case
    the measured one is logged as `"monitored_sharpness"`, so neither is
    overwritten. The choice is made at the first measurement and kept for the
    rest of `fit`; `sharpness_key` fixes it instead.

    Example:

    >>> import keras, numpy as np
    >>> from keras_sam.callbacks import SharpnessMonitor
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.ones((32, 3), "float32"), np.zeros((32, 1), "float32")
    >>> monitor = SharpnessMonitor((x, y), hessian_iterations=5)
    >>> history = model.fit(x, y, epochs=2, callbacks=[monitor], verbose=0)
    >>> sorted(history.history)
    ['hessian_max_eigenvalue', 'loss', 'sharpness']

    Args:
        data: what to measure on: a `tf.data.Dataset` of `(x, y)` or
            `(x, y, sample_weight)` batches, such a tuple of arrays (one
            batch unless `batch_size` is given, as for
            `keras_sam.diagnostics.sharpness`), or another iterable of such
            batches (a `keras.utils.PyDataset` is read at every measurement;
            a generator is read once, here, and kept). A held-out set
            measures the minimum without the training data's noise; a few
            training batches measure what SAM minimises. On either Keras
            backend, TensorFlow or JAX.
        every: measure every this many epochs, >= 1. Defaults to `1`.
        rho: the ρ of the sharpness. Defaults to `0.05`.
        hessian: also log the top Hessian eigenvalue (one pass over the
            batches per Lanczos step). Defaults to `True`.
        hessian_iterations: Lanczos steps (Hessian-vector products), >= 1.
            Defaults to `20`.
        batches: use only the first `batches` batches of `data` (the same
            ones at every measurement); `None` uses all. Defaults to `None`.
        p: norm of the sharpness ball, 1 < p <= inf. Defaults to `2`.
        adaptive: measure ASAM's adaptive sharpness. Defaults to `False`.
        sharpness_key: the log key of the sharpness; `None` chooses as
            described above. Defaults to `None`.
        batch_size: rows per batch when `data` is arrays; `None` takes them
            as one batch. Defaults to `None`.
    """

    hessian_key = "hessian_max_eigenvalue"

    def __init__(
        self,
        data,
        every: int = 1,
        rho: float = 0.05,
        hessian: bool = True,
        hessian_iterations: int = 20,
        batches: int | None = None,
        *,
        p: float = 2,
        adaptive: bool = False,
        sharpness_key: str | None = None,
        batch_size: int | None = None,
    ):
        super().__init__()
        # Cut (and cached) once, so that every epoch sees the same batches.
        self.data = dataset_of(data, batches=check_batches(batches), batch_size=batch_size)
        self.every = check.check_int("every", every, minimum=1)
        self.rho = check.check_rho_value(rho)
        self.hessian = check.check_bool("hessian", hessian)
        self.hessian_iterations = check.check_int(
            "hessian_iterations", hessian_iterations, minimum=1
        )
        self.p = validate_p(p)
        self.adaptive = check.check_bool("adaptive", adaptive)
        if sharpness_key is not None and (not isinstance(sharpness_key, str) or not sharpness_key):
            raise check.InvalidArgumentError(
                "`sharpness_key` must be a non-empty string or None. "
                f"Received: sharpness_key={sharpness_key!r}."
            )
        self.sharpness_key = sharpness_key

    def on_train_begin(self, logs=None):
        self._key = self.sharpness_key
        _run_first(self)

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every or logs is None:
            return
        if self._key is None:
            self._key = "monitored_sharpness" if "sharpness" in logs else "sharpness"
        # Traced at the first epoch, then reused: each call reads the live weights.
        logs[self._key] = sharpness(
            self.model, self.data, self.rho, p=self.p, adaptive=self.adaptive
        )
        if self.hessian:
            logs[self.hessian_key] = hessian_eigenvalues(
                self.model, self.data, iterations=self.hessian_iterations
            )[0]


def _run_first(callback: keras.callbacks.Callback) -> None:
    """Moves `callback` to the front of the `CallbackList` calling it (but
    after any `SwapEMAWeights` listed before it).

    The list is found among the calling frames (`CallbackList.on_train_begin`
    is the caller during `fit`); a callback called some other way is left
    alone. The list attribute is replaced, not changed in place, so the loop
    running over it now is not disturbed; later events follow the new order.
    """
    owner = calling_callback_list()
    if owner is None:
        return
    order = list(owner.callbacks)
    position = next((i for i, c in enumerate(order) if c is callback), None)
    if position is None:
        return
    # A `SwapEMAWeights` listed before the monitor puts the weights to measure
    # (the EMA) in place at the epoch's end: the monitor stays after it.
    swaps = [
        i
        for i, c in enumerate(order[:position])
        if isinstance(c, keras.callbacks.SwapEMAWeights)
    ]
    front = swaps[-1] + 1 if swaps else 0
    order.pop(position)
    order.insert(front, callback)
    owner.callbacks = order
