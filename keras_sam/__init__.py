"""keras-sam: Sharpness-Aware Minimization for Keras 3 on TensorFlow."""

from keras_sam import callbacks, diagnostics, models
from keras_sam._validation import InvalidArgumentError
from keras_sam.callbacks import SharpnessMonitor
from keras_sam.gsam import GSAMModel
from keras_sam.looksam import LookSAMModel
from keras_sam.perturbation import perturbation
from keras_sam.sam_model import SAMModel

__version__ = "0.1.0"

__all__ = [
    "GSAMModel",
    "InvalidArgumentError",
    "LookSAMModel",
    "SAMModel",
    "SharpnessMonitor",
    "callbacks",
    "diagnostics",
    "models",
    "perturbation",
    "__version__",
]
