"""What every diagnostic shares: argument checks, batches, and a stateless loss.

The loss at any weights is evaluated inside a `keras.StatelessScope` that maps
each trainable variable to a tensor. No variable is ever assigned, so a
diagnostic leaves the model bit-for-bit as it found it, even if it is
interrupted; metric-tracker updates made by `compute_loss` are captured by the
scope and dropped.

The diagnostics are written once, with `keras.ops`, over lists of tensors.
What differs per Keras backend (how a loss is differentiated, how a per-batch
function is compiled, how batches are iterated) lives in
`keras_sam.diagnostics._tensorflow` and `keras_sam.diagnostics._jax`, behind
the same names; `backend()` returns the one of the running backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np

from keras_sam import _keras_internals as internals
from keras_sam import _validation as check

__all__ = [
    "Batches",
    "Spec",
    "backend",
    "check_batches",
    "check_compiled_model",
    "dataset_of",
    "stateless_loss",
    "traced_for_model",
    "traced_per_dataset",
    "unpack",
    "weighted_mean",
]

_BACKENDS = ("tensorflow", "jax")


def backend():
    """The diagnostics' backend module (`_tensorflow` or `_jax`) of the running Keras."""
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise ValueError(
            f"keras_sam.diagnostics does not support the {name!r} Keras backend. "
            f"Supported: {', '.join(_BACKENDS)}."
        )
    return importlib.import_module(f"keras_sam.diagnostics._{name}")


def check_compiled_model(model) -> keras.Model:
    """Returns `model` if it is a compiled `keras.Model` with trainable weights."""
    if not isinstance(model, keras.Model):
        raise check.InvalidArgumentError(
            "`model` must be a compiled `keras.Model` (plain or `SAMModel`). "
            f"Received: model={model!r} (of type {type(model).__name__})."
        )
    if not getattr(model, "compiled", False):
        raise check.InvalidArgumentError(
            f"`model` {model.name!r} is not compiled: the diagnostics measure the "
            "compiled loss. Call `model.compile(loss=...)` first."
        )
    if not model.trainable_variables:
        raise check.InvalidArgumentError(
            f"`model` {model.name!r} has no trainable weights to measure (is it "
            "frozen or unbuilt? Call it once on data to build it)."
        )
    return model


def check_batches(batches) -> int | None:
    """Returns `batches` as None (all) or an int >= 1, or raises."""
    return None if batches is None else check.check_int("batches", batches, minimum=1)


# ------------------------------------------------------------------ batches
_DATA_FORMS = (
    "`data` must be a `tf.data.Dataset` of (x, y) or (x, y, sample_weight) "
    "batches, a tuple (x, y) or (x, y, sample_weight) of arrays, or another "
    "iterable of such batches (a generator, a `keras.utils.PyDataset`)"
)


def _data_error(detail: str) -> check.InvalidArgumentError:
    return check.InvalidArgumentError(f"{_DATA_FORMS}. {detail}")


def is_tf_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (TensorFlow is not imported for it)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def check_element_spec(spec) -> None:
    """Raises unless a dataset's elements are (x, y) or (x, y, sample_weight)."""
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise check.InvalidArgumentError(
            "`data` must yield (x, y) or (x, y, sample_weight) batches: the loss "
            f"needs targets. Received a dataset whose elements are {spec}."
        )


def as_batch(batch) -> tuple:
    """One batch of an iterable, checked: `(x, y)` or `(x, y, sample_weight)`."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise check.InvalidArgumentError(
            "`data` must yield (x, y) or (x, y, sample_weight) batches: the loss "
            f"needs targets. Received a batch of type {type(batch).__name__}"
            + (f" and length {len(batch)}." if isinstance(batch, (tuple, list)) else ".")
        )
    batch = tuple(batch)
    return batch[:2] if len(batch) == 3 and batch[2] is None else batch


class Batches:
    """A re-iterable source of `(x, y)` / `(x, y, sample_weight)` batches.

    What `dataset_of` returns on JAX (TensorFlow gets a `tf.data.Dataset`):
    either a list of batches (arrays cut into batches, a one-shot iterator
    read once, the first `batches` batches of anything) or a function that
    starts a new pass (a `tf.data.Dataset` read as NumPy, a re-iterable
    such as a `keras.utils.PyDataset`, read again at every pass as Keras
    reads it every epoch).
    """

    def __init__(self, source: list | Callable[[], Iterable]):
        self._source = source

    def __iter__(self):
        if isinstance(self._source, list):
            return iter(self._source)
        return (as_batch(batch) for batch in self._source())

    def first(self, batches: int | None) -> Batches:
        """The first `batches` batches, kept, so that every pass sees the same
        ones even if the source reshuffles; `None`: all, as they come."""
        return self if batches is None else Batches(list(itertools.islice(self, batches)))


class PyDatasetPasses:
    """Passes over a `keras.utils.PyDataset` as Keras reads one in `fit`:
    batches `0 .. num_batches - 1` by index, or without end if `num_batches`
    is `None`. (Older Keras releases, 3.10 among them, give `PyDataset` no
    `__iter__`, and Python's fallback, `__getitem__` until `IndexError`,
    never stops on a dataset that slices arrays.)"""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        size = self.dataset.num_batches
        indices = itertools.count() if size is None else range(size)
        return (self.dataset[index] for index in indices)


def one_shot(data) -> bool:
    """Whether iterating `data` consumes it (a generator or iterator)."""
    return iter(data) is data


def dataset_of(data, *, batches: int | None, batch_size: int | None):
    """`data` as the running backend's source of `(x, y[, sample_weight])` batches.

    On TensorFlow a `tf.data.Dataset`; on JAX a `Batches` of NumPy (or JAX)
    arrays. Either is accepted back as `data`.

    Args:
        data: a `tf.data.Dataset` of batches, a tuple `(x, y)` /
            `(x, y, sample_weight)` of arrays (batched here by `batch_size`),
            or any other iterable of such batches: one that is its own
            iterator (a generator) is read once and kept, one that is not (a
            `keras.utils.PyDataset`) is read again at every pass.
        batches: keep only the first `batches` batches; `None` keeps all.
            A cut source is kept in memory, so that every pass of a
            multi-pass diagnostic sees the same batches even if `data`
            reshuffles.
        batch_size: rows per batch when `data` is arrays; `None` makes the
            whole arrays one batch.
    """
    if batch_size is not None:
        batch_size = check.check_int("batch_size", batch_size, minimum=1)
    implementation = backend()
    if is_tf_dataset(data):
        check_element_spec(data.element_spec)
        if batches is not None:
            data = data.take(batches).cache()
        return implementation.from_dataset(data)
    if isinstance(data, Batches):
        return data.first(batches)
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 3):
            raise _data_error(
                f"Received a {type(data).__name__} of length {len(data)}; a list of "
                "batches is read as arrays: pass `iter(batches)` instead."
            )
        # A list of input arrays is several inputs, not one stacked array.
        parts = tuple(tuple(part) if isinstance(part, list) else part for part in data)
        return implementation.from_arrays(parts, batches=batches, batch_size=batch_size)
    if isinstance(data, keras.utils.PyDataset):
        return implementation.from_iterable(PyDatasetPasses(data), batches=batches)
    iterable = isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict))
    if not iterable or keras.ops.is_tensor(data) or isinstance(data, np.ndarray):
        raise _data_error(f"Received: data of type {type(data).__name__}.")
    if one_shot(data):
        data = list(itertools.islice(data, batches))  # read once, kept for every pass
    return implementation.from_iterable(data, batches=batches)


def unpack(batch: Sequence) -> tuple:
    """`(x, y, sample_weight)` of one batch, `sample_weight` None if absent."""
    return keras.utils.unpack_x_y_sample_weight(tuple(batch))


# ------------------------------------------------------------ traced graphs
@dataclasses.dataclass(frozen=True)
class Spec:
    """Shape and dtype of an extra argument of a traced per-batch function
    (TensorFlow's input signature; JAX traces from the arguments)."""

    shape: tuple
    dtype: str = "float32"


# model -> {key: (signature objects, built value)}; weak, so no model is kept.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def traced_for_model(model: keras.Model, key: tuple, build: Callable) -> Callable:
    """`build(model_proxy)`, made once per model and `key` and then reused.

    Like Keras's own `model.predict_function`, the traced graphs are kept
    until the model is recompiled (or its variables change), so
    repeated measurements (every epoch, a sweep over rho) trace only once.
    `build` receives a weak proxy of the model, so the cache never keeps a
    model alive.
    """
    # Held (not just their ids) so that an id cannot be reused while cached.
    # The non-trainable ones too: JAX passes their values in that order.
    signature = (
        model._compile_loss,
        *model.trainable_variables,
        None,  # where the trainable variables end
        *model.non_trainable_variables,
    )
    cache = _TRACED.setdefault(model, {})
    held = cache.get(key)
    if held is None or not _identical(held[0], signature):
        held = cache[key] = (signature, build(weakref.proxy(model)))
    return held[1]


def _identical(a: Sequence, b: Sequence) -> bool:
    # `is`, not `==`: a Keras variable compares elementwise.
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def traced_per_dataset(model: keras.Model, function: Callable, *extra_signature) -> Callable:
    """`function(trainable, non_trainable, batch, *extra)`, compiled per dataset.

    Returns `for_dataset(dataset)`, which gives `call(batch, *extra)`: the
    compiled `function` called with the model's current weights, `trainable`
    one tensor per trainable variable and `non_trainable` one per
    non-trainable variable (`None` where the backend reads those in the
    graph). `extra_signature` gives a `Spec` (or a list of them) per extra
    argument. TensorFlow traces a `tf.function` once per dataset with the
    dataset's batch-size-free `element_spec`, so a last partial batch reuses
    the graph; JAX traces a `jax.jit` once per batch shape.
    """
    return backend().traced_per_dataset(model, function, *extra_signature)


def stateless_loss(model: keras.Model, x, y, sample_weight, values: Sequence, state=None):
    """The compiled loss (with `model.losses`) in inference mode at `values`.

    `values[i]` stands in for `model.trainable_variables[i]`, and `state[i]`,
    if given, for `model.non_trainable_variables[i]` (JAX passes them, as a
    traced function must not read them as constants); nothing is assigned.
    This is the loss `model.evaluate` computes, batch by batch.
    """
    mapping = list(zip(model.trainable_variables, values, strict=True))
    if state is not None:
        mapping += list(zip(model.non_trainable_variables, state, strict=True))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        y_pred = model(x, training=False)
        # What `evaluate` calls: it also serves `compute_loss` overrides
        # written before Keras 3.3 (no `training`).
        return internals.compute_loss(
            model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )


def weighted_mean(values: Iterable[tuple]) -> np.ndarray:
    """Mean of per-batch values weighted by batch rows, as `evaluate` reduces.

    `values` yields `(value, rows)` pairs; a value may be a scalar or an array
    (averaged elementwise). Accumulated in float32 exactly like
    `keras.metrics.Mean`, so that a loss averaged here equals
    `model.evaluate`'s to the last bit.
    """
    total = count = np.float32(0.0)
    for value, rows in values:
        total = total + np.asarray(value, np.float32) * np.float32(rows)
        count = count + np.float32(rows)
    if count == 0:
        raise ValueError("`data` yielded no batches: there is nothing to measure.")
    return total / count
