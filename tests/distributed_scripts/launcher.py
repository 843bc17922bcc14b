"""Starts the scripts of this folder in subprocesses and reads their JSON.

Each script takes its arguments and, last, the path of the JSON file to write.
A `ScriptRun` starts at once, so that several can run side by side (tracing a
model is single-threaded Python: two subprocesses use two cores), and its
`result()` waits for the file. Output goes to files, not pipes, so a chatty
TensorFlow can never block the child.

Example (in a test module):

    run = ScriptRun("mirrored_invariants.py", "2")
    try:
        results = run.result(timeout=600)
    finally:
        run.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent.parent


def subprocess_environment(**extra: str) -> dict[str, str]:
    """This environment, quiet TensorFlow, and the repository importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class ScriptRun:
    """One script of `distributed_scripts/` running in a subprocess.

    A run that TensorFlow's native code kills with SIGSEGV (seen once, in a
    CI run on 2026-11-30: the one-process MirroredStrategy reference of the
    multi-worker test, not reproduced in 50 runs since) is started again
    once, with a warning in the test report, when `retry_native_crash` is
    set; a second crash fails the test. A worker of a cluster must not set
    it: its peers would be waiting in a collective the new process never
    joins.
    """

    def __init__(
        self,
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        retry_native_crash: bool = True,
    ):
        self.name = " ".join([script, *args])
        self._directory = tempfile.TemporaryDirectory(prefix="keras_sam_")
        directory = Path(self._directory.name)
        self.output = directory / "results.json"
        self.log = directory / "log.txt"
        self._command = [sys.executable, str(SCRIPTS / script), *args, str(self.output)]
        self._env = env or subprocess_environment()
        self._retries_left = 1 if retry_native_crash else 0
        self._start()
        self._result = None

    def _start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self._command, cwd=REPO, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def restarted_after_native_crash(self) -> bool:
        """Starts the script again if it died of SIGSEGV and may be retried."""
        if self.process.poll() != -signal.SIGSEGV or self._retries_left == 0:
            return False
        self._retries_left -= 1
        warnings.warn(
            f"{self.name} was killed by SIGSEGV inside TensorFlow; started again "
            f"once. Its log so far:\n{self.log_tail(2000)}",
            stacklevel=2,
        )
        self._start()
        return True

    def log_tail(self, characters: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def wait(self, timeout: float) -> int:
        """The exit code; kills the process and fails the test on a timeout."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(f"{self.name} did not finish in {timeout} s:\n{self.log_tail()}")

    def result(self, timeout: float = 600) -> dict:
        """The script's JSON; fails the test if it exited badly."""
        if self._result is None:
            code = self.wait(timeout)
            if self.restarted_after_native_crash():
                code = self.wait(timeout)
            if code != 0 or not self.output.exists():
                pytest.fail(f"{self.name} exited with {code}:\n{self.log_tail()}")
            self._result = json.loads(self.output.read_text())
        return self._result

    def _kill(self) -> None:
        # Only this process, by its handle.
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Kills the process if it still runs and removes its files."""
        self._kill()
        self._directory.cleanup()


def results_of(runs: Sequence[ScriptRun], timeout: float) -> list[dict]:
    """Every run's JSON; fails as soon as one run fails (its peers may hang).

    Workers of one cluster wait for each other, so a crashed worker would
    leave the others blocked until the timeout: watch them all at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        codes = [run.process.poll() for run in runs]
        for run, code in zip(runs, codes):
            if code is not None and code != 0 and not run.restarted_after_native_crash():
                pytest.fail(f"{run.name} exited with {code}:\n{run.log_tail()}")
        if all(code == 0 for code in codes):
            return [run.result(timeout=1) for run in runs]
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {run.name}:\n{run.log_tail(2000)}" for run in runs)
            pytest.fail(f"not finished in {timeout} s:\n{logs}")
        time.sleep(0.2)
