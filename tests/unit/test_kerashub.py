"""`SAMModel(task)` for KerasHub tasks: raw inputs, compile defaults, saving, export.

KerasHub tasks preprocess inside their own `fit`/`evaluate`/`predict` and
resolve their default loss, optimizer and metrics inside their own
`compile`; wrapped in `SAMModel` they must do the same. The tasks are tiny
and built from configurations (`kerashub_tasks.py`); nothing is downloaded.
KerasHub is installed for the tests as README says (`--no-deps`, beside
tensorflow-cpu). Every test runs on TensorFlow and on JAX (KerasHub's
preprocessing and `tf.data` input are TensorFlow's on either backend, and an
export is a TensorFlow SavedModel).
"""

from __future__ import annotations

import traceback
import warnings

import h5py
import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from backend_neutral import ON_TENSORFLOW, numpy
from kerashub_tasks import bert_classifier, image_data, resnet_classifier, text_data

from keras_sam import GSAMModel, LookSAMModel, SAMModel

pytestmark = pytest.mark.kerashub


def test_compile_without_arguments_takes_the_task_defaults_not_none():
    """Before, `SAMModel(task).compile()` compiled no loss ("No loss to compute")."""
    model = SAMModel(bert_classifier())
    model.compile()
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert [type(m).__name__ for m in model.base_model.metrics if m.name != "loss"]


@pytest.mark.parametrize(
    "make,data", [(bert_classifier, text_data), (resnet_classifier, image_data)]
)
def test_fit_evaluate_predict_raw(make, data):
    # Batches of 8 rows throughout (24 to train, 8 to validate): on JAX each
    # new batch shape is another XLA compilation of the task's step.
    x, y = data(32)
    task = make()
    model = SAMModel(task, rho=0.05)
    model.compile()  # the task's defaults
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.from_logits
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 5e-5)
    before = [w.numpy().copy() for w in task.trainable_weights]
    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_split=0.25)
    assert set(h.history) >= {"loss", "sharpness", "sparse_categorical_accuracy", "val_loss"}, (
        h.history
    )
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, task.trainable_weights))
    p = model.predict(x[:3], verbose=0)
    np.testing.assert_allclose(p, task.predict(x[:3], verbose=0), rtol=1e-5, atol=1e-6)
    r = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert set(r) == {"loss", "sparse_categorical_accuracy"}
    model.train_on_batch(x[:8], y[:8])
    model.test_on_batch(x[:8], y[:8])
    assert model.predict_on_batch(x[:3]).shape[0] == 3


@pytest.mark.one_backend  # the task mixin's logic; fit on JAX is tested above
def test_compile_overrides_and_sample_weight_class_weight():
    x, y = text_data(16)
    model = SAMModel(bert_classifier())
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.loss.from_logits  # the task's default loss still
    h = model.fit(x, y, batch_size=8, epochs=1, verbose=0, sample_weight=np.ones(16))
    assert "accuracy" in h.history
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, class_weight={0: 1.0, 1: 2.0})
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(ds, epochs=1, verbose=0, validation_data=ds)


def test_plain_base_unchanged():
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = SAMModel(base)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(np.ones((8, 4), "float32"), np.zeros(8, "int32"), verbose=0)
    model.predict(np.ones((2, 4), "float32"), verbose=0)


def test_save_load_roundtrip(tmp_path):
    x, y = text_data(16)
    model = SAMModel(bert_classifier(), rho=0.1)
    model.compile()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    msgs = [str(w.message) for w in caught]
    assert not [m for m in msgs if "compile" in m or "Skipping" in m], msgs
    assert type(loaded) is SAMModel and loaded.rho == 0.1
    assert loaded.preprocessor is not None
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    np.testing.assert_allclose(
        loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), rtol=1e-5, atol=1e-6
    )
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_save_load_resnet(tmp_path):
    x, y = image_data()
    model = SAMModel(resnet_classifier())
    model.compile()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "r.keras")
    loaded = keras.saving.load_model(tmp_path / "r.keras")
    np.testing.assert_allclose(
        loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), rtol=1e-5, atol=1e-5
    )


def test_export_saved_model(tmp_path):
    x, y = image_data()
    model = SAMModel(resnet_classifier())
    model.compile()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    images = tf.cast(tf.image.resize(x[:2], (16, 16)), tf.float32) / 255.0
    out = reloaded.serve(images)
    np.testing.assert_allclose(
        out.numpy(), numpy(model.base_model(images.numpy())), rtol=1e-4, atol=1e-5
    )


def test_optimizer_not_shared_and_weights_layout(tmp_path):
    x, y = text_data(16)
    task = bert_classifier()
    task_optimizer = task.optimizer
    model = SAMModel(task)
    model.compile()
    assert model.optimizer is not task.optimizer and task.optimizer is task_optimizer
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    with h5py.File(path) as f:
        assert len(f["optimizer/vars"]) > 2
    fresh = SAMModel(bert_classifier())
    fresh.compile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load_weights(path)
    assert not [w for w in caught if "Skipping" in str(w.message)]
    assert int(fresh.optimizer.iterations) == 2
    # compile=False task: the base gets a copy, not the wrapper's optimizer.
    model = SAMModel(bert_classifier(compile=False))
    model.compile()
    assert model.optimizer is not model.base_model.optimizer


@pytest.mark.one_backend  # the task mixin's logic; fit on JAX is tested above
def test_task_compute_loss_override_is_used():
    calls = []

    class DoubledLoss(keras_hub.models.BertTextClassifier):
        def compute_loss(self, x, y, y_pred, sample_weight, **kwargs):
            calls.append(_pass_of(traceback.extract_stack()))
            return 2.0 * super().compute_loss(x, y, y_pred, sample_weight, **kwargs)

    x, y = text_data(16)
    plain = bert_classifier()
    task = DoubledLoss(plain.backbone, num_classes=2, preprocessor=plain.preprocessor)
    model = SAMModel(task)
    model.compile()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    if ON_TENSORFLOW:
        assert calls == ["clean", "perturbed"]  # the passes of the traced step
    else:
        # JAX's Keras may also compute the loss to build the model ("other"),
        # and a JAX step traces the perturbed pass once for each platform's
        # way to choose between one pass and two (`backend/jax/trainer.py`).
        assert set(calls) - {"other"} == {"clean", "perturbed"}, calls
        assert calls.count("clean") == 1, calls
    undoubled = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, task(task.preprocessor(x))
    )
    got = model.evaluate(x, y, verbose=0, return_dict=True, batch_size=16)["loss"]
    np.testing.assert_allclose(got, 2 * float(undoubled), rtol=1e-5)


def _pass_of(stack) -> str:
    """Which of keras-sam's passes a call with this stack is in."""
    functions = {frame.name for frame in stack}
    if "perturbed_pass" in functions:
        return "perturbed"
    return "clean" if "first_pass" in functions else "other"


@pytest.mark.one_backend
@pytest.mark.parametrize("variant", [GSAMModel, LookSAMModel])
def test_variants_wrap_a_task_too(variant):
    x, y = text_data(16)
    model = variant(bert_classifier(), rho=0.05)
    model.compile()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(x[:2], verbose=0).shape == (2, 2)
