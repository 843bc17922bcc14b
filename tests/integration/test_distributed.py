"""SAM under `tf.distribute.MirroredStrategy`, against single-device and NumPy runs.

What must hold (issue #4):

- default: each replica takes its own ε̂ from its own gradient, and the step
  equals a single-device run with `num_batch_splits` = replicas on the global
  batch, and a float64 NumPy run of per-replica SAM with averaged gradients;
- `sync_perturbation=True` (with synchronized BatchNorm) equals one device on
  the global batch;
- every replica ends every step with bit-identical weights (dropout too);
- trainable variables with `aggregation="sum"`/`"mean"` are not perturbed by
  the sum or mean of the replicas' ε̂;
- `jit_compile=True` runs XLA per replica and equals `jit_compile=False`;
- GSAM and LookSAM keep their single-device meaning per replica.

Mirrored runs use 2 and 4 logical CPUs configured before TensorFlow starts, so
each replica count trains in one subprocess
(`distributed_scripts/mirrored_invariants.py`) that writes every run's weights;
this module only compares numbers. "Equal to 1e-5" means, per tensor,
|actual - expected| <= 1e-5 * (|expected| + max|expected|): relative, with a
floor at the tensor's own scale for entries that pass through zero.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from distributed_scripts.launcher import ScriptRun

from keras_sam import SAMModel

import numpy_reference as ref

REPLICA_COUNTS = [2, 4]
RTOL = 1e-5
# Must match distributed_scripts/mirrored_invariants.py.
GLOBAL_BATCH, EPOCHS, RHO, LEARNING_RATE, MOMENTUM = 16, 2, 0.1, 0.1, 0.5


@pytest.fixture(scope="module", autouse=True)
def mirrored_runs():
    """`mirrored_runs(replicas)`: the JSON of `mirrored_invariants.py`.

    Both replica counts start together when the module starts, and run side
    by side (and beside this module's single-device test).
    """
    started = {n: ScriptRun("mirrored_invariants.py", str(n)) for n in REPLICA_COUNTS}
    try:
        yield lambda replicas: started[replicas].result(timeout=900)
    finally:
        for run in started.values():
            run.stop()


def run_named(runs: dict, name: str) -> dict:
    """One run of the script's JSON; fails the test with the run's traceback."""
    run = runs[name]
    if "raised" in run:
        pytest.fail(f"the {name!r} run raised:\n{run['raised']}")
    return run


def arrays(values) -> list[np.ndarray]:
    return [np.asarray(v, np.float32) for v in values]


def final(run: dict) -> list[np.ndarray]:
    """Replica 0's final value of every base-model variable."""
    return arrays(copies[0] for copies in run["replicas"])


def assert_close(actual, expected, names, rtol=RTOL):
    """Per tensor: |actual − expected| <= rtol·(|expected| + max|expected|)."""
    for name, a, e in zip(names, actual, expected, strict=True):
        e = np.asarray(e, np.float64)
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=f"variable {name}")


# ---------------------------------------------------------------- references
def scaled_mlp() -> ref.Network:
    """The script's `scaled_mlp`: ((x·s) W1 + b1 → tanh) · t, then W2 + b2.

    Params in Keras's order [s, W1, b1, t, W2, b2]; s and t are the
    `aggregation="sum"` and `"mean"` variables, plain parameters here.
    """

    def forward(params, x):
        s, w1, b1, t, w2, b2 = params
        scaled = x * s
        pre = scaled @ w1 + b1
        hidden = np.tanh(pre)
        mixed = hidden * t
        return mixed @ w2 + b2, (x, scaled, pre, hidden, mixed)

    def backward(params, cache, d_out):
        s, w1, b1, t, w2, b2 = params
        x, scaled, pre, hidden, mixed = cache
        d_mixed = d_out @ w2.T
        d_pre = d_mixed * t * (1.0 - hidden**2)
        d_scaled = d_pre @ w1.T
        return [
            (d_scaled * x).sum(axis=0),
            scaled.T @ d_pre,
            d_pre.sum(axis=0),
            (d_mixed * hidden).sum(axis=0),
            mixed.T @ d_out,
            d_out.sum(axis=0),
        ]

    return ref.Network(forward, backward)


def replica_shards(batch, replicas):
    """MirroredStrategy's split of a global batch: contiguous equal pieces."""
    x, y, _ = batch
    size = len(x) // replicas
    return [
        (x[i * size : (i + 1) * size], y[i * size : (i + 1) * size], None) for i in range(replicas)
    ]


def per_replica_sam(objective, params, x, y, replicas):
    """SAM with one ε̂ per replica and the replicas' SAM gradients averaged.

    Returns (final params, epoch mean losses, epoch mean sharpness) as Keras
    logs them: the clean loss and L(w + ε̂) − L(w), averaged over replicas.
    """
    optimizer = ref.SGD(LEARNING_RATE, momentum=MOMENTUM)
    params = [np.asarray(p, np.float64) for p in params]
    losses, sharpness = [], []
    for _ in range(EPOCHS):
        epoch_losses, epoch_sharpness = [], []
        for batch in ref.batches_of(x, y, GLOBAL_BATCH):
            steps = [
                ref.sam_step(objective, params, shard, RHO)
                for shard in replica_shards(batch, replicas)
            ]
            mean_gradient = [np.mean(g, axis=0) for g in zip(*(s.sam_gradients for s in steps))]
            params = optimizer.apply(params, mean_gradient)
            epoch_losses.append(np.mean([s.loss for s in steps]))
            epoch_sharpness.append(np.mean([s.sharpness for s in steps]))
        losses.append(np.mean(epoch_losses))
        sharpness.append(np.mean(epoch_sharpness))
    return params, losses, sharpness


def flat_dot(a, b) -> float:
    return float(sum(np.sum(u * v) for u, v in zip(a, b)))


def orthogonal_part(u, onto):
    coefficient = flat_dot(u, onto) / flat_dot(onto, onto)
    return [a - coefficient * b for a, b in zip(u, onto)]


def per_replica_gsam(objective, params, x, y, replicas, alpha):
    """GSAM per replica: descend along g_sam − α·(part of g orthogonal to g_sam)."""
    optimizer = ref.SGD(LEARNING_RATE, momentum=MOMENTUM)
    params = [np.asarray(p, np.float64) for p in params]
    for _ in range(EPOCHS):
        for batch in ref.batches_of(x, y, GLOBAL_BATCH):
            directions = []
            for shard in replica_shards(batch, replicas):
                sam = ref.sam_step(objective, params, shard, RHO)
                clean_orthogonal = orthogonal_part(sam.gradients, sam.sam_gradients)
                directions.append(
                    [s - alpha * o for s, o in zip(sam.sam_gradients, clean_orthogonal)]
                )
            params = optimizer.apply(params, [np.mean(d, axis=0) for d in zip(*directions)])
    return params


def per_replica_looksam(objective, params, x, y, replicas, k, alpha, sync=False):
    """LookSAM where each replica keeps its own reused direction g_v.

    A full step (every k-th) is SAM and stores g_v = the part of g_sam
    orthogonal to g; the steps between use g + α·‖g‖/‖g_v‖·g_v. With `sync`,
    ε̂ comes from the global batch's gradient (the mean over replicas).
    Returns (final params, each replica's last g_v).
    """
    optimizer = ref.SGD(LEARNING_RATE, momentum=MOMENTUM)
    params = [np.asarray(p, np.float64) for p in params]
    reused = [None] * replicas
    step = 0
    for _ in range(EPOCHS):
        for batch in ref.batches_of(x, y, GLOBAL_BATCH):
            shards = replica_shards(batch, replicas)
            clean = [objective(params, shard)[1] for shard in shards]
            if sync:
                global_gradient = [np.mean(g, axis=0) for g in zip(*clean)]
                global_e_hat = ref.ascent(global_gradient, RHO)
            directions = []
            for r, (shard, g) in enumerate(zip(shards, clean)):
                if step % k == 0:
                    e_hat = global_e_hat if sync else ref.ascent(g, RHO)
                    moved = [p + e for p, e in zip(params, e_hat)]
                    _, sam_gradients = objective(moved, shard)
                    reused[r] = orthogonal_part(sam_gradients, g)
                    directions.append(sam_gradients)
                else:
                    scale = alpha * np.sqrt(flat_dot(g, g) / flat_dot(reused[r], reused[r]))
                    directions.append([a + scale * d for a, d in zip(g, reused[r])])
            params = optimizer.apply(params, [np.mean(d, axis=0) for d in zip(*directions)])
            step += 1
    return params, reused


# -------------------------------- gradient accumulation, one device
# (first: it runs while the mirrored subprocesses start)
def test_gradient_accumulation_averages_two_sam_gradients_at_the_same_weights():
    # With `gradient_accumulation_steps=2` each micro-batch gets its own ε̂,
    # both taken at the unchanged w; the update is the mean of the two
    # perturbed gradients.
    keras.utils.set_random_seed(3)
    base = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)]
    )
    model = SAMModel(base, rho=RHO)
    model.compile(
        optimizer=keras.optimizers.SGD(0.2, gradient_accumulation_steps=2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, size=16)
    initial = [v.numpy() for v in base.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    objective = ref.make_objective(ref.mlp("tanh"), ref.softmax_cross_entropy)
    first, second = (
        ref.sam_step(objective, initial, batch, RHO)
        for batch in ref.batches_of(x.astype(np.float64), y, 8)
    )
    mean = [(a + b) / 2 for a, b in zip(first.sam_gradients, second.sam_gradients)]
    expected = ref.SGD(0.2).apply(initial, mean)
    names = [v.path for v in base.trainable_variables]
    assert_close([v.numpy() for v in base.trainable_variables], expected, names)
    # Not the same as one SAM step on the 16 samples (one ε̂ for both halves).
    whole = ref.sam_step(objective, initial, (x.astype(np.float64), y, None), RHO)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(mean, whole.sam_gradients)) > 1e-5
    # Keras counts updates, not micro-batches, so a rho schedule sees both
    # micro-batches of an update at the same iteration.
    assert int(model.optimizer.iterations.numpy()) == 1


# --------------------------------------------------------- default (own ε̂)
@pytest.mark.parametrize("replicas", REPLICA_COUNTS)
def test_default_equals_single_device_batch_splits(replicas, mirrored_runs):
    runs = mirrored_runs(replicas)
    mirrored, split = run_named(runs, "default"), run_named(runs, "default_split")
    assert_close(final(mirrored), final(split), mirrored["names"])
    # The two runs must not be trivially equal: the weights moved.
    moved = max(
        float(np.max(np.abs(f - i))) for f, i in zip(final(split), arrays(split["initial"]))
    )
    assert moved > 1e-3


@pytest.mark.parametrize("replicas", REPLICA_COUNTS)
def test_default_matches_numpy_per_replica_sam(replicas, mirrored_runs):
    runs = mirrored_runs(replicas)
    run = run_named(runs, "default")
    x, y = np.asarray(runs["x"], np.float64), np.asarray(runs["y"])
    objective = ref.make_objective(scaled_mlp(), ref.softmax_cross_entropy)
    expected, losses, sharpness = per_replica_sam(objective, arrays(run["initial"]), x, y, replicas)
    assert_close(final(run), expected, run["names"])
    np.testing.assert_allclose(run["history"]["loss"], losses, rtol=RTOL)
    np.testing.assert_allclose(run["history"]["sharpness"], sharpness, rtol=1e-4)
    # A single ε̂ from the global gradient is a different algorithm: the
    # reference above must be able to tell them apart.
    global_history = ref.train(
        objective,
        arrays(run["initial"]),
        ref.batches_of(x, y, GLOBAL_BATCH) * EPOCHS,
        ref.SGD(LEARNING_RATE, momentum=MOMENTUM),
        RHO,
    )
    difference = max(
        float(np.max(np.abs(a - b))) for a, b in zip(global_history.params[-1], expected)
    )
    assert difference > 1e-4


@pytest.mark.parametrize("replicas", REPLICA_COUNTS)
def test_aggregated_variables_are_perturbed_by_their_own_replicas_e_hat(replicas, mirrored_runs):
    # A trainable variable with aggregation "sum" (or "mean") would get the sum
    # (or mean) of the replicas' ε̂ if w + ε̂ were assigned in replica context;
    # its final value must instead follow per-replica SAM exactly.
    runs = mirrored_runs(replicas)
    run = run_named(runs, "default")
    x, y = np.asarray(runs["x"], np.float64), np.asarray(runs["y"])
    objective = ref.make_objective(scaled_mlp(), ref.softmax_cross_entropy)
    expected, _, _ = per_replica_sam(objective, arrays(run["initial"]), x, y, replicas)
    aggregated = [i for i, name in enumerate(run["names"]) if name.endswith("/scale")]
    assert len(aggregated) == 2
    for i in aggregated:
        actual, initial = final(run)[i], np.asarray(run["initial"][i])
        assert np.max(np.abs(actual - initial)) > 1e-3, "the scale must train"
        assert_close([actual], [expected[i]], [run["names"][i]])


# ------------------------------------------------------- sync_perturbation
@pytest.mark.parametrize("replicas", REPLICA_COUNTS)
def test_sync_perturbation_with_synchronized_batchnorm_equals_global_batch(replicas, mirrored_runs):
    runs = mirrored_runs(replicas)
    mirrored, single = run_named(runs, "sync_batchnorm"), run_named(runs, "sync_batchnorm_global")
    # Trainable weights and BatchNorm's moving statistics alike.
    assert_close(final(mirrored), final(single), mirrored["names"])
    for name, copies in zip(mirrored["names"], mirrored["replicas"]):
        assert all(np.array_equal(copies[0], c) for c in copies[1:]), name
    np.testing.assert_allclose(mirrored["history"]["loss"], single["history"]["loss"], rtol=RTOL)


# ------------------------------------------------------ replica agreement
@pytest.mark.parametrize(
    ("replicas", "run_name"),
    [(n, name) for n in REPLICA_COUNTS for name in ("default", "sync_batchnorm")]
    + [(2, name) for name in ("dropout", "default_jit", "gsam", "looksam")],
)
def test_replicas_hold_bit_identical_weights_after_every_step(replicas, run_name, mirrored_runs):
    run = run_named(mirrored_runs(replicas), run_name)
    steps = EPOCHS * 32 // GLOBAL_BATCH
    assert run["identical_after_each_step"] == [True] * steps
    for name, trainable, copies in zip(run["names"], run["trainable"], run["replicas"]):
        if trainable:
            assert len(copies) == replicas
            assert all(np.array_equal(copies[0], c) for c in copies[1:]), name
            assert np.all(np.isfinite(copies[0])), name


# --------------------------------------------------------------------- XLA
def test_jit_compile_under_mirrored_runs_xla_per_replica(mirrored_runs):
    runs = mirrored_runs(2)
    jit, plain = run_named(runs, "default_jit"), run_named(runs, "default")
    assert not jit["xla_ignored"]  # XLA compiled each replica's passes
    assert jit["jit_compile"] is True  # the user's setting is kept
    assert_close(final(jit), final(plain), jit["names"])
    # `evaluate` runs too (Keras's jit_compile=True test function fails here).
    np.testing.assert_allclose(jit["evaluation"]["loss"], plain["evaluation"]["loss"], rtol=RTOL)


def test_jit_compile_with_all_reduce_inside_the_passes_runs_without_per_replica_xla(
    mirrored_runs,
):
    runs = mirrored_runs(2)
    jit, plain = run_named(runs, "sync_batchnorm_jit"), run_named(runs, "sync_batchnorm")
    assert jit["xla_ignored"]  # said so in a warning
    assert_close(final(jit), final(plain), jit["names"])


# -------------------------------------------------------- GSAM and LookSAM
def test_gsam_under_mirrored_matches_per_replica_reference(mirrored_runs):
    # Each replica descends along g_sam − α·g⊥ of its own gradients; the
    # replicas' directions are averaged.
    runs = mirrored_runs(2)
    run = run_named(runs, "gsam")
    x, y = np.asarray(runs["x"], np.float64), np.asarray(runs["y"])
    objective = ref.make_objective(ref.mlp("tanh"), ref.softmax_cross_entropy)
    expected = per_replica_gsam(objective, arrays(run["initial"]), x, y, replicas=2, alpha=0.3)
    assert_close(final(run), expected, run["names"])


def test_looksam_under_mirrored_keeps_a_reused_direction_per_replica(mirrored_runs):
    runs = mirrored_runs(2)
    run = run_named(runs, "looksam")
    x, y = np.asarray(runs["x"], np.float64), np.asarray(runs["y"])
    objective = ref.make_objective(ref.mlp("tanh"), ref.softmax_cross_entropy)
    expected, reused = per_replica_looksam(
        objective, arrays(run["initial"]), x, y, replicas=2, k=2, alpha=0.7
    )
    assert_close(final(run), expected, run["names"])
    # Each replica stores g_v of its own (1/replicas-scaled) gradients.
    for replica in range(2):
        stored = arrays(per_variable[replica] for per_variable in run["reused_direction"])
        assert_close(stored, [g / 2 for g in reused[replica]], run["names"], rtol=1e-4)


def synced_run_equal_to_one_device(runs: dict, variant: str):
    """The `<variant>_sync` run, checked to equal its one-device run on the
    global batch with bit-identical replicas; returns it with the NumPy
    reference's inputs (objective, initial weights, x, y)."""
    run = run_named(runs, f"{variant}_sync")
    assert_close(final(run), final(run_named(runs, f"{variant}_global")), run["names"])
    for name, copies in zip(run["names"], run["replicas"]):
        assert np.array_equal(copies[0], copies[1]), name
    objective = ref.make_objective(ref.mlp("tanh"), ref.softmax_cross_entropy)
    x, y = np.asarray(runs["x"], np.float64), np.asarray(runs["y"])
    return run, (objective, arrays(run["initial"]), x, y)


@pytest.mark.parametrize("variant", ["gsam", "looksam"])
def test_synced_variants_scale_the_clean_gradient_back_under_a_loss_scale(variant, mirrored_runs):
    """With `loss_scale_factor`, the synced g_⊥ / ‖g‖ (from the unscaled ascent
    gradient) is scaled back: the run still equals one device's, unscaled."""
    runs = mirrored_runs(2)
    run = run_named(runs, f"{variant}_sync_scaled")
    assert_close(final(run), final(run_named(runs, f"{variant}_global")), run["names"])


def test_looksam_with_sync_perturbation_equals_one_device_on_the_global_batch(mirrored_runs):
    """A synced ε̂ makes LookSAM the global batch's: g_v from the global
    gradients (the same on every replica), reuse steps scaled by the global ‖g‖."""
    run, (objective, initial, x, y) = synced_run_equal_to_one_device(mirrored_runs(2), "looksam")
    expected, (reused,) = per_replica_looksam(objective, initial, x, y, replicas=1, k=2, alpha=0.7)
    assert_close(final(run), expected, run["names"])
    for copies in run["reused_direction"]:
        assert np.array_equal(copies[0], copies[1])
    # Every replica stores the global batch's g_v.
    stored = arrays(copies[0] for copies in run["reused_direction"])
    assert_close(stored, reused, run["names"], rtol=1e-4)
    # Per-replica g_v (ε̂ synced only) is a different run: the test can tell.
    per_replica, _ = per_replica_looksam(
        objective, initial, x, y, replicas=2, k=2, alpha=0.7, sync=True
    )
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(per_replica, expected)) > 1e-4


def test_gsam_with_sync_perturbation_equals_one_device_on_the_global_batch(mirrored_runs):
    """With a synced ε̂, g_⊥ comes from the global gradients, as on one device."""
    run, (objective, initial, x, y) = synced_run_equal_to_one_device(mirrored_runs(2), "gsam")
    expected = per_replica_gsam(objective, initial, x, y, replicas=1, alpha=0.3)
    assert_close(final(run), expected, run["names"])
    per_replica = per_replica_gsam(objective, initial, x, y, replicas=2, alpha=0.3)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(per_replica, expected)) > 1e-4


# ------------------------- what Keras 3.15 cannot run under MirroredStrategy
@pytest.mark.parametrize(
    ("run", "argument"),
    [
        ("accumulation", "gradient_accumulation_steps"),
        ("steps_per_execution", "steps_per_execution"),
    ],
)
def test_what_keras_cannot_run_under_mirrored_is_a_clear_error(run, argument, mirrored_runs):
    # Keras 3.15 fails for every model here (gradient accumulation: a
    # merge_call inside the optimizer's tf.cond; several steps per execution:
    # an unfed placeholder in its loop). SAMModel names the argument before
    # anything trains, rather than train silently wrong.
    result = run_named(mirrored_runs(2), run)
    assert result["weights_unchanged"]
    error = result["error"]
    assert error["type"] == "ValueError"
    assert f"`{argument}=2`" in error["message"]
    assert "MirroredStrategy" in error["message"]
