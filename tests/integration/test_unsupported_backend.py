"""On a Keras backend keras-sam does not support (PyTorch, NumPy), every SAM
model refuses construction with one `ValueError` that names the backend, the
supported ones and how to switch. The NumPy backend stands in for PyTorch
(which is not installed with the tests): both take the same path, the backend
name read from Keras at construction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json
import keras
import keras_sam

classes = ["SAMModel", "GSAMModel", "LookSAMModel", "FriendlySAMModel", "MSAMModel",
           "RandomizedSAMModel", "AESAMModel"]
messages = {}
for name in classes:
    base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    try:
        getattr(keras_sam, name)(base)
    except ValueError as error:
        messages[name] = str(error)
    else:
        messages[name] = None
print(json.dumps({"backend": keras.backend.backend(), "messages": messages}))
"""


def test_every_model_refuses_an_unsupported_backend_at_construction():
    env = dict(os.environ, KERAS_BACKEND="numpy", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["backend"] == "numpy"
    for name, message in result["messages"].items():
        assert message is not None, f"{name} was built on the numpy backend"
        assert "'numpy' Keras backend" in message, (name, message)
        assert "Supported: tensorflow, jax" in message, (name, message)
        assert "KERAS_BACKEND" in message, (name, message)
