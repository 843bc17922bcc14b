"""`SAMModel` inside the Keras workflow: everything but `fit` is the base
model's, and `fit` works with every kind of model, input, option and callback.

Numbers are checked against the float64 NumPy reference in
`numpy_reference.py` (which shares no code with keras-sam) or against the same
computation done another way (plain arrays vs `tf.data`, one `fit` vs a saved
and resumed one), bit for bit wherever the two run the same float32 ops.

Every test runs on TensorFlow and on JAX; TensorBoard's event files and the
exported SavedModel read back as a `TFSMLayer` are TensorFlow's own
(`tensorflow_only`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, numpy, tensorflow_only

from keras_sam import SAMModel

import numpy_reference as ref

FEATURES, CLASSES = 4, 3
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "sam_model_v0_1_0"

# Float32 Keras vs the float64 reference, a few steps deep.
REFERENCE_TOLERANCE = dict(rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------ models
def _classification_data(rows: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=rows).astype("int32")
    return x, y


def _regression_data(rows: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = rng.normal(size=(rows, CLASSES)).astype("float32")
    return x, y


def _functional_classifier(seed: int = 0) -> keras.Model:
    """Dense + L2 + BatchNorm: regularization losses and non-trainable state."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(
        8, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)
    )(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    outputs = keras.layers.Dense(CLASSES)(hidden)
    return keras.Model(inputs, outputs, name="classifier")


def _compile_classifier(model: keras.Model, optimizer=None, **compile_kwargs) -> keras.Model:
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **compile_kwargs,
    )
    return model


def _sam_classifier(seed: int = 0, optimizer=None, **sam_kwargs) -> SAMModel:
    return _compile_classifier(SAMModel(_functional_classifier(seed), **sam_kwargs), optimizer)


# The float64 reference objective of `_sam_linear`: y = x @ kernel + bias, MSE.
_LINEAR_MSE = ref.make_objective(ref.linear(), ref.mean_squared_error)

# Initial weights of the linear models compared with the NumPy reference.
_KERNEL0 = np.random.default_rng(5).normal(scale=0.5, size=(FEATURES, CLASSES)).astype("float32")
_BIAS0 = np.array([0.1, -0.2, 0.3], "float32")


def _dense() -> keras.layers.Dense:
    return keras.layers.Dense(
        CLASSES,
        kernel_initializer=keras.initializers.Constant(_KERNEL0),
        bias_initializer=keras.initializers.Constant(_BIAS0),
    )


class SubclassedLinear(keras.Model):
    """A subclassed model, left unbuilt until its first call (as users write it)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = _dense()

    def call(self, inputs):
        return self.dense(inputs)


def _linear_base(kind: str) -> keras.Model:
    if kind == "sequential":
        return keras.Sequential([keras.Input((FEATURES,)), _dense()])
    if kind == "functional":
        inputs = keras.Input((FEATURES,))
        return keras.Model(inputs, _dense()(inputs))
    return SubclassedLinear()


def _sam_linear(
    kind: str = "functional",
    rho: float = 0.05,
    lr: float = 0.1,
    momentum: float = 0.0,
    **compile_kwargs,
) -> SAMModel:
    model = SAMModel(_linear_base(kind), rho=rho)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum), loss="mse", **compile_kwargs
    )
    return model


def _numpy_linear_sam(batches, rho: float, lr: float, momentum: float = 0.0):
    """The float64 reference run of `_sam_linear` over `batches`."""
    return ref.train(
        _LINEAR_MSE,
        [_KERNEL0, _BIAS0],
        batches,
        ref.SGD(learning_rate=lr, momentum=momentum),
        rho=rho,
    )


def _epoch_mean(values, batches):
    """Keras's epoch log: the per-step values weighted by batch size."""
    sizes = [len(batch[0]) for batch in batches]
    return float(np.dot(values, sizes) / sum(sizes))


def _assert_variables_equal(actual: list, expected: list):
    # Compared in order: layer names (and so paths) get a suffix per model
    # built in a process.
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a.numpy(), e.numpy(), err_msg=f"{a.path} vs {e.path}")


def _assert_weights_equal(actual: keras.Model, expected: keras.Model):
    """Every variable: the base's weights, BatchNorm statistics, rho, skipped_steps."""
    _assert_variables_equal(actual.weights, expected.weights)


def _assert_optimizer_state_equal(actual: keras.Model, expected: keras.Model):
    """Iterations, learning rate and every slot variable."""
    _assert_variables_equal(actual.optimizer.variables, expected.optimizer.variables)


def _as_json(config: dict) -> dict:
    """A config as a `.keras` file stores it (tuples become lists)."""
    return json.loads(json.dumps(config))


# ------------------------------------------- inference is the base model's
def test_call_predict_and_evaluate_are_the_base_models():
    x, y = _classification_data()
    model = _sam_classifier(rho=0.1)
    # Non-trivial weights and BatchNorm statistics, as after training.
    rng = np.random.default_rng(3)
    model.base_model.set_weights(
        [rng.uniform(0.5, 1.5, size=w.shape) for w in model.base_model.get_weights()]
    )
    base = _compile_classifier(model.base_model)  # same loss and metrics

    np.testing.assert_array_equal(numpy(model(x)), numpy(base(x)))
    # training=True reaches the base: BatchNorm uses the batch statistics.
    np.testing.assert_array_equal(numpy(model(x, training=True)), numpy(base(x, training=True)))
    assert not np.allclose(numpy(model(x, training=True)), numpy(model(x)))
    logits = model.predict(x, batch_size=8, verbose=0)
    np.testing.assert_array_equal(logits, base.predict(x, batch_size=8, verbose=0))

    results = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    assert results == base.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    # And those numbers are right: cross-entropy of the logits plus the L2 penalty.
    logits64 = logits.astype(np.float64)
    log_probs = logits64 - np.log(np.exp(logits64).sum(axis=1, keepdims=True))
    kernel = model.base_model.layers[1].kernel.numpy().astype(np.float64)
    expected_loss = -log_probs[np.arange(len(y)), y].mean() + 1e-3 * (kernel**2).sum()
    assert results["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert results["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))


def test_summary_prints_the_base_models_summary(capsys):
    model = SAMModel(_functional_classifier())
    model.summary()
    sam_summary = capsys.readouterr().out
    model.base_model.summary()
    assert sam_summary == capsys.readouterr().out
    assert "classifier" in sam_summary and "batch_normalization" in sam_summary

    sam_lines, base_lines = [], []
    model.summary(line_length=70, print_fn=lambda line, **_: sam_lines.append(line))
    model.base_model.summary(line_length=70, print_fn=lambda line, **_: base_lines.append(line))
    assert sam_lines == base_lines and sam_lines


# --------------------------------------------------------- kinds of model
@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_fit_works_for_every_kind_of_base_model(kind):
    x, y = _regression_data()
    model = _sam_linear(kind, rho=0.05, lr=0.1)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)

    batches = ref.batches_of(x, y, 4)
    reference = _numpy_linear_sam(batches, rho=0.05, lr=0.1)
    for actual, expected in zip(model.trainable_variables, reference.params[-1]):
        np.testing.assert_allclose(actual.numpy(), expected, **REFERENCE_TOLERANCE)
    assert history.history["loss"][0] == pytest.approx(
        _epoch_mean(reference.losses, batches), rel=1e-5
    )
    assert history.history["sharpness"][0] == pytest.approx(
        _epoch_mean(reference.sharpness, batches), rel=1e-4
    )
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), model.base_model.predict(x, verbose=0)
    )


# ------------------------------------------------------- saving & loading
def _rho_schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)


# Every constructor argument, non-default at least once.
SAVE_CONFIGS = {
    "defaults": {},
    "every_argument": dict(
        rho=0.07,
        p=3,
        adaptive=True,
        eta=0.2,
        num_batch_splits=2,
        sync_perturbation=True,
        skip_nonfinite=True,
        eps=1e-6,
        name="custom_sam",
    ),
    "rho_schedule_and_p_inf": dict(rho=_rho_schedule(), p=math.inf),
}


def _assert_arguments(model: SAMModel, arguments: dict):
    defaults = dict(
        rho=0.05,
        p=2.0,
        adaptive=False,
        eta=0.01,
        num_batch_splits=1,
        sync_perturbation=False,
        skip_nonfinite=False,
        eps=1e-12,
    )
    expected = {**defaults, **arguments}
    rho = expected.pop("rho")
    if isinstance(rho, keras.optimizers.schedules.LearningRateSchedule):
        assert type(model.rho) is type(rho)
        assert model.rho.get_config() == rho.get_config()
    else:
        # Within float32 rounding: rho lives in a float32 variable (whether it
        # reads back exactly as given is test_variants.py's concern).
        assert isinstance(model.rho, float) and model.rho == pytest.approx(rho, rel=1e-7)
    if "name" in expected:
        assert model.name == expected.pop("name")
    for name, value in expected.items():
        assert getattr(model, name) == value, name
        assert type(getattr(model, name)) is type(value) or name == "p", name


@pytest.mark.parametrize("arguments", SAVE_CONFIGS.values(), ids=SAVE_CONFIGS.keys())
def test_get_config_and_from_config_round_trip(arguments):
    model = SAMModel(_functional_classifier(), **arguments)
    config = _as_json(model.get_config())  # a `.keras` file stores it as JSON
    # Like Keras's own `from_config`, it consumes the nested base config: pass a copy.
    restored = SAMModel.from_config(copy.deepcopy(config))
    _assert_arguments(restored, arguments)
    assert _as_json(restored.get_config()) == config


@pytest.mark.parametrize("arguments", SAVE_CONFIGS.values(), ids=SAVE_CONFIGS.keys())
def test_save_and_load_model_round_trip(arguments, tmp_path):
    """Arguments, weights and compile settings; the optimizer state (which
    needs training) is checked by the resume and checkpoint tests below."""
    model = _sam_classifier(**arguments)
    rng = np.random.default_rng(3)
    model.base_model.set_weights([rng.normal(size=w.shape) for w in model.base_model.get_weights()])
    model.save(tmp_path / "model.keras")

    loaded = keras.models.load_model(tmp_path / "model.keras")  # safe_mode=True
    assert type(loaded) is SAMModel
    _assert_arguments(loaded, arguments)
    assert _as_json(loaded.get_config()) == _as_json(model.get_config())
    _assert_weights_equal(loaded, model)
    assert loaded.get_compile_config() == model.get_compile_config()
    assert type(loaded.optimizer) is type(model.optimizer)


def test_weights_save_and_load_right_after_construction(tmp_path):
    """As with the (built) base model itself, no call is needed first."""
    model = _sam_classifier(seed=1)
    model.save_weights(tmp_path / "model.weights.h5")
    restored = _sam_classifier(seed=2)
    restored.load_weights(tmp_path / "model.weights.h5")
    _assert_weights_equal(restored, model)


def test_training_resumed_from_a_saved_model_is_bit_identical(tmp_path):
    x, y = _classification_data()
    # A rho schedule reads the restored iteration count; BatchNorm statistics,
    # Adam's slots and `skipped_steps` must all come back.
    arguments = dict(rho=_rho_schedule(), p=3, adaptive=True, eta=0.2, skip_nonfinite=True)
    fit = dict(batch_size=8, shuffle=False, verbose=0)
    uninterrupted = _sam_classifier(seed=3, optimizer=keras.optimizers.Adam(0.01), **arguments)
    # The checkpoint after epoch 2 is the model trained 2 epochs and saved.
    save_each_epoch = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    full_history = uninterrupted.fit(x, y, epochs=4, callbacks=[save_each_epoch], **fit).history

    resumed = keras.models.load_model(tmp_path / "epoch2.keras")
    assert int(resumed.optimizer.iterations.numpy()) == 6
    resumed_history = resumed.fit(x, y, epochs=2, **fit).history

    _assert_weights_equal(resumed, uninterrupted)
    _assert_optimizer_state_equal(resumed, uninterrupted)
    assert {k: v[2:] for k, v in full_history.items()} == resumed_history


# -------------------------------------------------------------- export
def _exported_classifier(tmp_path):
    """A SAM classifier with non-trivial weights, exported: (model, path)."""
    model = _sam_classifier(rho=0.1, skip_nonfinite=True)
    rng = np.random.default_rng(3)  # non-trivial weights and BatchNorm statistics
    model.base_model.set_weights(
        [rng.uniform(0.5, 1.5, size=w.shape) for w in model.base_model.get_weights()]
    )
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    return model, path


def test_export_serves_the_base_models_inference_only(tmp_path):
    """A TensorFlow SavedModel from either backend (through jax2tf on JAX)."""
    import tensorflow as tf

    x, _ = _classification_data()
    model, path = _exported_classifier(tmp_path)
    expected = model.predict(x, verbose=0)

    served = tf.saved_model.load(path)  # keep the reference: it owns the variables
    np.testing.assert_allclose(served.serve(x).numpy(), expected, rtol=1e-6, atol=1e-6)

    exported = [(v.name.removesuffix(":0"), v.numpy()) for v in served.variables]
    base_weights = [(v.path, v.numpy()) for v in model.base_model.weights]
    if ON_TENSORFLOW:  # the SavedModel names each variable by its path
        exported_by_path = dict(exported)
        assert sorted(exported_by_path) == sorted(path for path, _ in base_weights)
        for name, value in base_weights:
            np.testing.assert_array_equal(exported_by_path[name], value)
    else:
        # jax2tf names them by their last part ("kernel", "bias", ...), which
        # repeats: each base weight is one exported variable, bit for bit.
        assert len(exported) == len(base_weights)
        unmatched = [value for _, value in exported]
        for name, value in base_weights:
            same = [i for i, other in enumerate(unmatched) if np.array_equal(other, value)]
            assert same, f"{name} is not exported"
            unmatched.pop(same[0])
    sam_state = ("rho", "skipped_steps", "iteration", "learning_rate", "momentum")
    assert not [n for n, _ in exported if any(word in n for word in sam_state)]


@tensorflow_only  # Keras's TFSMLayer runs on the TensorFlow backend only
def test_an_export_reloads_as_a_tfsm_layer(tmp_path):
    x, _ = _classification_data()
    model, path = _exported_classifier(tmp_path)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(
        layer(x).numpy(), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


# ------------------------------------------------------ fit and its options
def test_jit_compile_true_and_false_both_train_sam():
    x, y = _regression_data()
    batches = ref.batches_of(x, y, 4)
    reference = _numpy_linear_sam(batches, rho=0.05, lr=0.1, momentum=0.9)
    for jit_compile in (False, True):
        model = _sam_linear(rho=0.05, lr=0.1, momentum=0.9, jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        assert model.jit_compile is jit_compile
        for actual, expected in zip(model.trainable_variables, reference.params[-1]):
            np.testing.assert_allclose(actual.numpy(), expected, **REFERENCE_TOLERANCE)
        assert history.history["sharpness"][0] == pytest.approx(
            _epoch_mean(reference.sharpness, batches), rel=1e-4
        )


def test_validation_logs_equal_evaluate_and_never_show_sharpness(tmp_path):
    x, y = _classification_data()
    x_val, y_val = _classification_data(rows=10, seed=9)
    model = _sam_classifier(rho=0.1)
    csv_logger = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        validation_data=(x_val, y_val),
        shuffle=False,
        callbacks=[csv_logger],
        verbose=0,
    ).history

    assert sorted(history) == ["accuracy", "loss", "sharpness", "val_accuracy", "val_loss"]
    with open(tmp_path / "log.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(rows[0]) == {"epoch", *history}  # a `sharpness` column, no `val_sharpness`
    for key, values in history.items():
        assert [float(row[key]) for row in rows] == values, key
    assert all(math.isfinite(s) and s != 0.0 for s in history["sharpness"])
    results = model.evaluate(x_val, y_val, batch_size=8, return_dict=True, verbose=0)
    assert results == {"accuracy": history["val_accuracy"][-1], "loss": history["val_loss"][-1]}
    # Not stale after evaluate, nor zero-filled: sharpness is simply not an evaluate metric.
    assert "sharpness" not in model.evaluate(x, y, return_dict=True, verbose=0)
    assert "sharpness" not in [metric.name for metric in model.metrics]


def test_steps_per_execution_gives_the_same_training():
    x, y = _regression_data(rows=28)  # 7 batches: not a multiple of 3
    runs = []
    for steps in (1, 3):
        model = _sam_linear(rho=0.05, lr=0.05, momentum=0.5, steps_per_execution=steps)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        runs.append((model, history.history))
    (one, one_history), (three, three_history) = runs
    assert int(three.optimizer.iterations.numpy()) == 14
    _assert_weights_equal(three, one)
    assert three_history == one_history


def test_tf_data_dataset_input_gives_the_same_training_as_arrays():
    """Keras reads a `tf.data.Dataset` on either backend."""
    import tensorflow as tf

    x, y = _regression_data(rows=12)
    from_arrays = _sam_linear(rho=0.05, momentum=0.9)
    array_history = from_arrays.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    from_dataset = _sam_linear(rho=0.05, momentum=0.9)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    dataset_history = from_dataset.fit(dataset, epochs=2, verbose=0)
    _assert_weights_equal(from_dataset, from_arrays)
    assert dataset_history.history == array_history.history


def test_sample_weight_enters_both_sam_passes():
    x, y = _regression_data(rows=6)
    sample_weight = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 3.0], "float32")
    model = _sam_linear(rho=0.2, lr=0.1)
    history = model.fit(
        x, y, sample_weight=sample_weight, batch_size=6, epochs=1, shuffle=False, verbose=0
    )
    step = ref.sam_step(
        _LINEAR_MSE,
        [_KERNEL0, _BIAS0],
        (x, y, sample_weight),
        rho=0.2,
    )
    for actual, w0, g in zip(model.trainable_variables, [_KERNEL0, _BIAS0], step.sam_gradients):
        np.testing.assert_allclose(actual.numpy(), w0 - 0.1 * g, **REFERENCE_TOLERANCE)
    assert history.history["loss"][0] == pytest.approx(step.loss, rel=1e-5)
    assert history.history["sharpness"][0] == pytest.approx(step.sharpness, rel=1e-4)


def test_class_weight_weighs_both_sam_passes():
    x, y = _classification_data(rows=12)
    class_weight = {0: 0.5, 1: 2.0, 2: 1.0}
    model = SAMModel(_linear_base("functional"), rho=0.2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x, y, class_weight=class_weight, batch_size=6, shuffle=False, verbose=0
    ).history

    sample_weight = np.array([class_weight[label] for label in y])
    batches = ref.batches_of(x, y, 6, sample_weight)
    reference = ref.train(
        ref.make_objective(ref.linear(), ref.softmax_cross_entropy),
        [_KERNEL0, _BIAS0],
        batches,
        ref.SGD(learning_rate=0.1),
        rho=0.2,
    )
    for actual, expected in zip(model.trainable_variables, reference.params[-1]):
        np.testing.assert_allclose(actual.numpy(), expected, **REFERENCE_TOLERANCE)
    assert history["loss"][0] == pytest.approx(_epoch_mean(reference.losses, batches), rel=1e-5)
    assert history["sharpness"][0] == pytest.approx(
        _epoch_mean(reference.sharpness, batches), rel=1e-4
    )


# ------------------------------------------------------------- callbacks
def _tensorboard_scalars(log_dir: Path) -> dict:
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir / "train"))
    accumulator.Reload()
    return {
        tag: [float(tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


@tensorflow_only  # TensorBoard's event files are written by TensorFlow
def test_tensorboard_callback_records_the_sam_logs(tmp_path):
    x, y = _classification_data()
    model = _sam_classifier(rho=0.1)
    callbacks = [keras.callbacks.TensorBoard(str(tmp_path / "tensorboard"))]
    history = model.fit(
        x, y, batch_size=8, epochs=2, shuffle=False, callbacks=callbacks, verbose=0
    ).history

    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["epoch_sharpness"] == [float(np.float32(s)) for s in history["sharpness"]]
    assert scalars["epoch_loss"] == [float(np.float32(s)) for s in history["loss"]]


def test_model_checkpoint_callbacks(tmp_path):
    x, y = _classification_data()
    model = _sam_classifier(rho=0.1)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "epoch{epoch}.weights.h5"), save_weights_only=True
        ),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras")),
    ]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, callbacks=callbacks, verbose=0)

    from_weights = _sam_classifier(seed=1, rho=0.1)
    from_weights(x[:1])  # see test_weights_save_and_load_right_after_construction
    from_weights.load_weights(tmp_path / "epoch2.weights.h5")
    _assert_weights_equal(from_weights, model)
    whole = keras.models.load_model(tmp_path / "epoch2.keras")
    assert type(whole) is SAMModel
    assert _as_json(whole.get_config()) == _as_json(model.get_config())
    _assert_weights_equal(whole, model)
    _assert_optimizer_state_equal(whole, model)


def test_early_stopping_and_reduce_lr_on_plateau_read_sam_logs():
    x, y = _classification_data()
    model = _sam_classifier(rho=0.1, optimizer=keras.optimizers.SGD(0.1))
    weights_after_epoch = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: weights_after_epoch.append(model.get_weights())
    )
    # min_delta so large that only the first epoch counts as an improvement.
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="sharpness", mode="min", min_delta=1e6, patience=1, restore_best_weights=True
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(
        monitor="sharpness", mode="min", factor=0.5, patience=0, min_delta=1e6, min_lr=0.0
    )
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=10,
        shuffle=False,
        verbose=0,
        callbacks=[record, reduce_lr, early_stopping],
    ).history

    assert len(history["sharpness"]) == 2 and early_stopping.stopped_epoch == 1
    for actual, best in zip(model.get_weights(), weights_after_epoch[0]):
        np.testing.assert_array_equal(actual, best)
    assert history["learning_rate"] == [float(np.float32(0.1))] * 2  # logged before reducing
    assert float(model.optimizer.learning_rate.numpy()) == float(np.float32(0.05))


def test_learning_rate_scheduler_drives_the_sam_update():
    x, y = _regression_data(rows=8)
    model = _sam_linear(rho=0.05, lr=1.0)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: 0.2 * 0.5**epoch)
    history = model.fit(
        x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[schedule]
    ).history
    learning_rates = [0.2, 0.1, 0.05]
    assert history["learning_rate"] == [float(np.float32(lr)) for lr in learning_rates]

    params = [_KERNEL0, _BIAS0]
    for lr in learning_rates:  # one full-batch step per epoch
        step = ref.sam_step(_LINEAR_MSE, params, (x, y, None), rho=0.05)
        params = [p - lr * g for p, g in zip(params, step.sam_gradients)]
    for actual, expected in zip(model.trainable_variables, params):
        np.testing.assert_allclose(actual.numpy(), expected, **REFERENCE_TOLERANCE)


# --------------------------------------------------- forward compatibility
def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


_FIXTURE_KERAS = json.loads(FIXTURE.with_suffix(".json").read_text())["versions"]["keras"]


@pytest.fixture
def saved_fixture():
    """The committed model written by `make_saved_fixture.py`, and its expected values."""
    expected = json.loads(FIXTURE.with_suffix(".json").read_text())
    return keras.models.load_model(FIXTURE.with_suffix(".keras")), expected


# Keras reads `.keras` files of its own and older releases only: its layers'
# configs gain arguments (Dense's `quantization_config` in 3.13) that an older
# Keras refuses. This is about keras-sam's format, so it needs the Keras that
# wrote the file, or a newer one.
_readable_by_this_keras = pytest.mark.skipif(
    _version(keras.__version__) < _version(_FIXTURE_KERAS),
    reason=f"Keras {keras.__version__} cannot read a file Keras {_FIXTURE_KERAS} wrote",
)


@_readable_by_this_keras
def test_model_saved_by_v0_1_0_loads_with_its_weights_and_config(saved_fixture):
    model, expected = saved_fixture
    assert FIXTURE.with_suffix(".keras").stat().st_size < 100_000
    assert type(model) is SAMModel
    _assert_arguments(model, expected["arguments"])
    dense = model.base_model.get_layer("dense")
    kernel = np.array(expected["weights"]["kernel"], "float32")
    bias = np.array(expected["weights"]["bias"], "float32")
    np.testing.assert_array_equal(dense.kernel.numpy(), kernel)
    np.testing.assert_array_equal(dense.bias.numpy(), bias)

    optimizer, stored = model.optimizer, expected["optimizer"]
    assert type(optimizer).__name__ == stored["class_name"]
    assert float(optimizer.learning_rate.numpy()) == float(np.float32(stored["learning_rate"]))
    assert optimizer.momentum == stored["momentum"]
    assert int(optimizer.iterations.numpy()) == stored["iterations"]
    assert model.get_compile_config()["loss"] == expected["loss"]
    for variable, momentum in zip(model.trainable_variables, optimizer.momentums):
        name = variable.path.rsplit("/", 1)[1]
        np.testing.assert_array_equal(
            momentum.numpy(), np.array(expected["momentums"][name], "float32")
        )

    x = np.array(expected["x"], "float32")
    predictions = model.predict(x, verbose=0)
    np.testing.assert_allclose(predictions, expected["predictions"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(predictions, x @ kernel + bias, rtol=1e-5, atol=1e-6)


@_readable_by_this_keras
def test_model_saved_by_v0_1_0_continues_training(saved_fixture):
    model, expected = saved_fixture
    x = np.array(expected["x"], "float32")
    y = np.array(expected["y"], "float32")
    params = [np.array(expected["weights"][n], np.float64) for n in ("kernel", "bias")]
    velocities = [np.array(expected["momentums"][n], np.float64) for n in ("kernel", "bias")]

    rho = expected["arguments"]["rho"]
    lr, momentum = expected["optimizer"]["learning_rate"], expected["optimizer"]["momentum"]

    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history

    # The stored rho, learning rate and velocities must all be in use: SAM and
    # Keras's SGD step (v = momentum * v - lr * g; w += v), by hand.
    step = ref.sam_step(_LINEAR_MSE, params, (x, y, None), rho=rho)
    for variable, w, v, g in zip(model.trainable_variables, params, velocities, step.sam_gradients):
        expected_weight = w + (momentum * v - lr * g)
        np.testing.assert_allclose(variable.numpy(), expected_weight, **REFERENCE_TOLERANCE)
    assert int(model.optimizer.iterations.numpy()) == expected["optimizer"]["iterations"] + 1
    assert history["loss"][0] == pytest.approx(step.loss, rel=1e-5)
    assert history["sharpness"][0] == pytest.approx(step.sharpness, rel=1e-4)


def test_get_layer_finds_the_base_models_layers_by_name():
    base = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="first"),
         keras.layers.Dense(1, name="last")],
        name="base",
    )
    model = SAMModel(base)
    assert model.get_layer("last") is base.layers[1]
    assert model.get_layer("base") is base
    assert model.get_layer(index=0) is base  # Keras's own lookup by position
    with pytest.raises(ValueError, match="nope"):
        model.get_layer("nope")
