"""Trains MSAM, RST or AE-SAM under `MirroredStrategy` over 2 logical CPUs; writes JSON.

Run by `tests/unit/test_msam.py` ("msam") and `tests/unit/test_step_policies.py`
("policies") in a subprocess each: the logical devices must be configured
before TensorFlow runs any op.

    python tests/distributed_scripts/cheap_mirrored.py MODE OUT.json

Every run trains Dense(7, tanh) → Dense(3) from the same initial weights on
the same data, in order (`shuffle=False`, global batch 12, one epoch of 4
steps, SGD with momentum). A layer between the two counts, at run time, the
forward passes of each replica (`tf.py_function` with the replica's id).

- "msam": `per_replica` and `sync` (`sync_perturbation=True`) under
  MirroredStrategy, `one_device` (the global batch on one device), and
  `per_replica_resumed`: 2 steps under MirroredStrategy, `save_weights`, a
  fresh model `load_weights`, 2 more steps (each replica's v as saved, as
  loaded, and the final weights);
- "policies": `rst` (RandomizedSAMModel) and `aesam` (AESAMModel, each
  replica its own statistics) under MirroredStrategy, `aesam_sync`
  (`sync_perturbation=True`) and `aesam_one_device`.

For each run the JSON holds every replica's final trainable weights, whether
the replicas agreed bit for bit after every step, each step's passes per
replica, the fit logs and, for MSAM, every replica's v; `settings` holds each
model's arguments. A run that raised
holds `{"raised": traceback}`. Nothing is asserted here.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPLICAS = 2
GLOBAL_BATCH = 12
STEPS = 4
LEARNING_RATE = 0.1
SGD_MOMENTUM = 0.5
SETTINGS = {
    "msam": dict(rho=0.3, momentum=0.9),
    # Seed 4's draws for steps 0-3 are about 0.01, 0.98, 0.32, 0.66: SAM,
    # plain, SAM, plain (the test computes them itself).
    "rst": dict(rho=0.1, probability=0.5, seed=4),
    "aesam": dict(rho=0.1, decay=0.5, threshold=0.5),
}


def main(mode: str, out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )

    import keras
    import numpy as np

    from keras_sam import AESAMModel, MSAMModel, RandomizedSAMModel

    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    one_device = tf.distribute.get_strategy()
    rng = np.random.default_rng(11)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 5)).astype("float32")
    y = rng.integers(0, 3, size=GLOBAL_BATCH * STEPS).astype("int32")
    initial = [
        (0.7 * rng.normal(size=(5, 7))).astype("float32"),
        (0.1 * rng.normal(size=7)).astype("float32"),
        (0.7 * rng.normal(size=(7, 3))).astype("float32"),
        (0.1 * rng.normal(size=3)).astype("float32"),
    ]
    counts = collections.Counter()

    class PassCounter(keras.layers.Layer):
        """The identity; counts each run of a forward pass, per replica."""

        def call(self, inputs):
            context = tf.distribute.get_replica_context()
            replica = 0 if context is None else context.replica_id_in_sync_group

            def record(r):
                counts[int(r)] += 1
                return np.int32(0)

            token = tf.py_function(record, [tf.cast(replica, tf.int32)], tf.int32)
            with tf.control_dependencies([token]):
                return tf.identity(inputs)

    def mlp():
        base = keras.Sequential([
            keras.Input((5,)),
            keras.layers.Dense(7, activation="tanh"),
            PassCounter(),
            keras.layers.Dense(3),
        ])
        base.set_weights(initial)
        return base

    class PerStep(keras.callbacks.Callback):
        """After every step: replica agreement and each replica's passes."""

        def __init__(self, strategy):
            super().__init__()
            self.strategy, self.identical, self.passes = strategy, [], []
            self.last = collections.Counter()

        def on_train_batch_end(self, batch, logs=None):
            local = self.strategy.experimental_local_results
            copies = [[t.numpy() for t in local(v.value)] for v in self.model.trainable_variables]
            self.identical.append(
                all(np.array_equal(c[0], other) for c in copies for other in c[1:])
            )
            replicas = self.strategy.num_replicas_in_sync
            self.passes.append([counts[r] - self.last[r] for r in range(replicas)])
            self.last = collections.Counter(counts)

    def train(strategy, model_class, **options):
        counts.clear()
        with strategy.scope():
            model = model_class(mlp(), **options)
            model.compile(
                optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=SGD_MOMENTUM),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=False,
            )
        per_step = PerStep(strategy)
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
                            verbose=0, callbacks=[per_step])
        local = strategy.experimental_local_results
        result = {
            "weights": [[t.numpy().tolist() for t in local(v.value)]
                        for v in model.trainable_variables],
            "history": history.history,
            "identical_after_each_step": per_step.identical,
            "passes": per_step.passes,
        }
        velocity = [v for v in model.non_trainable_variables if v.name == "msam_v"]
        if velocity:
            result["velocity"] = [[t.numpy().tolist() for t in local(v.value)]
                                  for v in velocity]
        statistics = [v for v in model.non_trainable_variables
                      if v.name in ("aesam_mean", "aesam_variance")]
        if statistics:
            result["statistics"] = {v.name: [float(t.numpy()) for t in local(v.value)]
                                    for v in statistics}
        return result

    def resumed(strategy, model_class, **options):
        """Half the steps, `save_weights`, a fresh model `load_weights`, the rest."""
        local = strategy.experimental_local_results

        def velocity(model):
            return [[t.numpy().tolist() for t in local(v.value)]
                    for v in model.non_trainable_variables if v.name == "msam_v"]

        def fresh():
            with strategy.scope():
                model = model_class(mlp(), **options)
                model.compile(
                    optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=SGD_MOMENTUM),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                )
            return model

        half = GLOBAL_BATCH * STEPS // 2
        first = fresh()
        first.fit(x[:half], y[:half], batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
        path = os.path.join(os.path.dirname(os.path.abspath(out_path)), "resume.weights.h5")
        first.save_weights(path)
        second = fresh()
        second.load_weights(path)
        loaded_velocity = velocity(second)
        second.fit(x[half:], y[half:], batch_size=GLOBAL_BATCH, shuffle=False, verbose=0)
        return {
            "saved_velocity": velocity(first),
            "loaded_velocity": loaded_velocity,
            "weights": [[t.numpy().tolist() for t in local(v.value)]
                        for v in second.trainable_variables],
        }

    def recorded(*args, run=None, **kwargs):
        try:
            return (run or train)(*args, **kwargs)
        except Exception:
            return {"raised": traceback.format_exc()}

    results = {
        "x": x.tolist(), "y": y.tolist(), "initial": [w.tolist() for w in initial],
        "global_batch": GLOBAL_BATCH, "learning_rate": LEARNING_RATE,
        "sgd_momentum": SGD_MOMENTUM, "settings": SETTINGS,
    }
    if mode == "msam":
        msam = SETTINGS["msam"]
        results["per_replica"] = recorded(mirrored, MSAMModel, **msam)
        results["sync"] = recorded(mirrored, MSAMModel, sync_perturbation=True, **msam)
        results["one_device"] = recorded(one_device, MSAMModel, **msam)
        results["per_replica_resumed"] = recorded(mirrored, MSAMModel, run=resumed, **msam)
    elif mode == "policies":
        aesam = SETTINGS["aesam"]
        results["rst"] = recorded(mirrored, RandomizedSAMModel, **SETTINGS["rst"])
        results["aesam"] = recorded(mirrored, AESAMModel, **aesam)
        results["aesam_sync"] = recorded(mirrored, AESAMModel, sync_perturbation=True, **aesam)
        results["aesam_one_device"] = recorded(one_device, AESAMModel, **aesam)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
