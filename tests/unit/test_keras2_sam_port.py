"""The Keras 2 SAM's own tests (`tf_keras/models/sharpness_aware_minimization_test.py`),
ported where they say something the rest of the suite does not.

- m-sharpness: the Keras 2 SAM *sums* the pieces' SAM gradients
  (`tf.reduce_sum` over the pieces); keras-sam *averages* them (weighted by
  piece size), so that the step's scale does not depend on `num_batch_splits`.
  With plain SGD, keras-sam's step with m equal pieces is the Keras 2 SAM's
  step divided by m. Checked against a NumPy reference of both rules.
- Two SAM wrappers around one base model (the Keras 2 checkpoint test builds
  two): they share the base's weights, and each trains them.
- Rank-3 inputs (`keras.Input([2, 2])`), Adam, one step per epoch, and the
  wrapper's call equal to the base's.
- A `tf.train.Checkpoint` of one wrapper restores into a wrapper of another
  base (TensorFlow only).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from backend_neutral import tensorflow_only

from keras_sam import SAMModel

RHO = 0.05
LEARNING_RATE = 0.1
ROWS, FEATURES, PIECES = 48, 2, 4  # the Keras 2 test's sub-batch case: 48 rows, 4 pieces


def _logistic_regression(kernel, bias) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _gradient(kernel, bias, x, y):
    """d/dw of the mean binary cross-entropy of logits x·kernel + bias (float64)."""
    logits = x @ kernel + bias
    residual = (1.0 / (1.0 + np.exp(-logits)) - y[:, None]) / len(x)
    return x.T @ residual, residual.sum(axis=0)


def _sam_gradient(kernel, bias, x, y):
    """SAM's gradient on one piece: at w + ρ·g/‖g‖ (the norm with eps 1e-12)."""
    g_kernel, g_bias = _gradient(kernel, bias, x, y)
    norm = np.sqrt(np.sum(g_kernel**2) + np.sum(g_bias**2))
    scale = RHO / (norm + 1e-12)
    return _gradient(kernel + scale * g_kernel, bias + scale * g_bias, x, y)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES))
    y = (x[:, 0] > 0.2).astype(np.float64)
    kernel, bias = rng.normal(size=(FEATURES, 1)), np.array([0.1])
    # The reference computes from the float32 values the model holds.
    return (x.astype("float32").astype(np.float64), y,
            kernel.astype("float32").astype(np.float64), bias)  # fmt: skip


def test_m_sharpness_averages_the_pieces_where_the_keras_2_sam_sums_them():
    x, y, kernel, bias = _data()
    pieces = [_sam_gradient(kernel, bias, xs, ys)
              for xs, ys in zip(np.split(x, PIECES), np.split(y, PIECES))]  # fmt: skip
    summed = [sum(p[i] for p in pieces) for i in range(2)]  # the Keras 2 SAM's
    averaged = [s / PIECES for s in summed]  # keras-sam's
    keras_2_step = [w - LEARNING_RATE * g for w, g in zip((kernel, bias), summed)]
    keras_sam_step = [w - LEARNING_RATE * g for w, g in zip((kernel, bias), averaged)]

    model = SAMModel(_logistic_regression(kernel, bias), rho=RHO, num_batch_splits=PIECES)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
    model.fit(x.astype("float32"), y.astype("float32"), batch_size=ROWS, epochs=1,
              shuffle=False, verbose=0)  # fmt: skip
    trained = [np.asarray(w, np.float64) for w in model.base_model.get_weights()]

    for actual, expected in zip(trained, keras_sam_step):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # The Keras 2 rule lands far away: its step is PIECES times keras-sam's.
    moved = max(np.max(np.abs(a - w)) for a, w in zip(keras_2_step, (kernel, bias)))
    assert moved > 1e-3
    assert max(np.max(np.abs(t - k2)) for t, k2 in zip(trained, keras_2_step)) > 0.5 * moved


def _two_layer_base() -> keras.Model:
    return keras.Sequential([keras.Input([2, 2]), keras.layers.Dense(4), keras.layers.Dense(1)])


def _compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
    return model


def test_rank_3_inputs_train_and_the_call_is_the_bases():
    base = _two_layer_base()
    model = _compiled(SAMModel(base))
    data = np.random.default_rng(1).uniform(size=(2, 2, 2)).astype("float32")
    labels = (data[:, :, :1] > 0.5).astype("float32")
    before = [w.copy() for w in base.get_weights()]
    history = model.fit(data, labels, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, a) for b, a in zip(before, base.get_weights()))
    np.testing.assert_array_equal(np.asarray(model(data)), np.asarray(base(data)))


def test_two_wrappers_of_one_base_share_and_train_its_weights():
    base = _two_layer_base()
    first, second = _compiled(SAMModel(base)), _compiled(SAMModel(base))
    data = np.random.default_rng(2).uniform(size=(4, 2, 2)).astype("float32")
    labels = (data[:, :, :1] > 0.5).astype("float32")
    first.fit(data, labels, verbose=0)
    after_first = [w.copy() for w in base.get_weights()]
    np.testing.assert_array_equal(np.asarray(first(data)), np.asarray(second(data)))
    second.fit(data, labels, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(after_first, base.get_weights()))
    np.testing.assert_array_equal(np.asarray(first(data)), np.asarray(second(data)))


@tensorflow_only
def test_a_checkpoint_of_one_wrapper_restores_into_a_wrapper_of_another_base(tmp_path):
    import tensorflow as tf

    data = np.random.default_rng(3).uniform(size=(4, 2, 2)).astype("float32")
    labels = (data[:, :, :1] > 0.5).astype("float32")
    trained = _compiled(SAMModel(_two_layer_base()))
    trained.fit(data, labels, verbose=0)
    fresh = _compiled(SAMModel(_two_layer_base()))
    fresh.build((None, 2, 2))
    assert not np.array_equal(np.asarray(trained(data)), np.asarray(fresh(data)))
    path = tf.train.Checkpoint(trained).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(fresh).restore(path).expect_partial()
    np.testing.assert_array_equal(np.asarray(trained(data)), np.asarray(fresh(data)))


@pytest.mark.parametrize("pieces", [2, 4])
def test_the_step_does_not_grow_with_the_number_of_pieces(pieces):
    """The reason to average: with identical pieces, m-sharpness is SAM."""
    x, y, kernel, bias = _data()
    x, y = np.tile(x[: ROWS // 4], (4, 1)), np.tile(y[: ROWS // 4], 4)  # 4 identical quarters
    steps = []
    for splits in (1, pieces):
        model = SAMModel(_logistic_regression(kernel, bias), rho=RHO, num_batch_splits=splits)
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
        model.fit(x.astype("float32"), y.astype("float32"), batch_size=ROWS, shuffle=False,
                  verbose=0)  # fmt: skip
        steps.append(model.base_model.get_weights())
    for one_piece, split in zip(*steps):
        np.testing.assert_allclose(split, one_piece, rtol=1e-5, atol=1e-6)
