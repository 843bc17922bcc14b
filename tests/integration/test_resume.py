"""A run killed with SIGKILL and restarted by `BackupAndRestore` loses nothing.

On the TensorFlow and the JAX backend. `resume_scripts/resume_child.py` trains
a tiny MLP with dropout and BatchNorm (SAMModel with a rho schedule, and
LookSAMModel) under `keras.utils.set_random_seed` (and, on TensorFlow,
`tf.config.experimental.enable_op_determinism`),
with two `BackupAndRestore` callbacks: one backing up at each epoch's end,
one every 3 steps. After global step 7 (the third batch of epoch 1) it says so
in a marker file, and this module kills it with SIGKILL. A fresh process then
runs the same `fit` with each backup directory.

How Keras 3.15 resumes: `BackupAndRestore` restores the weights and optimizer
state of its last backup and restarts the epoch that backup was taken in at
its first batch (it writes the batch index, but never reads it).

- From the end-of-epoch backup (after epoch 0), the resumed run equals the
  uninterrupted run bit for bit.
- From the mid-epoch backup (after step 6, two batches into epoch 1), epoch 1
  is trained again from its first batch: its first two batches are seen twice.
  The resumed run equals, bit for bit, an uninterrupted run that sees the
  batches in that order (`reference_replay.npz`). This is Keras's behaviour
  for any model (`BackupAndRestore._load_model` sets only the initial epoch).

"Everything" is every variable of the model (weights, BatchNorm statistics,
the dropout seed state, rho, LookSAM's step counter and its stored direction
g_v) and of the optimizer (iterations, learning rate, Adam's slots).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from resume_scripts import resume_child as child

SCRIPT = Path(__file__).resolve().parents[1] / "resume_scripts" / "resume_child.py"
REPO = SCRIPT.parents[2]

TIMEOUT_S = 600  # per child; generous for a loaded 2-core machine

pytestmark = pytest.mark.slow


def _environment(backend: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _start(backend: str, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as output:  # a file, not a pipe, which TF could fill
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            cwd=REPO,
            env=_environment(backend),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _kill_when_reached(process: subprocess.Popen, marker: Path, log: Path) -> int:
    """SIGKILLs `process` once `marker` exists; returns its exit status."""
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the child never reached step {child.KILL_AFTER}:\n{log.read_text()}")
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _variables(state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    keys = [k for k in state if k.startswith(("model/", "optimizer/"))]
    keys.sort(key=lambda k: (k.split("/")[0] != "model", int(k.split("/")[1])))
    return list(zip(state["names"], (state[k] for k in keys), strict=True))


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def runs(request, tmp_path_factory) -> dict:
    """Kills both variants' children, reads the backups, resumes both, on
    the Keras backend of the parameter."""
    backend = request.param
    work = tmp_path_factory.mktemp(f"resume_{backend}")
    started = {}
    try:
        for variant in child.VARIANTS:  # side by side: one core each
            (work / variant).mkdir()
            log = work / variant / "kill.log"
            started[variant] = (_start(backend, log, "kill", variant, str(work)), log)
        statuses = {
            variant: _kill_when_reached(process, work / variant / "reached", log)
            for variant, (process, log) in started.items()
        }
    finally:
        for process, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    metadata = {
        variant: {
            kind: json.loads(
                (work / variant / f"{kind}_backup" / "training_metadata.json").read_text()
            )
            for kind in child.BACKUPS
        }
        for variant in child.VARIANTS
    }
    log = work / "resume.log"
    resume = _start(backend, log, "resume", str(work), *child.VARIANTS)
    try:
        status = resume.wait(timeout=TIMEOUT_S)
    finally:
        resume.kill()
    assert status == 0, log.read_text()
    return {"work": work, "kill_status": statuses, "metadata": metadata}


def _state(runs: dict, variant: str, name: str) -> dict[str, np.ndarray]:
    return _load(runs["work"] / variant / f"{name}.npz")


def _assert_bitwise_equal(actual: dict, expected: dict) -> None:
    actual_variables, expected_variables = _variables(actual), _variables(expected)
    assert actual_variables and len(actual_variables) == len(expected_variables)
    different = [
        str(name)
        for (name, a), (_, e) in zip(actual_variables, expected_variables)
        if a.dtype != e.dtype or not np.array_equal(a, e)
    ]
    assert not different, f"not bit-identical: {different}"


def _value(state: dict, fragment: str) -> list[np.ndarray]:
    return [value for name, value in _variables(state) if fragment in str(name)]


# ------------------------------------------------------------- the kill itself
@pytest.mark.parametrize("variant", child.VARIANTS)
def test_the_child_was_killed_by_sigkill_mid_epoch(runs, variant):
    assert runs["kill_status"][variant] == -signal.SIGKILL
    steps = int((runs["work"] / variant / "reached").read_text())
    assert steps == child.KILL_AFTER and steps % child.STEPS_PER_EPOCH != 0
    # Keras records the epoch in progress; the step backup was 2 batches in.
    assert runs["metadata"][variant] == {
        "epoch": {"epoch": 1, "batch": 0},
        "step": {"epoch": 1, "batch": child.BATCHES_BEFORE_STEP_BACKUP - 1},
    }


@pytest.mark.parametrize("variant", child.VARIANTS)
@pytest.mark.parametrize(("kind", "steps"), [("epoch", 4), ("step", 6)])
def test_the_restored_state_is_the_backup_of_the_killed_run(runs, variant, kind, steps):
    """What `on_train_begin` restored is the killed run's state at the backup,
    which differs from a fresh model's (so restoring it matters)."""
    restored = _state(runs, variant, f"restored_{kind}")
    initial = _state(runs, variant, "initial")
    [iterations] = _value(restored, "iteration")
    assert int(iterations) == steps
    [seed_state] = _value(restored, "seed_generator_state")
    [initial_seed_state] = _value(initial, "seed_generator_state")
    assert not np.array_equal(seed_state, initial_seed_state), "dropout seed not restored"
    if variant == "looksam":
        [look_step] = _value(restored, "look_step")
        assert int(look_step) == steps
        stored_direction = _value(restored, "look_g_v")
        assert max(float(np.abs(g).max()) for g in stored_direction) > 0
        # k=5: the resumed run's first step (4 or 6) reuses g_v, it does not
        # recompute it.
        assert steps % 5 != 0


@pytest.mark.parametrize("variant", child.VARIANTS)
def test_resuming_from_an_end_of_epoch_backup_equals_the_uninterrupted_run(runs, variant):
    resumed = _state(runs, variant, "resumed_epoch")
    assert int(resumed["epochs_run"]) == child.EPOCHS - 1  # epochs 1 and 2
    _assert_bitwise_equal(resumed, _state(runs, variant, "reference_uninterrupted"))


@pytest.mark.parametrize("variant", child.VARIANTS)
def test_resuming_from_a_mid_epoch_backup_equals_keras_replay_order(runs, variant):
    """Keras restarts the interrupted epoch: its first batches are seen twice."""
    resumed = _state(runs, variant, "resumed_step")
    assert int(resumed["epochs_run"]) == child.EPOCHS - 1
    replay = _state(runs, variant, "reference_replay")
    [iterations] = _value(resumed, "iteration")
    assert int(iterations) == child.EPOCHS * child.STEPS_PER_EPOCH + 2  # 2 replayed
    _assert_bitwise_equal(resumed, replay)


@pytest.mark.parametrize("variant", child.VARIANTS)
def test_the_backup_directory_is_removed_after_the_resumed_run(runs, variant):
    for kind in child.BACKUPS:
        assert not (runs["work"] / variant / f"{kind}_backup").exists()
