"""Loading a saved SAM model in a process that has not imported keras_sam.

Keras finds a saved class by its registered name, so the wrapper's `.keras`
file needs `import keras_sam` first; without it Keras raises its own
`TypeError` naming the class (keras-sam, not loaded, cannot change that
message). The trained base model saved alone loads with plain Keras.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_sam import SAMModel

pytestmark = pytest.mark.slow

LOAD = """
import json, sys
import keras, numpy as np
path, x = sys.argv[1], np.ones((2, 4), "float32")
result = {"keras_sam_imported_before": "keras_sam" in sys.modules}
try:
    model = keras.models.load_model(path)
    result["loaded"] = type(model).__name__
    result["prediction"] = np.asarray(model.predict(x, verbose=0)).tolist()
except Exception as error:
    result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
result["keras_sam_imported_after"] = "keras_sam" in sys.modules
print(json.dumps(result))
"""


def _load_in_a_fresh_process(path, *, import_keras_sam=False) -> dict:
    code = ("import keras_sam\n" if import_keras_sam else "") + LOAD
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved")
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = SAMModel(base, rho=0.1)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 3), "float32"), verbose=0)
    model.save(directory / "sam.keras")
    model.base_model.save(directory / "base.keras")
    expected = np.asarray(model.predict(np.ones((2, 4), "float32"), verbose=0)).tolist()
    return directory, expected


def test_without_keras_sam_keras_says_which_class_it_cannot_find(saved):
    directory, _ = saved
    result = _load_in_a_fresh_process(directory / "sam.keras")
    assert not result["keras_sam_imported_after"]
    assert result["error"].startswith("TypeError") and "SAMModel" in result["error"]


def test_with_keras_sam_imported_the_wrapper_loads(saved):
    directory, expected = saved
    result = _load_in_a_fresh_process(directory / "sam.keras", import_keras_sam=True)
    assert result["loaded"] == "SAMModel"
    np.testing.assert_allclose(result["prediction"], expected, rtol=1e-6)


def test_the_base_saved_alone_loads_with_plain_keras(saved):
    directory, expected = saved
    result = _load_in_a_fresh_process(directory / "base.keras")
    assert result["loaded"] == "Sequential" and not result["keras_sam_imported_after"]
    np.testing.assert_allclose(result["prediction"], expected, rtol=1e-6)
