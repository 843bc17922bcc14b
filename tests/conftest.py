"""Shared pytest fixtures for the keras-sam test suite."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The suite's folders: `unit/` (each test one process, seconds), `integration/`
# (several processes: strategies, worker clusters, kills, other backends) and
# `apps/` (the demo, `keras-sam train`, examples, notebooks, benchmarks).
# Under `--dist loadfile` a worker takes the next whole module when it is free;
# the multi-process and application modules, the longest, go first.
_FIRST_FOLDERS = ("integration", "apps")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "tensorflow_only: needs TensorFlow itself (tf.data, tf.distribute, TensorBoard); "
        "left out of the JAX run",
    )
    # pytest-xdist would otherwise queue modules by their number of tests.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.parent.name not in _FIRST_FOLDERS)  # stable


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
