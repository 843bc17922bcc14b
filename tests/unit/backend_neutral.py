"""What the backend-neutral tests need of the running Keras backend.

The unit tests run on TensorFlow (`python -m pytest tests/unit`) and on JAX
(`KERAS_BACKEND=jax python -m pytest tests/unit -m "not tensorflow_only"`).
The few things a test cannot write with NumPy, `keras.ops` or Keras's API
are here, once per backend:

- `value_and_gradients(loss_of, variables)`: `tf.GradientTape` on
  TensorFlow (`None` for a variable the loss does not use), `jax.value_and_grad`
  over the variables' values in a `keras.StatelessScope` on JAX (zeros);
- `traced(function)` and `compiled(function)`: a graph (`tf.function`) and
  an XLA program (`tf.function(jit_compile=True)`) on TensorFlow; `jax.jit`
  (always XLA) on JAX;
- `PassCounter`, a layer that counts the forward passes a training step
  takes, at run time (see its docstring);
- `synced(model)`: the model with its running state written into its
  variables (JAX holds the state of `fit` apart from them).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
ON_TENSORFLOW = BACKEND == "tensorflow"
ON_JAX = BACKEND == "jax"

tensorflow_only = pytest.mark.tensorflow_only


def numpy(value) -> np.ndarray:
    """A tensor or variable of any backend as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(value))


def tensors(arrays, dtype=None) -> list:
    """Backend tensors of `arrays` (`None` stays `None`)."""
    return [None if a is None else keras.ops.convert_to_tensor(a, dtype) for a in arrays]


def synced(model: keras.Model) -> keras.Model:
    """`model`, its variables holding the state `fit` is training (on JAX,
    Keras keeps that state apart from the variables during `fit`)."""
    sync = getattr(model, "jax_state_sync", None)
    if ON_JAX and sync is not None:
        sync()
    return model


def value_and_gradients(loss_of, variables) -> tuple:
    """`(loss, gradients)` of `loss_of()` with respect to `variables`, eagerly.

    On TensorFlow a variable the loss does not use gets `None`; on JAX zeros.
    """
    variables = list(variables)
    if ON_TENSORFLOW:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_of()
        return loss, tape.gradient(loss, variables)
    import jax

    def loss_at(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_of()

    return jax.value_and_grad(loss_at)([v.value for v in variables])


def traced(function):
    """`function` as a graph: `tf.function` on TensorFlow, `jax.jit` on JAX."""
    if ON_TENSORFLOW:
        import tensorflow as tf

        return tf.function(function)
    import jax

    return jax.jit(function)


def compiled(function):
    """`function` compiled by XLA: `tf.function(jit_compile=True)` on
    TensorFlow, `jax.jit` on JAX."""
    if ON_TENSORFLOW:
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    import jax

    return jax.jit(function)


@keras.saving.register_keras_serializable(package="backend_neutral")
class PassCounter(keras.layers.Layer):
    """The identity; counts the forward passes run through it, at run time.

    On TensorFlow each pass that runs calls `tf.py_function`, which counts in
    Python (so not under XLA, which cannot run Python). On JAX the layer
    advances a `SeedGenerator` of its own on every pass, as a Dropout layer
    does: its counter is state of the model, which the step keeps (a
    perturbed pass, as every pass, advances the seeds), inside `jax.jit` too.
    On the CPU a JAX step that chooses between one pass and two computes both
    and keeps the chosen one's state (`backend/jax/trainer.py`): the count is
    the passes the step took, not the ones the CPU computed.

    `passes(model)` is the number counted so far by every `PassCounter` in
    `model`.
    """

    runs: dict = {}  # TensorFlow: id of a counter -> its passes

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if ON_JAX:
            self.pass_seeds = keras.random.SeedGenerator(0, name="pass_seeds")
        PassCounter.runs[id(self)] = 0

    def call(self, inputs):
        if ON_JAX:
            self.pass_seeds.next()
            return inputs
        import tensorflow as tf

        def count():
            PassCounter.runs[id(self)] += 1
            return np.int32(0)

        token = tf.py_function(count, [], tf.int32)
        with tf.control_dependencies([token]):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def counted(self, model=None) -> int:
        """The passes this layer counted (`model`: the model training it)."""
        if ON_TENSORFLOW:
            return PassCounter.runs[id(self)]
        if model is not None:
            synced(model)
        return int(numpy(self.pass_seeds.state)[1])


def passes(model: keras.Model) -> int:
    """The passes counted so far by the `PassCounter` layers in `model`."""
    base = getattr(model, "base_model", model)
    counters = [layer for layer in _layers(base) if isinstance(layer, PassCounter)]
    return sum(counter.counted(model) for counter in counters)


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)
