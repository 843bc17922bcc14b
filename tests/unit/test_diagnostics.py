"""Tests of `keras_sam.diagnostics` and `keras_sam.callbacks.SharpnessMonitor`.

The references are closed forms: for a linear least-squares model the loss is
exactly quadratic in the weights, L(w + ε) = L(w) + gᵀε + ½ εᵀHε with
H = 2 X̃ᵀSX̃ / n (X̃ the inputs with a column of ones for the bias, S the sample
weights), so sharpness, Hessian eigenvalues and landscapes are computed here
in float64 NumPy, independently of the Keras backend.

Every test runs on TensorFlow and on JAX (`KERAS_BACKEND=jax`), with data
built in NumPy: arrays, or `_Batches` (a `keras.utils.PyDataset`, which
`fit`, `evaluate` and the diagnostics all read on either backend). Tests of
TensorFlow specifics are marked `tensorflow_only`; the JAX run deselects
them with `-m "not tensorflow_only"`.
"""

from __future__ import annotations

import doctest
import gc
import weakref

import keras
import matplotlib.image
import numpy as np
import pytest

import keras_sam.callbacks
import keras_sam.diagnostics
import keras_sam.diagnostics.hessian
import keras_sam.diagnostics.landscape
import keras_sam.diagnostics.m_sharpness
from keras_sam import SAMModel
from keras_sam._validation import InvalidArgumentError
from keras_sam.callbacks import SharpnessMonitor
from keras_sam.diagnostics import (
    LossLandscape,
    hessian_eigenvalues,
    loss_landscape,
    plot_loss_landscape,
    random_direction,
    sharpness,
)

ROWS, FEATURES, BATCH = 64, 5, 24  # batches of 24, 24 and 16 rows
# Eigenvalues of the Hessian 2XᵀX/n, well separated (so that even 20 power
# iterations would converge far below the tolerance); the bias adds 2 = 2n/n.
SPECTRUM = np.array([10.0, 6.0, 3.0, 1.0, 0.5])

tensorflow_only = pytest.mark.tensorflow_only


class _Batches(keras.utils.PyDataset):
    """`arrays` in batches of `size` rows, in order, the last one shorter.

    Read alike by `fit`, `evaluate` and the diagnostics on every backend.
    `fail_at_read=n` raises in the middle (after two batches) of the n-th
    pass over the batches, counted from 1.
    """

    def __init__(self, arrays, size, *, fail_at_read=None):
        super().__init__()
        self.arrays, self.size, self.fail_at_read, self.reads = tuple(arrays), size, fail_at_read, 0

    def __len__(self):
        return -(-len(self.arrays[0]) // self.size)

    def __getitem__(self, index):
        if index == 0:
            self.reads += 1
        if index == 2 and self.reads == self.fail_at_read:
            raise RuntimeError("data source failed")
        return tuple(a[index * self.size : (index + 1) * self.size] for a in self.arrays)


# ------------------------------------------------------------------ problem
def _inputs() -> np.ndarray:
    """X with centred columns and 2XᵀX/n = diag(SPECTRUM) in some basis.

    Centred columns are orthogonal to the bias column of ones, so the
    augmented Hessian is block-diagonal and keeps the spectrum's gaps.
    """
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(ROWS, FEATURES))
    basis -= basis.mean(axis=0)
    left, _ = np.linalg.qr(basis)
    right, _ = np.linalg.qr(rng.normal(size=(FEATURES, FEATURES)))
    singular = np.sqrt(SPECTRUM * ROWS / 2)
    return (left * singular @ right.T).astype("float32")


def _linear_problem(*, bias: bool, sample_weights: bool = False):
    """A Dense(1) least-squares model away from its minimum, and its data."""
    rng = np.random.default_rng(2)
    x = _inputs()
    y = (x @ rng.normal(size=(FEATURES, 1)) + 0.3 * rng.normal(size=(ROWS, 1))).astype("float32")
    weights = rng.uniform(0.5, 2.0, size=ROWS).astype("float32") if sample_weights else None
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1, use_bias=bias)])
    model.compile(optimizer="sgd", loss="mse")
    model.set_weights(
        [rng.normal(size=(FEATURES, 1)).astype("float32")]
        + ([np.array([0.7], "float32")] if bias else [])
    )
    arrays = (x, y) if weights is None else (x, y, weights)
    return model, _Batches(arrays, BATCH)


def _flat_weights(model) -> np.ndarray:
    """w in float64: the kernel, then the bias if there is one."""
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in model.get_weights()])


def _augmented(model, x) -> tuple[np.ndarray, np.ndarray]:
    """(X̃, w) in float64: inputs with a ones column when the model has a bias."""
    w = _flat_weights(model)
    x = np.asarray(x, np.float64)
    if len(w) > x.shape[1]:
        x = np.hstack([x, np.ones((len(x), 1))])
    return x, w


def _quadratic(model, x, y, sample_weight=None):
    """(L, g, H) of the weighted mean squared error at the model's weights."""
    x, w = _augmented(model, x)
    s = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    residual = x @ w - np.asarray(y, np.float64)[:, 0]
    n = len(x)
    return (
        np.sum(s * residual**2) / n,
        2 * x.T @ (s * residual) / n,
        2 * x.T @ (s[:, None] * x) / n,
    )


def _batches(dataset):
    """The batches of a `_Batches`, by index (as Keras reads a PyDataset)."""
    return [tuple(np.asarray(t) for t in dataset[i]) for i in range(len(dataset))]


def _state(model) -> list[bytes]:
    """Every variable of the model (BatchNorm statistics too), as raw bytes."""
    return [keras.ops.convert_to_numpy(v).tobytes() for v in model.variables]


def _conv_model(*, sam: bool = False, trained: bool = True):
    """Conv + BatchNorm + Dropout + L2 + Dense, with sample-weighted data in
    three batches of 32 (one batch shape: one trace of each function on JAX;
    the linear problem's batches differ in size).

    Trained one epoch (so that the BatchNorm statistics are not the initial
    ones) unless `trained=False`.
    """
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=96).astype("int32")
    weights = rng.uniform(0.2, 2.0, size=96).astype("float32")
    base = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, kernel_regularizer=keras.regularizers.L2(1e-2)),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3),
        ]
    )
    model = SAMModel(base, rho=0.05) if sam else base
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    dataset = _Batches((x, y, weights), 32)
    if trained:
        model.fit(dataset, epochs=1, verbose=0)
    return model, dataset


@pytest.fixture(scope="module")
def conv():
    """A trained plain model and its data; tests must not change its weights."""
    return _conv_model()


@pytest.fixture(scope="module")
def sam_conv():
    """A trained `SAMModel` and its data; tests must not change its weights."""
    return _conv_model(sam=True)


# ------------------------------------------------------------------ hessian
@pytest.mark.parametrize("bias, k", [(False, 1), (True, 3)])
def test_hessian_eigenvalues_equal_numpy_eigvalsh(bias, k):
    """Batches of 24, 24 and 16 rows: an unweighted mean of theirs would differ."""
    model, dataset = _linear_problem(bias=bias)
    x, y = (np.concatenate(t) for t in zip(*_batches(dataset), strict=True))
    expected = np.linalg.eigvalsh(_quadratic(model, x, y)[2])[::-1]
    measured = (
        hessian_eigenvalues(model, dataset) if k == 1 else hessian_eigenvalues(model, dataset, k=k)
    )
    assert len(measured) == k
    # README claims 1e-7 relative (float32 Hessian-vector products).
    np.testing.assert_allclose(measured, expected[:k], rtol=1e-6)


@pytest.mark.parametrize("features, k", [(8, 3), (40, 1), (40, 3)])
def test_hessian_eigenvalues_of_an_ordinary_random_problem(features, k):
    """Gaussian inputs: the top eigenvalues of 2XᵀX/n lie close together
    (λ₂/λ₁ ≈ 0.9, where 20 power iterations are off by up to 10%), and with
    40 features the default 20 steps span fewer directions than there are
    weights."""
    rng = np.random.default_rng(features)
    rows = 256  # two batches of the default 128
    x = rng.normal(size=(rows, features)).astype("float32")
    y = rng.normal(size=(rows, 1)).astype("float32")
    model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    augmented = np.hstack([x.astype(np.float64), np.ones((rows, 1))])
    expected = np.linalg.eigvalsh(2 * augmented.T @ augmented / rows)[::-1][:k]
    assert expected[1] / expected[0] > 0.85 if k > 1 else True
    measured = hessian_eigenvalues(model, (x, y), k=k)
    np.testing.assert_allclose(measured, expected, rtol=1e-6)


def test_hessian_eigenvalues_of_a_low_rank_hessian_restart_and_include_zeros():
    """H = diag(4, 0, 0): the subspace stops growing after one vector."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(loss="mse")
    x = np.array([[np.sqrt(2.0), 0, 0]], "float32")  # H = 2xᵀx / 1
    measured = hessian_eigenvalues(model, (x, np.zeros((1, 1), "float32")), k=3)
    np.testing.assert_allclose(measured, [4.0, 0.0, 0.0], atol=1e-6)


def _mlp_loss(params, x, y) -> float:
    """NumPy float64 loss of Dense(4, tanh) -> Dense(1) with MSE."""
    kernel1, bias1, kernel2, bias2 = params
    return float(np.mean((np.tanh(x @ kernel1 + bias1) @ kernel2 + bias2 - y) ** 2))


def test_hessian_of_a_nonlinear_model_matches_finite_differences():
    """Exact HVPs through tanh, against NumPy's second differences of the loss."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(loss="mse")
    # Drawn in NumPy, not by Keras's initializers: the same on every backend.
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    shapes = [w.shape for w in model.get_weights()]
    centre = np.concatenate([w.astype(np.float64).reshape(-1) for w in model.get_weights()])

    def loss_at(flat):
        splits = np.split(flat, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
        return _mlp_loss([p.reshape(s) for p, s in zip(splits, shapes, strict=True)], x, y)

    step, units = 1e-4, np.eye(centre.size)
    reference = np.linalg.eigvalsh(
        [
            [
                (
                    loss_at(centre + step * (a + b))
                    - loss_at(centre + step * (a - b))
                    - loss_at(centre - step * (a - b))
                    + loss_at(centre - step * (a + b))
                )
                / (4 * step**2)
                for b in units
            ]
            for a in units
        ]
    )
    # Power iteration finds the eigenvalues of largest magnitude.
    largest = sorted(reference[np.argsort(-np.abs(reference))][:2], reverse=True)
    assert abs(largest[0] / largest[1]) > 1.2  # a gap that 40 iterations resolve
    measured = hessian_eigenvalues(
        model, (x.astype("float32"), y.astype("float32")), k=2, iterations=40
    )
    np.testing.assert_allclose(measured, largest, rtol=1e-4)


# ---------------------------------------------------------------- sharpness
def _ascent(g, w, rho, kind):
    """SAM's ε̂ in float64 for the three ascent rules tested."""
    if kind == "p=2":
        return rho * g / np.linalg.norm(g)
    if kind == "p=inf":
        return rho * np.sign(g)
    scale = np.abs(w) + 0.01  # ASAM, p = 2, η = 0.01
    return rho * scale**2 * g / np.linalg.norm(scale * g)


@pytest.mark.parametrize("kind", ["p=2", "p=inf", "adaptive"])
def test_sharpness_equals_the_quadratic_closed_form(kind):
    """L(w+ε̂) − L(w) = gᵀε̂ + ½ε̂ᵀHε̂ per batch; for p=2 that is ρ‖g‖ + ½ρ²ĝᵀHĝ."""
    model, dataset = _linear_problem(bias=True, sample_weights=True)
    rho = 0.5  # large enough that the curvature term is a sizeable part
    w = _flat_weights(model)
    rises, rows, curvature_share = [], [], []
    for x, y, s in _batches(dataset):
        _, g, h = _quadratic(model, x, y, s)
        e = _ascent(g, w, rho, kind)
        rises.append(g @ e + 0.5 * e @ h @ e)
        rows.append(len(x))
        curvature_share.append(0.5 * e @ h @ e / rises[-1])
    expected = np.average(rises, weights=rows)
    options = {"p=2": {}, "p=inf": {"p": float("inf")}, "adaptive": {"adaptive": True}}[kind]
    measured = sharpness(model, dataset, rho=rho, **options)
    assert min(curvature_share) > 0.05  # a first-order-only answer would fail
    np.testing.assert_allclose(measured, expected, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 100])
def test_sharpness_of_arrays_is_the_whole_set_unless_batch_size_cuts_them(batch_size):
    """300 rows given as arrays: one ε̂ for the whole set by default (the
    closed form of the full-data loss); with `batch_size`, the mean over its
    batches."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, FEATURES)).astype("float32")
    y = (x @ rng.normal(size=(FEATURES, 1)) + rng.normal(size=(300, 1))).astype("float32")
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    rho = 0.5
    pieces = [slice(0, 300)] if batch_size is None else [slice(i, i + 100) for i in (0, 100, 200)]
    rises = []
    for rows in pieces:
        _, g, h = _quadratic(model, x[rows], y[rows])
        e = rho * g / np.linalg.norm(g)
        rises.append(g @ e + 0.5 * e @ h @ e)
    measured = sharpness(model, (x, y), rho=rho, batch_size=batch_size)
    np.testing.assert_allclose(measured, np.mean(rises), rtol=1e-5)
    if batch_size is None:
        whole, split = rises[0], sharpness(model, (x, y), rho=rho, batch_size=100)
        assert abs(split - whole) > 1e-3 * abs(whole)  # the two can be told apart


def test_sharpness_uses_only_the_first_batches_and_is_deterministic(conv):
    model, dataset = conv
    first = _batches(dataset)[0]
    one_batch = sharpness(model, dataset, rho=0.1, batches=1)
    assert one_batch == sharpness(model, first, rho=0.1)  # Dropout is off
    assert one_batch != sharpness(model, dataset, rho=0.1)
    # rho is an argument of the traced graph, not a constant baked into it.
    assert sharpness(model, dataset, rho=0.0) == 0.0


# ---------------------------------------------------------------- landscape
def test_landscape_centre_equals_evaluate_with_batchnorm_l2_and_sample_weights(conv):
    model, dataset = conv
    evaluated = model.evaluate(dataset, verbose=0)
    line = loss_landscape(model, dataset, points=5, span=0.5)
    assert line.center_loss == evaluated  # the same float32 reduction, bit for bit
    np.testing.assert_allclose(line.losses[2], evaluated, rtol=1e-6)
    assert line.alphas[2] == 0.0
    assert line.losses.min() < line.losses.max()


@pytest.mark.parametrize("rows", [50, 300])
def test_landscape_centre_on_arrays_equals_evaluate_with_both_defaults(rows):
    """Arrays are batched as `evaluate` batches them (32 rows)."""
    model, dataset = _linear_problem(bias=True)
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = rng.normal(size=(rows, 1)).astype("float32")
    assert loss_landscape(model, (x, y), points=3).center_loss == model.evaluate(x, y, verbose=0)


@pytest.mark.parametrize("directions", [1, 2])
def test_landscape_values_equal_the_quadratic_along_the_directions(directions):
    model, dataset = _linear_problem(bias=True)
    x, y = (np.concatenate(t) for t in zip(*_batches(dataset), strict=True))
    result = loss_landscape(
        model, dataset, directions=directions, span=2.0, points=5, normalization="layer", seed=7
    )
    loss, g, h = _quadratic(model, x, y)
    d = np.concatenate([a.reshape(-1) for a in result.directions[0]]).astype(np.float64)
    if directions == 1:
        expected = [loss + a * g @ d + 0.5 * a * a * d @ h @ d for a in result.alphas]
        assert result.betas is None and result.losses.shape == (5,)
    else:
        e = np.concatenate([a.reshape(-1) for a in result.directions[1]]).astype(np.float64)
        expected = [
            [
                loss + g @ (a * d + b * e) + 0.5 * (a * d + b * e) @ h @ (a * d + b * e)
                for b in result.betas
            ]
            for a in result.alphas
        ]
        assert result.losses.shape == (5, 5) and result.ndim == 2
        np.testing.assert_array_equal(result.betas, result.alphas)
    np.testing.assert_array_equal(result.alphas, [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    assert result.normalization == "layer" and result.seed == 7 and result.span == 2.0


def test_filter_normalization_matches_each_filter_and_zeroes_1d_weights(conv):
    model, dataset = conv
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    direction = random_direction(weights, "filter", seed=5)
    for w, d in zip(weights, direction, strict=True):
        assert d.shape == w.shape and d.dtype == np.float32
        if w.ndim == 1:
            assert not d.any()  # biases, BatchNorm γ and β
        else:
            axes = tuple(range(w.ndim - 1))  # a filter: one output unit
            np.testing.assert_allclose(
                np.sqrt(np.sum(d**2, axis=axes)), np.sqrt(np.sum(w**2, axis=axes)), rtol=1e-5
            )
            assert not np.allclose(d / np.linalg.norm(d), w / np.linalg.norm(w))
    layer = random_direction(weights, "layer", seed=5)
    for w, d in zip(weights, layer, strict=True):
        assert np.isclose(np.linalg.norm(d), 0 if w.ndim == 1 else np.linalg.norm(w), rtol=1e-5)
    raw = random_direction(weights, None, seed=5)
    assert all(d.any() for d in raw)
    used = loss_landscape(model, dataset, points=3, seed=5, batches=1).directions
    for a, b in zip(used[0], direction, strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------- weights are untouched
def test_every_diagnostic_leaves_every_variable_bit_identical(conv):
    model, dataset = conv
    before = _state(model)
    sharpness(model, dataset, rho=0.2)
    hessian_eigenvalues(model, dataset, k=2, iterations=2)
    loss_landscape(model, dataset, points=3)
    loss_landscape(model, dataset, directions=2, points=3)
    assert _state(model) == before
    # The data fails in the middle of a pass: the first one, or (the
    # iteration's third Hessian-vector product) after two passes.
    for read, run in (
        (1, lambda failing: sharpness(model, failing)),
        (3, lambda failing: hessian_eigenvalues(model, failing, iterations=4)),
        (1, lambda failing: loss_landscape(model, failing, directions=2, points=3)),
    ):
        failing = _Batches(dataset.arrays, dataset.size, fail_at_read=read)
        with pytest.raises(Exception, match="data source failed"):  # wrapped by tf.data
            run(failing)
        assert failing.reads == read
        assert _state(model) == before


def _failing_tf_dataset(batches):
    """Yields `batches`, then raises in the middle of a pass."""
    import tensorflow as tf

    specs = tuple(tf.TensorSpec((None, *b.shape[1:]), tf.as_dtype(b.dtype)) for b in batches[0])

    def generate():
        yield from batches[:2]
        raise RuntimeError("data source failed")

    return tf.data.Dataset.from_generator(generate, output_signature=specs)


@tensorflow_only
def test_a_failing_tf_data_pipeline_leaves_every_variable_bit_identical(conv):
    import tensorflow as tf

    model, dataset = conv
    before = _state(model)
    failing = _failing_tf_dataset(_batches(dataset))
    for run in (
        lambda: sharpness(model, failing),
        lambda: hessian_eigenvalues(model, failing, iterations=2),
        lambda: loss_landscape(model, failing, directions=2, points=3),
    ):
        with pytest.raises(tf.errors.OpError, match="data source failed"):
            run()
        assert _state(model) == before


# ------------------------------------------------------ SAMModel and plain
def test_sam_model_and_its_base_give_the_same_diagnostics(sam_conv):
    sam, dataset = sam_conv
    base = sam.base_model
    base.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert sharpness(sam, dataset) == sharpness(base, dataset)
    np.testing.assert_allclose(
        hessian_eigenvalues(sam, dataset, iterations=5),
        hessian_eigenvalues(base, dataset, iterations=5),
        rtol=1e-6,
    )
    assert loss_landscape(sam, dataset, points=3).center_loss == sam.evaluate(dataset, verbose=0)


# ------------------------------------------------------------------- plots
@pytest.mark.parametrize("directions", [1, 2])
def test_plot_renders_a_png(tmp_path, directions):
    model, dataset = _linear_problem(bias=True)
    landscapes = [
        loss_landscape(model, dataset, directions=directions, points=5, seed=seed)
        for seed in (0, 1)
    ]
    figure = plot_loss_landscape(landscapes, ["seed 0", "seed 1"], title="linear model")
    path = tmp_path / "landscape.png"
    figure.savefig(path)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0.5  # lines drawn, not one colour
    axes = figure.axes
    assert len(axes) == (1 if directions == 1 else 2)  # two planes: two panels
    if directions == 1:
        assert len(axes[0].lines) == 2
        np.testing.assert_array_equal(axes[0].lines[1].get_ydata(), landscapes[1].losses)
    else:  # the same contour levels on both panels, spanning both planes
        levels = [a.collections[0].levels for a in axes]
        np.testing.assert_array_equal(levels[0], levels[1])
        low = min(s.losses.min() for s in landscapes)
        high = max(s.losses.max() for s in landscapes)
        np.testing.assert_allclose(levels[0][[0, -1]], [low, high], rtol=1e-6)


def test_plot_rejects_mixed_or_wrong_inputs():
    model, dataset = _linear_problem(bias=False)
    line = loss_landscape(model, dataset, points=3)
    plane = loss_landscape(model, dataset, directions=2, points=3)
    with pytest.raises(InvalidArgumentError, match="all lines"):
        plot_loss_landscape([line, plane])
    with pytest.raises(InvalidArgumentError, match="labels"):
        plot_loss_landscape([line], ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="landscapes"):
        plot_loss_landscape([{"losses": [1.0]}])


# --------------------------------------------------------------- callback
def test_monitor_logs_what_a_direct_call_measures_on_a_plain_model():
    model, dataset = _conv_model(trained=False)
    monitor = SharpnessMonitor(dataset, rho=0.1, hessian_iterations=5)
    history = model.fit(dataset, epochs=1, callbacks=[monitor], verbose=0)
    assert history.history["sharpness"] == [sharpness(model, dataset, rho=0.1)]
    np.testing.assert_allclose(
        history.history["hessian_max_eigenvalue"],
        hessian_eigenvalues(model, dataset, iterations=5),
        rtol=1e-6,
    )


def test_loggers_listed_before_the_monitor_still_record_its_keys(tmp_path):
    """Keras calls callbacks in list order; the monitor moves itself to the
    front, so that CSVLogger's first row already has its keys."""
    model, dataset = _conv_model(trained=False)
    monitor = SharpnessMonitor(dataset, hessian_iterations=2, batches=1)
    csv_path = tmp_path / "log.csv"
    stopping = keras.callbacks.EarlyStopping(
        monitor="hessian_max_eigenvalue", mode="min", patience=5
    )
    callbacks = [keras.callbacks.CSVLogger(str(csv_path)), stopping, monitor]
    history = model.fit(dataset, epochs=2, callbacks=callbacks, verbose=0).history
    assert callbacks[-1] is monitor  # the user's list is left as it was
    rows = csv_path.read_text().splitlines()
    header = rows[0].split(",")
    assert {"sharpness", "hessian_max_eigenvalue"} <= set(header)
    column = header.index("hessian_max_eigenvalue")
    logged = [float(row.split(",")[column]) for row in rows[1:]]
    np.testing.assert_allclose(logged, history["hessian_max_eigenvalue"], rtol=1e-6)
    assert stopping.best == min(history["hessian_max_eigenvalue"])


@tensorflow_only
def test_tensorboard_listed_before_the_monitor_records_its_keys(tmp_path):
    import tensorflow as tf

    model, dataset = _conv_model(trained=False)
    monitor = SharpnessMonitor(dataset, hessian_iterations=2, batches=1)
    callbacks = [keras.callbacks.TensorBoard(str(tmp_path / "tb")), monitor]
    model.fit(dataset, epochs=1, callbacks=callbacks, verbose=0)
    tags = set()
    for path in (tmp_path / "tb" / "train").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {"epoch_sharpness", "epoch_hessian_max_eigenvalue"} <= tags


def test_early_stopping_listed_before_the_monitor_acts_on_its_key():
    """No logger in the list: the monitor still runs before `EarlyStopping`."""
    model, dataset = _conv_model(trained=False)
    monitor = SharpnessMonitor(dataset, hessian_iterations=2, batches=1)
    # Never improves by 1e9: stops at the second epoch if it sees the key.
    stopping = keras.callbacks.EarlyStopping(
        monitor="hessian_max_eigenvalue", mode="max", min_delta=1e9, patience=0
    )
    history = model.fit(dataset, epochs=4, callbacks=[stopping, monitor], verbose=0).history
    assert len(history["hessian_max_eigenvalue"]) == 2
    assert stopping.stopped_epoch == 1


class _MeasureAtEpochEnd(keras.callbacks.Callback):
    def __init__(self, data):
        super().__init__()
        self.data, self.measured = data, []

    def on_epoch_end(self, epoch, logs=None):
        self.measured.append(sharpness(self.model, self.data))


def test_the_monitor_measures_the_ema_weights_swapped_in_before_it():
    """Listed after `SwapEMAWeights(swap_on_epoch=True)`, the monitor measures
    the weights the epoch ends with, the EMA (as ModelCheckpoint would save)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, "tanh"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.5), loss="mse")
    monitor = SharpnessMonitor((x, y), hessian=False)
    after = _MeasureAtEpochEnd((x, y))
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True), monitor, after]
    history = model.fit(x, y, batch_size=8, epochs=2, callbacks=callbacks, verbose=0).history
    assert history["sharpness"] == after.measured


def test_monitor_on_sam_model_keeps_sam_sharpness_and_logs_its_own():
    model, dataset = _conv_model(sam=True, trained=False)
    monitor = SharpnessMonitor(dataset, every=2, hessian=False, batches=1)
    history = model.fit(dataset, epochs=3, callbacks=[monitor], verbose=0).history
    assert len(history["sharpness"]) == 3  # SAMModel's own, every epoch
    assert len(history["monitored_sharpness"]) == 2  # epochs 0 and 2
    assert "hessian_max_eigenvalue" not in history
    assert history["monitored_sharpness"][-1] == sharpness(model, dataset, batches=1)
    assert history["monitored_sharpness"][-1] != history["sharpness"][-1]
    named = SharpnessMonitor(dataset, hessian=False, batches=1, sharpness_key="val_sharp")
    assert "val_sharp" in model.fit(dataset, epochs=1, callbacks=[named], verbose=0).history


# ----------------------------------------------------------- data forms
def test_every_form_of_data_gives_the_same_numbers():
    """Arrays with `batch_size`, a PyDataset (read at every pass), a generator
    (read once and kept) and a list of batches passed as an iterator are the
    same batches, so the same numbers, bit for bit."""
    model, dataset = _linear_problem(bias=True, sample_weights=True)
    forms = {  # each call gets a new generator or iterator
        "arrays": (lambda: dataset.arrays, {"batch_size": BATCH}),
        "PyDataset": (lambda: dataset, {}),
        "generator": (lambda: (batch for batch in _batches(dataset)), {}),
        "iterator": (lambda: iter(_batches(dataset)), {}),
    }
    measured = {}
    for name, (data, options) in forms.items():
        measured[name] = (
            sharpness(model, data(), rho=0.5, **options),
            hessian_eigenvalues(model, data(), k=2, iterations=3, **options),
            loss_landscape(model, data(), points=3, **options).losses.tolist(),
        )
    assert all(value == measured["arrays"] for value in measured.values()), measured
    one = sharpness(model, (batch for batch in _batches(dataset)), rho=0.5, batches=1)
    assert one == sharpness(model, _batches(dataset)[0], rho=0.5)


class _IndexedOnly(_Batches):
    """A PyDataset as older Keras releases have it: no `__iter__`, so Python
    would call `__getitem__` until `IndexError`, which slicing never raises."""

    def __iter__(self):
        raise AssertionError("a PyDataset is read by index, batches 0 .. num_batches - 1")


def test_a_pydataset_is_read_by_index_for_its_num_batches():
    model, dataset = _linear_problem(bias=True, sample_weights=True)
    indexed = _IndexedOnly(dataset.arrays, BATCH)
    expected = sharpness(model, dataset.arrays, rho=0.5, batch_size=BATCH)
    assert sharpness(model, indexed, rho=0.5) == expected
    assert hessian_eigenvalues(model, indexed, k=1, iterations=2) == hessian_eigenvalues(
        model, dataset.arrays, k=1, iterations=2, batch_size=BATCH
    )
    assert indexed.reads >= 3  # every pass starts again at batch 0


def test_a_tf_data_dataset_is_read_on_every_backend():
    """tf.data stays an input format on JAX (read as NumPy), with the numbers
    of the same batches given any other way (TensorFlow is installed beside
    every backend: it is Keras's tf.data input and KerasHub's preprocessing)."""
    import tensorflow as tf
    model, dataset = _linear_problem(bias=True, sample_weights=True)
    pipeline = tf.data.Dataset.from_tensor_slices(dataset.arrays).batch(BATCH)
    assert sharpness(model, pipeline, rho=0.5) == sharpness(model, dataset, rho=0.5)
    assert sharpness(model, pipeline, rho=0.5, batches=2) == sharpness(
        model, dataset, rho=0.5, batches=2
    )
    np.testing.assert_allclose(
        hessian_eigenvalues(model, pipeline, k=2),
        hessian_eigenvalues(model, dataset, k=2),
        rtol=1e-6,
    )
    monitor = SharpnessMonitor(pipeline, hessian_iterations=3)
    x, y, _ = dataset.arrays
    history = model.fit(x, y, batch_size=ROWS, callbacks=[monitor], verbose=0).history
    assert history["sharpness"] == [sharpness(model, dataset)]


# The same model, weights and data on every backend (NumPy draws), measured
# on TensorFlow 2.21 (CPU): JAX must agree to float32 rounding. Two Lanczos
# steps are far from converged (another seed moves λ₂ by 60%), so the
# Hessian numbers check that JAX starts from TensorFlow's random direction.
TENSORFLOW_NUMBERS = {
    "hessian": [5.246089292391097, 1.2788711691203443],
    "sharpness": 0.4873332977294922,
    "adaptive": 0.3939662277698517,
    "landscape": [2.722912073135376, 4.665533542633057, 7.765383720397949],
}


def test_every_backend_gives_tensorflows_numbers():
    rng = np.random.default_rng(11)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(loss="mse")
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    data = (rng.normal(size=(50, 3)).astype("float32"), rng.normal(size=(50, 2)).astype("float32"))
    expected = TENSORFLOW_NUMBERS
    top = hessian_eigenvalues(model, data, k=2, iterations=2, batch_size=25)
    np.testing.assert_allclose(top, expected["hessian"], rtol=1e-6)
    other_start = hessian_eigenvalues(model, data, k=2, iterations=2, batch_size=25, seed=1)
    assert abs(other_start[1] / top[1] - 1) > 0.1
    np.testing.assert_allclose(
        sharpness(model, data, rho=0.1, batch_size=25), expected["sharpness"], rtol=2e-5
    )
    np.testing.assert_allclose(
        sharpness(model, data, rho=0.1, adaptive=True), expected["adaptive"], rtol=2e-5
    )
    line = loss_landscape(model, data, points=3, seed=1, span=0.5, batch_size=25)
    np.testing.assert_allclose(line.losses, expected["landscape"], rtol=1e-6)


@tensorflow_only
def test_the_numpy_start_direction_is_tensorflows_draw():
    """JAX's Lanczos start, drawn in NumPy, is `tf.random.stateless_normal`'s
    to a few units in the last place (TensorFlow's float32 log, sin and cos
    are the C library's, not always correctly rounded)."""
    import tensorflow as tf

    from keras_sam.diagnostics._philox import stateless_normal

    ulps = []
    for shape, seed in [((5,), [0, 0]), ((3, 3, 2, 4), [0, 1]), ((400, 250), [1234, 17])]:
        expected = tf.random.stateless_normal(shape, seed=seed).numpy()
        drawn = stateless_normal(shape, seed)
        assert drawn.shape == expected.shape and drawn.dtype == np.float32
        bits = drawn.view(np.int32).astype(np.int64) - expected.view(np.int32)
        ulps.append(np.abs(bits).reshape(-1))
    ulps = np.concatenate(ulps)
    assert ulps.max() <= 4 and np.mean(ulps == 0) > 0.97


# ------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, d: hessian_eigenvalues(m, d, k=0), "k"),
        (lambda m, d: hessian_eigenvalues(m, d, k=99), "k"),
        (lambda m, d: hessian_eigenvalues(m, d, iterations=0), "iterations"),
        (lambda m, d: loss_landscape(m, d, points=1), "points"),
        (lambda m, d: loss_landscape(m, d, directions=3), "directions"),
        (lambda m, d: loss_landscape(m, d, directions=1.0), "directions"),
        (lambda m, d: loss_landscape(m, d, directions=True), "directions"),
        (lambda m, d: loss_landscape(m, d, normalization="batch"), "normalization"),
        (lambda m, d: loss_landscape(m, d, span=0), "span"),
        (lambda m, d: sharpness(m, d, rho=-0.1), "rho"),
        (lambda m, d: sharpness(m, d, rho=1e5), "rho"),
        (lambda m, d: sharpness(m, d, p=1), "p"),
        (lambda m, d: sharpness(m, d, batches=0), "batches"),
        (lambda m, d: sharpness(m, [d]), "data"),
        (lambda m, d: sharpness(m, np.ones((4, 5))), "data"),
        (lambda m, d: sharpness(m, (b[0] for b in _batches(d))), "data"),  # no targets
        (lambda m, d: sharpness(m, 3), "data"),
        (lambda m, d: sharpness("model", d), "model"),
        (lambda m, d: SharpnessMonitor(d, every=0), "every"),
        (lambda m, d: SharpnessMonitor(d, sharpness_key=""), "sharpness_key"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(call, name):
    model, dataset = _linear_problem(bias=False)
    with pytest.raises(InvalidArgumentError, match=f"`{name}`"):
        call(model, dataset)


@tensorflow_only
def test_a_dataset_without_targets_is_refused_naming_data():
    import tensorflow as tf

    model, _ = _linear_problem(bias=False)
    features = tf.data.Dataset.from_tensor_slices(_inputs()).batch(BATCH)
    with pytest.raises(InvalidArgumentError, match="`data`.*targets"):
        sharpness(model, features)


def test_an_uncompiled_model_is_refused_clearly():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="not compiled.*compile"):
        sharpness(model, (np.ones((4, 2)), np.ones((4, 1))))


# ------------------------------------------------------------- docstrings
@pytest.mark.parametrize(
    "module",
    [
        keras_sam.diagnostics,
        keras_sam.diagnostics.hessian,
        keras_sam.diagnostics.landscape,
        keras_sam.diagnostics.m_sharpness,
        keras_sam.callbacks,
    ],
)
def test_docstring_examples_run(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_landscape_is_a_result_object():
    model, dataset = _linear_problem(bias=False)
    result = loss_landscape(model, dataset, points=4)
    assert isinstance(result, LossLandscape)
    assert 0.0 not in result.alphas  # an even grid skips 0 ...
    assert np.isclose(result.center_loss, model.evaluate(dataset, verbose=0))  # ... L(w) is kept


# ------------------------------------------------------------ traced graphs
def test_recompiling_retraces_and_the_cache_keeps_no_model_alive():
    model, dataset = _linear_problem(bias=True)
    with_mse = sharpness(model, dataset, rho=0.5)
    model.compile(loss="mae")
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    twin.compile(loss="mae")
    assert sharpness(model, dataset, rho=0.5) == sharpness(twin, dataset, rho=0.5) != with_mse
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
