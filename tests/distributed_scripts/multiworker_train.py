"""Trains one SAMModel with `fit` as a worker of a 2-worker cluster; writes JSON.

Run by `tests/integration/test_multiworker.py`:

    TF_CONFIG=... python multiworker_train.py worker OUT.json
    python multiworker_train.py mirrored OUT.json   # the 1-process reference

`worker` joins the `MultiWorkerMirroredStrategy` cluster that `TF_CONFIG`
describes (one CPU replica per worker); `mirrored` runs the same training on
a 2-replica `MirroredStrategy` over two logical CPUs in one process. Both see
the same data in the same order, global batch 16; replica (worker) 1's shard
of the third batch holds a NaN, so with `skip_nonfinite=True` every replica
must skip that step. The JSON holds the final trainable weights and the logs.

Keras's own `fit` fails under `MultiWorkerMirroredStrategy` for every model
(its symbolic build reduces a distributed batch with `strategy.reduce("MEAN")`,
and it reduces scalar logs with `axis=0`); `SAMModel` works around both, which
this run checks.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 16


def main(mode: str, out_path: str) -> None:
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        task = None
    elif mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    else:
        raise ValueError(f"mode must be 'worker' or 'mirrored'; got {mode!r}")

    import keras
    import numpy as np

    from keras_sam import SAMModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * GLOBAL_BATCH, 5)).astype("float32")
    y = rng.integers(0, 3, size=3 * GLOBAL_BATCH).astype("int32")
    x[2 * GLOBAL_BATCH + GLOBAL_BATCH // 2 + 1, 3] = np.nan  # replica 1, third batch

    with strategy.scope():
        keras.utils.set_random_seed(1)
        base = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(3)]
        )
        model = SAMModel(base, rho=0.1, skip_nonfinite=True)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    print(f"{mode} {task}: {strategy.num_replicas_in_sync} replicas", flush=True)
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    evaluation = model.evaluate(
        x[: 2 * GLOBAL_BATCH],
        y[: 2 * GLOBAL_BATCH],
        batch_size=GLOBAL_BATCH,
        verbose=0,
        return_dict=True,
    )
    result = {
        "mode": mode,
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "names": [v.path for v in base.trainable_variables],
        "weights": [v.numpy().tolist() for v in base.trainable_variables],
        "logs": {k: [float(v) for v in values] for k, values in history.history.items()},
        "evaluation": {k: float(v) for k, v in evaluation.items()},
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
    print(f"{mode} {task}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
