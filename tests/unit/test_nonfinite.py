"""Non-finite steps, and failures inside a step, leave nothing half-done.

Issue #5. With `skip_nonfinite=True`, a batch whose loss or gradient is not
finite (a NaN input, an infinite label, or weights a huge learning rate has
pushed to where the loss overflows) is a no-op: weights, BatchNorm
statistics, every optimizer variable (iterations, learning rate, slots) and
LookSAM's step counter and stored direction are bitwise what they were, and
`skipped_steps` counts it. A run with bad batches therefore equals, bit for
bit, the run on the same data with the bad batches removed, learning-rate
schedule included (it reads the iteration count, which did not advance).
The one thing that does advance is the dropout seed, so that masks never
repeat (as when Keras's `LossScaleOptimizer` skips a step).

Without the option, SAM does what plain Keras does with the same batch: the
weights take the same NaNs, bit for bit.

Whatever happens, the weights are never left at w + ε̂: an exception raised
during the perturbed pass (eagerly, or as a failing op inside the compiled
step) leaves them exactly at w. That is a TensorFlow test (`tensorflow_only`):
a JAX step assigns no variable until it has returned all their new values,
and its layers' Python runs while tracing, where a layer's calls are not the
passes that run. The rest runs on JAX too.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from backend_neutral import tensorflow_only

from keras_sam import GSAMModel, LookSAMModel, SAMModel

VARIANTS = {
    "sam": lambda base, **kw: SAMModel(base, rho=0.1, **kw),
    "gsam": lambda base, **kw: GSAMModel(base, rho=0.1, alpha=0.3, **kw),
    # k=2: bad batch 1 falls on a reuse step and bad batch 3 on a full step
    # (a skipped step does not advance the step counter).
    "looksam": lambda base, **kw: LookSAMModel(base, rho=0.1, k=2, alpha=0.7, **kw),
}
BATCH = 4
BAD_STEPS = (1, 3)  # 0-based steps whose batch holds a NaN input / an inf label


def _data():
    """6 batches; batch 1 has a NaN input, batch 3 an infinite label."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * BATCH, 4)).astype("float32")
    y = rng.normal(size=(6 * BATCH, 2)).astype("float32")
    x[1 * BATCH + 2, 1] = np.nan
    y[3 * BATCH + 1, 0] = np.inf
    return x, y


def _without_bad_batches(x, y):
    keep = [i for i in range(len(x)) if i // BATCH not in BAD_STEPS]
    return x[keep], y[keep]


def _base(dropout: bool = False) -> keras.Model:
    keras.utils.set_random_seed(5)
    layers = [keras.Input((4,)), keras.layers.Dense(6, activation="tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(0.25))
    layers += [keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    return keras.Sequential(layers)


def _compile(model: keras.Model, learning_rate=None, **kwargs) -> keras.Model:
    if learning_rate is None:
        # A schedule: it reads `optimizer.iterations` at every step.
        learning_rate = keras.optimizers.schedules.ExponentialDecay(0.05, 1, 0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=False, **kwargs
    )
    model.build((None, 4))  # LookSAM's g_v exist before the first snapshot
    return model


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    """Every model and optimizer variable but the `skipped_steps` counter."""
    variables = [*model.variables, *model.optimizer.variables]
    return [(v.path, np.array(v.numpy())) for v in variables if "skipped_steps" not in v.path]


def _differences(a, b) -> list[str]:
    """Names (from `a`) of the variables whose values differ, NaN equal to NaN."""
    assert len(a) == len(b)
    return [name for (name, u), (_, v) in zip(a, b) if not np.array_equal(u, v, equal_nan=True)]


class _EveryStep(keras.callbacks.Callback):
    """The state before training and after each step, and each step's logs."""

    def __init__(self):
        super().__init__()
        self.states, self.logs = [], []

    def on_train_begin(self, logs=None):
        self.states.append(_state(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(_state(self.model))
        self.logs.append(dict(logs))


def _fit(model, x, y, callbacks=()):
    return model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, callbacks=list(callbacks), verbose=0
    )


# ------------------------------------------------------ skip_nonfinite=True
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_nonfinite_batch_is_a_no_op_and_the_run_equals_the_run_without_it(variant):
    x, y = _data()
    model = _compile(VARIANTS[variant](_base(), skip_nonfinite=True), metrics=["mae"])
    steps = _EveryStep()
    history = _fit(model, x, y, [steps])

    for step, (before, after) in enumerate(zip(steps.states, steps.states[1:])):
        changed = _differences(before, after)
        if step in BAD_STEPS:
            assert changed == [], f"step {step} changed {changed}"
        else:  # a good step moves every weight and the iteration count
            moved = {v.path for v in model.trainable_variables} | {model.optimizer.iterations.path}
            assert moved <= set(changed), f"step {step} left {moved - set(changed)} unchanged"
    assert [log["skipped_steps"] for log in steps.logs] == [0, 1, 1, 2, 2, 2]
    assert history.history["skipped_steps"] == [2]
    assert int(model.optimizer.iterations.numpy()) == 6 - len(BAD_STEPS)
    for _, value in _state(model):
        assert np.all(np.isfinite(value))

    clean = _compile(VARIANTS[variant](_base(), skip_nonfinite=True), metrics=["mae"])
    clean_history = _fit(clean, *_without_bad_batches(x, y))
    assert _differences(_state(model), _state(clean)) == []
    # A skipped batch counts in no log: loss, metrics and sharpness are those
    # of the good batches alone, and never NaN.
    for log in steps.logs:
        assert all(np.isfinite(value) for value in log.values()), log
    logs = {name: values for name, values in history.history.items() if name != "skipped_steps"}
    clean_logs = clean_history.history
    assert clean_logs.pop("skipped_steps") == [0]
    assert logs == clean_logs


def test_terminate_on_nan_lets_a_skipping_run_go_on():
    """The skipped steps leave no NaN in the logs for `TerminateOnNaN` to see."""
    x, y = _data()
    model = _compile(SAMModel(_base(), rho=0.1, skip_nonfinite=True))
    history = _fit(model, x, y, [keras.callbacks.TerminateOnNaN()])
    assert int(model.optimizer.iterations.numpy()) == 6 - len(BAD_STEPS)
    assert history.history["skipped_steps"] == [len(BAD_STEPS)]
    assert np.isfinite(history.history["loss"][0])


def test_the_skip_counter_counts_in_its_own_dtype():
    """`skipped_steps` is an int64 counter, or int32 on JAX without 64-bit
    mode: counting a skip asks for no dtype the backend lacks (on JAX an
    int64 cast is truncated to int32, with a warning at every trace)."""
    x, y = _data()
    model = _compile(SAMModel(_base(), rho=0.1, skip_nonfinite=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _fit(model, x, y)
    assert history.history["skipped_steps"] == [len(BAD_STEPS)]
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert not truncated, truncated[0]


def test_dropout_masks_advance_over_a_skipped_step():
    """Everything else is restored; the seed is not, so masks never repeat."""
    x, y = _data()
    model = _compile(SAMModel(_base(dropout=True), rho=0.1, skip_nonfinite=True))
    steps = _EveryStep()
    _fit(model, x, y, [steps])
    before, after = steps.states[1], steps.states[2]  # around bad step 1
    assert [n.split("/")[-1] for n in _differences(before, after)] == ["seed_generator_state"]


def test_a_huge_learning_rate_stops_at_the_last_finite_weights():
    """Step 0 moves the weights to ~1e20; the loss then overflows float32.

    With `skip_nonfinite=True` every later step is skipped and the weights stay
    the finite ones of step 0; plain Keras (and SAM without the option) go to
    inf and NaN.
    """
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5 * BATCH, 4)).astype("float32")
    y = rng.normal(size=(5 * BATCH, 2)).astype("float32")

    def linear():
        keras.utils.set_random_seed(5)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    def sgd():
        return keras.optimizers.SGD(1e20)

    model = SAMModel(linear(), rho=0.05, skip_nonfinite=True)
    model.compile(optimizer=sgd(), loss="mse", jit_compile=False)
    steps = _EveryStep()
    _fit(model, x, y, [steps])
    after_step_0 = steps.states[1]
    assert max(float(np.abs(v).max()) for n, v in after_step_0 if "dense" in n) > 1e18
    for state in steps.states[2:]:
        assert _differences(state, after_step_0) == []
    assert [log["skipped_steps"] for log in steps.logs] == [0, 1, 2, 3, 4]
    assert int(model.optimizer.iterations.numpy()) == 1

    for unguarded in (linear(), SAMModel(linear(), rho=0.05)):
        unguarded.compile(optimizer=sgd(), loss="mse", jit_compile=False)
        _fit(unguarded, x, y)
        assert not all(np.all(np.isfinite(w)) for w in unguarded.get_weights())


@pytest.mark.parametrize("cls", [SAMModel, LookSAMModel], ids=["sam", "looksam"])
def test_a_loss_that_overflows_only_at_w_plus_e_hat_is_skipped(cls):
    """The clean pass is finite, and so is the gradient at w + ε̂, but the loss
    there is inf. One weight w = 1e-13 and one input x = 2e15: the clean
    prediction is 200 and its gradient 8e17; with ρ = 1e4, ε̂ = 1e4 and the
    prediction 2e19, whose square (4e38) overflows float32 while the gradient
    2 · 2e19 · 2e15 does not. The step is skipped, and no inf reaches
    `sharpness`. (GSAM shares this check.)"""
    x, y = np.array([[2e15]], "float32"), np.zeros((1, 1), "float32")

    def model(skip_nonfinite: bool):
        dense = keras.layers.Dense(
            1, use_bias=False, kernel_initializer=keras.initializers.Constant(1e-13)
        )
        base = keras.Sequential([keras.Input((1,)), dense])
        wrapped = cls(base, rho=1e4, skip_nonfinite=skip_nonfinite)
        wrapped.compile(optimizer=keras.optimizers.SGD(1e-30), loss="mse", jit_compile=False)
        return wrapped

    # Without the option the step is taken: the inf is the loss's alone.
    taken = model(skip_nonfinite=False)
    history = taken.fit(x, y, batch_size=1, epochs=1, verbose=0).history
    assert history["sharpness"] == [np.inf]
    kernel = taken.base_model.get_weights()[0]
    assert np.isfinite(kernel).all() and kernel[0, 0] != np.float32(1e-13)

    skipping = model(skip_nonfinite=True)
    history = skipping.fit(x, y, batch_size=1, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [1]
    assert all(np.isfinite(values).all() for values in history.values()), history
    assert skipping.base_model.get_weights()[0][0, 0] == np.float32(1e-13)
    assert int(skipping.optimizer.iterations.numpy()) == 0


# ------------------------------------------------------ skip_nonfinite=False
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_without_the_option_sam_takes_the_same_nans_as_plain_keras(variant):
    """An infinite label in output 0: that column's weights become non-finite
    and the other column trains on, for plain Keras and SAM alike, bit for bit
    (ε̂ of a non-finite gradient is 0, so SAM's step is the plain step).

    GSAM's descent direction mixes the two gradients through dot products, so
    there every weight becomes NaN; plain Keras gets there one step later.
    """
    rng = np.random.default_rng(2)
    x = rng.normal(size=(BATCH, 4)).astype("float32")
    y = rng.normal(size=(BATCH, 2)).astype("float32")
    y[1, 0] = np.inf

    def linear():
        keras.utils.set_random_seed(5)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    plain, sam = linear(), VARIANTS[variant](linear())
    for model in (plain, sam):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
        _fit(model, x, y)
    kernel, bias = plain.get_weights()
    assert not np.isfinite(kernel[:, 0]).any() and not np.isfinite(bias[0])
    assert np.isfinite(kernel[:, 1]).all() and np.isfinite(bias[1])
    if variant == "gsam":
        assert all(np.isnan(w).all() for w in sam.base_model.get_weights())
        return
    for a, b in zip(sam.base_model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # inf/NaN where inf/NaN, equal elsewhere


# ------------------------------------------------ a failure in the 2nd pass
class _PerturbedPassError(RuntimeError):
    pass


class _FailsInSecondPass(keras.layers.Dense):
    """A Dense layer that fails on its second training call of each step: the
    perturbed pass (SAM's first call is the clean pass at w).

    Eagerly it raises a Python exception; in a compiled step it adds a failing
    assertion on which its output depends, so it fails while running, not
    while tracing. `seen_kernel` is the kernel it read when failing.
    """

    def __init__(self, units, eager, **kwargs):
        super().__init__(units, **kwargs)
        self.eager, self.calls, self.seen_kernel = eager, 0, None

    def call(self, inputs, training=None):
        if not training:  # e.g. the wrapper's build
            return super().call(inputs)
        self.calls += 1
        if self.calls == 2:
            if self.eager:
                self.seen_kernel = np.array(keras.ops.convert_to_numpy(self.kernel.value))
                raise _PerturbedPassError("fails in the perturbed pass")
            import tensorflow as tf

            check = tf.debugging.assert_less(
                tf.reduce_sum(inputs) * 0.0, -1.0, message="fails in the perturbed pass"
            )
            with tf.control_dependencies([check]):
                inputs = tf.identity(inputs)
        return super().call(inputs)


class _CountFromEachStep(keras.callbacks.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def on_train_batch_begin(self, batch, logs=None):
        self.layer.calls = 0


@tensorflow_only  # see the module docstring
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_error_in_the_perturbed_pass_leaves_the_weights_at_w(variant, eager):
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    failing = _FailsInSecondPass(2, eager)
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), failing])
    model = VARIANTS[variant](base)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=eager, jit_compile=False
    )
    # Built first: LookSAM's g_v created inside the first trace would make
    # TensorFlow trace the step twice, and the second trace would not fail.
    model.build((None, 4))
    w = [np.array(v.numpy()) for v in model.trainable_variables]
    x, y = _data()
    x, y = x[:BATCH], y[:BATCH]  # a finite batch

    expected = _PerturbedPassError if eager else tf.errors.InvalidArgumentError
    with pytest.raises(expected, match="fails in the perturbed pass"):
        _fit(model, x, y, [_CountFromEachStep(failing)])

    assert failing.calls == 2  # it failed in the second pass, not elsewhere
    for before, variable in zip(w, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(variable.numpy(), before)
    if eager:
        assert int(model.optimizer.iterations.numpy()) == 0
        # It failed while reading w + ε̂, which is not w.
        assert not np.array_equal(failing.seen_kernel, w[-2])
    # (Compiled, the optimizer's `iterations += 1` does not depend on the
    # gradient, and TensorFlow may run it before the step fails: plain Keras
    # with a failing forward pass ends with iterations == 1 too.)
