"""`keras_sam.perturbation` against the float64 reference in `variant_reference`.

The reference is written from the ascent formulas (SAM's dual-norm step and
ASAM's rescaled step); see its module docstring. Float32 results are compared to
1e-5 relative, eagerly and inside an XLA program (`tf.function(jit_compile=True)`
on TensorFlow, `jax.jit` on JAX).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from backend_neutral import compiled, numpy, tensorflow_only, tensors, traced
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import keras_sam
from keras_sam import perturbation

import variant_reference as ref

RHO = 0.3
INF = float("inf")
SHAPES = [(3, 4), (4,), (2,), (2, 3, 2)]  # the third variable gets no gradient


def _problem(seed: int = 0):
    """Gradients (one None) and weights of several variables of different shapes."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype("float32") for s in SHAPES]
    gradients = [rng.normal(scale=0.1, size=s).astype("float32") for s in SHAPES]
    gradients[2] = None
    return gradients, weights


def _tensors(arrays, dtype="float32"):
    return tensors(arrays, dtype)


def _compiled(gradients, function, *arguments):
    """`function(present_gradients, *arguments)` inside one XLA program."""
    present = [i for i, g in enumerate(gradients) if g is not None]

    def in_xla(present_gradients, *arguments):
        full = [None] * len(gradients)
        for i, g in zip(present, present_gradients):
            full[i] = g
        return function(full, *arguments)

    return compiled(in_xla)([gradients[i] for i in present], *arguments)


def _assert_matches(actual, expected, rtol=1e-5):
    assert len(actual) == len(expected)
    scale = max(np.abs(e).max() for e in expected if e is not None)
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
            continue
        a = np.asarray(a, np.float64)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------- golden values
CASES = [(p, adaptive) for p in (2, 3, 1.5, INF) for adaptive in (False, True)]


@pytest.mark.parametrize(("p", "adaptive"), CASES)
def test_matches_float64_reference(p, adaptive):
    gradients, weights = _problem()
    actual = perturbation(_tensors(gradients), _tensors(weights), RHO, p=p, adaptive=adaptive,
                          eta=0.05)
    expected = ref.perturbation(gradients, weights, RHO, p=p, adaptive=adaptive, eta=0.05)
    _assert_matches(actual, expected)


def test_matches_float64_reference_under_xla():
    """Every case of the test above, and rho as a tensor, in one XLA compilation."""
    gradients, weights = _problem()
    weight_tensors = _tensors(weights)

    def every_case(full_gradients, rho):
        return [
            perturbation(full_gradients, weight_tensors, rho, p=p, adaptive=adaptive, eta=0.05)
            for p, adaptive in CASES
        ]

    rho = keras.ops.convert_to_tensor(RHO)  # an argument of the program: a tensor in it
    for (p, adaptive), actual in zip(CASES, _compiled(_tensors(gradients), every_case, rho)):
        expected = ref.perturbation(gradients, weights, RHO, p=p, adaptive=adaptive, eta=0.05)
        _assert_matches(actual, expected)


def test_reference_special_cases_by_hand():
    """The reference itself on values worked out by hand."""
    g = [np.array([3.0, -4.0]), np.array([0.0])]
    np.testing.assert_allclose(ref.perturbation(g, [0, 0], 0.5)[0], [0.3, -0.4])
    # p = inf: ρ·sign(g); a zero entry stays zero.
    np.testing.assert_allclose(ref.perturbation(g, [0, 0], 0.5, p=INF)[1], [0.0])
    # p = 1.5 (q = 3): ρ·sign(g)·g² / (Σ|g|³)^(2/3) = 0.5·[9, -16] / 91^(2/3).
    np.testing.assert_allclose(
        ref.perturbation(g, [0, 0], 0.5, p=1.5)[0], 0.5 * np.array([9, -16]) / 91 ** (2 / 3)
    )
    # ASAM, p = 2: ρ·T²·g/‖T·g‖ with T = |w| + η = [1.5, 0.5] (η = 0.5).
    w = [np.array([1.0, 0.0]), np.array([0.0])]
    t = np.array([1.5, 0.5])
    expected = 0.5 * t**2 * g[0] / np.linalg.norm(np.concatenate([t * g[0], [0.0]]))
    np.testing.assert_allclose(ref.perturbation(g, w, 0.5, adaptive=True, eta=0.5)[0], expected)


def test_none_counts_as_zero_and_comes_back_none():
    gradients, weights = _problem()
    with_none = perturbation(_tensors(gradients), _tensors(weights), RHO, p=3)
    present = [i for i, g in enumerate(gradients) if g is not None]
    without = perturbation(
        _tensors([gradients[i] for i in present]), _tensors([weights[i] for i in present]),
        RHO, p=3,
    )
    assert with_none[2] is None
    for i, value in zip(present, without):
        np.testing.assert_array_equal(numpy(with_none[i]), numpy(value))
    zeros = [keras.ops.zeros(1), keras.ops.zeros(2)]
    assert perturbation([None, None], zeros, RHO) == [None, None]


def test_exported_at_package_level():
    assert keras_sam.perturbation is perturbation


# ----------------------------------------------------------- degenerate input
@pytest.mark.parametrize("eps", [1e-12, 1e-45, 1e-300], ids=["default", "subnormal", "0_in_f32"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("p", [2, 3, 1.5, INF])
def test_zero_gradient_gives_zero_and_no_nan(p, adaptive, eps):
    """Also when eps is subnormal or rounds to 0 in float32 (0/0 must not happen)."""
    _, weights = _problem()
    gradients = [np.zeros(s, "float32") for s in SHAPES]
    result = perturbation(
        _tensors(gradients), _tensors(weights), RHO, p=p, adaptive=adaptive, eps=eps
    )
    for e in result:
        np.testing.assert_array_equal(numpy(e), 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("p", [2, 3, 1.5, INF])
def test_nonfinite_gradient_gives_all_zero(p, adaptive, bad):
    gradients, weights = _problem()
    gradients[3] = gradients[3].copy()
    gradients[3][1, 2, 0] = bad  # one bad entry in one variable zeroes every ε̂
    result = perturbation(_tensors(gradients), _tensors(weights), RHO, p=p, adaptive=adaptive)
    for e in result:
        if e is not None:
            np.testing.assert_array_equal(numpy(e), 0.0)


@pytest.mark.parametrize("p", [1.1, 1.5, 2, 3, INF])
@pytest.mark.parametrize("scale", [1e-5, 1e4])
def test_gradient_scale_does_not_change_the_ascent(p, scale):
    """ε̂ depends on g's direction only (the formula is homogeneous of degree 0).

    Per-weight gradients of 1e-5 are ordinary in large networks, and 1e4 happens
    early in training; |g|^q must not underflow or overflow float32 for p near 1.
    """
    gradients, weights = _problem()
    scaled = [None if g is None else (g * scale).astype("float32") for g in gradients]
    actual = perturbation(_tensors(scaled), _tensors(weights), RHO, p=p)
    _assert_matches(actual, ref.perturbation(gradients, weights, RHO, p=p))


# --------------------------------------------------------------------- rho
def _tf_variable(value):
    import tensorflow as tf

    return tf.Variable(value)


@pytest.mark.parametrize(
    "make_rho",
    [
        keras.ops.convert_to_tensor,
        pytest.param(_tf_variable, marks=tensorflow_only),
        keras.Variable,
    ],
    ids=["tensor", "tf_variable", "keras_variable"],
)
def test_rho_as_tensor(make_rho):
    gradients, weights = _problem()
    rho = make_rho(RHO)
    actual = perturbation(_tensors(gradients), _tensors(weights), rho, p=3, adaptive=True)
    _assert_matches(actual, ref.perturbation(gradients, weights, RHO, p=3, adaptive=True))
    in_graph = traced(lambda g, w: perturbation(g, w, rho, p=3, adaptive=True))
    present = [i for i, g in enumerate(gradients) if g is not None]
    gradients = [gradients[i] for i in present]
    weights = [weights[i] for i in present]
    expected = ref.perturbation(gradients, weights, RHO, p=3, adaptive=True)
    _assert_matches(in_graph(_tensors(gradients), _tensors(weights)), expected)


# ------------------------------------------------------------- validation
@pytest.mark.parametrize("p", [1, 1.0, 0.5, -1, 0, "2", None, math.nan, -INF, True, [2]])
def test_invalid_p_is_a_value_error_naming_p(p):
    gradients, weights = _problem()
    with pytest.raises(ValueError, match=r"`p`") as info:
        perturbation(_tensors(gradients), _tensors(weights), RHO, p=p)
    assert repr(p) in str(info.value)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"`p`"):
        keras_sam.SAMModel(model, p=p)


@pytest.mark.parametrize("p", [1.0001, 2, np.float32(3.0), 1e6, INF])
def test_valid_p_is_accepted(p):
    gradients, weights = _problem()
    result = perturbation(_tensors(gradients), _tensors(weights), RHO, p=p)
    assert all(e is None or np.isfinite(numpy(e)).all() for e in result)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("rho", -0.5),
        ("rho", math.nan),
        ("rho", INF),
        ("rho", "0.5"),
        ("rho", None),
        ("eps", 0.0),
        ("eps", -1.0),
        ("eta", -1.0),
        ("eta", math.nan),
        ("adaptive", "yes"),
        ("adaptive", 1),
    ],
)
def test_invalid_argument_is_named_with_its_value(argument, value):
    """The same checks as `SAMModel`'s constructor, for the functional API."""
    gradients, weights = _problem()
    arguments = {"rho": RHO, argument: value}
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`") as info:
        perturbation(_tensors(gradients), _tensors(weights), **arguments)
    assert repr(value) in str(info.value) or str(value) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_length_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="same length"):
        perturbation([keras.ops.ones(2)], [keras.ops.ones(2), keras.ops.ones(1)], RHO)


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("p", [2, 3, INF])
def test_float16_gradients_come_back_float16(p, adaptive):
    gradients, weights = _problem()
    gradients16 = [None if g is None else g.astype("float16") for g in gradients]
    result = perturbation(
        _tensors(gradients16, "float16"), _tensors(weights, "float16"), RHO, p=p,
        adaptive=adaptive,
    )
    assert [None if e is None else keras.backend.standardize_dtype(e.dtype) for e in result] == [
        None if g is None else "float16" for g in gradients
    ]
    weights16 = [w.astype("float16") for w in weights]
    expected = ref.perturbation(gradients16, weights16, RHO, p=p, adaptive=adaptive)
    _assert_matches([None if e is None else numpy(e) for e in result], expected, rtol=2e-3)


# ---------------------------------------------------------- Hölder properties
def _gradient_lists():
    """1-3 float32 arrays with entries in [-1, 1] times 10^[-2, 2], one entry of
    magnitude >= 1/8 before scaling (so g is far from zero)."""
    array = hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
        elements=st.floats(-1, 1, width=32),
    )
    return st.tuples(
        st.lists(array, min_size=1, max_size=3),
        st.floats(-2, 2),
        st.floats(0.125, 1, width=32),
    ).map(_with_large_entry)


def _with_large_entry(drawn):
    arrays, exponent, large = drawn
    arrays = [a.copy() for a in arrays]
    arrays[0].flat[0] = large
    return [(a * np.float32(10.0**exponent)).astype("float32") for a in arrays]


P_VALUES = st.one_of(st.floats(1.1, 16), st.just(2.0), st.just(INF))
# Derandomized: the same examples on every run and machine, no example database.
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _dual_exponent(p: float) -> float:
    return 1.0 if math.isinf(p) else p / (p - 1.0)


@PROPERTY_SETTINGS
@given(gradients=_gradient_lists(), p=P_VALUES, rho=st.floats(1e-3, 10))
def test_ascent_lies_on_the_sphere_of_radius_rho(gradients, p, rho):
    result = perturbation(_tensors(gradients), _tensors(gradients), rho, p=p)
    assert ref.p_norm([numpy(e) for e in result], p) == pytest.approx(rho, rel=1e-4)


@PROPERTY_SETTINGS
@given(gradients=_gradient_lists(), p=P_VALUES, rho=st.floats(1e-3, 10))
def test_ascent_attains_hoelder_equality(gradients, p, rho):
    """gᵀε̂ = ρ‖g‖_q: ε̂ maximises the first-order loss increase over the p-ball."""
    result = perturbation(_tensors(gradients), _tensors(gradients), rho, p=p)
    inner = sum(
        float(np.dot(g.astype(np.float64).ravel(), numpy(e).astype(np.float64).ravel()))
        for g, e in zip(gradients, result)
    )
    expected = rho * ref.p_norm(gradients, _dual_exponent(p))
    assert inner == pytest.approx(expected, rel=1e-4)


def _dropout_mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3),
        ]
    )


@tensorflow_only  # README's loop is written with tf.GradientTape and tf.function
def test_readmes_custom_loop_equals_sam_model_fit_bit_for_bit():
    """README, "SAM in your own training loop": three steps of its loop give the
    weights of `SAMModel(rho=0.05).fit(...)` on the same batches, bit for bit
    (dropout included: both draw the masks of pass 1, then of pass 2)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = _dropout_mlp()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)

    @tf.function
    def sam_step(x, y, rho=0.05):  # README's loop, as printed
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        e_hat = keras_sam.perturbation(grads, model.trainable_variables, rho)
        saved = [tf.identity(v) for v in model.trainable_variables]
        for v, e in zip(model.trainable_variables, e_hat):
            v.assign_add(e)
        with tf.GradientTape() as tape:
            sam_loss = loss_fn(y, model(x, training=True))
        sam_grads = tape.gradient(sam_loss, model.trainable_variables)
        for v, w in zip(model.trainable_variables, saved):
            v.assign(w)
        optimizer.apply(sam_grads, model.trainable_variables)
        return loss

    for start in range(0, 48, 16):
        sam_step(tf.constant(x[start : start + 16]), tf.constant(y[start : start + 16]))

    fitted = {}
    for name, rho in (("sam", 0.05), ("plain", 0.0)):
        base = _dropout_mlp()
        sam_model = keras_sam.SAMModel(base, rho=rho)
        sam_model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss_fn)
        sam_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        fitted[name] = [v.numpy() for v in base.trainable_variables]

    loop = [v.numpy() for v in model.trainable_variables]
    for mine, theirs in zip(loop, fitted["sam"], strict=True):
        assert np.array_equal(mine, theirs)
    # ε̂ mattered: the same loop is not the plain step.
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(loop, fitted["plain"])) > 1e-6
