"""RandomizedSAMModel (RST) and AESAMModel (AE-SAM) against float64 NumPy.

Both choose, step by step, between a SAM step (two forward/backward passes)
and the plain step (one). Dense(8, tanh) → Dense(3), softmax cross-entropy on
logits, SGD with momentum, a fixed batch order. The golden tests compare each
step's decision, counted at run time (`backend_neutral.PassCounter`: a layer
calls `tf.py_function`, which increments a Python counter when a pass runs,
or on JAX advances a seed generator of its own: 1 pass per plain step, 2 per
SAM step), and the weights after every one of 8 steps with
`cheap_sam_reference` (written from the rules, sharing no code with the
library), to 1e-5 relative; AE-SAM's statistics μ and σ² too. Every
reference run is checked to have both kinds of step, and decisions that no
float32 rounding could flip. The invariants (probability 1 and 0) and the
save/load checks are bit for bit.
"""

from __future__ import annotations

import functools
import math

import cheap_sam_reference as ref
import keras
import numpy as np
import pytest
from backend_neutral import ON_JAX, PassCounter, passes, tensorflow_only
from distributed_scripts.launcher import ScriptRun

import keras_sam
from keras_sam import AESAMModel, RandomizedSAMModel, SAMModel
from keras_sam.rst import uniform_draw
from keras_sam.schedules import Linear

import variant_reference

BATCH = 10
STEPS = 8
LEARNING_RATE, SGD_MOMENTUM = 0.1, 0.9
RHO = 0.1
RTOL = 1e-5
MIN_MARGIN = 1e-4  # a reference decision this close to its bar is not a test

_rng = np.random.default_rng(20250117)
X = _rng.normal(size=(STEPS * BATCH, 4)).astype("float32")
Y = _rng.integers(0, 3, size=STEPS * BATCH).astype("int32")
INITIAL_WEIGHTS = [
    (0.7 * _rng.normal(size=(4, 8))).astype("float32"),
    (0.1 * _rng.normal(size=8)).astype("float32"),
    (0.7 * _rng.normal(size=(8, 3))).astype("float32"),
    (0.1 * _rng.normal(size=3)).astype("float32"),
]


def _batches(start: int, stop: int):
    return [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH])
            for i in range(start, stop)]


class _PerStep(keras.callbacks.Callback):
    """After every step: the trainable weights, the passes the step ran, and
    AE-SAM's statistics (when the model has them)."""

    def __init__(self):
        super().__init__()
        self.weights, self.passes, self.statistics = [], [], []
        self._last = None

    def on_train_begin(self, logs=None):
        self._last = passes(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([np.array(v.numpy()) for v in self.model.trainable_variables])
        total = passes(self.model)
        self.passes.append(total - self._last)
        self._last = total
        self.statistics.append(_statistics(self.model))


def _statistics(model):
    """AE-SAM's (μ, σ²), or None."""
    found = {v.name: float(v.numpy()) for v in model.non_trainable_variables
             if v.name in ("aesam_mean", "aesam_variance")}
    return (found["aesam_mean"], found["aesam_variance"]) if found else None


def _base(counter: bool = True) -> keras.Model:
    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="tanh")]
    if counter:
        layers.append(PassCounter())
    base = keras.Sequential([*layers, keras.layers.Dense(3)])
    base.set_weights(INITIAL_WEIGHTS)
    return base


def _compile(model, jit=False):
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=SGD_MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _fit(model, start, stop, callbacks=()):
    """One optimizer step per batch start..stop-1, in order."""
    return model.fit(X[start * BATCH:stop * BATCH], Y[start * BATCH:stop * BATCH],
                     batch_size=BATCH, shuffle=False, verbose=0, callbacks=list(callbacks))


# Whether passes can be counted with XLA: on JAX (the counter is state), not
# on TensorFlow (its counter runs Python, which XLA cannot).
COUNTED_UNDER_XLA = ON_JAX


def _train(make, jit=False, stop=STEPS) -> _PerStep:
    keras.utils.set_random_seed(0)
    model = _compile(make(_base(counter=not jit or COUNTED_UNDER_XLA)), jit)
    per_step = _PerStep()
    _fit(model, 0, stop, [per_step])
    per_step.model_ = model
    return per_step


def _state(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in [*model.variables, *model.optimizer.variables]]


def _assert_close(actual, expected, rtol=RTOL, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max(),
                                   err_msg=f"{what} [{i}]")


def _assert_bitwise(actual, expected, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and np.array_equal(a, e), f"{what} [{i}] not bit-identical"


def _assert_a_real_test(run: ref.PolicyRun):
    """Both kinds of step occur, and no decision hangs on rounding."""
    assert any(run.sam_steps) and not all(run.sam_steps), run.sam_steps
    assert min(run.margins) > MIN_MARGIN, run.margins


def _assert_matches(trained: _PerStep, expected: ref.PolicyRun, counted=True):
    if counted:
        assert trained.passes == expected.passes, "decisions (passes per step)"
    for step, (actual, weights) in enumerate(zip(trained.weights, expected.weights)):
        _assert_close(actual, weights, what=f"weights after step {step + 1}")
    assert len(trained.weights) == len(expected.weights)


def _sgd():
    return ref.SGD(LEARNING_RATE, SGD_MOMENTUM)


# =================================================================== RST
SEEDS = [0, 1, 7, 2**31 - 1, 2**31, 2**31 + 12345, 2**32 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_draw_is_the_specified_hash(seed):
    """Bit for bit the NumPy implementation of the specification, for steps
    0..2047 and steps past 2**31 and 2**32 (uint32 arithmetic wraps)."""
    steps = np.concatenate([np.arange(2048), [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5,
                                              10**12]]).astype(np.int64)
    expected = ref.uniform_draw(seed, steps)
    assert np.array_equal(np.float64(np.float32(expected)), expected)  # float32 holds it
    drawn = np.asarray(keras.ops.convert_to_numpy(uniform_draw(seed, steps)))
    assert drawn.dtype == np.float32
    np.testing.assert_array_equal(drawn.astype(np.float64), expected)
    # One step at a time (a Python int), as the optimizer's step is read.
    for step in (0, 1, 2047, 2**32 + 5):
        assert float(uniform_draw(seed, step)) == ref.uniform_draw(seed, step)


@pytest.mark.parametrize("probability", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 3, 2**32 - 1])
def test_share_of_sam_steps_is_within_binomial_tolerance(seed, probability):
    n = 2000
    draws = np.asarray(keras.ops.convert_to_numpy(uniform_draw(seed, np.arange(n))))
    assert np.all((draws >= 0.0) & (draws < 1.0))
    sam_steps = int(np.sum(draws < probability))
    sigma = math.sqrt(n * probability * (1 - probability))
    assert abs(sam_steps - n * probability) <= 4 * sigma, sam_steps
    assert len(np.unique(draws)) > 0.99 * n  # not a short cycle


RST_CASES = {
    "p0.5": dict(probability=0.5, seed=1),
    "linear": dict(probability=Linear(0.1, 0.9, STEPS), seed=3),
}
_REFERENCE_PROBABILITY = {"p0.5": 0.5, "linear": ref.linear(0.1, 0.9, STEPS)}


def _rst_reference(name, start=0, stop=STEPS):
    return ref.rst_train(INITIAL_WEIGHTS, _batches(start, stop), _sgd(), rho=RHO,
                         probability=_REFERENCE_PROBABILITY[name],
                         seed=RST_CASES[name]["seed"])


@functools.cache
def _rst_trained(name, jit):
    return _train(lambda b: RandomizedSAMModel(b, rho=RHO, **RST_CASES[name]), jit)


@pytest.mark.parametrize(
    ("name", "jit"), [("p0.5", False), ("linear", False), ("p0.5", True)],
    ids=["p0.5-graph", "linear_schedule-graph", "p0.5-xla"],
)
def test_rst_decisions_and_weights_match_float64_reference(name, jit):
    expected = _rst_reference(name)
    _assert_a_real_test(expected)
    _assert_matches(_rst_trained(name, jit), expected, counted=not jit or COUNTED_UNDER_XLA)


def test_rst_schedule_is_read_at_each_step():
    """The schedule's decisions differ from those of a constant p = 0.5 with
    the same seed, so the test above checks p(t), not a constant."""
    seed = RST_CASES["linear"]["seed"]
    scheduled = _rst_reference("linear").sam_steps
    constant = ref.rst_train(INITIAL_WEIGHTS, _batches(0, STEPS), _sgd(), rho=RHO,
                             probability=0.5, seed=seed).sam_steps
    assert scheduled != constant


def test_rst_golden_cases_are_distinguishable():
    """All-SAM and all-plain runs end far from the mixed run."""
    mixed = _rst_reference("p0.5").weights[-1]
    for probability in (0.0, 1.0):
        other = ref.rst_train(INITIAL_WEIGHTS, _batches(0, STEPS), _sgd(), rho=RHO,
                              probability=probability, seed=1).weights[-1]
        gap = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(mixed, other))
        assert gap > 100 * RTOL, (probability, gap)


def test_rst_with_batch_splits_takes_m_sharpness_sam_steps():
    """RST takes every SAMModel option: with num_batch_splits=2 a SAM step is
    m-sharpness SAM (`variant_reference`), a plain step the batch gradient;
    each of the two pieces takes 2 passes on a SAM step and 1 on a plain one."""
    split = variant_reference.Variant("sam", rho=RHO, num_batch_splits=2)
    trained = _train(lambda b: RandomizedSAMModel(b, rho=RHO, num_batch_splits=2,
                                                  **RST_CASES["p0.5"]))
    decisions = _rst_reference("p0.5").sam_steps
    params = [np.asarray(w, np.float64) for w in INITIAL_WEIGHTS]
    optimizer = _sgd()
    for sam, (x, y) in zip(decisions, _batches(0, STEPS)):
        if sam:
            direction = variant_reference.descent_direction(
                split, params, x, y, variant_reference.LookSAMState())
        else:
            direction = variant_reference.mlp_loss_and_gradients(params, x, y)[1]
        params = optimizer.apply(params, direction)
    assert trained.passes == [4 if sam else 2 for sam in decisions]
    _assert_close(trained.weights[-1], params)


def test_rst_probability_one_is_sam_bit_for_bit():
    rst = _train(lambda b: RandomizedSAMModel(b, rho=RHO, probability=1.0, seed=1))
    sam = _train(lambda b: SAMModel(b, rho=RHO))
    assert rst.passes == sam.passes == [2] * STEPS
    for step in range(STEPS):
        _assert_bitwise(rst.weights[step], sam.weights[step], f"step {step + 1}")


def test_rst_probability_zero_is_plain_fit_bit_for_bit():
    rst = _train(lambda b: RandomizedSAMModel(b, rho=RHO, probability=0.0, seed=1))
    plain = _train(lambda b: b)
    assert rst.passes == plain.passes == [1] * STEPS
    for step in range(STEPS):
        _assert_bitwise(rst.weights[step], plain.weights[step], f"step {step + 1}")


def test_rst_resumed_from_a_saved_model_takes_the_same_decisions(tmp_path):
    """3 steps, save, load, 5 steps: the decisions of steps 3..7 and every
    variable, bit for bit, are those of the uninterrupted 8 steps."""
    uninterrupted = _rst_trained("p0.5", False)
    expected = _rst_reference("p0.5")
    keras.utils.set_random_seed(0)
    model = _compile(RandomizedSAMModel(_base(), rho=RHO, **RST_CASES["p0.5"]))
    _fit(model, 0, 3)
    model.save(tmp_path / "rst.keras")
    loaded = keras.models.load_model(tmp_path / "rst.keras")
    assert type(loaded) is RandomizedSAMModel and loaded.seed == RST_CASES["p0.5"]["seed"]
    assert int(loaded.optimizer.iterations.numpy()) == 3
    resumed = _PerStep()
    _fit(loaded, 3, STEPS, [resumed])
    assert resumed.passes == expected.passes[3:]
    assert len(set(expected.passes[3:])) == 2  # both kinds after the restart
    for step in range(3, STEPS):
        _assert_bitwise(resumed.weights[step - 3], uninterrupted.weights[step], f"step {step}")
    _assert_bitwise(_state(loaded), _state(uninterrupted.model_), "final state")


@pytest.mark.parametrize(
    "probability", [-0.1, 1.0000001, 2, float("nan"), float("inf"), "0.5", True, None, [0.5]]
)
def test_rst_bad_probability_is_refused(probability):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`probability`"):
        RandomizedSAMModel(_base(), probability=probability)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40, 1.5, 1.0, True, "0", None])
def test_rst_bad_seed_is_refused(seed):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`seed`"):
        RandomizedSAMModel(_base(), seed=seed)


def test_rst_largest_seed_trains_with_its_draws():
    """seed = 2**32 − 1 is accepted, and steps by its own draws."""
    seed = 2**32 - 1
    draws = ref.uniform_draw(seed, np.arange(4))
    probability = float(np.sort(draws)[1] + np.sort(draws)[2]) / 2  # 2 SAM steps of 4
    trained = _train(lambda b: RandomizedSAMModel(b, rho=RHO, probability=probability,
                                                  seed=seed), stop=4)
    expected = ref.rst_train(INITIAL_WEIGHTS, _batches(0, 4), _sgd(), rho=RHO,
                             probability=probability, seed=seed)
    assert sorted(expected.passes) == [1, 1, 2, 2]
    _assert_matches(trained, expected)


# ================================================================ AE-SAM
AESAM_CASES = {
    "float": dict(decay=0.5, threshold=0.5),
    # c_0 = 2 > 1/√(1 − δ): with the statistics updated before deciding, as
    # specified, step 0 is a plain step (s < μ_1 + 2·σ_1); decided on μ_0, σ_0 it
    # would be a SAM step.
    "linear": dict(decay=0.5, threshold=Linear(2.0, -1.0, STEPS)),
}
_REFERENCE_THRESHOLD = {"float": 0.5, "linear": ref.linear(2.0, -1.0, STEPS)}


def _aesam_reference(name, start=0, stop=STEPS, **state):
    return ref.aesam_train(INITIAL_WEIGHTS, _batches(start, stop), _sgd(), rho=RHO,
                           decay=AESAM_CASES[name]["decay"],
                           threshold=_REFERENCE_THRESHOLD[name], start_step=start, **state)


@functools.cache
def _aesam_trained(name, jit):
    return _train(lambda b: AESAMModel(b, rho=RHO, **AESAM_CASES[name]), jit)


@pytest.mark.parametrize(
    ("name", "jit"), [("float", False), ("linear", False), ("float", True)],
    ids=["float-graph", "linear_schedule-graph", "float-xla"],
)
def test_aesam_decisions_weights_and_statistics_match_float64_reference(name, jit):
    expected = _aesam_reference(name)
    _assert_a_real_test(expected)
    trained = _aesam_trained(name, jit)
    _assert_matches(trained, expected, counted=not jit or COUNTED_UNDER_XLA)
    for step, (mean, variance) in enumerate(trained.statistics):
        np.testing.assert_allclose(mean, expected.means[step], rtol=RTOL, err_msg=f"μ {step}")
        np.testing.assert_allclose(variance, expected.variances[step], rtol=1e-4,
                                   err_msg=f"σ² {step}")


def test_aesam_golden_cases_are_distinguishable():
    """The float and schedule thresholds decide differently, and deciding on
    the statistics before this step's update (not after, as specified) would
    too: the golden test checks the order."""
    constant, scheduled = _aesam_reference("float"), _aesam_reference("linear")
    assert constant.sam_steps != scheduled.sam_steps
    threshold = _REFERENCE_THRESHOLD["linear"]
    previous = zip([0.0, *scheduled.means], [1e-10, *scheduled.variances])
    early = [s >= m + threshold(t) * math.sqrt(v)
             for t, (s, (m, v)) in enumerate(zip(scheduled.squared_norms, previous))]
    assert early[0] != scheduled.sam_steps[0]
    # And all-SAM or all-plain runs end far from the mixed one.
    for threshold in (-1e6, 1e6):
        other = ref.aesam_train(INITIAL_WEIGHTS, _batches(0, STEPS), _sgd(), rho=RHO,
                                decay=0.5, threshold=threshold)
        assert len(set(other.sam_steps)) == 1
        gap = max(float(np.abs(a - b).max() / np.abs(b).max())
                  for a, b in zip(other.weights[-1], constant.weights[-1]))
        assert gap > 100 * RTOL, (threshold, gap)


def _aesam_model():
    keras.utils.set_random_seed(0)
    return _compile(AESAMModel(_base(), rho=RHO, **AESAM_CASES["linear"]))


@pytest.mark.parametrize(
    "file_format", ["keras", "weights_h5", pytest.param("tf_checkpoint", marks=tensorflow_only)]
)
def test_aesam_resumed_from_saved_state_is_bit_for_bit(file_format, tmp_path):
    """4 steps, save, restore, 4 steps: μ, σ² and everything else bit for bit
    the uninterrupted run's, and the same decisions."""
    uninterrupted = _aesam_trained("linear", False)
    model = _aesam_model()
    _fit(model, 0, 4)
    assert _statistics(model) == uninterrupted.statistics[3]
    assert _statistics(model) != _statistics(_aesam_model())  # worth restoring
    if file_format == "keras":
        model.save(tmp_path / "aesam.keras")
        loaded = keras.models.load_model(tmp_path / "aesam.keras")
    elif file_format == "weights_h5":
        model.save_weights(tmp_path / "aesam.weights.h5")
        loaded = _aesam_model()
        loaded.load_weights(tmp_path / "aesam.weights.h5")
    else:
        import tensorflow as tf

        path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(tmp_path / "aesam_checkpoint"))
        loaded = _aesam_model()
        loaded.build((None, 4))
        loaded.optimizer.build(loaded.trainable_variables)
        status = tf.train.Checkpoint(model=loaded, optimizer=loaded.optimizer).read(path)
        status.assert_consumed().assert_existing_objects_matched()
    assert type(loaded) is AESAMModel
    assert _statistics(loaded) == _statistics(model)
    resumed = _PerStep()
    _fit(loaded, 4, STEPS, [resumed])
    assert resumed.passes == uninterrupted.passes[4:]
    assert len(set(uninterrupted.passes[4:])) == 2  # both kinds after the restart
    assert resumed.statistics == uninterrupted.statistics[4:]
    _assert_bitwise(_state(loaded), _state(uninterrupted.model_), "final state")


def test_aesam_statistics_stay_put_on_a_skipped_step():
    """With skip_nonfinite a step whose loss is NaN is skipped: μ and σ² (and
    the weights) stay; training then goes on as if that batch never came."""
    keras.utils.set_random_seed(0)
    model = _compile(AESAMModel(_base(), rho=RHO, skip_nonfinite=True,
                                **AESAM_CASES["float"]))
    poisoned = X[BATCH:2 * BATCH].copy()
    poisoned[0, 0] = np.nan
    x = np.concatenate([X[:BATCH], poisoned, X[2 * BATCH:4 * BATCH]])
    per_step = _PerStep()
    logs = model.fit(x, Y[:4 * BATCH], batch_size=BATCH, shuffle=False, verbose=0,
                     callbacks=[per_step]).history
    assert logs["skipped_steps"] == [1]
    assert int(model.optimizer.iterations.numpy()) == 3
    assert per_step.statistics[1] == per_step.statistics[0]
    _assert_bitwise(per_step.weights[1], per_step.weights[0], "weights over the skip")
    batches = [_batches(0, 1)[0], *_batches(2, 4)]
    expected = ref.aesam_train(INITIAL_WEIGHTS, batches, _sgd(), rho=RHO, decay=0.5,
                               threshold=0.5)
    kept = [0, 2, 3]
    _assert_close(per_step.weights[-1], expected.weights[-1])
    for step, index in enumerate(kept):
        np.testing.assert_allclose(per_step.statistics[index],
                                   (expected.means[step], expected.variances[step]), rtol=1e-4)


def test_aesam_statistics_are_those_of_the_unscaled_gradient_under_a_loss_scale():
    """s is ‖g‖² of the loss's gradient, not of the scaled one a pass takes."""
    keras.utils.set_random_seed(0)
    model = AESAMModel(_base(), rho=RHO, **AESAM_CASES["float"])
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=SGD_MOMENTUM,
                                       loss_scale_factor=1024.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    per_step = _PerStep()
    _fit(model, 0, STEPS, [per_step])
    expected = _aesam_reference("float")
    _assert_matches(per_step, expected)
    for step, (mean, variance) in enumerate(per_step.statistics):
        np.testing.assert_allclose(mean, expected.means[step], rtol=RTOL, err_msg=f"μ {step}")
        np.testing.assert_allclose(variance, expected.variances[step], rtol=1e-4,
                                   err_msg=f"σ² {step}")


@pytest.mark.parametrize("policy", ["rst", "aesam"])
def test_several_steps_per_execution_take_each_steps_own_decision(policy):
    """Inside Keras's multi-step loop each step reads its own optimizer step
    (RST's draw, AE-SAM's threshold schedule) and statistics."""
    if policy == "rst":
        make = lambda b: RandomizedSAMModel(b, rho=RHO, **RST_CASES["p0.5"])
        expected = _rst_reference("p0.5")
    else:
        make = lambda b: AESAMModel(b, rho=RHO, **AESAM_CASES["linear"])
        expected = _aesam_reference("linear")
    keras.utils.set_random_seed(0)
    model = make(_base())
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=SGD_MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=4,
    )
    _fit(model, 0, STEPS)
    assert passes(model) == sum(expected.passes)
    _assert_close([np.array(v.numpy()) for v in model.trainable_variables], expected.weights[-1])
    if policy == "aesam":
        np.testing.assert_allclose(_statistics(model), (expected.means[-1],
                                                        expected.variances[-1]), rtol=1e-4)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.9", None])
def test_aesam_bad_decay_is_refused(decay):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`decay`"):
        AESAMModel(_base(), decay=decay)


@pytest.mark.parametrize(
    "threshold", [float("nan"), float("inf"), -float("inf"), 1e39, True, "1", None, [0.0]]
)
def test_aesam_bad_threshold_is_refused(threshold):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`threshold`"):
        AESAMModel(_base(), threshold=threshold)


def test_aesam_refuses_batch_splits():
    with pytest.raises(keras_sam.InvalidArgumentError, match="num_batch_splits"):
        AESAMModel(_base(), num_batch_splits=2)


def test_defaults_are_the_papers():
    rst, aesam = RandomizedSAMModel(_base()), AESAMModel(_base())
    assert (rst.rho, rst.probability, rst.seed) == (0.05, 0.5, 0)
    assert (aesam.rho, aesam.decay, aesam.threshold) == (0.05, 0.9, 0.0)
    assert _statistics(aesam) == (0.0, float(np.float32(1e-10)))


# ================================================================ config
def _bn_base():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5),
                             keras.layers.BatchNormalization(), keras.layers.Dense(3)])


SAM_OPTIONS = dict(p=3.0, adaptive=True, eta=0.02, sync_perturbation=True,
                   skip_nonfinite=True, eps=1e-9, perturb="normalization")
CONFIGURED = {
    "rst_float": (RandomizedSAMModel, dict(rho=0.07, probability=0.3, seed=2**32 - 1,
                                           num_batch_splits=2, **SAM_OPTIONS)),
    "rst_schedules": (RandomizedSAMModel, dict(
        rho=keras_sam.schedules.LatePhase(0.1, 20), seed=9,
        probability=keras.optimizers.schedules.PolynomialDecay(0.2, 50, 0.8), **SAM_OPTIONS)),
    "aesam_float": (AESAMModel, dict(rho=0.07, decay=0.8, threshold=-0.25, **SAM_OPTIONS)),
    "aesam_schedules": (AESAMModel, dict(rho=keras_sam.schedules.EarlyPhase(0.2, 30),
                                         decay=0.0, threshold=Linear(1.0, -1.0, 100),
                                         **SAM_OPTIONS)),
}


def _assert_arguments(model, cls, arguments):
    assert type(model) is cls
    for name, value in arguments.items():
        actual = getattr(model, name)
        if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
            assert type(actual) is type(value), name
            assert actual.get_config() == value.get_config(), name
        else:
            assert actual == value and type(actual) is type(value), name


@pytest.mark.parametrize("case", list(CONFIGURED))
def test_config_round_trip_keeps_every_argument(case, tmp_path):
    cls, arguments = CONFIGURED[case]
    model = cls(_bn_base(), **arguments, name=f"configured_{case}")
    _assert_arguments(model, cls, arguments)
    config = model.get_config()
    without_base = {k: v for k, v in config.items() if k != "base_model"}
    clone = cls.from_config(config)
    _assert_arguments(clone, cls, arguments)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    _assert_arguments(loaded, cls, arguments)
    assert loaded.name == f"configured_{case}"
    for other in (clone, loaded):
        assert {k: v for k, v in other.get_config().items() if k != "base_model"} == without_base


# ============================================================== mirrored
@pytest.fixture(scope="module", autouse=True)
def _mirrored_script(request):
    """Starts `distributed_scripts/cheap_mirrored.py policies` (2 replicas)
    when the module starts, if a test here needs it."""
    wanted = any(item.module is request.module and "mirrored" in item.fixturenames
                 for item in request.session.items)
    run = ScriptRun("cheap_mirrored.py", "policies") if wanted else None
    yield run
    if run is not None:
        run.stop()


@pytest.fixture(scope="module")
def mirrored(_mirrored_script):
    return _mirrored_script.result(timeout=600)


def _run(results, name):
    run = results[name]
    if "raised" in run:
        pytest.fail(f"the {name!r} run raised:\n{run['raised']}")
    return run


def _mirrored_data(results):
    x = np.asarray(results["x"], np.float32)
    y = np.asarray(results["y"], np.int64)
    batch = results["global_batch"]
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    return results["initial"], batches, ref.SGD(results["learning_rate"],
                                                results["sgd_momentum"])


def _replica(run, r):
    return [np.asarray(copies[r], np.float32) for copies in run["weights"]]


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_rst_under_mirrored_replicas_take_the_same_decisions(mirrored):
    run = _run(mirrored, "rst")
    initial, batches, optimizer = _mirrored_data(mirrored)
    expected = ref.rst_train(initial, batches, optimizer, replicas=2,
                             **mirrored["settings"]["rst"])
    _assert_a_real_test(expected)
    assert run["passes"] == [[p, p] for p in expected.passes]  # each replica, each step
    assert run["identical_after_each_step"] == [True] * len(batches)
    _assert_close(_replica(run, 0), expected.weights[-1], what="per-replica RST")
    # One ε̂ from the global gradient would be another run: the test can tell.
    initial, batches, optimizer = _mirrored_data(mirrored)
    synced = ref.rst_train(initial, batches, optimizer, replicas=2, sync=True,
                           **mirrored["settings"]["rst"])
    gap = max(float(np.abs(a - b).max() / np.abs(b).max())
              for a, b in zip(synced.weights[-1], expected.weights[-1]))
    assert gap > 100 * RTOL


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_aesam_under_mirrored_keeps_statistics_per_replica_and_decides_together(mirrored):
    """Each replica's μ, σ² follow its own share's s; a step is a SAM step on
    both replicas if it is on either; weights stay bit-identical."""
    run = _run(mirrored, "aesam")
    initial, batches, optimizer = _mirrored_data(mirrored)
    expected = ref.aesam_train(initial, batches, optimizer, replicas=2,
                               **mirrored["settings"]["aesam"])
    assert min(expected.margins) > MIN_MARGIN
    assert any(expected.sam_steps) and not all(expected.sam_steps)
    assert run["passes"] == [[p, p] for p in expected.passes]
    assert run["identical_after_each_step"] == [True] * len(batches)
    _assert_close(_replica(run, 0), expected.weights[-1], what="per-replica AE-SAM")
    for r, (mean, variance) in enumerate(expected.replica_statistics):
        np.testing.assert_allclose(run["statistics"]["aesam_mean"][r], mean, rtol=1e-4)
        np.testing.assert_allclose(run["statistics"]["aesam_variance"][r], variance, rtol=1e-4)


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
def test_aesam_with_sync_perturbation_equals_one_device_on_the_global_batch(mirrored):
    run, single = _run(mirrored, "aesam_sync"), _run(mirrored, "aesam_one_device")
    initial, batches, optimizer = _mirrored_data(mirrored)
    expected = ref.aesam_train(initial, batches, optimizer, **mirrored["settings"]["aesam"])
    assert min(expected.margins) > MIN_MARGIN
    assert any(expected.sam_steps) and not all(expected.sam_steps)
    assert single["passes"] == [[p] for p in expected.passes]
    assert run["passes"] == [[p, p] for p in expected.passes]
    _assert_close(_replica(single, 0), expected.weights[-1], what="one device")
    _assert_close(_replica(run, 0), expected.weights[-1], what="synced")
    (mean, variance), = expected.replica_statistics
    for r in range(2):
        np.testing.assert_allclose(run["statistics"]["aesam_mean"][r], mean, rtol=1e-4)
        np.testing.assert_allclose(run["statistics"]["aesam_variance"][r], variance, rtol=1e-4)
