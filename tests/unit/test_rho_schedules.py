"""A step whose ρ is 0 is the plain Keras step, in one pass; ρ schedules.

- ρ = 0 from the start, set to 0 by a callback, or a schedule's value of 0:
  the step takes one forward/backward pass (counted at run time by a layer
  that calls `tf.py_function`, or on JAX advances a seed generator of its
  own) and is the plain Keras step bit for bit, inside the one traced train
  function (counted by a layer whose Python `call` runs only while tracing:
  TensorFlow's graph, JAX's `jax.jit`);
- the schedules of `keras_sam.schedules` (`LatePhase`, `EarlyPhase`,
  `Linear`), evaluated at the optimizer's iteration, against their formulas,
  and the trained weights against `variant_reference.train` with `rho_at`: a
  SAM step (float64) where the value is > 0, the plain step where it is 0;
- each schedule's config round trip and a `.keras` save/load of a SAMModel
  that has it as ρ.

The network is Dense(8, tanh) → Dense(3) (the reference's MLP), softmax
cross-entropy, SGD with momentum, a fixed batch order.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from backend_neutral import ON_JAX, ON_TENSORFLOW, PassCounter, passes, traced

import keras_sam
from keras_sam import FriendlySAMModel, GSAMModel, LookSAMModel, SAMModel
from keras_sam.schedules import EarlyPhase, LatePhase, Linear

import variant_reference as ref

BATCH = 10
LEARNING_RATE = 0.1
MOMENTUM = 0.9
RHO = 0.1
RTOL = 1e-5

_rng = np.random.default_rng(20241208)
X = _rng.normal(size=(8 * BATCH, 4)).astype("float32")
Y = _rng.integers(0, 3, size=8 * BATCH).astype("int32")
INITIAL_WEIGHTS = [
    (0.7 * _rng.normal(size=(4, 8))).astype("float32"),
    (0.1 * _rng.normal(size=8)).astype("float32"),
    (0.7 * _rng.normal(size=(8, 3))).astype("float32"),
    (0.1 * _rng.normal(size=3)).astype("float32"),
]

TRACES: list[int] = []  # one entry per Python call of `_Counter.call` (tracing)
PASSES: list[int] = []  # TensorFlow: one entry per forward pass at run time

# The compile mode of the tests that count passes and traces: TensorFlow's
# graph (its counter runs Python, which XLA cannot), JAX's `jax.jit` (the
# counter is state there; an unjitted JAX step runs its Python every step,
# so it has no trace to count).
COUNTING_JIT = ON_JAX


class _Counter(PassCounter):
    """The identity. Each Python call (in graph mode: each trace) appends to
    `TRACES`; with `at_run_time`, each forward pass that runs appends to
    `PASSES` (a `tf.py_function`, so not under XLA), or on JAX is counted by
    `PassCounter`'s seed generator (see `_passes`)."""

    def __init__(self, at_run_time: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.at_run_time = at_run_time

    def call(self, inputs):
        TRACES.append(1)
        if not self.at_run_time:
            return inputs
        if ON_JAX:
            return super().call(inputs)
        import tensorflow as tf

        def count():
            PASSES.append(1)
            return np.float32(0.0)

        zero = tf.py_function(count, [], tf.float32)
        zero.set_shape(())
        return inputs + zero

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "at_run_time": self.at_run_time}


def _base(kind: str = "mlp", counter: bool | None = None) -> keras.Model:
    """The reference's MLP ("mlp"), with Dropout ("dropout"), or with
    BatchNormalization and Dropout ("batchnorm_dropout"); `counter`: a
    `_Counter` first (True: it counts passes at run time too)."""
    keras.utils.set_random_seed(5)
    layers = [keras.Input((4,))]
    if counter is not None:
        layers.append(_Counter(at_run_time=counter))
    if kind == "batchnorm_dropout":
        layers += [keras.layers.Dense(8), keras.layers.BatchNormalization(),
                   keras.layers.Activation("tanh"), keras.layers.Dropout(0.3, seed=1)]
    else:
        layers.append(keras.layers.Dense(8, activation="tanh"))
        if kind == "dropout":
            layers.append(keras.layers.Dropout(0.3, seed=1))
    base = keras.Sequential([*layers, keras.layers.Dense(3)])
    if kind == "mlp":
        base.set_weights(INITIAL_WEIGHTS)
    return base


def _compile(model: keras.Model, jit: bool = False, momentum: float = MOMENTUM) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _fit(model: keras.Model, start: int, stop: int, callbacks=()) -> None:
    model.fit(X[start * BATCH:stop * BATCH], Y[start * BATCH:stop * BATCH], batch_size=BATCH,
              epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks))


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.trainable_variables]


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    """Every variable of the base (BatchNorm statistics, dropout seeds) and of
    the optimizer."""
    base = getattr(model, "base_model", model)
    return [(v.path, np.array(v)) for v in [*base.variables, *model.optimizer.variables]]


def _assert_close(actual, expected, rtol=RTOL):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


def _assert_bitwise(actual, expected, what: str):
    assert len(actual) == len(expected), what
    different = [n for (n, a), (_, e) in zip(actual, expected) if not np.array_equal(a, e)]
    assert not different, f"{what}: not bit-identical: {different}"


def _gap(a, b) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))


def _reference(steps: int, rho_at) -> list[np.ndarray]:
    batches = [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]
    return ref.train(ref.Variant("sam"), INITIAL_WEIGHTS, batches,
                     ref.SGD(LEARNING_RATE, MOMENTUM), rho_at=rho_at)


def _passes(model: keras.Model) -> int:
    """The forward passes counted so far (by every counter, on TensorFlow)."""
    return len(PASSES) if ON_TENSORFLOW else passes(model)


class _PerStep(keras.callbacks.Callback):
    """Per step: the passes it ran, the traces so far, the train function;
    `plan` sets `model.rho` before the steps it names."""

    def __init__(self, plan=None):
        super().__init__()
        self.plan = plan or {}
        self.passes, self.traces, self.functions = [], [], []

    def on_train_begin(self, logs=None):
        PASSES.clear()
        self._before = _passes(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        if batch in self.plan:
            self.model.rho = self.plan[batch]

    def on_train_batch_end(self, batch, logs=None):
        total = _passes(self.model)
        self.passes.append(total - self._before)
        self._before = total
        self.traces.append(len(TRACES))
        self.functions.append(self.model.train_function)


def _assert_traced_once(recorded: _PerStep, jit: bool):
    """One train function; traced once, where it is traced (not by an
    unjitted JAX step, whose Python runs every step)."""
    assert all(f is recorded.functions[0] for f in recorded.functions)
    if ON_TENSORFLOW or jit:
        assert recorded.traces == [recorded.traces[0]] * len(recorded.traces), recorded.traces


# ------------------------------------------------- ρ = 0 is the plain step
RHO_ZERO = {
    "sam": lambda b: SAMModel(b, rho=0.0),
    "gsam": lambda b: GSAMModel(b, rho=0.0, alpha=0.3),
    "looksam": lambda b: LookSAMModel(b, rho=0.0, k=2, alpha=0.7),
    "fsam": lambda b: FriendlySAMModel(b, rho=0.0),
}


@functools.cache
def _plain(kind: str, steps: int = 6) -> tuple:
    keras.utils.set_random_seed(0)
    base = _compile(_base(kind))
    _fit(base, 0, steps)
    return tuple(_state(base))


@pytest.mark.parametrize("name", list(RHO_ZERO))
def test_rho_zero_is_the_plain_keras_step_bit_for_bit(name):
    """Weights, dropout seeds and the optimizer's slots after 6 steps equal
    plain `fit`'s bit for bit."""
    keras.utils.set_random_seed(0)
    model = _compile(RHO_ZERO[name](_base("dropout")))
    _fit(model, 0, 6)
    _assert_bitwise(_state(model), list(_plain("dropout")), f"{name} at rho=0 against plain fit")


@pytest.mark.parametrize("name", list(RHO_ZERO))
def test_rho_zero_with_batchnorm_is_the_plain_keras_step_to_the_last_bits(name):
    """With BatchNormalization, TensorFlow's graph optimizer (its arithmetic
    rewrites) treats the step's one-or-two-pass `tf.cond` differently from
    plain Keras's step and may round a BatchNorm gradient one unit in the last
    place differently; every value stays within a few float32 ulps after 6
    steps (docs/design.md)."""
    keras.utils.set_random_seed(0)
    model = _compile(RHO_ZERO[name](_base("batchnorm_dropout")))
    _fit(model, 0, 6)
    actual, expected = _state(model), list(_plain("batchnorm_dropout"))
    assert len(actual) == len(expected)
    for (_, a), (_, e) in zip(actual, expected):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(e), maxulp=8)
        else:
            np.testing.assert_array_equal(a, e)


def test_rho_set_to_zero_mid_epoch_is_the_plain_keras_step_bit_for_bit():
    """Three SAM steps, then `model.rho = 0.0` from a callback for three: the
    last three are plain `fit` steps of the base from where SAM left it
    (SGD without momentum, so a fresh optimizer holds no state)."""
    keras.utils.set_random_seed(0)
    model = _compile(SAMModel(_base("dropout"), rho=RHO), momentum=0.0)
    _fit(model, 0, 6, [_PerStep(plan={3: 0.0})])

    keras.utils.set_random_seed(0)
    sam = _compile(SAMModel(_base("dropout"), rho=RHO), momentum=0.0)
    _fit(sam, 0, 3)
    after_sam_steps = _weights(sam)
    base = _compile(sam.base_model, momentum=0.0)
    _fit(base, 3, 6)
    assert _gap(_weights(base), after_sam_steps) > 1e-3  # the plain steps moved it
    _assert_bitwise([s for s in _state(model) if "iteration" not in s[0]],
                    [s for s in _state(base) if "iteration" not in s[0]],
                    "rho set to 0 against plain steps")


@pytest.mark.parametrize("name", list(RHO_ZERO))
def test_rho_zero_takes_one_pass_per_step(name):
    model = _compile(RHO_ZERO[name](_base("mlp", counter=True)), jit=COUNTING_JIT)
    recorded = _PerStep()
    _fit(model, 0, 4, [recorded])
    assert recorded.passes == [1, 1, 1, 1]
    _assert_traced_once(recorded, COUNTING_JIT)


def test_rho_zero_under_xla_matches_the_float64_plain_step():
    model = _compile(SAMModel(_base("mlp", counter=False), rho=0.0), jit=True)
    recorded = _PerStep()
    _fit(model, 0, 5, [recorded])
    _assert_close(_weights(model), _reference(5, lambda step: 0.0))
    _assert_traced_once(recorded, jit=True)


# --------------------------------------------- ρ changed during training
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_rho_switched_by_a_callback_mid_epoch(jit):
    """ρ 0.1 for steps 0-1, 0 for 2-3, 0.1 for 4-5, set by a callback in one
    epoch: SAM, plain, SAM steps (2, 1, 2 passes), one trace."""
    plan = {0: RHO, 2: 0.0, 4: RHO}
    counted = not jit or ON_JAX  # (TensorFlow's counter cannot run under XLA)
    model = _compile(SAMModel(_base("mlp", counter=counted), rho=RHO), jit=jit)
    recorded = _PerStep(plan)
    _fit(model, 0, 6, [recorded])
    expected = _reference(6, lambda step: 0.0 if step in (2, 3) else RHO)
    _assert_close(_weights(model), expected)
    _assert_traced_once(recorded, jit)
    if counted:
        assert recorded.passes == [2, 2, 1, 1, 2, 2]
    # The reference tells this run from SAM throughout and from SAM then plain.
    assert _gap(_reference(6, lambda step: RHO), expected) > 100 * RTOL
    assert _gap(_reference(6, lambda step: RHO if step < 2 else 0.0), expected) > 100 * RTOL


# ---------------------------------------------------------------- schedules
SCHEDULES = {
    "late_phase": (LatePhase(RHO, 3), lambda s: RHO if s >= 3 else 0.0),
    "early_phase": (EarlyPhase(RHO, 3), lambda s: RHO if s < 3 else 0.0),
    "linear_down": (Linear(0.2, 0.0, 3), lambda s: 0.2 - 0.2 * min(s / 3, 1.0)),
    "linear_up": (Linear(0.0, 0.2, 4), lambda s: 0.2 * min(s / 4, 1.0)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_values_follow_their_formulas(name):
    schedule, formula = SCHEDULES[name]
    steps = np.arange(0, 12)
    eager = [float(schedule(int(s))) for s in steps]
    in_graph_schedule = traced(lambda s: schedule(s))
    counter = keras_sam.backend.counter_dtype()  # the optimizer's step: int64, int32 on JAX
    in_graph = [float(in_graph_schedule(keras.ops.convert_to_tensor(s, counter))) for s in steps]
    expected = [float(np.float32(formula(int(s)))) for s in steps]
    np.testing.assert_allclose(eager, expected, rtol=1e-6, atol=1e-7)
    if ON_TENSORFLOW:
        np.testing.assert_array_equal(in_graph, eager)
    else:  # XLA (jax.jit) may fuse the ramp's multiply-add: one rounding, not two
        np.testing.assert_array_max_ulp(np.float32(in_graph), np.float32(eager), maxulp=1)
    # Exactly zero where the formula is zero (a one-pass step), exactly ρ
    # where it is ρ.
    for values in (eager, in_graph):
        for value, want in zip(values, expected):
            if want == 0.0 or want == np.float32(RHO):
                assert value == want


def test_schedule_boundaries():
    assert [float(LatePhase(0.05, 300)(s)) for s in (0, 299, 300, 10**6)] == [
        0.0, 0.0, np.float32(0.05), np.float32(0.05)]
    assert [float(EarlyPhase(0.05, 300)(s)) for s in (0, 299, 300, 10**6)] == [
        np.float32(0.05), np.float32(0.05), 0.0, 0.0]
    assert [float(LatePhase(0.05, 0)(0)), float(EarlyPhase(0.05, 0)(0))] == [np.float32(0.05), 0]
    assert [float(Linear(1.0, -1.0, 10)(s)) for s in (0, 5, 10, 11, 10**6)] == [
        1.0, 0.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_weights_and_passes_match_float64_reference(name):
    """SAM steps (two passes) where the value is > 0, plain steps (one pass)
    where it is 0; one trace."""
    schedule, formula = SCHEDULES[name]
    model = _compile(SAMModel(_base("mlp", counter=True), rho=schedule), jit=COUNTING_JIT)
    recorded = _PerStep()
    _fit(model, 0, 5, [recorded])
    _assert_close(_weights(model), _reference(5, formula))
    assert recorded.passes == [2 if formula(s) > 0 else 1 for s in range(5)]
    _assert_traced_once(recorded, COUNTING_JIT)
    # The reference tells the schedule from its constant neighbours.
    assert _gap(_reference(5, lambda s: 0.0), _reference(5, formula)) > 100 * RTOL
    assert _gap(_reference(5, lambda s: RHO), _reference(5, formula)) > 100 * RTOL


def test_late_phase_over_five_steps_takes_seven_passes():
    model = _compile(SAMModel(_base("mlp", counter=True), rho=LatePhase(RHO, 3)),
                     jit=COUNTING_JIT)
    recorded = _PerStep()
    _fit(model, 0, 5, [recorded])
    assert sum(recorded.passes) == 3 * 1 + 2 * 2


def test_schedule_under_xla_matches_float64_reference():
    schedule, formula = SCHEDULES["linear_down"]
    model = _compile(SAMModel(_base("mlp", counter=False), rho=schedule), jit=True)
    _fit(model, 0, 5)
    _assert_close(_weights(model), _reference(5, formula))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_config_round_trip(name):
    schedule, _ = SCHEDULES[name]
    config = schedule.get_config()
    clone = type(schedule).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(revived) is type(schedule)
    assert revived.get_config() == config
    for step in range(8):
        assert float(revived(step)) == float(schedule(step))


@pytest.mark.parametrize("name", ["late_phase", "early_phase", "linear_down"])
def test_sam_with_a_schedule_saves_loads_and_goes_on(name, tmp_path):
    """Saved after 2 steps and loaded: ρ is the same schedule, evaluated at
    the restored iteration; 3 more steps equal the original model's and the
    float64 reference's."""
    schedule, formula = SCHEDULES[name]
    model = _compile(SAMModel(_base("mlp"), rho=schedule))
    _fit(model, 0, 2)
    model.save(tmp_path / "scheduled.keras")
    loaded = keras.models.load_model(tmp_path / "scheduled.keras")
    assert type(loaded.rho) is type(schedule)
    assert loaded.rho.get_config() == schedule.get_config()
    assert isinstance(loaded.get_config()["rho"], dict)
    _fit(loaded, 2, 5)
    _fit(model, 2, 5)
    _assert_bitwise(_state(loaded), _state(model), "loaded and trained on")
    _assert_close(_weights(loaded), _reference(5, formula))


# --------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: LatePhase(-0.1, 3), "rho"),
        (lambda: LatePhase(float("nan"), 3), "rho"),
        (lambda: LatePhase(0.1, -1), "start_step"),
        (lambda: LatePhase(0.1, 1.5), "start_step"),
        (lambda: EarlyPhase(1e5, 3), "rho"),
        (lambda: EarlyPhase(0.1, -1), "stop_step"),
        (lambda: EarlyPhase(0.1, True), "stop_step"),
        (lambda: Linear(0.1, 0.0, 0), "steps"),
        (lambda: Linear(float("inf"), 0.0, 3), "start"),
        (lambda: Linear(0.1, "0", 3), "end"),
    ],
)
def test_bad_schedule_arguments_are_refused_naming_them(make, argument):
    with pytest.raises(keras_sam.InvalidArgumentError, match=f"`{argument}`"):
        make()
