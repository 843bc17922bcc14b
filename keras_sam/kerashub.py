"""KerasHub tasks as base models: their preprocessing and compile defaults.

A KerasHub `Task` (`keras_hub.models.BertTextClassifier`, an
`ImageClassifier`, a `CausalLM`, ...) preprocesses raw inputs inside its own
`fit`, `evaluate` and `predict`, and resolves its default loss, optimizer and
metrics inside its own `compile`. `TaskSupportMixin`, mixed into `SAMModel`,
does the same for a wrapped task, reusing KerasHub's code rather than a copy
of it, so that `SAMModel(task)` takes the raw inputs the task's own `fit`
takes:

- `fit`/`evaluate`/`predict` and the `*_on_batch` methods run KerasHub's own
  data handling (batching, the preprocessor, `validation_split`,
  `validation_data`, `class_weight`) and then Keras's methods with what it
  produced;
- `compile()` calls the task's `compile` (its signature and its "auto"
  defaults) and compiles the wrapper with what the task's compile resolved;
  the task keeps an optimizer of its own, so that saved files hold the
  wrapper's optimizer state where `load_weights` looks for it;
- a task's own `compute_loss` (object detectors) is used in both passes;
- `model.preprocessor` is the task's.

keras-sam does not depend on keras-hub: nothing here imports it, and a plain
Keras base model is untouched. `generate`, `score` and presets stay on
`model.base_model`, whose weights are the ones SAM trains.
"""

from __future__ import annotations

import sys

import keras

from keras_sam import _keras_internals as internals

__all__ = ["TaskSupportMixin", "is_task"]

# The keras.Model methods whose data KerasHub's PipelineModel preprocesses.
_DATA_METHODS = (
    "fit",
    "evaluate",
    "predict",
    "train_on_batch",
    "test_on_batch",
    "predict_on_batch",
)


def is_task(model) -> bool:
    """Whether `model` is a KerasHub Task (keras_hub imported and a Task)."""
    hub = sys.modules.get("keras_hub")
    return hub is not None and isinstance(model, hub.models.Task)


_PREPROCESSING = {}


def _preprocessing_class(pipeline_model):
    """A `PipelineModel` over a model whose data methods return their arguments.

    Running KerasHub's `fit` on it preprocesses the data as the task would,
    and hands back the arguments KerasHub passes on to Keras's `fit`.
    """
    if pipeline_model in _PREPROCESSING:
        return _PREPROCESSING[pipeline_model]

    def returns_arguments(name):
        def method(self, *args, **kwargs):
            return args, kwargs

        method.__name__ = name
        return method

    arguments = type("_Arguments", (keras.Model,), {n: returns_arguments(n) for n in _DATA_METHODS})

    class _Preprocessing(pipeline_model, arguments):
        def __init__(self, task):
            # Not `PipelineModel.__init__`: it resets `PipelineModel.__bases__`
            # class-wide, which only a functional Task's init sets back; from a
            # plain subclass, every existing Task would lose its `call`.
            keras.Model.__init__(self, name="sam_task_preprocessing")
            self.task = task

        def preprocess_samples(self, x, y=None, sample_weight=None):
            return self.task.preprocess_samples(x, y=y, sample_weight=sample_weight)

    _PREPROCESSING[pipeline_model] = _Preprocessing
    return _Preprocessing


def _new_like(optimizer):
    """A new, unbuilt optimizer like `optimizer` (None if it cannot be copied)."""
    try:
        return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    except (TypeError, ValueError, KeyError):  # a custom optimizer without a full config
        return None


def _with_task_preprocessing(name):
    def method(self, *args, **kwargs):
        args, kwargs = self._task_arguments(name, args, kwargs)
        return getattr(super(TaskSupportMixin, self), name)(*args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"As Keras's `{name}`; a KerasHub task's raw inputs are preprocessed first."
    return method


class TaskSupportMixin:
    """KerasHub tasks as `SAMModel` bases (see the module docstring)."""

    fit = _with_task_preprocessing("fit")
    evaluate = _with_task_preprocessing("evaluate")
    predict = _with_task_preprocessing("predict")
    train_on_batch = _with_task_preprocessing("train_on_batch")
    test_on_batch = _with_task_preprocessing("test_on_batch")
    predict_on_batch = _with_task_preprocessing("predict_on_batch")

    def _task_arguments(self, name, args, kwargs):
        pipeline_model = internals.kerashub_pipeline_model()
        if pipeline_model is None or not isinstance(self.base_model, pipeline_model):
            return args, kwargs
        return getattr(_preprocessing_class(pipeline_model)(self.base_model), name)(*args, **kwargs)

    @property
    def preprocessor(self):
        """The base task's preprocessor (None for a plain Keras base)."""
        return getattr(self.base_model, "preprocessor", None)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """A task's own `compute_loss` where it has one, else Keras's."""
        base = self.base_model
        if is_task(base) and type(base).compute_loss is not keras.Model.compute_loss:
            return internals.compute_loss(
                base, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def compile(self, *args, **kwargs):
        """As Keras's; for a KerasHub task, with the task's signature and defaults."""
        if not is_task(self.base_model):
            return super().compile(*args, **kwargs)
        auto_scale_loss = kwargs.pop("auto_scale_loss", True)  # not recorded by Keras
        base = self.base_model
        own_optimizer = getattr(base, "optimizer", None)
        base.compile(*args, **kwargs)
        arguments = internals.compile_arguments(base)
        super().compile(**arguments, auto_scale_loss=auto_scale_loss)
        base.optimizer = own_optimizer if own_optimizer is not None else _new_like(
            arguments["optimizer"]
        )

    def compile_from_config(self, config):
        # Keras skips `compile` on load for a class that overrides it.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self._build_optimizer()

    def _task_free_config(self, config: dict) -> dict:
        """`config` without the task's own compile config (the wrapper's
        compiles the task on load; Keras would warn about the task's)."""
        if is_task(self.base_model) and isinstance(config.get("base_model"), dict):
            config["base_model"] = {
                k: v for k, v in config["base_model"].items() if k != "compile_config"
            }
        return config
