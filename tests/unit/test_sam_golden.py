"""Golden tests: `SAMModel.fit` against an independent float64 NumPy SAM.

Every run starts from float32 weights set by hand and trains on batches in a
fixed order (`shuffle=False`); the weights after every step are compared with
`numpy_reference`, which shares no code with Keras. Each comparison is paired
with an assertion that the wrong algorithm (plain SGD, the gradient taken at w,
the regularizer missing from pass 2, ...) lands far outside the tolerance, so
none of these tests can pass by accident.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import numpy as np
import pytest
from backend_neutral import synced

from keras_sam import SAMModel

import numpy_reference as ref

RTOL, ATOL = 1e-5, 1e-6
# Weights are of order 1, so FAR is 100x the tolerance: a wrong algorithm must
# be at least this far from the right one for a comparison to mean anything.
FAR = 1e-3
RHO = 0.1
INPUTS, HIDDEN, BATCH, SAMPLES = 3, 4, 4, 20  # 5 steps per epoch
STEPS = SAMPLES // BATCH
CLASS_WEIGHT = {0: 0.5, 1: 2.0, 2: 1.25}


def assert_weights_close(actual, desired, what=""):
    assert len(actual) == len(desired), what
    for i, (a, d) in enumerate(zip(actual, desired)):
        np.testing.assert_allclose(a, d, rtol=RTOL, atol=ATOL, err_msg=f"{what} variable {i}")


def max_difference(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(a, b)
    )


def trainable(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.trainable_variables]


def sparse_cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ----------------------------------------------------------- golden cases
OPTIMIZERS = {
    # name: (Keras optimizer, the same update rule in NumPy)
    "sgd": (lambda: keras.optimizers.SGD(0.2), lambda: ref.SGD(0.2)),
    "momentum": (
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: ref.SGD(0.1, momentum=0.9),
    ),
    "nesterov": (
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        lambda: ref.SGD(0.1, momentum=0.9, nesterov=True),
    ),
    "adam": (lambda: keras.optimizers.Adam(0.01), lambda: ref.Adam(0.01)),
}


@dataclass(frozen=True)
class Case:
    activation: str | None  # None: a linear model; else Dense-activation-Dense
    loss: str  # "mse" or "cross_entropy" (softmax, integer labels)
    optimizer: str  # a key of OPTIMIZERS
    l2: float = 0.0  # keras.regularizers.L2 on every kernel
    weighting: str | None = None  # "sample_weight" or "class_weight"
    validation: bool = False

    @property
    def outputs(self) -> int:
        return 2 if self.loss == "mse" else 3

    @property
    def kernel_indices(self) -> tuple[int, ...]:
        return (0,) if self.activation is None else (0, 2)


CASES = {
    "linear-mse-sample_weight-momentum": Case(
        None, "mse", "momentum", weighting="sample_weight", validation=True
    ),
    "linear-xent-class_weight-nesterov": Case(
        None, "cross_entropy", "nesterov", weighting="class_weight"
    ),
    "mlp_tanh-mse-l2-sgd": Case("tanh", "mse", "sgd", l2=0.05),
    "mlp_relu-xent-adam": Case("relu", "cross_entropy", "adam"),
}


@dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    initial: list[np.ndarray]
    sample_weight: np.ndarray | None  # what fit gets (None for class_weight)
    reference_weight: np.ndarray | None  # the per-sample weights in effect


def make_data(case: Case) -> Data:
    rng = np.random.default_rng(7)

    def inputs(n):
        return rng.normal(size=(n, INPUTS)).astype("float32")

    def targets(n):
        if case.loss == "mse":
            return rng.normal(size=(n, case.outputs)).astype("float32")
        return rng.integers(0, case.outputs, size=(n,)).astype("int32")

    x, y, x_val, y_val = inputs(SAMPLES), targets(SAMPLES), inputs(8), targets(8)
    shapes = [(INPUTS, case.outputs), (case.outputs,)]
    if case.activation is not None:
        shapes = [(INPUTS, HIDDEN), (HIDDEN,), (HIDDEN, case.outputs), (case.outputs,)]
    initial = [(0.5 * rng.normal(size=s)).astype("float32") for s in shapes]
    sample_weight = reference_weight = None
    if case.weighting == "sample_weight":
        sample_weight = reference_weight = rng.uniform(0.2, 2.0, SAMPLES).astype("float32")
    elif case.weighting == "class_weight":
        reference_weight = np.array([CLASS_WEIGHT[int(label)] for label in y], "float32")
    return Data(x, y, x_val, y_val, initial, sample_weight, reference_weight)


def keras_loss(case: Case):
    return "mean_squared_error" if case.loss == "mse" else sparse_cross_entropy()


def build_base(case: Case, initial) -> keras.Model:
    regularizer = keras.regularizers.L2(case.l2) if case.l2 else None
    layers = [keras.Input((INPUTS,))]
    if case.activation is not None:
        layers.append(keras.layers.Dense(HIDDEN, case.activation, kernel_regularizer=regularizer))
    layers.append(keras.layers.Dense(case.outputs, kernel_regularizer=regularizer))
    base = keras.Sequential(layers)
    base.set_weights(initial)
    return base


def objective_of(case: Case, *, l2: bool = True):
    network = ref.linear() if case.activation is None else ref.mlp(case.activation)
    loss = ref.mean_squared_error if case.loss == "mse" else ref.softmax_cross_entropy
    return ref.make_objective(
        network, loss, l2=case.l2 if l2 else 0.0, l2_params=case.kernel_indices
    )


@dataclass
class Run:
    case: Case
    data: Data
    model: SAMModel
    weights: list[list[np.ndarray]]  # start, then after every step
    history: dict


def train_case(name: str, jit_compile: bool, step_weights, steps_per_execution: int = 1) -> Run:
    case = CASES[name]
    data = make_data(case)
    base = build_base(case, data.initial)
    model = SAMModel(base, rho=RHO)
    model.compile(
        optimizer=OPTIMIZERS[case.optimizer][0](),
        loss=keras_loss(case),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    recorder = step_weights(base)
    history = model.fit(
        data.x,
        data.y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        sample_weight=data.sample_weight,
        class_weight=CLASS_WEIGHT if case.weighting == "class_weight" else None,
        validation_data=(data.x_val, data.y_val) if case.validation else None,
        callbacks=[recorder],
    )
    return Run(case, data, model, recorder.weights, history.history)


@pytest.fixture(scope="module")
def step_weights(step_weights):
    """conftest's `StepWeights`, reading the weights `fit` trains on JAX too
    (where Keras holds them apart from the variables until asked)."""

    class SyncedStepWeights(step_weights):
        def _snapshot(self):
            synced(self.model)
            super()._snapshot()

    return SyncedStepWeights


@pytest.fixture(scope="module")
def golden(step_weights):
    """`golden(name, jit_compile)`: the cached `Run` of a case (one fit each)."""
    return functools.cache(lambda name, jit: train_case(name, jit, step_weights))


def reference(
    run: Run,
    *,
    rho=RHO,
    weighted: bool = True,
    l2_in_perturbed_pass: bool = True,
) -> ref.History:
    case, data = run.case, run.data
    weights = data.reference_weight if weighted else None
    return ref.train(
        objective_of(case),
        data.initial,
        ref.batches_of(data.x, data.y, BATCH, weights),
        OPTIMIZERS[case.optimizer][1](),
        rho,
        perturbed_objective=None if l2_in_perturbed_pass else objective_of(case, l2=False),
    )


JIT = pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])


# ------------------------------------------------------------ golden tests
@JIT
@pytest.mark.parametrize("name", CASES)
def test_weights_match_float64_reference_after_every_step(golden, name, jit_compile):
    run = golden(name, jit_compile)
    expected = reference(run)
    assert len(run.weights) == STEPS + 1
    np.testing.assert_array_equal(run.weights[0][0], run.data.initial[0])
    for step in range(1, STEPS + 1):
        assert_weights_close(run.weights[step], expected.params[step], what=f"step {step}")
    # The reference is SAM, not plain descent with the same optimizer.
    plain = reference(run, rho=0.0)
    assert max_difference(plain.params[-1], expected.params[-1]) > FAR


@JIT
@pytest.mark.parametrize("name", CASES)
def test_logged_loss_is_clean_loss_and_sharpness_is_mean_difference(golden, name, jit_compile):
    run = golden(name, jit_compile)
    expected = reference(run)
    logged = {key: value for key, value in run.history.items() if not key.startswith("val_")}
    assert set(logged) == {"loss", "sharpness"}
    # Keras weights each batch's loss by its size; all batches are equal here.
    np.testing.assert_allclose(logged["loss"][0], np.mean(expected.losses), rtol=RTOL)
    np.testing.assert_allclose(
        logged["sharpness"][0], np.mean(expected.sharpness), rtol=RTOL, atol=ATOL
    )
    assert abs(np.mean(expected.sharpness)) > FAR


def test_second_gradient_is_taken_at_perturbed_weights(golden):
    """Plain SGD(0.2): w1 = w0 - 0.2 * g(w0 + ε̂), not w0 - 0.2 * g(w0)."""
    run = golden("mlp_tanh-mse-l2-sgd", False)
    w0, w1 = run.weights[0], run.weights[1]
    applied = [(np.float64(a) - b) / 0.2 for a, b in zip(w0, w1)]
    first_batch = ref.batches_of(run.data.x, run.data.y, BATCH)[0]
    step = ref.sam_step(objective_of(run.case), w0, first_batch, RHO)
    for a, expected in zip(applied, step.sam_gradients):
        np.testing.assert_allclose(a, expected, rtol=1e-4, atol=1e-5)
    assert max_difference(step.gradients, step.sam_gradients) > 100 * 1e-5


def test_kernel_regularizer_enters_both_passes(golden):
    run = golden("mlp_tanh-mse-l2-sgd", False)
    both = reference(run)
    clean_only = reference(run, l2_in_perturbed_pass=False)
    assert max_difference(both.params[-1], clean_only.params[-1]) > FAR
    assert_weights_close(run.weights[-1], both.params[-1])


def test_sample_weights_weight_both_passes(golden):
    run = golden("linear-mse-sample_weight-momentum", False)
    weighted, unweighted = reference(run), reference(run, weighted=False)
    assert max_difference(weighted.params[-1], unweighted.params[-1]) > FAR
    assert_weights_close(run.weights[-1], weighted.params[-1])


def test_class_weight_equals_equivalent_sample_weight(golden):
    run = golden("linear-xent-class_weight-nesterov", False)
    weighted, unweighted = reference(run), reference(run, weighted=False)
    assert max_difference(weighted.params[-1], unweighted.params[-1]) > FAR
    assert_weights_close(run.weights[-1], weighted.params[-1])


def test_validation_and_evaluate_are_the_base_models(golden):
    run = golden("linear-mse-sample_weight-momentum", False)
    assert set(run.history) == {"loss", "sharpness", "val_loss"}
    data = run.data
    final = run.weights[-1]
    val_loss, _ = objective_of(run.case)(final, (data.x_val, data.y_val, None))
    np.testing.assert_allclose(run.history["val_loss"][0], val_loss, rtol=RTOL)

    results = run.model.evaluate(data.x_val, data.y_val, return_dict=True, verbose=0)
    plain = build_base(run.case, final)
    plain.compile(optimizer="sgd", loss=keras_loss(run.case))
    assert results == plain.evaluate(data.x_val, data.y_val, return_dict=True, verbose=0)
    assert "sharpness" not in results


def test_steps_per_execution_2_gives_the_same_weights_as_1(golden, step_weights):
    name = "linear-mse-sample_weight-momentum"
    one = golden(name, False)
    two = train_case(name, False, step_weights, steps_per_execution=2)
    for a, b in zip(two.weights[-1], one.weights[-1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(two.history["loss"], one.history["loss"], rtol=1e-7)


# --------------------------------------------------- equivalences, no NaN
def _batchnorm_mlp(seed: int, dropout: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((INPUTS,)),
        keras.layers.Dense(HIDDEN, name="dense_in"),
        keras.layers.BatchNormalization(momentum=0.99, name="bn"),
        keras.layers.Activation("tanh"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(2))
    return keras.Sequential(layers)


def _regression_data(samples: int = 12, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, INPUTS)).astype("float32")
    return x, rng.normal(size=(samples, 2)).astype("float32")


def test_rho_zero_equals_plain_keras_fit():
    """With ρ = 0, ε̂ = 0: SAMModel is the base optimizer's own step, bit for bit,
    BatchNorm moving statistics and logged loss included."""
    x, y = _regression_data()
    runs = []
    for wrap in (True, False):
        base = _batchnorm_mlp(seed=11)
        model = SAMModel(base, rho=0.0) if wrap else base
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        runs.append(([np.array(v.numpy()) for v in base.weights], history.history))
    (sam_weights, sam_logs), (plain_weights, plain_logs) = runs
    assert len(sam_weights) == len(plain_weights) == 8  # incl. moving mean/variance
    for a, b in zip(sam_weights, plain_weights):
        np.testing.assert_array_equal(a, b)
    assert sam_logs["loss"] == plain_logs["loss"]
    assert sam_logs["sharpness"] == [0.0, 0.0]


def test_zero_learning_rate_keeps_weights_and_moves_batchnorm_once_per_step():
    """lr = 0 with BatchNorm and dropout: trainable weights stay bit-identical
    for 6 steps, while the moving statistics follow the hand formula with
    momentum 0.99 from the *clean* pass's batch statistics, once per step."""
    x, y = _regression_data()
    epochs = 4  # of 3 steps each
    base = _batchnorm_mlp(seed=5, dropout=0.5)
    initial = trainable(base)
    model = SAMModel(base, rho=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    for a, b in zip(trainable(base), initial):
        assert np.array_equal(a, b)

    kernel, bias = (np.float64(v) for v in base.get_layer("dense_in").get_weights())
    mean, variance = np.zeros(HIDDEN), np.ones(HIDDEN)
    mean_twice, variance_twice = mean.copy(), variance.copy()  # a double update
    for _ in range(epochs):
        for start in range(0, len(x), BATCH):
            hidden = x[start : start + BATCH] @ kernel + bias  # the clean pass at w
            mean = 0.99 * mean + 0.01 * hidden.mean(axis=0)
            variance = 0.99 * variance + 0.01 * hidden.var(axis=0)
            for _ in range(2):
                mean_twice = 0.99 * mean_twice + 0.01 * hidden.mean(axis=0)
                variance_twice = 0.99 * variance_twice + 0.01 * hidden.var(axis=0)
    bn = base.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=RTOL, atol=1e-7)
    assert np.max(np.abs(mean_twice - mean)) > 100 * (RTOL * np.max(np.abs(mean)) + 1e-7)
    assert np.max(np.abs(variance - 1.0)) > FAR


def test_all_zero_gradient_gives_zero_perturbation_not_nan():
    """g = 0 (zero inputs, zero weights, zero targets): ε̂ = 0·g/(0 + eps) = 0."""
    base = keras.Sequential(
        [keras.Input((INPUTS,)), keras.layers.Dense(2, kernel_initializer="zeros")]
    )
    model = SAMModel(base, rho=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    zeros_x, zeros_y = np.zeros((12, INPUTS), "float32"), np.zeros((12, 2), "float32")
    history = model.fit(zeros_x, zeros_y, batch_size=BATCH, epochs=1, verbose=0)
    for weight in trainable(base):
        assert np.array_equal(weight, np.zeros_like(weight))
    assert history.history == {"loss": [0.0], "sharpness": [0.0]}


# --------------------------------------------------------------- rho
class TraceCountingSAMModel(SAMModel):
    """Counts Python executions of `train_step`: one per trace in a graph
    (TensorFlow's default) or a `jax.jit` (JAX's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_step_traces = 0

    def train_step(self, *args):  # (data) on TensorFlow, (state, data) on JAX
        self.train_step_traces += 1
        return super().train_step(*args)


class _SwitchOffRho(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.traces_after_first_epoch = self.model.train_step_traces
            self.model.rho = 0.0


def test_rho_set_by_callback_takes_effect_without_retracing(step_weights):
    case = CASES["mlp_tanh-mse-l2-sgd"]
    data = make_data(case)
    base = build_base(case, data.initial)
    model = TraceCountingSAMModel(base, rho=RHO)
    model.compile(optimizer=OPTIMIZERS[case.optimizer][0](), loss="mse")
    recorder, switch = step_weights(base), _SwitchOffRho()
    history = model.fit(
        data.x, data.y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
        callbacks=[recorder, switch],
    )  # fmt: skip
    batches = ref.batches_of(data.x, data.y, BATCH) * 2

    def rho_by_step(iteration):
        return RHO if iteration < STEPS else 0.0

    objective = objective_of(case)
    optimizer = OPTIMIZERS[case.optimizer][1]
    expected = ref.train(objective, data.initial, batches, optimizer(), rho_by_step)
    for step in range(1, 2 * STEPS + 1):
        assert_weights_close(recorder.weights[step], expected.params[step], what=f"step {step}")
    unchanged = ref.train(objective, data.initial, batches, optimizer(), RHO)
    assert max_difference(unchanged.params[-1], expected.params[-1]) > FAR
    assert history.history["sharpness"][1] == 0.0
    assert model.rho == 0.0
    assert switch.traces_after_first_epoch == model.train_step_traces == 1


class _UnusedWeight(keras.layers.Layer):
    """Passes its input through; owns a trainable weight that gets no gradient."""

    def build(self, input_shape):
        self.unused = self.add_weight(shape=(2,), initializer="ones", name="unused")

    def call(self, inputs):
        return inputs


@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
def test_rho_schedule_is_evaluated_at_optimizer_iterations_and_skips_unused_weights(
    step_weights,
):
    """ρ_t = schedule(optimizer.iterations before step t). A weight without a
    gradient counts as zero in ‖g‖ and is left alone."""
    case = CASES["mlp_tanh-mse-l2-sgd"]
    data = make_data(case)
    base = build_base(case, data.initial)
    base = keras.Sequential([keras.Input((INPUTS,)), *base.layers, _UnusedWeight()])
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1, 3], [0.3, 0.0, 0.1])
    model = SAMModel(base, rho=schedule)
    model.compile(optimizer=OPTIMIZERS[case.optimizer][0](), loss="mse")
    recorder = step_weights(base)
    model.fit(
        data.x, data.y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
        callbacks=[recorder],
    )  # fmt: skip

    def rho_at(iteration):
        return 0.3 if iteration <= 1 else (0.0 if iteration <= 3 else 0.1)

    batches = ref.batches_of(data.x, data.y, BATCH)
    objective, optimizer = objective_of(case), OPTIMIZERS[case.optimizer][1]
    expected = ref.train(objective, data.initial, batches, optimizer(), rho_at)
    for step in range(1, STEPS + 1):
        assert_weights_close(recorder.weights[step][:4], expected.params[step], what=f"{step}")
        np.testing.assert_array_equal(recorder.weights[step][4], np.ones(2, "float32"))
    one_step_late = ref.train(
        objective, data.initial, batches, optimizer(), lambda i: rho_at(i + 1)
    )
    assert max_difference(one_step_late.params[-1], expected.params[-1]) > FAR


# ------------------------------------------------------------- dropout
def test_dropout_masks_differ_between_passes_and_across_steps():
    """A model whose loss reads the dropout mask directly.

    Input ones(16) -> Dropout(0.5) -> z ∈ {0, 2}^16 -> Dense(1, no bias,
    kernel k) with the loss L = k·z. Then ∂L/∂k = z whatever k is, so with
    SGD(lr=1) the update k0 - k1 is the mask of pass 2, while the logged loss
    k0·z1 with k0 = (1, 2, 4, ...) spells the mask of pass 1 in binary. Each
    epoch is one step starting from k0 again.
    """
    units, epochs, rho = 16, 6, 0.25
    k0 = (2.0 ** np.arange(units)).astype("float32").reshape(units, 1)
    base = keras.Sequential(
        [
            keras.Input((units,)),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, use_bias=False, name="readout"),
        ]
    )
    readout = base.get_layer("readout")

    def output_is_loss(y_true, y_pred):
        return keras.ops.sum(y_pred, axis=-1)

    class ResetAndRecord(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.kernels = []

        def on_epoch_begin(self, epoch, logs=None):
            readout.kernel.assign(k0)

        def on_epoch_end(self, epoch, logs=None):
            self.kernels.append(readout.kernel.numpy().copy())

    model = SAMModel(base, rho=rho)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=output_is_loss)
    recorder = ResetAndRecord()
    history = model.fit(
        np.ones((1, units), "float32"), np.zeros((1, 1), "float32"),
        batch_size=1, epochs=epochs, verbose=0, callbacks=[recorder],
    ).history  # fmt: skip

    clean_masks, perturbed_masks = [], []
    for loss, sharpness, kernel in zip(history["loss"], history["sharpness"], recorder.kernels):
        code = int(loss) // 2
        assert loss == 2 * code  # an exact binary code
        z1 = 2.0 * ((code >> np.arange(units)) & 1)
        z2 = (k0 - kernel).ravel().astype(np.float64)
        assert set(np.unique(z2)) <= {0.0, 2.0}
        clean_masks.append(tuple(z1))
        perturbed_masks.append(tuple(z2))
        # Sharpness = L(w + ε̂; mask 2) - L(w; mask 1) with ε̂ = ρ z1 / ‖z1‖.
        e_hat = rho * z1 / np.linalg.norm(z1)
        expected = (k0.ravel() + e_hat) @ z2 - k0.ravel() @ z1
        np.testing.assert_allclose(sharpness, expected, rtol=1e-6)
    assert all(a != b for a, b in zip(clean_masks, perturbed_masks))
    assert len(set(clean_masks + perturbed_masks)) == 2 * epochs


# ------------------------------------------------- multi-input, multi-output
def test_multi_input_multi_output_dict_losses_match_reference(step_weights):
    """Inputs {a, b} -> concat -> heads {reg: mse, cls: softmax xent} with loss
    weights; ε̂ is normalised over both heads together."""
    rng = np.random.default_rng(5)
    n = 12
    x = {
        "a": rng.normal(size=(n, 2)).astype("float32"),
        "b": rng.normal(size=(n, 3)).astype("float32"),
    }
    y = {
        "reg": rng.normal(size=(n, 2)).astype("float32"),
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
    }
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    outputs = {
        "reg": keras.layers.Dense(2, name="reg")(joined),
        "cls": keras.layers.Dense(3, name="cls")(joined),
    }
    base = keras.Model({"a": a, "b": b}, outputs)
    index = {v.path: i for i, v in enumerate(base.trainable_variables)}
    reg_ids = [index["reg/kernel"], index["reg/bias"]]
    cls_ids = [index["cls/kernel"], index["cls/bias"]]
    model = SAMModel(base, rho=0.2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
        loss={"reg": "mse", "cls": sparse_cross_entropy()},
        loss_weights={"reg": 0.5, "cls": 2.0},
    )
    recorder = step_weights(base)
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[recorder])

    regression = ref.make_objective(ref.linear(), ref.mean_squared_error)
    classification = ref.make_objective(ref.linear(), ref.softmax_cross_entropy)

    def heads(params, batch):
        """(total, per-head losses, gradients) of the two-head model."""
        inputs, targets, _ = batch
        reg_loss, reg_grads = regression([params[i] for i in reg_ids], (inputs, targets[0], None))
        cls_loss, cls_grads = classification(
            [params[i] for i in cls_ids], (inputs, targets[1], None)
        )
        gradients = [None] * len(params)
        for i, g in zip(reg_ids, reg_grads):
            gradients[i] = 0.5 * g
        for i, g in zip(cls_ids, cls_grads):
            gradients[i] = 2.0 * g
        return 0.5 * reg_loss + 2.0 * cls_loss, (reg_loss, cls_loss), gradients

    def objective(params, batch):
        total, _, gradients = heads(params, batch)
        return total, gradients

    joined_x = np.concatenate([x["a"], x["b"]], axis=1)
    batches = [
        (joined_x[s : s + BATCH], (y["reg"][s : s + BATCH], y["cls"][s : s + BATCH]), None)
        for s in range(0, n, BATCH)
    ]
    expected = ref.train(objective, recorder.weights[0], batches, ref.SGD(0.1, 0.5), 0.2)
    for step in range(1, len(batches) + 1):
        assert_weights_close(recorder.weights[step], expected.params[step], what=f"step {step}")
    per_head = np.array([heads(p, batch)[1] for p, batch in zip(expected.params, batches)])
    logs = history.history
    assert set(logs) == {"loss", "reg_loss", "cls_loss", "sharpness"}
    np.testing.assert_allclose(logs["loss"][0], np.mean(expected.losses), rtol=RTOL)
    np.testing.assert_allclose(logs["reg_loss"][0], per_head[:, 0].mean(), rtol=RTOL)
    np.testing.assert_allclose(logs["cls_loss"][0], per_head[:, 1].mean(), rtol=RTOL)
    np.testing.assert_allclose(logs["sharpness"][0], np.mean(expected.sharpness), rtol=RTOL)
    plain = ref.train(objective, recorder.weights[0], batches, ref.SGD(0.1, 0.5), 0.0)
    assert max_difference(plain.params[-1], expected.params[-1]) > FAR
