"""The unit tests on JAX: each XLA program compiled once per test process.

A JAX step is compiled by XLA whenever a model is trained, and the unit tests
train the same small models (and KerasHub tasks) again and again: each new
model is a new function to `jax.jit`, so JAX's in-memory cache never sees it
twice, though the program XLA gets is the same. JAX's persistent compilation
cache, keyed by that program (with the JAX version, the compile options and
the device), gives the compiled executable back instead: the same numbers,
without compiling again.

It is used here in a fresh temporary directory per test process (each
pytest-xdist worker its own: JAX writes its entries without a lock), deleted
when the process ends, so that nothing is left behind or carried over to
another run. Nothing changes on TensorFlow.
"""

from __future__ import annotations

import shutil
import tempfile

import keras

_cache_directory = None


def pytest_configure(config):
    global _cache_directory
    if keras.backend.backend() != "jax":
        return
    import jax

    _cache_directory = tempfile.mkdtemp(prefix="keras_sam_jax_cache_")
    jax.config.update("jax_compilation_cache_dir", _cache_directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if _cache_directory is not None:
        shutil.rmtree(_cache_directory, ignore_errors=True)
