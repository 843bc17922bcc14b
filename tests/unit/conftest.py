"""The unit tests on JAX: each XLA program compiled once per test run.

A JAX step is compiled by XLA whenever a model is trained, and the unit tests
train the same small models (and KerasHub tasks) again and again: each new
model is a new function to `jax.jit`, so JAX's in-memory cache never sees it
twice, though the program XLA gets is the same. JAX's persistent compilation
cache, keyed by that program (with the JAX version, the compile options and
the device), gives the compiled executable back instead: the same numbers,
without compiling again.

It is used here in a fresh temporary directory per test run, deleted at its
end, so that nothing is left behind or carried over: the first process
creates it, and pytest-xdist's workers, started later from that process's
environment, share it. Nothing changes on TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras

_SHARED = "KERAS_SAM_TEST_JAX_CACHE"
_created = None  # the directory this process created (and deletes)


def pytest_configure(config):
    global _created
    if keras.backend.backend() != "jax":
        return
    import jax

    directory = os.environ.get(_SHARED)
    if directory is None or not os.path.isdir(directory):
        directory = _created = tempfile.mkdtemp(prefix="keras_sam_jax_cache_")
        os.environ[_SHARED] = directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    if _created is not None:
        shutil.rmtree(_created, ignore_errors=True)
        os.environ.pop(_SHARED, None)
