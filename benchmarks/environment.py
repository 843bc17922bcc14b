"""Device choice, the random training data and a description of the machine.

The data are a few fixed NumPy batches (`random_batches`), the same on every
backend: `random_dataset` makes them a `tf.data.Dataset` for TensorFlow, the
JAX rows of `step_time.py` put them on the device as JAX arrays.

Example:

>>> from benchmarks.environment import random_batches, random_dataset
>>> x, y = next(iter(random_dataset(batch_size=4)))
>>> tuple(x.shape), tuple(y.shape), str(y.dtype)
((4, 32, 32, 3), (4,), "<dtype: 'int32'>")
>>> images, labels = random_batches(batch_size=4)
>>> bool((images[0] == x.numpy()).all() and (labels[0] == y.numpy()).all())
True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

__all__ = [
    "configure_device", "load_average", "machine_description", "random_batches", "random_dataset",
]

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


def random_batches(batch_size: int = 128, seed: int = 0):
    """(images, labels): `BATCHES_IN_DATASET` fixed random CIFAR-sized batches.

    Images are standard normal 32x32x3 float32 of shape (batches, batch_size,
    32, 32, 3), labels int32 uniform in 0..9 of shape (batches, batch_size).
    NumPy only, for any backend.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (BATCHES_IN_DATASET, batch_size)
    images = rng.standard_normal((*shape, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, size=shape, dtype=np.int32)
    return images, labels


def random_dataset(batch_size: int = 128, seed: int = 0):
    """`random_batches` as a repeated `tf.data.Dataset` of whole batches.

    Each element is a whole batch already in memory, with a static batch
    dimension, so input costs nothing measurable and XLA compiles one shape.
    """
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(random_batches(batch_size, seed)).repeat()


def load_average() -> str | None:
    """The 1-, 5- and 15-minute load averages ("2.10/2.35/2.40"), or None.

    On a shared machine, how many other processes wanted the cores: beyond
    the core count, every mode is slowed (the paired ratios much less).
    """
    if not hasattr(os, "getloadavg"):
        return None
    return "/".join(f"{load:.2f}" for load in os.getloadavg())


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
    if load_average() is not None:
        parts.append(f"load average {load_average()}")
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
    try:  # the version only: the JAX rows import JAX in their own process
        versions.append(f"JAX {importlib.metadata.version('jax')}")
    except importlib.metadata.PackageNotFoundError:
        pass
    versions.append(f"keras-sam {keras_sam.__version__}")
    return ", ".join(parts) + "; " + ", ".join(versions)
