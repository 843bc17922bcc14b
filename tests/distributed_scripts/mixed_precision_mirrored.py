"""Non-finite steps under a 2-replica `MirroredStrategy`; writes JSON.

Run by `tests/unit/test_mixed_precision.py` in a subprocess (the two logical CPUs
must be configured before TensorFlow runs any op):

    python tests/distributed_scripts/mixed_precision_mirrored.py OUT.json

Each run takes one clean step, records every replica's copy of the state,
then takes one step on a global batch whose second half (replica 1's shard)
holds a bad value, and records the state again:

- `sam_float16`, `keras_float16`: a mixed_float16 base (the float32 global
  policy is untouched) as a `SAMModel` and as the plain Keras model, with
  1e30 in replica 1's shard (inf in float16): the loss scaler must skip on
  every replica;
- `sam_skip_nonfinite`: a float32 `SAMModel(skip_nonfinite=True)` with
  per-replica BatchNorm, Dropout and Adam, with NaN in replica 1's shard.

Nothing is asserted here; `tests/unit/test_mixed_precision.py` reads the numbers.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPLICAS = 2
GLOBAL_BATCH = 16


def main(out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )

    import keras
    import numpy as np

    from keras_sam import SAMModel

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 5)).astype("float32")
    y = rng.integers(0, 3, size=GLOBAL_BATCH).astype("int32")
    bad_row = GLOBAL_BATCH // 2 + 3  # in replica 1's half of the global batch

    def float16_mlp():
        keras.utils.set_random_seed(1)
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            return keras.Sequential(
                [
                    keras.Input((5,)),
                    keras.layers.Dense(7, activation="tanh"),
                    keras.layers.Dense(3),
                    keras.layers.Activation("linear", dtype="float32"),
                ]
            )
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def batchnorm_dropout_mlp():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(7, use_bias=False),
                # Per-replica statistics: replica 0's batch is finite, so only
                # the cross-replica flag can make it undo its own update.
                keras.layers.BatchNormalization(synchronized=False),
                keras.layers.Activation("tanh"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(3),
            ]
        )

    def snapshot(model):
        local = strategy.experimental_local_results
        state = {}
        for variable in list(model.variables) + list(model.optimizer.variables):
            state[variable.path] = [np.asarray(t.numpy()).tolist() for t in local(variable.value)]
        return state

    def run(build_model, build_optimizer, bad_value):
        # The optimizer is made inside the scope: it captures the strategy.
        with strategy.scope():
            model = build_model()
            model.compile(
                optimizer=build_optimizer(),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        print("training", model.name, flush=True)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        before = snapshot(model)
        x_bad = x.copy()
        x_bad[bad_row, 2] = bad_value
        history = model.fit(x_bad, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        return {
            "optimizer": type(model.optimizer).__name__,
            "trainable": [v.path for v in model.trainable_variables],
            "before": before,
            "after": snapshot(model),
            "logs": {k: [float(v) for v in values] for k, values in history.history.items()},
        }

    results = {
        "sam_float16": run(
            lambda: SAMModel(float16_mlp(), rho=0.1), lambda: keras.optimizers.SGD(0.5), 1e30
        ),
        "keras_float16": run(float16_mlp, lambda: keras.optimizers.SGD(0.5), 1e30),
        "sam_skip_nonfinite": run(
            lambda: SAMModel(batchnorm_dropout_mlp(), rho=0.1, skip_nonfinite=True),
            lambda: keras.optimizers.Adam(0.01),
            float("nan"),
        ),
    }
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
