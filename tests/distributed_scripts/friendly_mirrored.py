"""Trains `FriendlySAMModel` under `MirroredStrategy` over N logical CPUs; writes JSON.

Run by `tests/unit/test_friendly_sam.py` in a subprocess (the logical devices must
be configured before TensorFlow runs any op):

    python tests/distributed_scripts/friendly_mirrored.py REPLICAS OUT.json

Every run trains Dense(7, tanh) → Dense(3) (softmax cross-entropy, SGD with
momentum) on the same 32 rows, global batch 16, two epochs, `shuffle=False`:

- `per_replica`: mirrored, each replica its own ε̂ and m;
- `sync`: mirrored, `sync_perturbation=True`;
- `global`: one device on the global batch.

For each run the JSON holds the base model's initial weights, every replica's
final weights (`weights`) and m (`average`, one entry per weight, each a list
over replicas), every replica's step counter, and whether the replicas agreed
bit for bit after every step; a run that raised holds `{"raised": traceback}`.
Nothing is asserted here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Must match tests/unit/test_friendly_sam.py.
GLOBAL_BATCH, EPOCHS, RHO = 16, 2, 0.1
SIGMA, LMBDA, LEARNING_RATE, MOMENTUM = 0.8, 0.5, 0.1, 0.5


def main(replicas: int, out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )

    import keras
    import numpy as np

    from keras_sam import FriendlySAMModel

    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    one_device = tf.distribute.get_strategy()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")

    def mlp():
        keras.utils.set_random_seed(2)
        return keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(3)]
        )

    class ReplicaAgreement(keras.callbacks.Callback):
        def __init__(self, strategy):
            super().__init__()
            self.strategy = strategy
            self.identical = []

        def on_train_batch_end(self, batch, logs=None):
            local = self.strategy.experimental_local_results
            copies = [[t.numpy() for t in local(v.value)] for v in self.model.trainable_variables]
            self.identical.append(
                all(np.array_equal(c[0], other) for c in copies for other in c[1:])
            )

    def train(strategy, **options):
        with strategy.scope():
            model = FriendlySAMModel(mlp(), rho=RHO, sigma=SIGMA, lmbda=LMBDA, **options)
            model.compile(
                optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        base = model.base_model
        initial = [v.numpy().tolist() for v in base.trainable_variables]
        agreement = ReplicaAgreement(strategy)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[agreement])
        local = strategy.experimental_local_results

        def copies(variables):
            return [[t.numpy().tolist() for t in local(v.value)] for v in variables]

        named = {v.name: v for v in model.non_trainable_variables}
        return {
            "initial": initial,
            "weights": copies(base.trainable_variables),
            "average": copies([v for v in model.non_trainable_variables
                               if v.name == "friendly_m"]),
            "counter": [int(t.numpy()) for t in local(named["friendly_step"].value)],
            "identical_after_each_step": agreement.identical,
        }

    def recorded(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        except Exception:
            return {"raised": traceback.format_exc()}

    results = {"replicas": replicas, "x": x.tolist(), "y": y.tolist()}
    results["per_replica"] = recorded(mirrored)
    results["sync"] = recorded(mirrored, sync_perturbation=True)
    results["global"] = recorded(one_device)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
