"""The unit tests again, on Keras 3's JAX backend.

A process has one Keras backend, chosen when Keras is first imported. This
test runs `tests/unit` in a process of its own with `KERAS_BACKEND=jax`,
leaving out what needs TensorFlow itself (`tensorflow_only`) and the few
tests of backend-independent wrapper logic marked `one_backend`, so that one
pytest command checks both backends: the same NumPy references, the same
numbers to float32 tolerance. Its output is shown when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_unit_tests_pass_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTEST_XDIST_WORKER", None)
    command = [
        sys.executable, "-m", "pytest", str(ROOT / "tests" / "unit"),
        "-m", "not tensorflow_only and not one_backend",
        "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    summary = completed.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr[-2000:]
    assert " passed" in summary[0] and "failed" not in summary[0], summary
