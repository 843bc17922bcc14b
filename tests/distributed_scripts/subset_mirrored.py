"""Trains `SAMModel(perturb=...)` under `MirroredStrategy` over N logical CPUs; writes JSON.

Run by `tests/unit/test_perturb_subset.py` in a subprocess (the logical devices must
be configured before TensorFlow runs any op):

    python tests/distributed_scripts/subset_mirrored.py REPLICAS OUT.json

Every run trains Dense(6) → LayerNormalization → tanh → Dense(3) (softmax
cross-entropy, SGD with momentum) on the same 32 rows, global batch 16, two
epochs, `shuffle=False`, mirrored:

- `normalization`: `perturb="normalization"`, each replica its own ε̂;
- `first_kernel`: a callable choosing the first Dense kernel;
- `normalization_sync`: `perturb="normalization"`, `sync_perturbation=True`.

For each run the JSON holds the base's initial trainable weights, every
replica's final ones (`weights`: per weight, a list over replicas) and whether
the replicas agreed bit for bit after every step; a run that raised holds
`{"raised": traceback}`. Nothing is asserted here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Must match tests/unit/test_perturb_subset.py.
GLOBAL_BATCH, EPOCHS, RHO, LEARNING_RATE, MOMENTUM = 16, 2, 0.3, 0.1, 0.5


def main(replicas: int, out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )

    import keras
    import numpy as np

    from keras_sam import SAMModel

    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")

    def layer_norm_mlp():
        keras.utils.set_random_seed(3)
        base = keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(6),
            keras.layers.LayerNormalization(),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(3),
        ])
        gamma, beta = base.layers[1].trainable_variables
        gamma.assign(1.0 + 0.2 * rng.normal(size=6))
        beta.assign(0.1 * rng.normal(size=6))
        return base

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

    def train(perturb, **options):
        with mirrored.scope():
            base = layer_norm_mlp()
            if perturb == "first_kernel":
                kernel = base.trainable_variables[0]
                perturb = lambda variable: variable is kernel  # noqa: E731
            model = SAMModel(base, rho=RHO, perturb=perturb, **options)
            model.compile(
                optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        initial = [v.numpy().tolist() for v in base.trainable_variables]
        agreement = ReplicaAgreement(mirrored)
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[agreement])
        local = mirrored.experimental_local_results
        return {
            "initial": initial,
            "weights": [[t.numpy().tolist() for t in local(v.value)]
                        for v in base.trainable_variables],
            "identical_after_each_step": agreement.identical,
        }

    def recorded(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        except Exception:
            return {"raised": traceback.format_exc()}

    results = {"replicas": replicas, "x": x.tolist(), "y": y.tolist()}
    results["normalization"] = recorded("normalization")
    results["first_kernel"] = recorded("first_kernel")
    results["normalization_sync"] = recorded("normalization", sync_perturbation=True)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
