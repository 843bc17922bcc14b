"""The mechanics of a SAM step on the running Keras backend.

The algorithm (ascent rules, how gradients combine, the variants) is written
once, over lists of tensors; what differs per backend is how a step takes
gradients, runs on several devices and is compiled. `Trainer` is the mix-in
`SAMModel` puts before `keras.Model`; `replicas()` gives the replica
operations (all-reduce, finiteness on every replica, a conditional update).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import keras

__all__ = ["SUPPORTED_BACKENDS", "PassResult", "Trainer", "counter_dtype", "name", "replicas"]

SUPPORTED_BACKENDS = ("tensorflow", "jax")


class PassResult(NamedTuple):
    """What a pass returns: the loss, the (scaled) gradients and, when asked
    for, the model's state update instead of its assignment."""

    loss: object
    gradients: list
    state_update: list


def counter_dtype() -> str:
    """The dtype of a step counter: int64, or int32 on JAX without 64-bit mode
    (where an int64 would be truncated, with a warning)."""
    if name() == "jax":
        import jax

        return "int64" if jax.config.jax_enable_x64 else "int32"
    return "int64"


def name() -> str:
    """The running Keras backend (`keras.backend.backend()`)."""
    return keras.backend.backend()


def _check_supported() -> str:
    backend = name()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"keras-sam does not support the {backend!r} Keras backend. Supported: "
            f"{', '.join(SUPPORTED_BACKENDS)}. Set the environment variable "
            "KERAS_BACKEND (e.g. `KERAS_BACKEND=tensorflow`) before importing Keras."
        )
    return backend


def replicas():
    """The replica operations of the running backend (a module)."""
    return importlib.import_module(f"keras_sam.backend.{_check_supported()}.replicas")


def _trainer_class():
    backend = name()
    if backend not in SUPPORTED_BACKENDS:
        return _UnsupportedBackendTrainer
    module = importlib.import_module(f"keras_sam.backend.{backend}.trainer")
    return module.Trainer


class _UnsupportedBackendTrainer:
    """Stands in on an unsupported backend: construction says what is supported."""

    def __init__(self, *args, **kwargs):
        _check_supported()


Trainer = _trainer_class()
