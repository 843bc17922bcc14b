"""Trains one SAMModel with `fit` as a worker of a 2-worker cluster; writes JSON.

Run by `tests/test_multiworker.py`:

    TF_CONFIG=... python multiworker_train.py worker OUT.json
    python multiworker_train.py mirrored OUT.json   # the 1-process reference

`worker` joins the `MultiWorkerMirroredStrategy` cluster that `TF_CONFIG`
describes (one CPU replica per worker); `mirrored` runs the same training on
a 2-replica `MirroredStrategy` over two logical CPUs in one process. Both see
the same data in the same order, global batch 16; replica (worker) 1's shard
of the third batch holds a NaN, so with `skip_nonfinite=True` every replica
must skip that step. The JSON holds the final trainable weights and the logs.

Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy` for every model:
its symbolic build reduces a distributed batch with `strategy.reduce("MEAN")`,
and it reduces scalar logs with `axis=0`. Until `SAMModel` carries the fix
(proposed in the issue #4 report), `patch_sam_model_for_multi_worker` below
applies the same change here; it is skipped once `SAMModel` defines
`_maybe_symbolic_build` itself.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 16


def patch_sam_model_for_multi_worker(SAMModel) -> bool:
    """Monkeypatches the proposed multi-worker fix in; True if it was needed."""
    if "_maybe_symbolic_build" in vars(SAMModel):
        return False
    import keras
    import tensorflow as tf
    from keras.src import tree

    def is_multi_worker(strategy) -> bool:
        return (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Only the first batch's shapes and dtypes matter: take one replica's
        # batch instead of Keras's cross-worker `reduce("MEAN")`.
        if iterator is not None and self._distribute_strategy is not None:
            local = self.distribute_strategy.experimental_local_results
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
                    next(batches),
                )
                break
        return keras.Model._maybe_symbolic_build(self, data_batch=data_batch)

    def with_vector_logs(step):
        # Keras reduces logs with `strategy.reduce("MEAN", v, axis=0)` across
        # workers, which needs an axis: shape [1] per replica gives the mean.
        def wrapped(self, data):
            logs = step(self, data)
            if is_multi_worker(self.distribute_strategy):
                logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
            return logs

        return wrapped

    SAMModel._maybe_symbolic_build = _maybe_symbolic_build
    SAMModel.train_step = with_vector_logs(SAMModel.train_step)
    SAMModel.test_step = with_vector_logs(SAMModel.test_step)
    return True


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

    patched = patch_sam_model_for_multi_worker(SAMModel) if mode == "worker" else False
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
        "patched": patched,
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
