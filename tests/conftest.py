"""Shared pytest fixtures for the keras-sam test suite."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The slowest modules, slowest first (seconds of test time measured on the
# 2-core CI machine: 121, 94, 86, 61, 50). Under `-n 2 --dist loadfile` a
# worker takes whole modules in collection order; starting with these lets the
# many fast modules fill in at the end, so the two workers finish together.
_SLOWEST_MODULES = (
    "test_train.py",
    "test_examples.py",
    "test_demo_claim.py",
    "test_distributed.py",
    "test_variants.py",
)


def pytest_configure(config):
    # pytest-xdist would otherwise queue modules by their number of tests,
    # which puts the one-test, 90-second demo claim last.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


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
