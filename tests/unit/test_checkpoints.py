"""Checkpoints of every kind restore a SAM model and its optimizer exactly.

Issue #5. For `SAMModel`, `GSAMModel` and `LookSAMModel` around a tiny MLP with
dropout and BatchNorm, trained with Adam and a learning-rate schedule:

- `keras.callbacks.ModelCheckpoint` writing the whole model (`.keras`, loaded
  with `keras.models.load_model` in its default `safe_mode=True`),
  `ModelCheckpoint(save_weights_only=True)` writing `.weights.h5`, and
  `tf.train.Checkpoint(model=model, optimizer=model.optimizer)` each restore,
  into a fresh process-local model, every variable bit for bit: weights,
  BatchNorm statistics, the dropout seed state, rho, LookSAM's step counter
  and stored direction g_v, the optimizer's iterations and slots;
- training on from the restored model gives the same weights and optimizer
  state, bit for bit, as the uninterrupted run.

And `.keras` files are as safe as Keras's own: a base hiding a Python lambda
in a `keras.layers.Lambda` is refused in safe mode with exactly the error
Keras gives for the plain base, and loads with `safe_mode=False`.

`tf.train.Checkpoint` is TensorFlow's own (`tensorflow_only`); the rest runs
on JAX too.

(`test_resume.py` kills a process and resumes it with `BackupAndRestore`.)
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, numpy, tensorflow_only

from keras_sam import GSAMModel, LookSAMModel, SAMModel

ROWS, BATCH = 16, 4  # 4 steps an epoch; checkpoints after epoch 1 of 2
VARIANTS = {
    "sam": lambda base: SAMModel(base, rho=0.1),
    "gsam": lambda base: GSAMModel(base, rho=0.1, alpha=0.3),
    # k=3: step 4, the first after the checkpoint, reuses g_v of step 3.
    "looksam": lambda base: LookSAMModel(base, rho=0.1, k=3, alpha=0.7),
}
FORMATS = ["keras", "weights_h5", "tf_checkpoint"]


def _data():
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(ROWS, 4)).astype("float32"),
        rng.normal(size=(ROWS, 2)).astype("float32"),
    )


def _model(variant: str) -> keras.Model:
    """The same compiled, built model on every call."""
    keras.utils.set_random_seed(7)
    base = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    model = VARIANTS[variant](base)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.02, 1, 0.9)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse", jit_compile=False)
    return model


def _fit(model: keras.Model, epochs: int, callbacks=()):
    x, y = _data()
    model.fit(
        x, y, batch_size=BATCH, epochs=epochs, shuffle=False, callbacks=list(callbacks), verbose=0
    )


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    return [(v.path, np.array(v.numpy())) for v in [*model.variables, *model.optimizer.variables]]


def _assert_bitwise_equal(actual, expected) -> None:
    assert len(actual) == len(expected)
    different = [
        name
        for (name, a), (_, e) in zip(actual, expected)
        if a.dtype != e.dtype or not np.array_equal(a, e)
    ]
    assert not different, f"not bit-identical: {different}"


def _value(state, fragment: str) -> np.ndarray:
    [value] = [v for name, v in state if fragment in name]
    return value


class _AtEachEpochEnd(keras.callbacks.Callback):
    """Records the state after each epoch, and on TensorFlow writes a
    `tf.train.Checkpoint`."""

    def __init__(self, directory):
        super().__init__()
        self.directory, self.states, self.tf_checkpoints = directory, [], []

    def on_epoch_end(self, epoch, logs=None):
        if ON_TENSORFLOW:
            import tensorflow as tf

            checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
            self.tf_checkpoints.append(checkpoint.write(str(self.directory / f"tf{epoch + 1}")))
        self.states.append(_state(self.model))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`saved(variant)`: the states after epochs 1 and 2 of an uninterrupted
    2-epoch run, and its three checkpoints after epoch 1."""
    root = tmp_path_factory.mktemp("checkpoints")

    @functools.cache
    def save(variant: str):
        directory = root / variant
        directory.mkdir()
        at_epoch_end = _AtEachEpochEnd(directory)
        callbacks = [
            keras.callbacks.ModelCheckpoint(str(directory / "epoch{epoch}.keras")),
            keras.callbacks.ModelCheckpoint(
                str(directory / "epoch{epoch}.weights.h5"), save_weights_only=True
            ),
            at_epoch_end,
        ]
        _fit(_model(variant), 2, callbacks)
        paths = {
            "keras": directory / "epoch1.keras",
            "weights_h5": directory / "epoch1.weights.h5",
            "tf_checkpoint": at_epoch_end.tf_checkpoints[0] if ON_TENSORFLOW else None,
        }
        after_epoch_1, uninterrupted = at_epoch_end.states
        return after_epoch_1, uninterrupted, paths

    return save


def _restore(variant: str, file_format: str, path) -> keras.Model:
    if file_format == "keras":
        return keras.models.load_model(path)  # safe_mode=True, the default
    model = _model(variant)
    if file_format == "weights_h5":
        # Into a freshly compiled model, as users do: `load_weights` builds
        # the optimizer so that its state is restored too.
        model.load_weights(path)
        return model
    import tensorflow as tf

    model.build((None, 4))
    model.optimizer.build(model.trainable_variables)
    status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(path)
    status.assert_consumed().assert_existing_objects_matched()
    return model


def _case(variant: str, file_format: str):
    marks = [tensorflow_only] if file_format == "tf_checkpoint" else []
    return pytest.param(variant, file_format, marks=marks, id=f"{variant}-{file_format}")


# GSAM keeps no state beyond SAM's: its `.keras` round trip stands for the rest.
CASES = [
    *[_case("sam", f) for f in FORMATS],
    *[_case("looksam", f) for f in FORMATS],
    _case("gsam", "keras"),
]


@pytest.mark.parametrize(("variant", "file_format"), CASES)
def test_a_checkpoint_restores_everything_and_training_goes_on_bit_for_bit(
    saved, variant, file_format
):
    state, uninterrupted, paths = saved(variant)
    restored = _restore(variant, file_format, paths[file_format])
    fresh_model = _model(variant)
    assert type(restored) is type(fresh_model)
    restored_state = _state(restored)
    _assert_bitwise_equal(restored_state, state)
    # Each of these differs in a fresh model: restoring them matters.
    fresh = _state(fresh_model)
    assert int(_value(restored_state, "iteration")) == ROWS // BATCH
    seed_state = _value(restored_state, "seed_generator_state")
    assert not np.array_equal(seed_state, _value(fresh, "seed_generator_state"))
    if variant == "looksam":
        assert int(_value(restored_state, "look_step")) == ROWS // BATCH
        directions = [v for name, v in restored_state if "look_g_v" in name]
        assert max(float(np.abs(d).max()) for d in directions) > 0

    _fit(restored, 1)
    _assert_bitwise_equal(_state(restored), uninterrupted)


def test_a_weights_file_without_optimizer_state_leaves_the_optimizer_to_fit(tmp_path):
    """Saved before compiling: `load_weights` has no optimizer state to restore,
    so it does not build the optimizer (the first step does, from the loaded
    weights), and the weights load all the same."""
    saved = _model("sam")
    saved.build((None, 4))
    for variable in saved.base_model.weights:  # unlike a fresh model's
        variable.assign(variable.numpy() + 1.0)
    weights = [v.numpy() for v in saved.base_model.weights]
    uncompiled = VARIANTS["sam"](saved.base_model)
    uncompiled.save_weights(tmp_path / "before_compile.weights.h5")
    fresh = _model("sam")
    fresh.load_weights(tmp_path / "before_compile.weights.h5")
    assert not fresh.optimizer.built
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(fresh.base_model.weights, weights))


# ------------------------------------------------------------ safe mode
def _base_with_a_lambda() -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2), keras.layers.Lambda(lambda t: 2.0 * t)]
    )


def _load_error(path) -> Exception:
    with pytest.raises(Exception) as error:
        keras.models.load_model(path)
    return error.value


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_python_lambda_is_refused_in_safe_mode_exactly_as_for_the_plain_base(tmp_path, variant):
    plain = _base_with_a_lambda()
    plain.save(tmp_path / "plain.keras")
    model = VARIANTS[variant](_base_with_a_lambda())
    model.compile(optimizer="adam", loss="mse")
    model.build((None, 4))
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "sam.keras")

    plain_error = _load_error(tmp_path / "plain.keras")
    sam_error = _load_error(tmp_path / "sam.keras")
    assert type(sam_error) is type(plain_error) is ValueError
    assert str(sam_error) == str(plain_error)
    assert "Lambda" in str(sam_error) and "safe_mode=False" in str(sam_error)

    loaded = keras.models.load_model(tmp_path / "sam.keras", safe_mode=False)
    assert type(loaded) is type(model)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # The lambda came back as code: the output is twice the Dense output.
    dense = loaded.base_model.layers[0]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), 2.0 * numpy(dense(x)), rtol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_legacy_hdf5_format_is_refused_up_front_with_the_way_out(tmp_path, variant):
    """Keras's legacy `.h5` writer drops the seed states and LookSAM's g_v,
    and its loader cannot rebuild the wrapper: a clear error, nothing
    written, from `save` and from a `ModelCheckpoint` alike."""
    model = _model(variant)
    _fit(model, 1)
    for suffix in (".h5", ".hdf5"):
        with pytest.raises(ValueError, match=rf"legacy HDF5 .*filepath='.*model{suffix}'.*\.keras"):
            model.save(tmp_path / f"model{suffix}")
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.h5"))
    with pytest.raises(ValueError, match="legacy HDF5 .*filepath='.*epoch1.h5'"):
        _fit(model, 1, [checkpoint])
    assert list(tmp_path.iterdir()) == []
    # Keras's own function skips `model.save`; its legacy writer asks for the
    # config first (after opening the file, so an empty HDF5 shell stays).
    for save_model in (keras.saving.save_model, keras.models.save_model):
        with pytest.raises(ValueError, match=r"legacy HDF5 .*\.keras"):
            save_model(model, tmp_path / "legacy" / "model.h5")
    # The ways out the message names both work.
    model.save(tmp_path / "model.keras")
    model.save_weights(tmp_path / "model.weights.h5")
