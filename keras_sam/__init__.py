"""keras-sam: Sharpness-Aware Minimization for Keras 3 on TensorFlow."""

# `_command_line` first: it may set TensorFlow's log level before TensorFlow loads.
from keras_sam import (  # noqa: F401
    callbacks,
    diagnostics,
    models,
    schedules,  # noqa: F401
)
from keras_sam._validation import InvalidArgumentError
from keras_sam.aesam import AESAMModel
from keras_sam.apps import _command_line  # noqa: F401
from keras_sam.callbacks import SharpnessMonitor
from keras_sam.friendly_sam import FriendlySAMModel
from keras_sam.gsam import GSAMModel
from keras_sam.looksam import LookSAMModel
from keras_sam.msam import MSAMModel
from keras_sam.perturbation import perturbation
from keras_sam.rst import RandomizedSAMModel
from keras_sam.sam_model import SAMModel

__version__ = "0.1.0"

# Imported on first use: they bring in tensorflow_datasets and matplotlib.
_LAZY_SUBMODULES = ("data", "demo", "train")


def __getattr__(name: str):
    """`keras_sam.train`, `keras_sam.demo` and `keras_sam.data` without an import of their own.

    >>> import keras_sam
    >>> callable(keras_sam.train.select_strategy)
    True
    """
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"keras_sam.{name}")
    raise AttributeError(f"module 'keras_sam' has no attribute {name!r}")

__all__ = [
    "AESAMModel",
    "FriendlySAMModel",
    "GSAMModel",
    "InvalidArgumentError",
    "LookSAMModel",
    "MSAMModel",
    "RandomizedSAMModel",
    "SAMModel",
    "SharpnessMonitor",
    "callbacks",
    "diagnostics",
    "models",
    "perturbation",
    "schedules",
    "__version__",
]
