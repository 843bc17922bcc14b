"""SAMModel with mixed precision and non-finite steps (issue #4).

- A `mixed_float16` base inside a float32 world gets a `LossScaleOptimizer`
  (the wrapper takes the base's policy), trains like float32 to half
  precision, and an overflow in the first pass skips the step and halves the
  loss scale, with no NaN anywhere.
- Under `MirroredStrategy` an overflow on replica 1 only is skipped on every
  replica; a plain Keras model in the same situation writes NaN into its
  weights (Keras's loss scaler checks replica 0's gradient only).
- `mixed_bfloat16` trains without loss scaling.
- `skip_nonfinite=True` makes a NaN step a no-op for weights, optimizer slots,
  iteration count and BatchNorm statistics, on one device and on two replicas.

The 2-replica runs happen in a subprocess
(`distributed_scripts/mixed_precision_mirrored.py`) that starts with this
module and runs beside its single-device tests; they are TensorFlow's
(`tensorflow_only`), the rest runs on JAX too.
"""

from __future__ import annotations

import functools
import inspect

import keras
import numpy as np
import pytest
from backend_neutral import tensorflow_only
from distributed_scripts.launcher import ScriptRun

from keras_sam import LookSAMModel, SAMModel


@pytest.fixture(scope="module", autouse=True)
def mirrored(request):
    """`mirrored()`: the JSON of `mixed_precision_mirrored.py`, started with
    the module if a test here needs it."""
    wanted = any(item.module is request.module
                 and "mirrored" in inspect.signature(item.function).parameters
                 for item in request.session.items)
    run = ScriptRun("mixed_precision_mirrored.py") if wanted else None
    try:
        yield lambda: run.result(timeout=900)
    finally:
        if run is not None:
            run.stop()


def make_data(rows=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)).astype("float32"), rng.integers(0, 3, size=rows)


def mlp(policy="float32"):
    """A small classifier built under `policy`, leaving the global policy alone."""
    keras.utils.set_random_seed(1)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(7, activation="tanh"),
                keras.layers.Dense(3),
                keras.layers.Activation("linear", dtype="float32"),
            ]
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def compiled(base, optimizer=None, **options):
    model = SAMModel(base, rho=0.1, **options)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _look_step(model) -> int:
    """LookSAM's step counter, a variable of the model."""
    (counter,) = [v for v in model.non_trainable_variables if v.name == "look_step"]
    return int(counter.numpy())


def values(variables):
    return [np.array(v.numpy()) for v in variables]


@functools.cache
def float32_updates():
    return weight_updates("float32")[1]


def weight_updates(policy):
    """Each trainable variable's change over 8 SAM steps under `policy`."""
    model = compiled(mlp(policy))
    before = values(model.trainable_variables)
    x, y = make_data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, [a - b for a, b in zip(values(model.trainable_variables), before)]


def relative_errors(actual, expected):
    return [float(np.linalg.norm(a - e) / np.linalg.norm(e)) for a, e in zip(actual, expected)]


# ------------------------------------------------------------ single device
def test_mixed_float16_base_gets_a_loss_scale_optimizer_in_a_float32_world():
    assert keras.mixed_precision.global_policy().name == "float32"
    model = compiled(mlp("mixed_float16"))
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    # Keras alone decides on the wrapper's policy: a float32 wrapper around
    # the same base would get no loss scaling.
    plain = keras.Model(inputs=model.base_model.inputs, outputs=model.base_model.outputs)
    plain.compile(optimizer="sgd", loss="mse")
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_mixed_float16_trains_like_float32_to_half_precision():
    reference = float32_updates()
    model, half = weight_updates("mixed_float16")
    # The loss scale (2**15 at the start) was not lowered: no step overflowed.
    assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**15
    assert max(relative_errors(half, reference)) < 1e-2


def test_overflow_in_the_first_pass_skips_the_step_and_halves_the_scale():
    model = compiled(mlp("mixed_float16"))
    model.optimizer.build(model.trainable_variables)
    # loss × 1e30 is finite in float32, but its gradient is inf in float16.
    model.optimizer.dynamic_scale.assign(1e30)
    before = values(model.trainable_variables)
    x, y = make_data(rows=8)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = values(model.trainable_variables)
    assert all(np.array_equal(a, b) for a, b in zip(after, before))
    assert model.optimizer.dynamic_scale.numpy() == np.float32(1e30) / 2
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(np.isfinite(history.history[name][0]) for name in ("loss", "sharpness"))
    # ε̂ was 0 (the guard against a non-finite first gradient): no sharpness.
    assert history.history["sharpness"][0] == 0.0


def _dropout_probe():
    """mixed_float16: the kernel's gradient overflows when input 0 (1000) passes dropout."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(1, kernel_initializer="ones"),
                keras.layers.Activation("linear", dtype="float32"),
            ]
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_an_overflow_in_the_first_pass_alone_still_skips_the_step():
    """Each pass draws its own dropout mask, so the first pass may overflow and
    the second not: the step is still skipped and the scale lowered, as plain
    Keras does when its one gradient overflows."""
    x, y = np.array([[1000.0, 0.001]], "float32"), np.zeros((1, 1), "float32")
    first_pass_only = both_passes = 0
    # Under TensorFlow 2.21 seed 2 overflows in the first pass only and seed 9
    # in both: tried first, they keep the search short; the other seeds keep
    # it working if another TensorFlow draws other masks.
    for seed in dict.fromkeys([2, 9, *range(16)]):
        if first_pass_only and both_passes:
            break  # each case has been checked
        keras.utils.set_random_seed(seed)
        model = SAMModel(_dropout_probe(), rho=0.05)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = values(model.trainable_variables)
        history = model.fit(x, y, batch_size=1, epochs=1, verbose=0).history
        clean_loss = history["loss"][0]
        perturbed_loss = clean_loss + history["sharpness"][0]
        if clean_loss < 1e5:  # input 0 dropped in the first pass: no overflow there
            continue
        first_pass_only += perturbed_loss < 1e5
        assert int(model.optimizer.iterations.numpy()) == 0, seed
        assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**14, seed
        for value, previous in zip(values(model.trainable_variables), before):
            assert np.array_equal(value, previous), seed
        if perturbed_loss >= 1e5:
            both_passes += 1
            continue
        # The same masks (same seed) with `skip_nonfinite=True`: skipped too.
        keras.utils.set_random_seed(seed)
        skipping = SAMModel(_dropout_probe(), rho=0.05, skip_nonfinite=True)
        skipping.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = values(skipping.trainable_variables)
        history = skipping.fit(x, y, batch_size=1, epochs=1, verbose=0).history
        assert history["skipped_steps"] == [1], seed
        assert int(skipping.optimizer.iterations.numpy()) == 0, seed
        assert float(skipping.optimizer.dynamic_scale.numpy()) == 2.0**14, seed
        for value, previous in zip(values(skipping.trainable_variables), before):
            assert np.array_equal(value, previous), seed
    assert first_pass_only > 0  # the case this test is about did occur
    assert both_passes > 0


def test_a_keras_file_keeps_the_loss_scaler_and_resumes_bitwise(tmp_path):
    """Only the base is mixed_float16: the wrapper saves its own policy, so the
    loaded model gets its LossScaleOptimizer (and its state) back."""
    assert keras.mixed_precision.global_policy().name == "float32"
    model = compiled(mlp("mixed_float16"), keras.optimizers.Adam(0.02))
    x, y = make_data(rows=16)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.optimizer.dynamic_scale.assign(1234.0)  # not the initial scale
    model.save(tmp_path / "run.keras")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)

    loaded = keras.models.load_model(tmp_path / "run.keras")
    assert loaded.get_config()["dtype"] == model.get_config()["dtype"]
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(loaded.optimizer.dynamic_scale.numpy()) == 1234.0
    loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for variables in ("variables", "trainable_variables"):
        expected = values(getattr(model, variables))
        actual = values(getattr(loaded, variables))
        assert all(np.array_equal(a, e) for a, e in zip(actual, expected))
    expected, actual = values(model.optimizer.variables), values(loaded.optimizer.variables)
    assert len(actual) == len(expected)
    assert all(np.array_equal(a, e) for a, e in zip(actual, expected))


def test_mixed_bfloat16_trains_without_loss_scaling():
    reference = float32_updates()
    model, bfloat = weight_updates("mixed_bfloat16")
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(np.all(np.isfinite(u)) for u in bfloat)
    # bfloat16 keeps 8 significant bits (~0.4% per rounding).
    assert max(relative_errors(bfloat, reference)) < 5e-2


def test_skip_nonfinite_makes_a_nan_step_a_no_op():
    keras.utils.set_random_seed(1)
    base = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("tanh"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3),
        ]
    )
    model = compiled(base, keras.optimizers.Adam(0.01), skip_nonfinite=True)
    x, y = make_data(rows=16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # Adam slots become non-zero

    # Dropout's seed keeps advancing and the counter counts: all else is state.
    moving = ("skipped_steps", "seed_generator_state")
    state = [v for v in model.variables + model.optimizer.variables if v.name not in moving]
    assert len(state) < len(model.variables + model.optimizer.variables) - 1
    assert any("moving_mean" in v.path for v in state)
    assert any("iteration" in v.path for v in state)
    before = values(state)
    kernel_before = base.layers[0].kernel.numpy()
    x_bad = x.copy()
    x_bad[3, 1] = np.nan
    history = model.fit(x_bad, y, batch_size=16, epochs=1, verbose=0)
    for variable, value in zip(state, before):
        assert np.array_equal(variable.numpy(), value), variable.path
    assert history.history["skipped_steps"] == [1.0]

    # The next finite step trains again.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(base.layers[0].kernel.numpy(), kernel_before)


# ------------------------------------------------------ MirroredStrategy
def assert_unchanged_on_every_replica(run, names):
    for name in names:
        copies_before, copies_after = run["before"][name], run["after"][name]
        assert len(copies_after) == 2, name
        for before, after in zip(copies_before, copies_after):
            assert np.array_equal(np.asarray(after), np.asarray(before)), name


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
def test_overflow_on_one_replica_is_skipped_on_every_replica(mirrored):
    run = mirrored()["sam_float16"]
    assert run["optimizer"] == "LossScaleOptimizer"
    assert_unchanged_on_every_replica(run, run["trainable"])
    scale = "loss_scale_optimizer/dynamic_scale"
    assert run["before"][scale] == [2.0**15, 2.0**15]
    assert run["after"][scale] == [2.0**14, 2.0**14]
    for name in run["trainable"]:
        assert all(np.all(np.isfinite(copy)) for copy in run["after"][name]), name


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
def test_plain_keras_applies_another_replicas_overflow(mirrored):
    # Documents the Keras 3.15 bug SAMModel works around: the loss scaler
    # checks replica 0's gradient only, applies replica 1's inf, and the
    # weights become NaN while the scale stays put. If this starts failing,
    # Keras has fixed it: keep the SAMModel test, drop this one.
    run = mirrored()["keras_float16"]
    assert run["optimizer"] == "LossScaleOptimizer"
    weights_nan = [
        not np.all(np.isfinite(np.asarray(copy)))
        for name in run["trainable"]
        for copy in run["after"][name]
    ]
    assert any(weights_nan)
    scale = "loss_scale_optimizer/dynamic_scale"
    assert run["after"][scale] == run["before"][scale]


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
def test_skip_nonfinite_under_mirrored_skips_on_every_replica(mirrored):
    run = mirrored()["sam_skip_nonfinite"]
    # Everything but dropout's seed and the skip counter.
    state = [
        name
        for name in run["before"]
        if "seed_generator" not in name and not name.endswith("skipped_steps")
    ]
    assert any("moving_mean" in name for name in state)
    assert any(name.endswith("iteration") for name in state)
    assert_unchanged_on_every_replica(run, state)
    assert run["logs"]["skipped_steps"] == [1.0]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_looksam_takes_a_skipped_full_step_again(jit_compile):
    """A LookSAM step the loss scaler skips does not advance LookSAM's counter.

    The first steps overflow at a huge initial scale and are skipped while it
    halves; the run then equals, bit for bit, the run on the remaining batches
    started at the scale it ended on (powers of two: unscaling is exact), its
    first step a full step, not a reuse of a g_v never computed.
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = (10.0 * rng.normal(size=(48, 3))).astype("float32")  # a loss near 100

    class Iterations(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(int(self.model.optimizer.iterations.numpy()))

    def run(x, y, initial_scale):
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.01), initial_scale=initial_scale
        )
        model = LookSAMModel(mlp(), rho=0.1, k=3, alpha=0.7)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
        iterations = Iterations()
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[iterations])
        return model, iterations.seen

    model, seen = run(x, y, 2.0**127)
    skipped = seen.count(0)
    assert skipped >= 2 and seen == [0] * skipped + list(range(1, 7 - skipped)), seen
    assert _look_step(model) == 6 - skipped
    reference, _ = run(x[8 * skipped :], y[8 * skipped :], 2.0 ** (127 - skipped))
    assert float(model.optimizer.dynamic_scale) == float(reference.optimizer.dynamic_scale)
    assert _look_step(reference) == 6 - skipped
    for a, b in zip(values(model.variables), values(reference.variables)):
        np.testing.assert_array_equal(a, b)
