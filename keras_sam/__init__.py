"""keras-sam: Sharpness-Aware Minimization for Keras 3 on TensorFlow and JAX."""

# `_command_line` first: it may set TensorFlow's log level before TensorFlow loads.
from keras_sam.apps import _command_line  # noqa: F401

# isort: split
from keras_sam import callbacks, diagnostics, models, schedules  # noqa: F401
from keras_sam._validation import InvalidArgumentError
from keras_sam.aesam import AESAMModel
from keras_sam.callbacks import SharpnessMonitor
from keras_sam.friendly_sam import FriendlySAMModel
from keras_sam.gsam import GSAMModel
from keras_sam.looksam import LookSAMModel
from keras_sam.msam import MSAMModel
from keras_sam.perturbation import perturbation
from keras_sam.rst import RandomizedSAMModel
from keras_sam.sam_model import SAMModel

__version__ = "0.1.0"

# The applications (`keras-sam demo` and `train`, and their data) live in
# `keras_sam.apps`, apart from the library; `import keras_sam` imports none of
# their dependencies (tensorflow_datasets, matplotlib, mnist1d).
_MOVED_TO_APPS = ("data", "demo", "train")


def __getattr__(name: str):
    """Says where the applications went when `keras_sam.train` and the like are asked for.

    >>> import keras_sam
    >>> keras_sam.train
    Traceback (most recent call last):
    AttributeError: module 'keras_sam' has no attribute 'train': it moved to keras_sam.apps.train
    """
    if name in _MOVED_TO_APPS:
        raise AttributeError(
            f"module 'keras_sam' has no attribute {name!r}: it moved to keras_sam.apps.{name}"
        )
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
