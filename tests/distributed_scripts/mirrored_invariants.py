"""Trains SAM variants under `MirroredStrategy` over N logical CPUs; writes JSON.

Run by `tests/integration/test_distributed.py` in a subprocess, once per replica count:
the logical devices must be configured before TensorFlow runs any op, and two
mirrored strategies of different sizes in one process break collectives.

    python tests/distributed_scripts/mirrored_invariants.py REPLICAS OUT.json

Every run uses the same data and order (`shuffle=False`, global batch 16, two
epochs of two steps, SGD with momentum). The runs:

- `default` (mirrored) and `default_split` (one device, `num_batch_splits` =
  replicas): an MLP with trainable `aggregation="sum"` and `"mean"` scales;
- `sync_batchnorm` (mirrored, `sync_perturbation=True`) and
  `sync_batchnorm_global` (one device): an MLP with synchronized BatchNorm;
- with 2 replicas also `dropout`, `default_jit` and `sync_batchnorm_jit`
  (`jit_compile=True`), `gsam`, `looksam`, `gsam_sync` and `looksam_sync`
  (`sync_perturbation=True`; also `*_sync_scaled`, with a loss scale factor)
  with their one-device runs `gsam_global` and `looksam_global`, and
  `accumulation` (`gradient_accumulation_steps=2`) and `steps_per_execution`
  (`steps_per_execution=2`), which are expected to fail (each records its
  error and whether the weights moved).

For each run the JSON holds the base model's variable names, their initial
values, every replica's final value, whether the replicas agreed bit for bit
after every step, and the fit logs; a run that raised holds `{"raised":
traceback}` instead. Nothing is asserted here: the test process compares the
runs with each other and with NumPy references.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 16
EPOCHS = 2
RHO = 0.1
LEARNING_RATE = 0.1
MOMENTUM = 0.5


def main(replicas: int, out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )

    import keras
    import numpy as np

    from keras_sam import GSAMModel, LookSAMModel, SAMModel

    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    one_device = tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.integers(0, 3, size=32).astype("int32")

    class Scale(keras.layers.Layer):
        """x * s, with a trainable s of the given `aggregation`."""

        def __init__(self, aggregation: str, **kwargs):
            super().__init__(**kwargs)
            self.aggregation = aggregation

        def build(self, input_shape):
            self.scale = self.add_weight(
                shape=(input_shape[-1],),
                initializer="ones",
                aggregation=self.aggregation,
                name="scale",
            )

        def call(self, inputs):
            return inputs * self.scale

    def mlp():
        # The network of `numpy_reference.mlp("tanh")`.
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(3)]
        )

    def scaled_mlp():
        # Trainable variables with "sum" and "mean" aggregation, which would
        # receive the sum (or mean) of the replicas' ε̂ if the perturbation
        # were assigned in replica context.
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((5,)),
                Scale("sum"),
                keras.layers.Dense(7, activation="tanh"),
                Scale("mean"),
                keras.layers.Dense(3),
            ]
        )

    def batchnorm_mlp():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(7, use_bias=False),
                keras.layers.BatchNormalization(synchronized=True),
                keras.layers.Activation("tanh"),
                keras.layers.Dense(3),
            ]
        )

    def dropout_mlp():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(7, activation="tanh"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(3),
            ]
        )

    class ReplicaAgreement(keras.callbacks.Callback):
        """After every step: do all replicas hold bit-identical trainable weights?"""

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

    def train(
        strategy,
        build_base,
        model_class=SAMModel,
        jit_compile=False,
        evaluate=False,
        loss_scale_factor=None,
        **options,
    ):
        with strategy.scope():
            model = model_class(build_base(), rho=RHO, **options)
            model.compile(
                optimizer=keras.optimizers.SGD(
                    LEARNING_RATE, momentum=MOMENTUM, loss_scale_factor=loss_scale_factor
                ),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile,
            )
        base = model.base_model
        base.build((None, 5))
        initial = [v.numpy().tolist() for v in base.weights]
        agreement = ReplicaAgreement(strategy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(
                x,
                y,
                batch_size=GLOBAL_BATCH,
                epochs=EPOCHS,
                shuffle=False,
                verbose=0,
                callbacks=[agreement],
            )
        local = strategy.experimental_local_results
        result = {
            "names": [v.path for v in base.weights],
            "trainable": [v.trainable for v in base.weights],
            "initial": initial,
            "replicas": [[t.numpy().tolist() for t in local(v.value)] for v in base.weights],
            "history": history.history,
            "identical_after_each_step": agreement.identical,
            "xla_ignored": any("`jit_compile=True` is ignored" in str(w.message) for w in caught),
            "jit_compile": model.jit_compile,
        }
        if evaluate:
            result["evaluation"] = model.evaluate(
                x, y, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True
            )
        if isinstance(model, LookSAMModel):
            result["reused_direction"] = [
                [t.numpy().tolist() for t in local(v.value)]
                for v in model.non_trainable_variables
                if v.name == "look_g_v"
            ]
        return result

    def unsupported_under_mirrored(optimizer_options=(), **compile_options):
        """The error (or None) of a fit Keras 3.15 cannot run under Mirrored."""
        with mirrored.scope():
            model = SAMModel(mlp(), rho=RHO)
            model.compile(
                optimizer=keras.optimizers.SGD(LEARNING_RATE, **dict(optimizer_options)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                **compile_options,
            )
        model.base_model.build((None, 5))
        before = [v.numpy() for v in model.base_model.weights]
        try:
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
            error = None
        except Exception as exception:
            error = {"type": type(exception).__name__, "message": str(exception)}
        after = [v.numpy() for v in model.base_model.weights]
        return {
            "error": error,
            "weights_unchanged": all(np.array_equal(a, b) for a, b in zip(before, after)),
        }

    def recorded(run, *args, **kwargs):
        # One failing run must not hide the others: its traceback is the result.
        try:
            return run(*args, **kwargs)
        except Exception:
            return {"raised": traceback.format_exc()}

    results = {"replicas": replicas, "x": x.tolist(), "y": y.tolist()}
    results["default"] = recorded(train, mirrored, scaled_mlp, evaluate=replicas == 2)
    results["default_split"] = recorded(train, one_device, scaled_mlp, num_batch_splits=replicas)
    results["sync_batchnorm"] = recorded(train, mirrored, batchnorm_mlp, sync_perturbation=True)
    results["sync_batchnorm_global"] = recorded(train, one_device, batchnorm_mlp)
    if replicas == 2:
        results["dropout"] = recorded(train, mirrored, dropout_mlp)
        results["default_jit"] = recorded(
            train, mirrored, scaled_mlp, jit_compile=True, evaluate=True
        )
        results["sync_batchnorm_jit"] = recorded(
            train, mirrored, batchnorm_mlp, jit_compile=True, sync_perturbation=True
        )
        results["gsam"] = recorded(train, mirrored, mlp, GSAMModel, alpha=0.3)
        results["looksam"] = recorded(train, mirrored, mlp, LookSAMModel, k=2, alpha=0.7)
        results["looksam_sync"] = recorded(
            train, mirrored, mlp, LookSAMModel, k=2, alpha=0.7, sync_perturbation=True
        )
        results["looksam_global"] = recorded(train, one_device, mlp, LookSAMModel, k=2, alpha=0.7)
        results["gsam_sync"] = recorded(
            train, mirrored, mlp, GSAMModel, alpha=0.3, sync_perturbation=True
        )
        results["gsam_global"] = recorded(train, one_device, mlp, GSAMModel, alpha=0.3)
        # The same with a loss scale: the synced paths scale g back by it.
        results["gsam_sync_scaled"] = recorded(
            train, mirrored, mlp, GSAMModel, alpha=0.3, sync_perturbation=True,
            loss_scale_factor=1024.0,
        )
        results["looksam_sync_scaled"] = recorded(
            train, mirrored, mlp, LookSAMModel, k=2, alpha=0.7, sync_perturbation=True,
            loss_scale_factor=1024.0,
        )
        results["accumulation"] = recorded(
            unsupported_under_mirrored, {"gradient_accumulation_steps": 2}
        )
        results["steps_per_execution"] = recorded(
            unsupported_under_mirrored, steps_per_execution=2
        )
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
