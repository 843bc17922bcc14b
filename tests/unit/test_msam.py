"""MSAMModel (Momentum-SAM) against a float64 NumPy reference, and its state.

Dense(8, tanh) → Dense(3), softmax cross-entropy on logits, a fixed batch
order. The golden tests compare the weights after every one of 5 steps, and
MSAM's buffer v, with `cheap_sam_reference.msam_train` (written from the rule:
the one gradient g_t at w_t − ρ·v_t/(‖v_t‖ + eps), v_{t+1} = μ·v_t + g_t, the
optimizer applies g_t at w_t), for SGD with momentum and for Adam, with XLA on
and off, to 1e-5 relative. The invariants (the first step, rho = 0) and the
save/load checks are bit for bit. The pass count is taken at run time: a layer
calls `tf.py_function`, which increments a Python counter when the pass runs
(on JAX it advances a seed generator of its own: `backend_neutral.PassCounter`).
"""

from __future__ import annotations

import collections
import functools

import cheap_sam_reference as ref
import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, tensorflow_only
from backend_neutral import PassCounter as RunTimePassCounter
from distributed_scripts.launcher import ScriptRun

import keras_sam
from keras_sam import MSAMModel

BATCH = 10
STEPS = 5
RHO = 0.3
MSAM_MOMENTUM = 0.9
RTOL = 1e-5
OPTIMIZERS = {
    "sgd": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), lambda: ref.SGD(0.1, 0.9)),
    "adam": (lambda: keras.optimizers.Adam(0.02), lambda: ref.Adam(0.02)),
}

_rng = np.random.default_rng(20250117)
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


def _base() -> keras.Model:
    base = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )
    base.set_weights(INITIAL_WEIGHTS)
    return base


def _compile(model, optimizer="sgd", jit=False, metrics=None):
    model.compile(
        optimizer=OPTIMIZERS[optimizer][0](),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics,
        jit_compile=jit,
    )
    return model


def _fit(model, start, stop, callbacks=(), epochs=1, initial_epoch=0):
    """One optimizer step per batch start..stop-1, in order."""
    return model.fit(X[start * BATCH:stop * BATCH], Y[start * BATCH:stop * BATCH],
                     batch_size=BATCH, epochs=epochs, initial_epoch=initial_epoch,
                     shuffle=False, verbose=0, callbacks=list(callbacks))


def _weights(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.trainable_variables]


def _velocity(model) -> list[np.ndarray]:
    """MSAM's buffer v, one variable per trainable weight, in their order."""
    return [np.array(v.numpy()) for v in model.non_trainable_variables if v.name == "msam_v"]


def _state(model) -> list[tuple[str, np.ndarray]]:
    return [(v.name, np.array(v.numpy())) for v in [*model.variables, *model.optimizer.variables]]


def _assert_close(actual, expected, rtol=RTOL, what=""):
    """Each array within rtol of the reference, relative to its largest entry."""
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max(),
                                   err_msg=f"{what} [{i}]")


def _assert_bitwise(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        label = i
        if isinstance(a, tuple):  # (name, value); names differ with Keras's auto-naming
            label, a, e = e[0], a[1], e[1]
        assert a.dtype == e.dtype and np.array_equal(a, e), f"{what} [{label}] not bit-identical"


def _gap(a, b) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))


class _Trajectory(keras.callbacks.Callback):
    """The trainable weights and v after every step."""

    def __init__(self):
        super().__init__()
        self.weights, self.velocities = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(_weights(self.model))
        self.velocities.append(_velocity(self.model))


@functools.cache
def _trained(kind: str, optimizer: str, jit: bool):
    """(weights after each step, v after each step) of `kind` ("msam" or
    "plain", Keras's own fit) over STEPS steps; cached for reuse."""
    keras.utils.set_random_seed(0)
    model = _base() if kind == "plain" else MSAMModel(_base(), rho=RHO, momentum=MSAM_MOMENTUM)
    _compile(model, optimizer, jit)
    trajectory = _Trajectory()
    _fit(model, 0, STEPS, [trajectory])
    return trajectory.weights, trajectory.velocities


def _reference(optimizer: str, steps=STEPS, rho=RHO, momentum=MSAM_MOMENTUM, **kwargs):
    return ref.msam_train(INITIAL_WEIGHTS, _batches(0, steps), OPTIMIZERS[optimizer][1](),
                          rho=rho, momentum=momentum, **kwargs)


# ------------------------------------------------------------------ golden
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_weights_and_velocity_match_float64_reference(optimizer, jit):
    weights, velocities = _trained("msam", optimizer, jit)
    expected = _reference(optimizer)
    assert len(weights) == STEPS
    for step in range(STEPS):  # after 1 step, and after each of the next 4
        _assert_close(weights[step], expected.weights[step], what=f"weights after {step + 1}")
        _assert_close(velocities[step], expected.velocities[step][0],
                      what=f"v after {step + 1}")
    # v_0 = 0: the first step is Keras's plain step, bit for bit.
    plain, _ = _trained("plain", optimizer, jit)
    _assert_bitwise(weights[0], plain[0], "first step")
    assert _gap(weights[-1], plain[-1]) > 100 * RTOL  # and later steps are not


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_golden_cases_are_distinguishable(optimizer):
    """The 5-step reference differs from plain training and from plausible
    wrong rules by far more than the tolerance, so a model running one of them
    would fail the golden test."""
    results = {"spec": _reference(optimizer).weights[-1],
               "plain": _reference(optimizer, rho=0.0).weights[-1]}
    for convention in ("ascent", "unnormalized", "stay", "clean_velocity"):
        results[convention] = _reference(optimizer, convention=convention).weights[-1]
    results["momentum_0"] = _reference(optimizer, momentum=0.0).weights[-1]
    names = sorted(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            gap = _gap(results[first], results[second])
            assert gap > 100 * RTOL, (first, second, gap)


def test_momentum_zero_offsets_along_the_last_gradient():
    """momentum=0 is accepted: v is the last step's gradient."""
    model = _compile(MSAMModel(_base(), rho=RHO, momentum=0.0))
    trajectory = _Trajectory()
    _fit(model, 0, 3, [trajectory])
    expected = _reference("sgd", steps=3, momentum=0.0)
    _assert_close(trajectory.weights[-1], expected.weights[-1])
    _assert_close(trajectory.velocities[-1], expected.velocities[-1][0])


# -------------------------------------------------------------- invariants
def _rho_zero_trajectory(jit):
    keras.utils.set_random_seed(0)
    model = _compile(MSAMModel(_base(), rho=0.0, momentum=MSAM_MOMENTUM), "sgd", jit)
    trajectory = _Trajectory()
    _fit(model, 0, STEPS, [trajectory])
    return trajectory


def test_rho_zero_is_plain_keras_fit_bit_for_bit():
    trajectory = _rho_zero_trajectory(jit=False)
    plain, _ = _trained("plain", "sgd", False)
    for step in range(STEPS):
        _assert_bitwise(trajectory.weights[step], plain[step], f"step {step + 1}")
    # v still follows the gradients (here those of plain training).
    _assert_close(trajectory.velocities[-1], _reference("sgd", rho=0.0).velocities[-1][0])


def test_rho_zero_under_xla_is_sams_plain_step_bit_for_bit():
    """Under XLA a SAM model compiles each pass as its own program and runs the
    optimizer's update outside it, where Keras compiles its whole step: from
    the third step on `SAMModel(rho=0)` differs from Keras's fit by an ulp
    (measured, Keras 3.15 / TF 2.21 on CPU). MSAM at rho = 0 must be that
    same plain step bit for bit, and Keras's to float32 rounding."""
    trajectory = _rho_zero_trajectory(jit=True)
    keras.utils.set_random_seed(0)
    sam = _compile(keras_sam.SAMModel(_base(), rho=0.0), "sgd", True)
    sam_steps = _Trajectory()
    _fit(sam, 0, STEPS, [sam_steps])
    plain, _ = _trained("plain", "sgd", True)
    for step in range(STEPS):
        _assert_bitwise(trajectory.weights[step], sam_steps.weights[step], f"step {step + 1}")
        _assert_close(trajectory.weights[step], plain[step], rtol=1e-6)


class PassCounter(RunTimePassCounter):
    """The identity. On TensorFlow each run of a forward pass through it
    appends, to `PassCounter.seen[name]`, the values the variables
    `watched()` hold then; on JAX, whose step assigns no variable (it returns
    their new values), it counts the passes (`RunTimePassCounter`)."""

    seen: dict = collections.defaultdict(list)
    watched = staticmethod(lambda: [])  # a function: Keras does not track it

    def call(self, inputs):
        if not ON_TENSORFLOW:
            return super().call(inputs)
        import tensorflow as tf

        def record():
            PassCounter.seen[self.name].append([np.array(v.numpy()) for v in self.watched()])
            return np.int32(0)

        token = tf.py_function(record, [], tf.int32)
        with tf.control_dependencies([token]):
            return tf.identity(inputs)


def _numpy_forward(params, moving, x, y, bn_momentum, bn_epsilon):
    """Dense → BatchNorm (training) → tanh → Dense: (loss, mean max logit,
    new moving mean, new moving variance), in float64."""
    w1, b1, gamma, beta, w2, b2 = (np.asarray(p, np.float64) for p in params)
    h = np.asarray(x, np.float64) @ w1 + b1
    mean, variance = h.mean(axis=0), h.var(axis=0)
    logits = np.tanh((h - mean) / np.sqrt(variance + bn_epsilon) * gamma + beta) @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].mean()
    moving_mean, moving_variance = moving
    return (
        loss,
        logits.max(axis=1).mean(),
        bn_momentum * moving_mean + (1 - bn_momentum) * mean,
        bn_momentum * moving_variance + (1 - bn_momentum) * variance,
    )


def test_one_pass_per_step_at_the_perturbed_point_with_batchnorm_metrics_and_loss():
    """Each step runs one forward/backward pass (counted when it runs), while
    the variables still hold w_t (the weights never hold the perturbed
    values); the loss, a metric and BatchNorm's moving statistics are those of
    that one pass, at w_t − ρ·v_t/(‖v_t‖ + eps)."""
    bn_momentum, bn_epsilon = 0.5, 1e-3
    keras.utils.set_random_seed(3)
    dense = keras.layers.Dense(6)
    norm = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon)
    head = keras.layers.Dense(3)
    inputs = keras.Input((4,))
    hidden = norm(dense(inputs))
    counter = PassCounter(name="msam_counter")
    outputs = head(keras.layers.Activation("tanh")(counter(hidden)))
    base = keras.Model(inputs, outputs)
    variables = list(base.trainable_variables)
    counter.watched = lambda: variables
    PassCounter.seen.clear()
    model = MSAMModel(base, rho=RHO, momentum=MSAM_MOMENTUM)
    max_logit = keras.metrics.MeanMetricWrapper(
        lambda y_true, y_pred: keras.ops.max(y_pred, axis=-1), name="max_logit"
    )
    _compile(model, "sgd", jit=False, metrics=[max_logit])
    for step in range(4):
        before = _weights(model)
        velocity = _velocity(model)
        moving = [np.array(norm.moving_mean.numpy()), np.array(norm.moving_variance.numpy())]
        passes_before = counter.counted(model)
        logs = _fit(model, step, step + 1).history
        assert set(logs) == {"loss", "max_logit"}  # no sharpness: one pass
        if ON_TENSORFLOW:
            seen = PassCounter.seen["msam_counter"]
            assert len(seen) == step + 1, "one forward pass per step"
            _assert_bitwise(seen[-1], before, f"variables during the pass of step {step + 1}")
        else:
            assert counter.counted(model) - passes_before == 1, "one forward pass per step"

        size = ref.norm(velocity)
        assert (size == 0.0) == (step == 0)
        offset = ref.msam_offset([v.astype(np.float64) for v in velocity], RHO)
        point = [w + o for w, o in zip(before, offset)]
        x, y = _batches(step, step + 1)[0]
        loss, metric, moving_mean, moving_variance = _numpy_forward(
            point, moving, x, y, bn_momentum, bn_epsilon)
        np.testing.assert_allclose(logs["loss"][0], loss, rtol=RTOL)
        np.testing.assert_allclose(logs["max_logit"][0], metric, rtol=RTOL)
        _assert_close([norm.moving_mean.numpy(), norm.moving_variance.numpy()],
                      [moving_mean, moving_variance])
        if step:  # the unperturbed point gives other numbers: the check can tell
            at_w = _numpy_forward(before, moving, x, y, bn_momentum, bn_epsilon)
            assert abs(at_w[0] - loss) > 1e-3 * abs(loss)
            assert np.abs(at_w[2] - moving_mean).max() > 1e-3 * np.abs(moving_mean).max()
    assert int(model.optimizer.iterations.numpy()) == 4


class _Subclassed(keras.Model):
    """Dense(8, tanh) → Dense(3) as users subclass it: weights made on the first call."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.head = keras.layers.Dense(3)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


@pytest.mark.parametrize("first", ["call", "predict", "evaluate"])
def test_a_subclassed_base_used_before_fit_trains_as_the_reference(first):
    """A subclassed base is built by its first call; here the wrapper is called
    (or predicts, or evaluates: e.g. the untrained model's score) before
    `fit`, and the weights are then set. v must still be created and the run
    be MSAM's."""
    model = _compile(MSAMModel(_Subclassed(), rho=RHO, momentum=MSAM_MOMENTUM))
    x, y = _batches(0, 1)[0]
    if first == "call":
        model(x)
    elif first == "predict":
        model.predict(x, verbose=0)
    else:
        model.evaluate(x, y, verbose=0)
    model.base_model.set_weights(INITIAL_WEIGHTS)
    trajectory = _Trajectory()
    _fit(model, 0, STEPS, [trajectory])
    expected = _reference("sgd")
    _assert_close(trajectory.weights[-1], expected.weights[-1])
    _assert_close(trajectory.velocities[-1], expected.velocities[-1][0])


def test_a_skipped_step_leaves_v():
    """With skip_nonfinite a step whose loss is NaN is skipped: v (and the
    weights) stay, and training goes on as if that batch never came."""
    keras.utils.set_random_seed(0)
    model = _compile(MSAMModel(_base(), rho=RHO, momentum=MSAM_MOMENTUM, skip_nonfinite=True))
    poisoned = X[BATCH:2 * BATCH].copy()
    poisoned[0, 0] = np.nan
    x = np.concatenate([X[:BATCH], poisoned, X[2 * BATCH:4 * BATCH]])
    trajectory = _Trajectory()
    logs = model.fit(x, Y[:4 * BATCH], batch_size=BATCH, shuffle=False, verbose=0,
                     callbacks=[trajectory]).history
    assert logs["skipped_steps"] == [1]
    assert int(model.optimizer.iterations.numpy()) == 3
    _assert_bitwise(trajectory.velocities[1], trajectory.velocities[0], "v over the skip")
    _assert_bitwise(trajectory.weights[1], trajectory.weights[0], "weights over the skip")
    batches = [_batches(0, 1)[0], *_batches(2, 4)]
    expected = ref.msam_train(INITIAL_WEIGHTS, batches, OPTIMIZERS["sgd"][1](), rho=RHO,
                              momentum=MSAM_MOMENTUM)
    _assert_close(trajectory.weights[-1], expected.weights[-1])
    _assert_close(trajectory.velocities[-1], expected.velocities[-1][0])


def test_v_is_the_unscaled_gradients_under_a_loss_scale():
    """With a loss scale factor the gradients a pass takes are scaled; v holds
    the loss's own (as the rule says), and the run is the unscaled one."""
    keras.utils.set_random_seed(0)
    model = MSAMModel(_base(), rho=RHO, momentum=MSAM_MOMENTUM)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, loss_scale_factor=1024.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trajectory = _Trajectory()
    _fit(model, 0, STEPS, [trajectory])
    expected = _reference("sgd")
    _assert_close(trajectory.weights[-1], expected.weights[-1])
    _assert_close(trajectory.velocities[-1], expected.velocities[-1][0])


def test_logs_have_no_sharpness():
    model = _compile(MSAMModel(_base(), rho=RHO), metrics=["accuracy"])
    history = _fit(model, 0, 2, epochs=2).history
    assert sorted(history) == ["accuracy", "loss"]


# ------------------------------------------------------------------ saving
def _msam_model(optimizer="sgd"):
    keras.utils.set_random_seed(0)
    return _compile(MSAMModel(_base(), rho=RHO, momentum=MSAM_MOMENTUM), optimizer)


@functools.cache
def _uninterrupted(optimizer="sgd"):
    """The state after 3 and after 5 steps of one run."""
    model = _msam_model(optimizer)
    _fit(model, 0, 3)
    after_3 = _state(model)
    _fit(model, 3, STEPS)
    return after_3, _state(model)


def _restored(file_format, optimizer, model, tmp_path):
    if file_format == "keras":
        model.save(tmp_path / "msam.keras")
        return keras.models.load_model(tmp_path / "msam.keras")
    fresh = _msam_model(optimizer)
    if file_format == "weights_h5":
        model.save_weights(tmp_path / "msam.weights.h5")
        fresh.load_weights(tmp_path / "msam.weights.h5")
        return fresh
    import tensorflow as tf

    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        str(tmp_path / "msam_checkpoint"))
    fresh.build((None, 4))
    fresh.optimizer.build(fresh.trainable_variables)
    assert not any(np.abs(v).max() for v in _velocity(fresh))  # v starts at 0
    status = tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(path)
    status.assert_consumed().assert_existing_objects_matched()
    return fresh


@pytest.mark.parametrize(
    ("file_format", "optimizer"),
    [("keras", "sgd"), ("keras", "adam"), ("weights_h5", "sgd"),
     pytest.param("tf_checkpoint", "sgd", marks=tensorflow_only)],
)
def test_saved_after_3_steps_then_continued_is_the_uninterrupted_run_bit_for_bit(
    file_format, optimizer, tmp_path
):
    after_3, after_5 = _uninterrupted(optimizer)
    model = _msam_model(optimizer)
    _fit(model, 0, 3)
    assert min(np.abs(v).max() for v in _velocity(model)) > 0  # v is worth saving
    restored = _restored(file_format, optimizer, model, tmp_path)
    assert type(restored) is MSAMModel
    assert restored.momentum == MSAM_MOMENTUM
    _assert_bitwise(_state(restored), after_3, "restored state")
    _assert_bitwise(_velocity(restored), _velocity(model), "v")
    _fit(restored, 3, STEPS)
    _assert_bitwise(_state(restored), after_5, "state after 5 steps")


def test_backup_and_restore_resumes_v_bit_for_bit(tmp_path):
    """An epoch of 3 steps, a crash at the start of the next, and a fresh model
    resumed by `BackupAndRestore`: the same as two uninterrupted epochs."""
    uninterrupted = _msam_model()
    _fit(uninterrupted, 0, 3, epochs=2)

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(_msam_model(), 0, 3, [keras.callbacks.BackupAndRestore(backup), Crash()],
             epochs=2)
    resumed = _msam_model()
    _fit(resumed, 0, 3, [keras.callbacks.BackupAndRestore(backup)], epochs=2)
    assert int(resumed.optimizer.iterations.numpy()) == 6
    _assert_bitwise(_state(resumed), _state(uninterrupted), "resumed state")


# ------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "momentum", [1.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.9", None]
)
def test_momentum_outside_zero_one_is_refused(momentum):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`momentum`"):
        MSAMModel(_base(), momentum=momentum)


def test_batch_splits_are_refused():
    with pytest.raises(keras_sam.InvalidArgumentError, match="num_batch_splits"):
        MSAMModel(_base(), num_batch_splits=2)
    assert MSAMModel(_base(), num_batch_splits=1).num_batch_splits == 1


def test_defaults_are_the_official_codes():
    model = MSAMModel(_base())
    assert (model.rho, model.momentum, model.eps) == (0.3, 0.9, 1e-12)


ARGUMENTS = dict(
    momentum=0.8, p=3.0, adaptive=True, eta=0.02, sync_perturbation=True,
    skip_nonfinite=True, eps=1e-9, perturb="normalization",
)


def _bn_base():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5),
                             keras.layers.BatchNormalization(), keras.layers.Dense(3)])


@pytest.mark.parametrize("rho", [0.07, keras_sam.schedules.Linear(0.0, 0.5, 40)],
                         ids=["float", "schedule"])
def test_config_round_trip_keeps_every_argument(rho, tmp_path):
    model = MSAMModel(_bn_base(), rho=rho, **ARGUMENTS, name="configured_msam")
    config = model.get_config()
    for clone in (MSAMModel.from_config(config), None):
        if clone is None:
            model.save(tmp_path / "msam.keras")
            clone = keras.models.load_model(tmp_path / "msam.keras")
        assert type(clone) is MSAMModel
        assert clone.name == "configured_msam"
        for name, value in ARGUMENTS.items():
            assert getattr(clone, name) == value, name
        if isinstance(rho, float):
            assert clone.rho == rho
        else:
            assert type(clone.rho) is type(rho)
            assert clone.rho.get_config() == rho.get_config()
        assert _without_base(clone.get_config()) == _without_base(config)


def _without_base(config):
    return {k: v for k, v in config.items() if k != "base_model"}


# --------------------------------------------------------------- mirrored
@pytest.fixture(scope="module", autouse=True)
def _mirrored_script(request):
    """Starts `distributed_scripts/cheap_mirrored.py msam` (2 replicas) when the
    module starts, if a test here needs it, so that it runs beside the others."""
    wanted = any(item.module is request.module and "mirrored" in item.fixturenames
                 for item in request.session.items)
    run = ScriptRun("cheap_mirrored.py", "msam") if wanted else None
    yield run
    if run is not None:
        run.stop()


@pytest.fixture(scope="module")
def mirrored(_mirrored_script):
    """The script's JSON."""
    return _mirrored_script.result(timeout=600)


def _run(results, name):
    run = results[name]
    if "raised" in run:
        pytest.fail(f"the {name!r} run raised:\n{run['raised']}")
    return run


def _mirrored_reference(results, replicas, sync):
    x = np.asarray(results["x"], np.float32)
    y = np.asarray(results["y"], np.int64)
    batch = results["global_batch"]
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    return ref.msam_train(
        results["initial"], batches, ref.SGD(results["learning_rate"], results["sgd_momentum"]),
        **results["settings"]["msam"],
        replicas=replicas, sync=sync,
    )


def _replica(run, r):
    return [np.asarray(copies[r], np.float32) for copies in run["weights"]]


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_mirrored_replicas_keep_their_own_velocity(mirrored):
    """Each replica's v sums its own share of the gradients (loss pre-scaled by
    1/replicas) at its own offset; the weights follow the summed shares and
    stay bit-identical on both replicas after every step."""
    run = _run(mirrored, "per_replica")
    expected = _mirrored_reference(mirrored, replicas=2, sync=False)
    assert run["identical_after_each_step"] == [True] * len(expected.weights)
    _assert_close(_replica(run, 0), expected.weights[-1], what="weights")
    for r in range(2):
        stored = [np.asarray(copies[r]) for copies in run["velocity"]]
        _assert_close(stored, expected.velocities[-1][r], rtol=1e-4, what=f"v of replica {r}")
    first, second = (np.asarray(copies) for copies in run["velocity"][0])
    assert _gap([first], [second]) > 1e-2  # the replicas' v differ
    np.testing.assert_allclose(run["history"]["loss"], np.mean(expected.losses), rtol=RTOL)
    # One pass per step on each replica.
    assert run["passes"] == [[1, 1]] * len(expected.weights)
    # The one-v-for-all rule gives other weights: the check can tell.
    synced = _mirrored_reference(mirrored, replicas=2, sync=True)
    assert _gap(synced.weights[-1], expected.weights[-1]) > 100 * RTOL


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_mirrored_sync_perturbation_equals_one_device_on_the_global_batch(mirrored):
    run, single = _run(mirrored, "sync"), _run(mirrored, "one_device")
    expected = _mirrored_reference(mirrored, replicas=1, sync=False)
    _assert_close(_replica(single, 0), expected.weights[-1], what="one device")
    _assert_close(_replica(run, 0), expected.weights[-1], what="synced")
    _assert_close(_replica(run, 0), _replica(single, 0), what="synced vs one device")
    assert run["identical_after_each_step"] == [True] * len(expected.weights)
    for copies, v in zip(run["velocity"], expected.velocities[-1][0]):
        assert np.array_equal(copies[0], copies[1])  # one v, on every replica
        _assert_close([np.asarray(copies[0])], [v], rtol=1e-4, what="synced v")
    assert run["passes"] == [[1, 1]] * len(expected.weights)


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_mirrored_resume_from_a_weights_file_restores_each_replicas_v(mirrored):
    """v is saved with the model; under MirroredStrategy each replica keeps its
    own. 2 steps, `save_weights`, a fresh model `load_weights`, 2 steps: every
    replica's v comes back as it was saved, and the run is the uninterrupted
    one."""
    resumed, uninterrupted = _run(mirrored, "per_replica_resumed"), _run(mirrored, "per_replica")
    for saved, loaded in zip(resumed["saved_velocity"], resumed["loaded_velocity"]):
        assert not np.array_equal(saved[0], saved[1])  # the replicas' v differ
        for r in range(2):
            np.testing.assert_array_equal(loaded[r], saved[r], err_msg=f"replica {r}'s v")
    _assert_close(_replica(resumed, 0), _replica(uninterrupted, 0), what="resumed run")
