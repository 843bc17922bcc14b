"""keras-sam on Keras 3's JAX backend: what needs processes of its own.

The backend-neutral tests run on JAX too (`KERAS_BACKEND=jax python -m pytest
-m "not tensorflow_only"`); these start JAX processes from any backend:

- `keras.distribution.DataParallel` over 2 and 4 CPU devices equals one
  device's run on the global batch, for SAM and every variant; an ε̂ per
  device is `num_batch_splits`; `sync_perturbation=False` is a clear error;
  mixed_float16 skips an overflowed step and halves the scale;
- a `.keras` file saved on TensorFlow loads and keeps training on JAX, and
  back, with every argument and LookSAM's state.

(`test_resume.py` kills and resumes on both backends.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[1] / "jax_scripts"
REPO = SCRIPTS.parents[1]


def _run(backend: str, script: str, *args: str, devices: int | None = None) -> None:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]


@pytest.fixture(scope="module", params=[2, 4], ids=["2_devices", "4_devices"])
def data_parallel(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("data_parallel") / "runs.json"
    _run("jax", "data_parallel.py", str(out), devices=request.param)
    return json.loads(out.read_text())


def test_data_parallel_equals_one_device_on_the_global_batch(data_parallel):
    assert data_parallel["devices"] in (2, 4)
    assert set(data_parallel["cases"]) == {
        "sam", "sam_splits", "asam", "gsam", "looksam", "msam", "fsam", "rst"
    }  # fmt: skip
    for name, case in data_parallel["cases"].items():
        for one, spread in zip(case["one_device"], case["data_parallel"], strict=True):
            np.testing.assert_allclose(spread, one, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(case["logs"]["loss"]).all(), name


def test_unsynced_data_parallel_is_a_clear_error_that_says_what_to_do(data_parallel):
    message = data_parallel["unsynced_error"]
    assert message and "sync_perturbation=True" in message
    assert f"num_batch_splits={data_parallel['devices']}" in message


def test_mixed_float16_data_parallel_skips_an_overflowed_step_on_every_device(data_parallel):
    run = data_parallel["mixed_float16"]
    assert run["optimizer"] == "LossScaleOptimizer"
    # 3 batches x 2 epochs, the overflowing batch skipped in each epoch.
    assert run["iterations"] == 4
    assert run["scale"] == 2.0**15 / 4  # halved twice from Keras's initial 2**15
    assert run["finite"]


@pytest.mark.parametrize(
    ("saved_on", "loaded_on"), [("tensorflow", "jax"), ("jax", "tensorflow")]
)
def test_a_keras_file_moves_between_backends_and_keeps_training(tmp_path, saved_on, loaded_on):
    _run(saved_on, "cross_backend.py", "save", str(tmp_path))
    _run(loaded_on, "cross_backend.py", "resume", str(tmp_path))
    saved = json.loads((tmp_path / "saved.json").read_text())
    uninterrupted = json.loads((tmp_path / "uninterrupted.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    loaded, final = resumed["loaded"], resumed["final"]
    assert (saved["backend"], loaded["backend"]) == (saved_on, loaded_on)
    assert loaded["class"] == "LookSAMModel"
    assert loaded["config"] == saved["config"]  # every argument, the schedule included
    assert loaded["iterations"] == saved["iterations"] == 2
    for name, value in saved["state"].items():  # rho, the counters, LookSAM's g_v
        np.testing.assert_array_equal(loaded["state"][name], value, err_msg=name)
    for a, b in zip(loaded["weights"], saved["weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    # Two more steps on the other backend: float32 rounding apart.
    for a, b in zip(final["weights"], uninterrupted["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
