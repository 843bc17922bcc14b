"""SAMModel `fit` under `MultiWorkerMirroredStrategy`: two workers on loopback.

Two worker processes on 127.0.0.1 (ports found by binding port 0) join one
cluster through `TF_CONFIG` and train the same `SAMModel` on the same data
with `fit`; a third process runs the same training on a 2-replica
`MirroredStrategy`. Both workers must end with bit-identical weights, equal
(1e-5) to the one-process run, and both must have skipped the step whose NaN
sits in worker 1's shard only.

Keras's own `fit` fails here for every model; `SAMModel` works around it.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from distributed_scripts.launcher import ScriptRun, results_of, subprocess_environment

TIMEOUT_S = 300


def free_loopback_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


@pytest.mark.slow
def test_two_workers_train_like_one_mirrored_process():
    ports = free_loopback_ports(2)
    runs = [ScriptRun("multiworker_train.py", "mirrored")]
    try:
        for index in range(2):
            env = subprocess_environment(TF_CONFIG=tf_config(ports, index))
            runs.append(
                ScriptRun("multiworker_train.py", "worker", env=env, retry_native_crash=False)
            )
        reference, *workers = results_of(runs, timeout=TIMEOUT_S)
    finally:
        for run in runs:
            run.stop()

    assert [w["task"] for w in workers] == [0, 1]
    assert all(w["replicas"] == 2 for w in workers)
    first, second = ([np.asarray(v, np.float32) for v in w["weights"]] for w in workers)
    for name, a, b in zip(workers[0]["names"], first, second, strict=True):
        assert np.array_equal(a, b), f"workers disagree on {name}"
    for name, a, e in zip(
        reference["names"], first, (np.asarray(v, np.float64) for v in reference["weights"])
    ):
        np.testing.assert_allclose(
            a, e, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(e))), err_msg=name
        )
        assert np.all(np.isfinite(a)), name
    for run in (reference, *workers):
        assert run["logs"]["skipped_steps"] == [1.0]
    # Logs are global means over both workers' replicas, as in one process.
    for worker in workers:
        np.testing.assert_allclose(
            worker["evaluation"]["loss"], reference["evaluation"]["loss"], rtol=1e-5
        )


@pytest.mark.parametrize("retry", [True, False])
def test_a_run_killed_by_sigsegv_is_started_again_once_when_allowed(tmp_path, retry):
    """The launcher's retry: a script that dies of SIGSEGV on its first run
    gives its result after one restart (with a warning), and fails the test
    when the run may not be retried."""
    marker = str(tmp_path / "crashed_once")
    run = ScriptRun("crash_once.py", marker, retry_native_crash=retry)
    try:
        if retry:
            with pytest.warns(UserWarning, match="SIGSEGV"):
                assert results_of([run], timeout=60) == [{"runs": 2}]
        else:
            with pytest.raises(pytest.fail.Exception, match="exited with -11"):
                results_of([run], timeout=60)
    finally:
        run.stop()
