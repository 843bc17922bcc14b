"""MNIST-1D, generated locally, and symmetric label noise for its training set.

MNIST-1D (Greydanus & Kobak, 2024) turns the ten digit templates into 1D
signals of length 40 with random padding, scaling, translation, shear and
noise. `mnist1d.data.make_dataset` builds it from code in a few seconds, so
nothing is downloaded (its `get_dataset` would fetch a pickle from GitHub:
we never call it).

Noisy labels make the gap between sharp and flat minima visible: a network
that memorises wrong labels ends in a sharp minimum and its clean test
accuracy collapses; SAM resists memorisation (Foret et al., 2021, Sec. 3.3).

>>> from keras_sam.apps.data.mnist1d import load_mnist1d, symmetric_label_noise
>>> (x_train, y_train), (x_test, y_test) = load_mnist1d(num_samples=100)
>>> x_train.shape, x_test.shape
((80, 40, 1), (20, 40, 1))
>>> noisy = symmetric_label_noise(y_train, 0.25, seed=0)
>>> int((noisy != y_train).sum())
20
>>> (x_train, y_noisy), (x_test, y_test) = load_noisy_mnist1d(0.25, seed=0, num_samples=100)
>>> int((y_noisy != y_train).sum())
20
"""

from __future__ import annotations

import functools
import random

import numpy as np

__all__ = ["NUM_CLASSES", "load_mnist1d", "load_noisy_mnist1d", "symmetric_label_noise"]

NUM_CLASSES = 10


def load_mnist1d(
    num_samples: int | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Generates MNIST-1D with the `mnist1d` package's default settings.

    Args:
        num_samples: total number of signals, split 80/20 into train and test
            as `mnist1d` does. Defaults to `None`, the package default (5,000:
            4,000 train and 1,000 test).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 signals of shape
        `(n, 40, 1)` (length 40, one channel) and int32 labels in 0..9.
        The dataset is the same on every call (`mnist1d` fixes its seed); it
        is generated once per process and size, and each call gets copies.
    """
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10
    ):
        raise ValueError(
            "`num_samples` must be an integer >= 10 (one signal per class at "
            f"least). Received: num_samples={num_samples!r}."
        )
    arrays = _generate(num_samples)
    return tuple((x.copy(), y.copy()) for x, y in arrays)


@functools.lru_cache(maxsize=2)
def _generate(num_samples: int | None):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(
            'MNIST-1D needs the mnist1d package; install it with: pip install "keras-sam[demo]"'
        ) from error

    args = get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    # `make_dataset` reseeds the global `random` and NumPy generators: keep
    # the caller's random state as it was.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    def signals(x):
        return np.asarray(x, dtype="float32")[..., np.newaxis]

    def labels(y):
        return np.asarray(y, dtype="int32")

    return (
        (signals(data["x"]), labels(data["y"])),
        (signals(data["x_test"]), labels(data["y_test"])),
    )


def load_noisy_mnist1d(
    noise: float, *, seed: int = 0, num_samples: int | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`load_mnist1d` with symmetric noise on the training labels only.

    Args:
        noise: share of training labels replaced by a wrong class, in [0, 1].
        seed: seed of the noise (`symmetric_label_noise`). Defaults to `0`.
        num_samples: as in `load_mnist1d`. Defaults to `None` (5,000).

    Returns:
        `(x_train, noisy_y_train), (x_test, y_test)`; the test set is clean.
    """
    (x_train, y_train), test = load_mnist1d(num_samples)
    return (x_train, symmetric_label_noise(y_train, noise, seed=seed)), test


def symmetric_label_noise(
    labels: np.ndarray,
    fraction: float,
    *,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
) -> np.ndarray:
    """Replaces a fraction of the labels by a uniformly random *different* class.

    Exactly `round(fraction * len(labels))` labels change, chosen uniformly
    without replacement; each becomes one of the other `num_classes - 1`
    classes with equal probability. The input is not modified.

    Args:
        labels: 1D integer array of classes in `0..num_classes-1`.
        fraction: share of labels to corrupt, in [0, 1].
        num_classes: number of classes. Defaults to `10`.
        seed: seed of the NumPy generator that picks labels and classes.
            Defaults to `0`.

    Returns:
        A new int array of the same shape and dtype as `labels`.

    >>> import numpy as np
    >>> symmetric_label_noise(np.zeros(4, "int32"), 0.5, seed=1)
    array([0, 9, 1, 0], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "`labels` must be a 1D array of integer classes. Received an array "
            f"of shape {labels.shape} and dtype {labels.dtype}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in 0..{num_classes - 1}. Received labels from "
            f"{labels.min()} to {labels.max()}."
        )
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"`fraction` must be a number in [0, 1]. Received: fraction={fraction!r}.")
    rng = np.random.default_rng(seed)
    count = int(round(float(fraction) * labels.size))
    flipped = rng.choice(labels.size, size=count, replace=False)
    # Adding 1..num_classes-1 modulo num_classes reaches every other class
    # exactly once: a uniform draw among the wrong classes.
    shift = rng.integers(1, num_classes, size=count)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy
