"""Misuse of `SAMModel` fails early with an error that names what is wrong.

Constructor errors are `keras_sam`'s `InvalidArgumentError`, which is both a
`ValueError` and a `TypeError`: the message names the argument, the value
received and what is accepted. Errors at `fit` time are the ones plain Keras
gives for the same mistake (compared with a plain model), or a clear message of
our own where plain Keras would not fail.
"""

from __future__ import annotations

import math
import re
import traceback
import warnings

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, tensorflow_only

from keras_sam import SAMModel


def _base() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _assert_names(error: pytest.ExceptionInfo, argument: str, value) -> None:
    message = str(error.value)
    assert f"`{argument}`" in message
    # The value received, as `repr` writes it (floats may be normalised: 1 -> 1.0).
    shown = {repr(value)}
    if isinstance(value, int | float) and not isinstance(value, bool):
        shown.add(repr(float(value)))
    assert any(f"{argument}={text}" in message for text in shown), message


# ------------------------------------------------------------ base_model
@pytest.mark.parametrize(
    "base",
    [keras.layers.Dense(3), lambda x: x, None, "model", np.zeros(3)],
    ids=["a_layer", "a_function", "None", "a_string", "an_array"],
)
def test_a_base_that_is_not_a_keras_model_is_a_type_error(base):
    with pytest.raises(TypeError, match=r"`base_model` must be a `keras.Model`") as error:
        SAMModel(base)
    assert "Received: base_model=" in str(error.value)


# ------------------------------------------------------------------- rho
@pytest.mark.parametrize(
    "rho", [-0.1, -1, math.inf, -math.inf, math.nan, "0.05", None, True, False, [0.05]]
)
def test_invalid_rho(rho):
    with pytest.raises(ValueError) as error:
        SAMModel(_base(), rho=rho)
    assert isinstance(error.value, TypeError)  # either may be caught
    _assert_names(error, "rho", rho)
    assert "LearningRateSchedule" in str(error.value) or ">= 0" in str(error.value)


@pytest.mark.parametrize("rho", [0, 0.0, 2, np.float32(0.05)])
def test_valid_rho_edge_values_are_floats(rho):
    model = SAMModel(_base(), rho=rho)
    assert isinstance(model.rho, float) and model.rho == pytest.approx(float(rho), rel=1e-7)


def test_setting_an_invalid_rho_later_raises_and_keeps_the_old_value():
    model = SAMModel(_base(), rho=0.1)
    with pytest.raises(ValueError) as error:
        model.rho = -0.5
    _assert_names(error, "rho", -0.5)
    assert model.rho == pytest.approx(0.1, rel=1e-7)


# ------------------------------------------------------- other arguments
@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("eps", 0),
        ("eps", 0.0),
        ("eps", -1e-12),
        ("eps", math.inf),
        ("eps", math.nan),
        ("eps", "1e-12"),
        ("eps", None),
        ("p", 1),
        ("p", 1.0),
        ("p", 0.5),
        ("p", -2),
        ("p", "2"),
        ("p", None),
        ("p", True),
        ("p", math.nan),
        ("num_batch_splits", 0),
        ("num_batch_splits", -1),
        ("num_batch_splits", 1.5),
        ("num_batch_splits", 2.0),
        ("num_batch_splits", "2"),
        ("num_batch_splits", True),
        ("eta", -0.01),
        ("eta", math.inf),
        ("eta", math.nan),
        ("eta", "0.01"),
        ("adaptive", 1),
        ("adaptive", "yes"),
        ("adaptive", None),
        ("sync_perturbation", 0),
        ("sync_perturbation", "False"),
        ("skip_nonfinite", 1),
        ("skip_nonfinite", None),
    ],
)
def test_invalid_argument_is_named_with_its_value(argument, value):
    with pytest.raises(ValueError) as error:
        SAMModel(_base(), **{argument: value})
    assert isinstance(error.value, TypeError)
    _assert_names(error, argument, value)


def test_options_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        SAMModel(_base(), 0.05, 2)


# ------------------------------------------------------ errors during fit
def _data(rows: int = 8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)).astype("float32"), np.zeros((rows, 3), "float32")


def _fit_error(model: keras.Model, x, y) -> Exception:
    with pytest.raises(Exception) as error:
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return error.value


def test_fit_before_compile_gives_the_plain_keras_error():
    x, y = _data()
    plain = _fit_error(_base(), x, y)
    sam = _fit_error(SAMModel(_base()), x, y)
    assert type(sam) is type(plain)
    assert str(sam) == str(plain)
    assert "compile()" in str(sam)


def _frozen_base() -> keras.Model:
    base = _base()
    base.trainable = False
    return base


def _weightless_base() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])


@pytest.mark.parametrize("make_base", [_frozen_base, _weightless_base])
def test_a_base_with_nothing_to_train_is_a_clear_error(make_base):
    """Plain Keras only warns here; SAM would divide a zero gradient by its norm."""
    base = make_base()
    x = _data()[0]
    model = SAMModel(base, rho=0.05)
    model.compile(optimizer="sgd", loss="mse")
    labels = np.zeros((len(x), base.outputs[0].shape[-1]), "float32")
    error = _fit_error(model, x, labels)
    assert isinstance(error, ValueError)
    assert "no trainable weights" in str(error) and repr(base.name) in str(error)
    # Raised up front, not from inside the ascent or the gradient passes.
    frames = traceback.extract_tb(error.__traceback__)
    assert not [f for f in frames if f.filename.endswith(_GRADIENT_CODE)]


# keras-sam's modules that take gradients, climb and apply the step.
_GRADIENT_CODE = ("passes.py", "perturbation.py", "gradient_math.py", "guard.py")


@pytest.mark.parametrize(
    ("loss", "labels"),
    [
        ("mse", np.zeros((8, 5), "float32")),
        ("categorical_crossentropy", np.zeros((8, 4), "float32")),
        ("sparse_categorical_crossentropy", np.zeros((8, 2), "int32")),
        ("mse", np.zeros((7, 3), "float32")),  # one label short
    ],
    ids=["mse_width", "categorical_width", "sparse_rank", "row_count"],
)
def test_wrong_label_shapes_give_the_plain_keras_error(loss, labels):
    x = _data()[0]
    errors = []
    for model in (_base(), SAMModel(_base())):
        model.compile(optimizer="sgd", loss=loss)
        errors.append(_fit_error(model, x, labels))
    plain, sam = errors
    assert type(sam) is type(plain)
    # The messages agree up to the graph node names, which include the model's.
    strip_nodes = re.compile(r"'\{\{node [^}]*\}\}[^']*'")
    assert strip_nodes.sub("", str(sam)) == strip_nodes.sub("", str(plain))


class SubclassedBase(keras.Model):
    """Creates its weights in its first call, so SAM builds it inside the step."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(5, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def test_a_wrong_input_structure_gives_the_plain_keras_error_for_a_subclassed_base():
    x, y = _data()
    errors = []
    for model in (SubclassedBase(), SAMModel(SubclassedBase())):
        model.compile(optimizer="sgd", loss="mse")
        with pytest.raises(Exception) as error:
            model.fit((x, x), y, batch_size=4, epochs=1, verbose=0)  # two inputs for one
        errors.append(error.value)
    plain, sam = errors
    assert type(sam) is type(plain)
    # The same message but for the layers' and tensors' generated names; no
    # preface blaming the wrapper.
    names = re.compile(r"dense_\d+|'[A-Za-z_]+(:\d+)?'|Placeholder(_\d+)?:0|data(_\d+)?:0|dense")
    assert names.sub("", str(sam)) == names.sub("", str(plain))
    assert "SAMModel" not in str(sam)


def _rows_mismatch_dataset():
    """Batches of 4 inputs but 3 labels, with unknown batch sizes (a generator)."""
    import tensorflow as tf

    x, y = _data()

    def batches():
        for i in range(2):
            yield x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 3]

    signature = (tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 3), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


@tensorflow_only  # batch sizes unknown until run time are TensorFlow's (JAX's are static)
def test_num_batch_splits_refuses_batches_whose_x_and_y_rows_differ():
    """Cut into pieces, unequal x and y would broadcast and train silently."""
    import tensorflow as tf

    plain = _base()
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match="Incompatible shapes"):
        plain.fit(_rows_mismatch_dataset(), epochs=1, verbose=0)

    model = SAMModel(_base(), num_batch_splits=2)
    model.compile(optimizer="sgd", loss="mse")
    before = [v.numpy() for v in model.trainable_variables]
    expected = "num_batch_splits=2.*same number of rows"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        model.fit(_rows_mismatch_dataset(), epochs=1, verbose=0)
    for variable, value in zip(model.trainable_variables, before):
        assert np.array_equal(variable.numpy(), value)


class _OneBatch(keras.utils.PyDataset):
    """The one batch `(x, y)`, as given."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.x, self.y


def test_num_batch_splits_refuses_known_unequal_rows_when_tracing():
    """4 inputs and 1 label: the label would broadcast over the rows of a
    whole batch, but cut into pieces it does not line up."""
    x, y = _data()
    model = SAMModel(_base(), num_batch_splits=2)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"4 rows in x and 1 in y"):
        if ON_TENSORFLOW:
            import tensorflow as tf

            tf.function(model.train_step)((tf.constant(x[:4]), tf.constant(y[:1])))
        else:  # JAX traces the step with the batch's shapes
            model.fit(_OneBatch(x[:4], y[:1]), epochs=1, verbose=0)


def _fixed_batches(x, y, size: int) -> dict:
    """`fit`'s data in batches of `size` rows known when the step is traced:
    on TensorFlow a `tf.data` pipeline that drops the remainder (arrays give
    an unknown batch size there); on JAX arrays (every shape is known)."""
    if ON_TENSORFLOW:
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(size, drop_remainder=True)
        return {"x": batches}
    return {"x": x, "y": y, "batch_size": size}


def test_more_pieces_than_a_fixed_batch_has_rows_is_a_value_error():
    x, y = _data()
    model = SAMModel(_base(), num_batch_splits=5)
    model.compile(optimizer="sgd", loss="mse")
    message = r"`num_batch_splits=5` needs at least 5 samples per replica batch; got a batch of 4"
    with pytest.raises(ValueError, match=message):
        model.fit(**_fixed_batches(x, y, 4), epochs=1, verbose=0)


@tensorflow_only  # batch sizes unknown until run time are TensorFlow's (JAX's are static)
def test_a_short_batch_is_cut_into_one_row_pieces():
    """Batch size unknown when traced: 4 rows and 5 pieces train as 4 pieces."""
    import tensorflow as tf

    x, y = _data()
    varying = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert varying.element_spec[0].shape[0] is None
    weights = []
    for pieces in (5, 4, 1):
        keras.utils.set_random_seed(0)
        base = _base()
        model = SAMModel(base, num_batch_splits=pieces)
        model.compile(optimizer="sgd", loss="mse")
        model.fit(varying, epochs=1, verbose=0)
        weights.append([v.numpy() for v in base.trainable_variables])
    for five, four in zip(weights[0], weights[1]):
        assert np.array_equal(five, four)
    # One ε̂ per row, not one for the batch: the split did happen.
    assert not all(np.array_equal(a, b) for a, b in zip(weights[1], weights[2]))


@pytest.mark.parametrize(
    "loss, warned",
    [
        (keras.losses.MeanSquaredError(reduction="sum"), True),
        (keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"), True),
        (keras.losses.MeanSquaredError(), False),
        ("mse", False),
    ],
)
def test_num_batch_splits_warns_of_a_loss_not_averaged_over_rows(loss, warned):
    x, y = _data()
    for pieces in (2, 1):
        model = SAMModel(_base(), num_batch_splits=pieces)
        model.compile(optimizer="sgd", loss=loss)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        ours = [str(w.message) for w in caught if "num_batch_splits" in str(w.message)]
        if warned and pieces == 2:
            assert len(ours) == 1
            assert "`num_batch_splits=2`" in ours[0]
            assert f"reduction={loss.reduction!r}" in ours[0]
        else:
            assert ours == []


def test_num_batch_splits_with_a_summed_loss_takes_the_step_the_warning_names():
    """What the warning says, in numbers: with `reduction="sum"` and ρ = 0, two
    equal pieces give exactly half the batch's gradient."""
    x, y = _data(4)
    steps = []
    for pieces in (1, 2):
        keras.utils.set_random_seed(0)
        base = _base()
        model = SAMModel(base, rho=0.0, num_batch_splits=pieces)
        summed = keras.losses.MeanSquaredError(reduction="sum")
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=summed)
        before = [v.numpy() for v in base.trainable_variables]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        steps.append([v.numpy() - b for v, b in zip(base.trainable_variables, before)])
    for whole, split in zip(*steps):
        assert np.max(np.abs(whole)) > 1e-3
        np.testing.assert_allclose(split, whole / 2, rtol=1e-5, atol=1e-7)
