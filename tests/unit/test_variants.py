"""SAM, ASAM, m-sharpness, GSAM and LookSAM training steps against float64 NumPy.

Every golden test trains Dense(8, tanh) → Dense(3) (softmax cross-entropy on
logits, SGD with momentum, a fixed batch order) with `fit` for several steps and
compares the weights with `variant_reference.train`, an independent float64
implementation written from the papers, to 1e-5 relative, with XLA on and off.
The invariants (alpha=0, k=1, rho=0) and the save/load checks are exact.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from backend_neutral import tensorflow_only, value_and_gradients
from keras import ops

from keras_sam import GSAMModel, LookSAMModel, SAMModel

import variant_reference as ref

BATCH = 10  # split 3 ways this is 4, 3, 3
STEPS = 5  # LookSAM with k=3: full, cheap, cheap, full, cheap
LEARNING_RATE = 0.1
MOMENTUM = 0.9
RTOL = 1e-5
INF = float("inf")

_rng = np.random.default_rng(20240611)
X = _rng.normal(size=(7 * BATCH, 4)).astype("float32")
Y = _rng.integers(0, 3, size=7 * BATCH).astype("int32")
INITIAL_WEIGHTS = [
    (0.7 * _rng.normal(size=(4, 8))).astype("float32"),
    (0.1 * _rng.normal(size=8)).astype("float32"),
    (0.7 * _rng.normal(size=(8, 3))).astype("float32"),
    (0.1 * _rng.normal(size=3)).astype("float32"),
]


def _batches(start: int, stop: int):
    return [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
            for i in range(start, stop)]


def _base() -> keras.Model:
    base = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )
    base.set_weights(INITIAL_WEIGHTS)
    return base


def _compile(model: keras.Model, jit: bool, momentum: float = MOMENTUM) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _fit(model: keras.Model, start: int, stop: int) -> None:
    """One optimizer step per batch start..stop-1, in order."""
    model.fit(X[start * BATCH:stop * BATCH], Y[start * BATCH:stop * BATCH],
              batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def _variables_named(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.asarray(v) for v in model.non_trainable_variables if v.name == name]


def _look_step(model: keras.Model) -> int:
    """LookSAM's step counter, a variable of the model."""
    (counter,) = _variables_named(model, "look_step")
    return int(counter)


def _stored_direction(model: keras.Model) -> list[np.ndarray]:
    """LookSAM's stored direction g_v, one variable per weight."""
    return _variables_named(model, "look_g_v")


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v) for v in model.trainable_variables]


def _assert_weights_close(actual, expected, rtol=RTOL):
    """Each variable within rtol of the reference, relative to its largest entry."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


# Each case: a Keras model factory and the same variant in the reference.
CASES = {
    "sam": (lambda b: SAMModel(b, rho=0.1), ref.Variant("sam", rho=0.1)),
    "sam_p3": (lambda b: SAMModel(b, rho=0.1, p=3), ref.Variant("sam", rho=0.1, p=3.0)),
    "sam_pinf": (lambda b: SAMModel(b, rho=0.02, p=INF), ref.Variant("sam", rho=0.02, p=INF)),
    "asam": (
        lambda b: SAMModel(b, rho=0.5, adaptive=True, eta=0.02),
        ref.Variant("sam", rho=0.5, adaptive=True, eta=0.02),
    ),
    "asam_p3": (
        lambda b: SAMModel(b, rho=0.5, p=3, adaptive=True),
        ref.Variant("sam", rho=0.5, p=3.0, adaptive=True),
    ),
    "splits2": (
        lambda b: SAMModel(b, rho=0.1, num_batch_splits=2),
        ref.Variant("sam", rho=0.1, num_batch_splits=2),
    ),
    "splits3": (  # 10 rows into 4, 3, 3
        lambda b: SAMModel(b, rho=0.1, num_batch_splits=3),
        ref.Variant("sam", rho=0.1, num_batch_splits=3),
    ),
    "gsam": (
        lambda b: GSAMModel(b, rho=0.1, alpha=0.3),
        ref.Variant("gsam", rho=0.1, alpha=0.3),
    ),
    "looksam": (
        lambda b: LookSAMModel(b, rho=0.1, k=3, alpha=0.7),
        ref.Variant("looksam", rho=0.1, k=3, alpha=0.7),
    ),
}


def _reference(variant: ref.Variant, steps: int = STEPS, **kwargs) -> list[np.ndarray]:
    optimizer = ref.SGD(LEARNING_RATE, MOMENTUM)
    return ref.train(variant, INITIAL_WEIGHTS, _batches(0, steps), optimizer, **kwargs)


@functools.cache
def _trained(name: str, jit: bool) -> tuple[np.ndarray, ...]:
    """Weights of CASES[name] (or "plain" Keras) after STEPS steps; cached for reuse."""
    keras.utils.set_random_seed(0)
    base = _base()
    model = base if name == "plain" else CASES[name][0](base)
    _compile(model, jit)
    _fit(model, 0, STEPS)
    return tuple(_weights(model))


# ------------------------------------------------------------------ golden
# XLA for one case of each rule and variant (p=2, p=inf, ASAM p=3, the uneven
# split, GSAM, LookSAM); every p and ASAM are checked under XLA without a model in
# test_perturbation.py. Each XLA compilation costs ~3 s of CPU.
XLA_CASES = ("sam", "sam_pinf", "asam_p3", "splits3", "gsam", "looksam")


@pytest.mark.parametrize(
    ("name", "jit"),
    [(name, False) for name in CASES] + [(name, True) for name in XLA_CASES],
    ids=[f"{name}-graph" for name in CASES] + [f"{name}-xla" for name in XLA_CASES],
)
def test_weights_match_float64_reference(name, jit):
    _assert_weights_close(_trained(name, jit), _reference(CASES[name][1]))


def test_plain_keras_matches_reference_sgd():
    """The harness itself: Keras's SGD with momentum is the reference's."""
    _assert_weights_close(_trained("plain", False), _reference(ref.Variant("sgd")))


def test_golden_cases_are_distinguishable():
    """Every golden case differs from SGD and from its neighbours by far more
    than the tolerance, so a variant that silently ran another rule would fail."""
    results = {name: _reference(variant) for name, (_, variant) in CASES.items()}
    results["sgd"] = _reference(ref.Variant("sgd"))
    # m-sharpness conventions that the spec rules out: the larger piece last,
    # and pieces averaged with equal weights instead of by sample count.
    results["splits3_larger_last"] = _reference(
        CASES["splits3"][1], split=lambda rows, k: ref.split_sizes(rows, k)[::-1]
    )
    results["splits3_equal_weights"] = _reference(CASES["splits3"][1], equal_weights=True)
    names = sorted(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            gap = max(
                np.abs(a - b).max() / np.abs(b).max()
                for a, b in zip(results[first], results[second])
            )
            assert gap > 100 * RTOL, (first, second, gap)


def test_m_sharpness_splits_contiguously_with_larger_pieces_first():
    assert ref.split_sizes(10, 3) == [4, 3, 3]
    assert ref.split_sizes(11, 3) == [4, 4, 3]
    assert ref.split_sizes(9, 3) == [3, 3, 3]


# -------------------------------------------------------------- invariants
def test_gsam_with_alpha_zero_is_sam_bitwise():
    keras.utils.set_random_seed(0)
    model = _compile(GSAMModel(_base(), rho=0.1, alpha=0.0), jit=False)
    _fit(model, 0, STEPS)
    for a, b in zip(_weights(model), _trained("sam", False)):
        np.testing.assert_array_equal(a, b)


def test_looksam_with_k_one_is_sam_bitwise():
    keras.utils.set_random_seed(0)
    model = _compile(LookSAMModel(_base(), rho=0.1, k=1, alpha=0.7), jit=False)
    _fit(model, 0, STEPS)
    for a, b in zip(_weights(model), _trained("sam", False)):
        np.testing.assert_array_equal(a, b)


RHO_ZERO = {
    "sam": lambda b: SAMModel(b, rho=0.0),
    "splits3": lambda b: SAMModel(b, rho=0.0, num_batch_splits=3),
    "asam": lambda b: SAMModel(b, rho=0.0, adaptive=True),
    "sam_pinf": lambda b: SAMModel(b, rho=0.0, p=INF),
    "gsam": lambda b: GSAMModel(b, rho=0.0, alpha=0.3),
    "looksam": lambda b: LookSAMModel(b, rho=0.0, k=3, alpha=0.7),
}


@pytest.mark.parametrize("name", list(RHO_ZERO))
def test_rho_zero_is_the_plain_keras_step(name):
    keras.utils.set_random_seed(0)
    model = _compile(RHO_ZERO[name](_base()), jit=False)
    _fit(model, 0, STEPS)
    _assert_weights_close(_weights(model), _trained("plain", False), rtol=1e-6)


# ---------------------------------------------------- sparse gradients
VOCAB, DIM, TOKENS = 6, 3, 5
_TOKENS = _rng.integers(0, VOCAB, size=(4 * BATCH, TOKENS)).astype("int32")
_TOKEN_LABELS = _rng.integers(0, 3, size=4 * BATCH).astype("int32")
_TABLE = _rng.normal(size=(VOCAB, DIM)).astype("float32")
_HEAD = [_rng.normal(size=(DIM, 3)).astype("float32"), np.zeros(3, "float32")]


def _embedding_base() -> keras.Model:
    """Its table's gradient is a `tf.IndexedSlices`."""
    base = keras.Sequential([
        keras.Input((TOKENS,), dtype="int32"),
        keras.layers.Embedding(VOCAB, DIM),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3),
    ])
    base.set_weights([_TABLE, *_HEAD])
    return base


def _one_hot_base() -> keras.Model:
    """The same function of the same weights on one-hot tokens: dense gradients."""
    base = keras.Sequential([
        keras.Input((TOKENS, VOCAB)),
        keras.layers.Dense(DIM, use_bias=False),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3),
    ])
    base.set_weights([_TABLE, *_HEAD])
    return base


SPARSE_VARIANTS = {
    "sam": lambda b: SAMModel(b, rho=0.2),
    "gsam": lambda b: GSAMModel(b, rho=0.2, alpha=0.3),
    "looksam": lambda b: LookSAMModel(b, rho=0.2, k=2, alpha=0.7),
}


@tensorflow_only  # JAX's gradients of an Embedding are dense: no sparse path
@pytest.mark.parametrize("jit", [False, True], ids=["eager_graph", "xla"])
@pytest.mark.parametrize("name", list(SPARSE_VARIANTS))
def test_embedding_gradients_give_the_steps_of_the_equivalent_dense_model(name, jit):
    """An `Embedding` equals a bias-free `Dense` on one-hot tokens, whose steps
    the float64 references above check: the sparse path (its gradient a
    `tf.IndexedSlices`) must take the same."""
    runs = {}
    for base, tokens in (
        (_embedding_base(), _TOKENS),
        (_one_hot_base(), np.eye(VOCAB, dtype="float32")[_TOKENS]),
    ):
        model = _compile(SPARSE_VARIANTS[name](base), jit=jit)
        model.fit(tokens, _TOKEN_LABELS, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        runs[len(runs)] = _weights(model)
    _assert_weights_close(runs[0], runs[1])
    assert max(np.abs(a - b).max() for a, b in zip(runs[0], [_TABLE, *_HEAD])) > 1e-2


# ------------------------------------------------------ m-sharpness state
def test_m_sharpness_moves_batchnorm_statistics_once_per_step():
    """Each piece's clean pass starts from the same statistics; the step takes
    one momentum update towards the pieces' size-weighted mean statistics
    (as the SAM paper's devices average theirs). Loss and metrics count every
    row once, each piece normalized by its own batch statistics."""
    momentum, epsilon = 0.5, 1e-3
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(BATCH, 3)) * [1.0, 2.0, 0.5] + 5.0).astype("float32")
    y = rng.normal(size=(BATCH, 1)).astype("float32")
    kernel = rng.normal(size=(3, 1)).astype("float32")
    base = keras.Sequential([
        keras.Input((3,)),
        keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon),
        keras.layers.Dense(1),
    ])
    base.layers[1].set_weights([kernel, np.zeros(1, "float32")])
    model = SAMModel(base, rho=0.05, num_batch_splits=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0).history

    sizes = ref.split_sizes(BATCH, 3)
    pieces = np.split(x.astype(np.float64), np.cumsum(sizes)[:-1])
    share = np.array(sizes, np.float64)[:, None] / BATCH
    means = np.stack([p.mean(axis=0) for p in pieces])
    variances = np.stack([p.var(axis=0) for p in pieces])  # biased, as Keras's moments
    bn = base.layers[0]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), (1 - momentum) * (share * means).sum(0), rtol=1e-6
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(),
        momentum + (1 - momentum) * (share * variances).sum(0),
        rtol=1e-6,
    )
    predictions = np.concatenate([
        (p - m) / np.sqrt(v + epsilon) @ kernel.astype(np.float64)
        for p, m, v in zip(pieces, means, variances)
    ])
    errors = predictions - y
    np.testing.assert_allclose(history["loss"][0], (errors**2).mean(), rtol=1e-5)
    np.testing.assert_allclose(history["mae"][0], np.abs(errors).mean(), rtol=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 1


def test_m_sharpness_logs_each_outputs_loss_as_plain_keras():
    """The per-output loss trackers of a multi-output model count every piece."""
    def base():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(6, activation="tanh")(inputs)
        outputs = {
            "cls": keras.layers.Dense(3, name="cls")(hidden),
            "reg": keras.layers.Dense(1, name="reg")(hidden),
        }
        model = keras.Model(inputs, outputs)
        keras.utils.set_random_seed(4)
        model.set_weights([np.random.default_rng(i).normal(size=w.shape).astype("float32")
                           for i, w in enumerate(model.get_weights())])
        return model

    targets = {"cls": Y[:4 * BATCH], "reg": X[:4 * BATCH, :1]}
    histories = []
    for model in (base(), SAMModel(base(), rho=0.0, num_batch_splits=3)):
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  "reg": "mse"},
        )
        history = model.fit(X[:4 * BATCH], targets, batch_size=BATCH, epochs=2,
                            shuffle=False, verbose=0).history
        histories.append(history)
    plain, sam = histories
    for name in ("loss", "cls_loss", "reg_loss"):
        np.testing.assert_allclose(sam[name], plain[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("cls", [SAMModel, GSAMModel, LookSAMModel])
def test_rho_zero_with_a_loss_scaler_and_batchnorm_is_the_plain_step(cls):
    """At rho = 0 the two passes agree only to float32 rounding (graph
    rewrites); LookSAM must not blow that rounding up to α‖g‖."""
    def base():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ])

    weights = []
    for model in (base(), cls(base(), rho=0.0)):
        model.compile(
            optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.1, momentum=0.9)
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(X[:6 * BATCH], Y[:6 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
        weights.append(_weights(model))
    _assert_weights_close(weights[1], weights[0], rtol=1e-6)


# ------------------------------------------------------------------ LookSAM
def test_looksam_keeps_each_weights_direction_when_layers_are_frozen_between_fits():
    """Step 0 (full) stores g_v for every weight; then the first layer is
    frozen and step 1 (a reuse step) must use the g_v of the weights still
    trained, computed here eagerly from the formula."""
    rho, alpha, lr = 0.1, 0.7, 0.1
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    (x0, y0), (x1, y1) = _batches(0, 2)

    reference = _base()
    variables = reference.trainable_variables

    def gradient(x, y, of):
        return value_and_gradients(lambda: loss_fn(y, reference(x, training=True)), of)[1]

    def norm(vectors):
        return ops.sqrt(sum(ops.sum(v * v) for v in vectors))

    g = gradient(x0, y0, variables)
    saved = [ops.copy(v.value) for v in variables]
    for v, gi in zip(variables, g):
        v.assign_add(rho * gi / norm(g))
    g_sam = gradient(x0, y0, variables)
    coefficient = sum(ops.sum(a * b) for a, b in zip(g_sam, g)) / norm(g) ** 2
    g_v = [a - coefficient * b for a, b in zip(g_sam, g)]
    for v, w, gi in zip(variables, saved, g_sam):
        v.assign(w - lr * gi)
    trained = variables[2:]  # the first layer is frozen for step 1
    g1 = gradient(x1, y1, trained)
    scale = alpha * norm(g1) / norm(g_v[2:])
    for v, gi, d in zip(trained, g1, g_v[2:]):
        v.assign_sub(lr * (gi + scale * d))

    base = _base()
    model = LookSAMModel(base, rho=rho, k=2, alpha=alpha)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss_fn)
    model.fit(x0, y0, batch_size=BATCH, shuffle=False, verbose=0)
    base.layers[0].trainable = False
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss_fn)
    model.fit(x1, y1, batch_size=BATCH, shuffle=False, verbose=0)
    _assert_weights_close([np.asarray(v) for v in base.weights],
                          [np.asarray(v) for v in variables])
    assert _look_step(model) == 2


def test_looksam_cheap_step_uses_the_current_weights():
    """A cheap step moves the *current* weights by −lr·(g + α·‖g‖/‖g_v‖·g_v),
    g taken at the current weights; an implementation that resets to the copy
    saved on the last full step (as one public PyTorch LookSAM does) fails."""
    k, alpha, rho = 3, 0.7, 0.1
    model = _compile(LookSAMModel(_base(), rho=rho, k=k, alpha=alpha), jit=False, momentum=0.0)
    state = ref.LookSAMState()
    variant = ref.Variant("looksam", rho=rho, k=k, alpha=alpha)
    for step, (x, y) in enumerate(_batches(0, 6)):
        before = [w.astype(np.float64) for w in _weights(model)]
        reference_state_before = state.step
        if step % k == 0:
            at_last_full_step = before
        direction = ref.descent_direction(variant, before, x, y, state)
        _fit(model, step, step + 1)
        assert _look_step(model) == step + 1
        stored = _stored_direction(model)
        _assert_weights_close(stored, state.reused_direction, rtol=1e-4)
        expected = [w - LEARNING_RATE * d for w, d in zip(before, direction)]
        _assert_weights_close(_weights(model), expected, rtol=2e-6)
        if reference_state_before % k:
            # Cheap step: also the formula with the model's own stored g_v.
            _, g = ref.mlp_loss_and_gradients(before, x, y)
            scale = alpha * ref.norm(g) / ref.norm(stored)
            expected = [w - LEARNING_RATE * (a + scale * b) for w, a, b in zip(before, g, stored)]
            _assert_weights_close(_weights(model), expected, rtol=2e-6)
            # The stale-copy bug would give this instead: far outside the tolerance.
            stale = [w - LEARNING_RATE * d for w, d in zip(at_last_full_step, direction)]
            gap = max(np.abs(a - b).max() for a, b in zip(_weights(model), stale))
            assert gap > 1e-3, gap


def test_looksam_state_survives_save_and_load(tmp_path):
    """4 steps, save, load, 3 steps equals 7 uninterrupted steps bit for bit."""
    keras.utils.set_random_seed(0)
    uninterrupted = _compile(LookSAMModel(_base(), rho=0.1, k=3, alpha=0.7), jit=False)
    _fit(uninterrupted, 0, 7)

    keras.utils.set_random_seed(0)
    model = _compile(LookSAMModel(_base(), rho=0.1, k=3, alpha=0.7), jit=False)
    _fit(model, 0, 4)
    saved_direction = _stored_direction(model)
    assert np.abs(saved_direction[0]).max() > 0  # step 3 was a full step
    path = str(tmp_path / "looksam.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, LookSAMModel)
    assert _look_step(loaded) == 4
    for a, b in zip(_stored_direction(loaded), saved_direction):
        np.testing.assert_array_equal(np.asarray(a), b)
    _fit(loaded, 4, 7)
    for a, b in zip(_weights(loaded), _weights(uninterrupted)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ config
CONFIGURED = [
    (
        SAMModel,
        dict(rho=0.07, p=3.0, adaptive=True, eta=0.02, num_batch_splits=2,
             sync_perturbation=True, skip_nonfinite=True, eps=1e-10),
    ),
    (SAMModel, dict(rho=0.03, p=INF)),
    (
        GSAMModel,
        dict(rho=0.06, alpha=0.3, p=1.5, adaptive=True, eta=0.05, num_batch_splits=3,
             sync_perturbation=True, skip_nonfinite=True, eps=1e-9),
    ),
    (
        LookSAMModel,
        dict(rho=0.08, k=3, alpha=0.6, p=INF, adaptive=True, eta=0.03,
             sync_perturbation=True, skip_nonfinite=True, eps=1e-8),
    ),
]


def _assert_arguments(model, cls, arguments):
    """Every argument reads back; rho to float32 precision (it lives in a
    variable; `test_rho_reads_back_as_given` checks it exactly)."""
    assert type(model) is cls
    for name, value in arguments.items():
        expected = pytest.approx(value, rel=1e-7) if name == "rho" else value
        assert getattr(model, name) == expected, name


@pytest.mark.parametrize(
    ("cls", "arguments"), CONFIGURED, ids=["sam", "sam_pinf", "gsam", "looksam"]
)
def test_config_round_trip_keeps_every_argument(cls, arguments, tmp_path):
    model = cls(_base(), **arguments, name="configured")
    _assert_arguments(model, cls, arguments)
    config = model.get_config()
    clone = cls.from_config(config)
    _assert_arguments(clone, cls, arguments)
    assert clone.get_config()["base_model"] == config["base_model"]
    assert {k: v for k, v in clone.get_config().items() if k != "base_model"} == {
        k: v for k, v in config.items() if k != "base_model"
    }
    assert config["name"] == "configured"
    model(X[:2])  # builds the wrapper (LookSAM's g_v variables)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    _assert_arguments(loaded, cls, arguments)
    assert loaded.name == "configured"
    for a, b in zip(_weights(loaded), INITIAL_WEIGHTS):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", [SAMModel, GSAMModel, LookSAMModel])
def test_rho_schedule_survives_save_and_load(cls, tmp_path):
    schedule = keras.optimizers.schedules.PolynomialDecay(0.01, 100, end_learning_rate=0.1)
    model = cls(_base(), rho=schedule)
    model(X[:2])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.rho) is type(schedule)
    assert loaded.rho.get_config() == schedule.get_config()


def test_config_defaults_match_the_papers():
    sam, gsam, look = SAMModel(_base()), GSAMModel(_base()), LookSAMModel(_base())
    _assert_arguments(sam, SAMModel, dict(rho=0.05, p=2.0, adaptive=False, eta=0.01,
                                          num_batch_splits=1))
    _assert_arguments(gsam, GSAMModel, dict(rho=0.05, alpha=0.1))
    _assert_arguments(look, LookSAMModel, dict(rho=0.05, k=5, alpha=0.7))


@pytest.mark.parametrize("cls", [SAMModel, GSAMModel, LookSAMModel])
def test_rho_reads_back_as_given(cls):
    """`model.rho` and `get_config()["rho"]` are the float passed in, not its
    float32 rounding (0.05 must not come back as 0.05000000074505806)."""
    model = cls(_base(), rho=0.05)
    assert model.rho == 0.05
    assert model.get_config()["rho"] == 0.05
    model.rho = 0.1
    assert model.rho == 0.1
