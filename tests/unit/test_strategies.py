"""Which `tf.distribute` strategies a SAM model runs under, said honestly.

Supported: no strategy, `OneDeviceStrategy`, `MirroredStrategy`,
`MultiWorkerMirroredStrategy` (tested in test_distributed.py and
test_multiworker.py) and `TPUStrategy`. Any other is refused at construction
with an error naming it and the supported ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam import LookSAMModel, SAMModel

pytestmark = pytest.mark.tensorflow_only

SCRIPTS = Path(__file__).resolve().parents[1] / "distributed_scripts"


def _base():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_one_device_strategy_trains_as_no_strategy():
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = np.zeros((16, 2), "float32")
    weights = []
    for strategy in (None, tf.distribute.OneDeviceStrategy("/cpu:0")):
        keras.utils.set_random_seed(0)
        scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
        with scope:
            model = SAMModel(_base(), rho=0.1)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        weights.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_class", [SAMModel, LookSAMModel])
def test_an_unsupported_strategy_is_refused_at_construction_by_name(model_class):
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope(), pytest.raises(ValueError) as error:
        model_class(_base())
    message = str(error.value)
    assert "`CentralStorageStrategy`" in message
    for supported in ("MirroredStrategy", "MultiWorkerMirroredStrategy", "TPUStrategy"):
        assert supported in message


@pytest.mark.slow
def test_parameter_server_strategy_is_refused_by_name():
    """On an in-process loopback cluster (two workers, one parameter server):
    SAMModel refuses it with a clear error; plain Keras 3 fails in `fit`."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / "parameter_server.py")],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "`ParameterServerStrategy`" in result["sam_error"]
    assert "MultiWorkerMirroredStrategy" in result["sam_error"]
    assert result["plain_error"] and "create_per_worker_dataset" in result["plain_error"]
