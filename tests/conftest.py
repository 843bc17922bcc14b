"""Shared pytest fixtures for the keras-sam test suite."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Every module, slowest first (seconds of test time under `-n 2` on the 2-core
# CI machine, 2026-11-30). Under `--dist loadfile` a worker takes the next
# whole module when it is free; longest first (LPT) keeps the two workers'
# finishing times within about the shortest module's time of each other.
# A module missing here runs after these, in collection order.
_SLOWEST_MODULES = (
    "test_train.py",  # 119
    "test_demo_claim.py",  # 114
    "test_variants.py",  # 96
    "test_examples.py",  # 93
    "test_distributed.py",  # 72
    "test_mixed_precision.py",  # 58
    "test_xla_memory.py",  # 53
    "test_demo.py",  # 46
    "test_diagnostics.py",  # 44
    "test_resume.py",  # 41
    "test_argument_properties.py",  # 36
    "test_notebooks.py",  # 34
    "test_nonfinite.py",  # 33
    "test_sam_keras_integration.py",  # 33
    "test_multiworker.py",  # 31
    "test_sam_optimizers.py",  # 29
    "test_checkpoints.py",  # 28
    "test_models.py",  # 28
    "test_sam_golden.py",  # 24
    "test_cli.py",  # 17
    "test_benchmarks.py",  # 15
    "test_sam_errors.py",  # 15
    "test_perturbation.py",  # 14
)


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorflow_only: needs the TensorFlow backend")
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
