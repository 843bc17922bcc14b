"""Friendly SAM (`FriendlySAMModel`) against a float64 NumPy reference.

F-SAM (Li et al., CVPR 2024; the order of the official code, nblt/F-SAM)
climbs along d instead of the batch gradient g: on the first step d = g and
m = g; on every later step d = g − σ·m with the m of the previous step, then
m ← λ·m + (1 − λ)·g. ε̂ = ρ·d/(‖d‖₂ + eps) (`p`, `adaptive` and `perturb`
act on d as SAM's on g); the descent direction is the gradient at w + ε̂.

Dense(8, tanh) → Dense(3) with softmax cross-entropy trains with `fit` (SGD
with momentum, a fixed batch order) and is compared with
`variant_reference.train(Variant("fsam", ...))`, written from the rule above,
to 1e-5 relative: the weights and the model's m after 1 and 5 steps, XLA on
and off. Equalities with SAM and with an uninterrupted run (save/load,
checkpoints, backups) are bit for bit. The MirroredStrategy runs (2 replicas,
`distributed_scripts/friendly_mirrored.py` in a subprocess) compare each
replica's m and the weights with a per-replica NumPy reference.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from backend_neutral import tensorflow_only
from distributed_scripts.launcher import ScriptRun

import keras_sam
from keras_sam import FriendlySAMModel, SAMModel

import variant_reference as ref

BATCH = 10
STEPS = 5
LEARNING_RATE = 0.1
MOMENTUM = 0.9
RHO = 0.1
RTOL = 1e-5

_rng = np.random.default_rng(20241207)
X = _rng.normal(size=(8 * BATCH, 4)).astype("float32")
Y = _rng.integers(0, 3, size=8 * BATCH).astype("int32")
INITIAL_WEIGHTS = [
    (0.7 * _rng.normal(size=(4, 8))).astype("float32"),
    (0.1 * _rng.normal(size=8)).astype("float32"),
    (0.7 * _rng.normal(size=(8, 3))).astype("float32"),
    (0.1 * _rng.normal(size=3)).astype("float32"),
]


def _batches(start: int, stop: int):
    return [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
            for i in range(start, stop)]


def _base(dropout: bool = False) -> keras.Model:
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(0.25, seed=3))
    base = keras.Sequential([*layers, keras.layers.Dense(3)])
    base.set_weights(INITIAL_WEIGHTS)
    return base


def _compile(model: keras.Model, jit: bool = False) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _fit(model: keras.Model, start: int, stop: int, callbacks=(), epochs: int = 1) -> None:
    """One optimizer step per batch start..stop-1, in order (each epoch)."""
    model.fit(X[start * BATCH:stop * BATCH], Y[start * BATCH:stop * BATCH],
              batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=list(callbacks))


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.trainable_variables]


def _named(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.array(v) for v in model.non_trainable_variables if v.name == name]


def _average(model: keras.Model) -> list[np.ndarray]:
    """The model's m, one variable per weight."""
    return _named(model, "friendly_m")


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    """Every variable of the model and its optimizer."""
    return [(v.path, np.array(v)) for v in [*model.variables, *model.optimizer.variables]]


def _assert_close(actual, expected, rtol=RTOL):
    """Each tensor within rtol of the reference, relative to its largest entry."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


def _assert_bitwise(actual, expected, what: str):
    assert len(actual) == len(expected), what
    if actual and isinstance(actual[0], tuple):
        different = [n for (n, a), (_, e) in zip(actual, expected) if not np.array_equal(a, e)]
    else:
        different = [i for i, (a, e) in enumerate(zip(actual, expected))
                     if not np.array_equal(a, e)]
    assert not different, f"{what}: not bit-identical: {different}"


def _gap(a, b) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))


def _reference(variant: ref.Variant, steps: int, **kwargs):
    """(weights, m) of the float64 reference after `steps` steps."""
    state = ref.VariantState()
    weights = ref.train(variant, INITIAL_WEIGHTS, _batches(0, steps),
                        ref.SGD(LEARNING_RATE, MOMENTUM), state=state, **kwargs)
    return weights, state.average


# ------------------------------------------------------------------ golden
CASES = {
    "defaults": (dict(), ref.Variant("fsam", rho=RHO)),
    "sigma_lmbda": (dict(sigma=0.7, lmbda=0.5), ref.Variant("fsam", rho=RHO, sigma=0.7, lmbda=0.5)),
    "p3": (dict(p=3, lmbda=0.5), ref.Variant("fsam", rho=RHO, p=3.0, lmbda=0.5)),
    "adaptive": (
        dict(rho=0.5, adaptive=True, eta=0.02, lmbda=0.5),
        ref.Variant("fsam", rho=0.5, adaptive=True, eta=0.02, lmbda=0.5),
    ),
}


class _AfterEachStep(keras.callbacks.Callback):
    """Records the weights and m after every step."""

    def __init__(self):
        super().__init__()
        self.weights, self.averages = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(_weights(self.model))
        self.averages.append(_average(self.model))


@pytest.mark.parametrize(
    ("name", "jit"),
    [(name, False) for name in CASES] + [("sigma_lmbda", True)],
    ids=[f"{name}-graph" for name in CASES] + ["sigma_lmbda-xla"],
)
def test_weights_and_m_match_float64_reference_after_1_and_5_steps(name, jit):
    arguments, variant = CASES[name]
    model = _compile(FriendlySAMModel(_base(), **{"rho": RHO, **arguments}), jit)
    recorded = _AfterEachStep()
    _fit(model, 0, STEPS, [recorded])
    for steps in (1, STEPS):
        expected_weights, expected_average = _reference(variant, steps)
        _assert_close(recorded.weights[steps - 1], expected_weights)
        _assert_close(recorded.averages[steps - 1], expected_average)
    (counter,) = _named(model, "friendly_step")
    assert int(counter) == STEPS


def test_the_reference_tells_friendly_sam_from_its_neighbours():
    """F-SAM differs from SAM, from plain SGD and from the orders the official
    code does not use (m updated before d is formed; m starting at zero) by
    far more than the tolerance: a model that ran any of them would fail.

    (With σ = 1 the update-first order gives d = λ·(g − m), the official d
    rescaled, and so the same ε̂: the case checked here has σ = 0.7.)"""
    variant = CASES["sigma_lmbda"][1]
    fsam, _ = _reference(variant, STEPS)

    def alternative(update_first: bool, zero_start: bool):
        params = [np.asarray(w, np.float64) for w in INITIAL_WEIGHTS]
        optimizer = ref.SGD(LEARNING_RATE, MOMENTUM)
        average = None
        for step, (x, y) in enumerate(_batches(0, STEPS)):
            _, g = ref.mlp_loss_and_gradients(params, x, y)
            if step == 0 and not zero_start:
                direction, average = g, g
            else:
                if average is None:
                    average = [np.zeros_like(a) for a in g]
                moved = [variant.lmbda * m + (1 - variant.lmbda) * a for m, a in zip(average, g)]
                used = moved if update_first else average
                direction = [a - variant.sigma * m for a, m in zip(g, used)]
                average = moved
            e_hat = ref.perturbation(direction, params, variant.rho)
            _, g_sam = ref.mlp_loss_and_gradients([w + e for w, e in zip(params, e_hat)], x, y)
            params = optimizer.apply(params, g_sam)
        return params

    # The alternative with the official order reproduces the reference.
    _assert_close(alternative(update_first=False, zero_start=False), fsam, rtol=1e-12)
    others = {
        "sam": _reference(ref.Variant("sam", rho=RHO), STEPS)[0],
        "sgd": _reference(ref.Variant("sgd"), STEPS)[0],
        "m_updated_first": alternative(update_first=True, zero_start=False),
        "m_from_zero": alternative(update_first=False, zero_start=True),
    }
    for name, weights in others.items():
        assert _gap(weights, fsam) > 100 * RTOL, name


# -------------------------------------------------------------- invariants
def test_sigma_zero_is_sam_bit_for_bit():
    runs = []
    for model in (FriendlySAMModel(_base(dropout=True), rho=RHO, sigma=0.0),
                  SAMModel(_base(dropout=True), rho=RHO)):
        keras.utils.set_random_seed(0)
        _fit(_compile(model), 0, STEPS)
        runs.append(_weights(model))
    _assert_bitwise(runs[0], runs[1], "sigma=0 against SAMModel")
    assert _gap(runs[0], INITIAL_WEIGHTS) > 1e-2


def test_m_moves_on_steps_at_rho_zero_too():
    """Two steps at ρ = 0 (plain steps), then ρ = 0.1: m has moved on the
    plain steps, so the first SAM step climbs along g − σ·m."""
    model = _compile(FriendlySAMModel(_base(), rho=0.0, sigma=0.7, lmbda=0.5))
    _fit(model, 0, 2)
    model.rho = RHO
    _fit(model, 2, STEPS)
    variant = CASES["sigma_lmbda"][1]
    expected, average = _reference(variant, STEPS, rho_at=lambda step: 0.0 if step < 2 else RHO)
    _assert_close(_weights(model), expected)
    _assert_close(_average(model), average)
    # A model whose m stood still on the plain steps starts F-SAM afresh at step 2.
    restarted = ref.train(variant, ref.train(ref.Variant("sgd"), INITIAL_WEIGHTS, _batches(0, 2),
                                             ref.SGD(LEARNING_RATE, MOMENTUM)),
                          _batches(2, STEPS), ref.SGD(LEARNING_RATE, MOMENTUM))
    assert _gap(restarted, expected) > 100 * RTOL


def test_a_skipped_step_leaves_m_and_its_counter_alone():
    """`skip_nonfinite`: a batch with a NaN is not a step, m does not move; the
    run equals the reference on the finite batches."""
    x = np.concatenate([X[:2 * BATCH], np.full((BATCH, 4), np.nan, "float32"),
                        X[2 * BATCH:4 * BATCH]])
    y = np.concatenate([Y[:2 * BATCH], Y[:BATCH], Y[2 * BATCH:4 * BATCH]])
    model = _compile(FriendlySAMModel(_base(), rho=RHO, sigma=0.7, lmbda=0.5,
                                      skip_nonfinite=True))
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0).history
    assert history["skipped_steps"][-1] == 1
    expected, average = _reference(CASES["sigma_lmbda"][1], 4)
    _assert_close(_weights(model), expected)
    _assert_close(_average(model), average)
    (counter,) = _named(model, "friendly_step")
    assert int(counter) == 4


# ------------------------------------------------------------------ saving
def _friendly(dropout: bool = True) -> keras.Model:
    keras.utils.set_random_seed(0)
    return _compile(FriendlySAMModel(_base(dropout), rho=RHO, sigma=0.7, lmbda=0.5))


@pytest.fixture(scope="module")
def uninterrupted():
    """The state after 3 and after STEPS uninterrupted steps (with dropout)."""
    model = _friendly()
    _fit(model, 0, 3)
    after_3 = _state(model)
    _fit(model, 3, STEPS)
    return after_3, _state(model)


@pytest.mark.parametrize(
    "file_format", ["keras", "weights_h5", pytest.param("tf_checkpoint", marks=tensorflow_only)]
)
def test_saved_after_3_steps_restores_m_and_goes_on_bit_for_bit(
    file_format, uninterrupted, tmp_path
):
    after_3, after_5 = uninterrupted
    model = _friendly()
    _fit(model, 0, 3)
    _assert_bitwise(_state(model), after_3, "the same run")
    assert max(float(np.abs(m).max()) for m in _average(model)) > 0
    if file_format == "keras":
        model.save(tmp_path / "fsam.keras")
        restored = keras.models.load_model(tmp_path / "fsam.keras")
        assert type(restored) is FriendlySAMModel
        assert (restored.sigma, restored.lmbda) == (0.7, 0.5)
    elif file_format == "weights_h5":
        model.save_weights(tmp_path / "fsam.weights.h5")
        restored = _friendly()
        restored.load_weights(tmp_path / "fsam.weights.h5")
    else:
        import tensorflow as tf

        path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(tmp_path / "fsam_ckpt"))
        restored = _friendly()
        restored.build((None, 4))
        restored.optimizer.build(restored.trainable_variables)
        assert max(float(np.abs(m).max()) for m in _average(restored)) == 0
        status = tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).read(path)
        status.assert_consumed()
    _assert_bitwise(_average(restored), _average(model), "m")
    _assert_bitwise(_state(restored), after_3, "restored state")
    _fit(restored, 3, STEPS)
    _assert_bitwise(_state(restored), after_5, "state after 5 steps")


def test_backup_and_restore_resumes_m_bit_for_bit(tmp_path):
    """Two epochs of 3 steps; crashed at the start of the second and resumed
    in a fresh model by `BackupAndRestore`: the uninterrupted run's state."""
    model = _friendly()
    _fit(model, 0, 3, epochs=2)
    expected = _state(model)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_friendly(), 0, 3, [keras.callbacks.BackupAndRestore(backup), Crash()], epochs=2)
    resumed = _friendly()
    _fit(resumed, 0, 3, [keras.callbacks.BackupAndRestore(backup)], epochs=2)
    assert int(resumed.optimizer.iterations.numpy()) == 6
    _assert_bitwise(_state(resumed), expected, "resumed state")


def test_config_holds_sigma_and_lmbda():
    model = FriendlySAMModel(_base(), rho=0.03, sigma=2.5, lmbda=0.25, p=3.0, adaptive=True,
                             eta=0.05, sync_perturbation=True, skip_nonfinite=True, eps=1e-9,
                             perturb="normalization", name="friendly")
    config = model.get_config()
    assert (config["sigma"], config["lmbda"]) == (2.5, 0.25)
    clone = FriendlySAMModel.from_config(config)
    for name in ("sigma", "lmbda", "p", "adaptive", "eta", "sync_perturbation",
                 "skip_nonfinite", "eps", "perturb", "num_batch_splits"):
        assert getattr(clone, name) == getattr(model, name), name
    assert clone.rho == pytest.approx(0.03, rel=1e-7)
    assert clone.get_config() == {**config, "base_model": clone.get_config()["base_model"]}
    defaults = FriendlySAMModel(_base())
    assert (defaults.rho, defaults.sigma, defaults.lmbda, defaults.eps) == (0.05, 1.0, 0.9, 1e-12)


# --------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("argument", "value"),
    [("sigma", v) for v in (-0.1, float("nan"), float("inf"), 1e5, "1", True, None)]
    + [("lmbda", v) for v in (1.0, 1.5, -0.1, float("nan"), float("inf"), "0.9", False, None)],
)
def test_invalid_sigma_or_lmbda_is_refused_naming_it(argument, value):
    with pytest.raises(keras_sam.InvalidArgumentError, match=f"`{argument}`"):
        FriendlySAMModel(_base(), **{argument: value})


@pytest.mark.parametrize(("sigma", "lmbda"), [(0.0, 0.0), (1e4, 0.999999), (3, 0)])
def test_boundary_sigma_and_lmbda_are_accepted(sigma, lmbda):
    model = FriendlySAMModel(_base(), sigma=sigma, lmbda=lmbda)
    assert (model.sigma, model.lmbda) == (float(sigma), float(lmbda))


def test_m_sharpness_is_refused():
    with pytest.raises(keras_sam.InvalidArgumentError, match="num_batch_splits"):
        FriendlySAMModel(_base(), num_batch_splits=2)
    assert FriendlySAMModel(_base(), num_batch_splits=1).num_batch_splits == 1


# ------------------------------------------------------- MirroredStrategy
# Must match distributed_scripts/friendly_mirrored.py.
MIRRORED_BATCH, MIRRORED_EPOCHS, MIRRORED_RHO = 16, 2, 0.1
MIRRORED_SIGMA, MIRRORED_LMBDA, MIRRORED_LR, MIRRORED_MOMENTUM = 0.8, 0.5, 0.1, 0.5


@pytest.fixture(scope="module", autouse=True)
def _mirrored_run(request):
    """Starts the mirrored subprocess when the module starts (if a slow test
    of it is selected), so that it runs beside the other tests."""
    wanted = any(item.path == request.path and item.get_closest_marker("slow")
                 for item in request.session.items)
    run = ScriptRun("friendly_mirrored.py", "2") if wanted else None
    try:
        yield run
    finally:
        if run is not None:
            run.stop()


@pytest.fixture(scope="module")
def mirrored(_mirrored_run):
    """The JSON of `friendly_mirrored.py 2`."""
    return _mirrored_run.result(timeout=900)


def _run(results: dict, name: str) -> dict:
    run = results[name]
    if "raised" in run:
        pytest.fail(f"the {name!r} run raised:\n{run['raised']}")
    return run


def _replica(run: dict, key: str, replica: int) -> list[np.ndarray]:
    return [np.asarray(copies[replica], np.float32) for copies in run[key]]


def _mirrored_reference(results: dict, run: dict, replicas: int):
    """(weights, each replica's state) of F-SAM with one m per replica."""
    x, y = np.asarray(results["x"], np.float64), np.asarray(results["y"])
    batches = [(x[i:i + MIRRORED_BATCH], y[i:i + MIRRORED_BATCH])
               for i in range(0, len(x), MIRRORED_BATCH)] * MIRRORED_EPOCHS
    states = [ref.VariantState() for _ in range(replicas)]
    variant = ref.Variant("fsam", rho=MIRRORED_RHO, sigma=MIRRORED_SIGMA, lmbda=MIRRORED_LMBDA)
    weights = ref.train(variant, run["initial"], batches,
                        ref.SGD(MIRRORED_LR, MIRRORED_MOMENTUM), state=states, replicas=replicas)
    return weights, states


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_mirrored_replicas_keep_the_m_of_their_own_gradients(mirrored):
    run = _run(mirrored, "per_replica")
    assert run["identical_after_each_step"] == [True] * 4
    expected, states = _mirrored_reference(mirrored, run, replicas=2)
    for replica in range(2):
        _assert_close(_replica(run, "weights", replica), expected)
        # A replica's gradient is its share of the global loss: 1/2 of its
        # shard's mean-loss gradient, and so is its m.
        _assert_close(_replica(run, "average", replica),
                      [m / 2 for m in states[replica].average], rtol=1e-4)
        assert run["counter"][replica] == 4
    # The replicas' m differ: each is its own.
    assert _gap(states[0].average, states[1].average) > 1e-2
    # One m of the global batch is another algorithm, which this reference tells apart.
    global_weights, _ = _mirrored_reference(mirrored, run, replicas=1)
    assert _gap(global_weights, expected) > 100 * RTOL


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_mirrored_sync_perturbation_equals_one_device_on_the_global_batch(mirrored):
    synced, single = _run(mirrored, "sync"), _run(mirrored, "global")
    assert synced["identical_after_each_step"] == [True] * 4
    expected, (state,) = _mirrored_reference(mirrored, single, replicas=1)
    _assert_close(_replica(single, "weights", 0), expected)
    _assert_close(_replica(single, "average", 0), state.average, rtol=1e-4)
    for replica in range(2):
        _assert_close(_replica(synced, "weights", replica), _replica(single, "weights", 0))
        # Every replica keeps the global batch's m.
        _assert_close(_replica(synced, "average", replica), _replica(single, "average", 0),
                      rtol=1e-4)
