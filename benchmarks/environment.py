"""Device choice, the random training data and a description of the machine.

Example:

>>> from benchmarks.environment import random_dataset
>>> x, y = next(iter(random_dataset(batch_size=4)))
>>> tuple(x.shape), tuple(y.shape), str(y.dtype)
((4, 32, 32, 3), (4,), "<dtype: 'int32'>")
"""

from __future__ import annotations

import os
import platform

__all__ = ["configure_device", "machine_description", "random_dataset"]

BATCHES_IN_DATASET = 4


def configure_device(device: str, threads: int | None = None) -> str:
    """Makes TensorFlow use `device` ("cpu", "gpu" or "auto"); returns e.g. "GPU:0".

    Must run before TensorFlow executes any op. "cpu" hides every GPU; "gpu"
    raises when none is present; "auto" takes a GPU when there is one.
    `threads` sets TensorFlow's intra- and inter-op thread pools.
    """
    if device not in ("cpu", "gpu", "auto"):
        raise ValueError(f"`--device` must be cpu, gpu or auto. Received: {device!r}.")
    import tensorflow as tf

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ValueError("`--device gpu` was asked for, but TensorFlow sees no GPU.")
    if device == "cpu" or not gpus:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return "CPU:0"
    return "GPU:0"


def random_dataset(batch_size: int = 128, seed: int = 0):
    """A repeated dataset of a few fixed random CIFAR-sized batches.

    Images are standard normal 32x32x3 float32, labels uniform in 0..9. Each
    element is a whole batch already in memory, with a static batch
    dimension, so input costs nothing measurable and XLA compiles one shape.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    shape = (BATCHES_IN_DATASET, batch_size)
    images = rng.standard_normal((*shape, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, size=shape, dtype=np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).repeat()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(tf_device: str) -> str:
    """One Markdown line: CPU, cores, load, accelerator and library versions."""
    import keras
    import tensorflow as tf

    import keras_sam

    parts = [f"CPU: {_cpu_model()}", f"{os.cpu_count()} cores"]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.2f}")
    if tf_device.startswith("GPU"):
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices("GPU")[0]
        )
        parts.append(f"GPU: {details.get('device_name', 'unknown')}")
    versions = [
        f"Python {platform.python_version()}",
        f"TensorFlow {tf.__version__}",
        f"Keras {keras.__version__}",
    ]
    try:
        import tf_keras

        versions.append(f"tf-keras {tf_keras.__version__}")
    except ImportError:
        pass
    versions.append(f"keras-sam {keras_sam.__version__}")
    return ", ".join(parts) + "; " + ", ".join(versions)
