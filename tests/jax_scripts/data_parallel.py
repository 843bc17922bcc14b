"""SAM models under `keras.distribution.DataParallel` on JAX; writes JSON.

Run by `tests/integration/test_jax.py` with `KERAS_BACKEND=jax` and
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (N CPU devices):

    python tests/jax_scripts/data_parallel.py OUT.json

Each case trains the same MLP from the same weights on the same batches
(global batch 16, two epochs of two steps, SGD with momentum) once under
DataParallel over every device and once on one device, and records both
final weights. Also recorded: the error for `sync_perturbation=False`, and a
mixed_float16 run whose second step overflows.
"""

from __future__ import annotations

import json
import sys


def main(out_path: str) -> None:
    import jax
    import keras
    import numpy as np

    import keras_sam

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, size=64).astype("int32")
    devices = len(jax.devices())

    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dropout(0.2),
                keras.layers.Dense(3),
            ]
        )

    cases = {
        "sam": lambda b: keras_sam.SAMModel(b, rho=0.1, sync_perturbation=True),
        "sam_splits": lambda b: keras_sam.SAMModel(
            b, rho=0.1, sync_perturbation=True, num_batch_splits=devices
        ),
        "asam": lambda b: keras_sam.SAMModel(b, rho=0.5, adaptive=True, sync_perturbation=True),
        "gsam": lambda b: keras_sam.GSAMModel(b, rho=0.1, alpha=0.3, sync_perturbation=True),
        "looksam": lambda b: keras_sam.LookSAMModel(b, rho=0.1, k=2, sync_perturbation=True),
        "msam": lambda b: keras_sam.MSAMModel(b, rho=0.5, sync_perturbation=True),
        "fsam": lambda b: keras_sam.FriendlySAMModel(b, rho=0.1, sync_perturbation=True),
        "rst": lambda b: keras_sam.RandomizedSAMModel(b, rho=0.1, sync_perturbation=True),
    }

    def train(make, distributed: bool, policy="float32", data=(x, y), steps=None):
        keras.mixed_precision.set_global_policy(policy)
        distribution = keras.distribution.DataParallel() if distributed else None
        keras.distribution.set_distribution(distribution)
        try:
            model = make(build())
            model.compile(
                optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            history = model.fit(*data, batch_size=16, epochs=2, shuffle=False, verbose=0)
            return model, history.history
        finally:
            keras.distribution.set_distribution(None)
            keras.mixed_precision.set_global_policy("float32")

    results = {"devices": devices, "cases": {}}
    for name, make in cases.items():
        one, _ = train(make, distributed=False)
        spread, history = train(make, distributed=True)
        results["cases"][name] = {
            "one_device": [np.asarray(v).tolist() for v in one.base_model.weights],
            "data_parallel": [np.asarray(v).tolist() for v in spread.base_model.weights],
            "logs": history,
        }
    try:
        train(lambda b: keras_sam.SAMModel(b, rho=0.1), distributed=True)
        results["unsynced_error"] = None
    except ValueError as error:
        results["unsynced_error"] = str(error)

    # mixed_float16: the third step's batch holds an overflowing input.
    bad_x = x.copy()
    bad_x[2 * 16 + 1, 0] = 1e30
    model, _ = train(
        lambda b: keras_sam.SAMModel(b, rho=0.1, sync_perturbation=True),
        distributed=True, policy="mixed_float16", data=(bad_x[:48], y[:48]),
    )  # fmt: skip
    results["mixed_float16"] = {
        "optimizer": type(model.optimizer).__name__,
        "iterations": int(np.asarray(model.optimizer.iterations)),
        "scale": float(np.asarray(model.optimizer.dynamic_scale)),
        "finite": bool(all(np.isfinite(np.asarray(v)).all() for v in model.trainable_variables)),
    }
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
