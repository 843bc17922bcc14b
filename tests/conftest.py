"""Shared pytest fixtures for the keras-sam test suite."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic_seed():
    """Every test starts from the same Python, NumPy, TensorFlow and Keras seeds."""
    keras.utils.set_random_seed(1234)


class StepWeights(keras.callbacks.Callback):
    """Records `model`'s trainable weights (NumPy copies) before training and
    after every batch: `weights[0]` is the start, `weights[k]` after step k."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.watched = model
        self.weights: list[list[np.ndarray]] = []

    def _snapshot(self):
        self.weights.append([np.array(v.numpy()) for v in self.watched.trainable_variables])

    def on_train_begin(self, logs=None):
        self._snapshot()

    def on_train_batch_end(self, batch, logs=None):
        self._snapshot()


@pytest.fixture(scope="session")
def step_weights():
    """`step_weights(model)` returns a `StepWeights` callback watching `model`."""
    return StepWeights
