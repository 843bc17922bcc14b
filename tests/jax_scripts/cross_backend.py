"""Saves a SAM model on one Keras backend, loads and trains it on another.

Run by `tests/integration/test_jax.py`, each stage in a process of its own with the
backend in `KERAS_BACKEND`:

    python tests/jax_scripts/cross_backend.py save DIR     # train 2 steps, save, train 2 more
    python tests/jax_scripts/cross_backend.py resume DIR   # load, train the last 2 steps

`save` writes DIR/model.keras after two steps, then the uninterrupted run's
final weights (DIR/uninterrupted.json); `resume` writes what it loaded (every
constructor argument, the optimizer's and the variant's state) and its final
weights (DIR/resumed.json). Both use SGD: the backends' floating-point
differences stay at float32 rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(stage: str, directory: str) -> None:
    import keras
    import numpy as np

    import keras_sam

    work = Path(directory)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, size=64).astype("int32")

    def fit(model, start, stop):
        model.fit(x[start * 16:stop * 16], y[start * 16:stop * 16], batch_size=16, epochs=1,
                  shuffle=False, verbose=0)  # fmt: skip

    def record(model):
        return {
            "backend": keras.backend.backend(),
            "class": type(model).__name__,
            "config": {
                k: v for k, v in model.get_config().items() if k not in ("base_model", "dtype")
            },
            "iterations": int(np.asarray(model.optimizer.iterations)),
            "state": {
                v.path: np.asarray(v).tolist()
                for v in model.non_trainable_variables
                if "look" in v.name or v.name in ("rho", "skipped_steps")
            },
            "weights": [np.asarray(v).tolist() for v in model.base_model.weights],
        }

    if stage == "save":
        keras.utils.set_random_seed(0)
        base = keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
        )
        model = keras_sam.LookSAMModel(
            base, rho=keras_sam.schedules.LatePhase(0.1, 1), k=3, alpha=0.5, p=3.0,
            skip_nonfinite=True, eps=1e-10,
        )  # fmt: skip
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        fit(model, 0, 2)
        model.save(work / "model.keras")
        (work / "saved.json").write_text(json.dumps(record(model)))
        fit(model, 2, 4)
        (work / "uninterrupted.json").write_text(json.dumps(record(model)))
    else:
        model = keras.models.load_model(work / "model.keras")
        loaded = record(model)
        fit(model, 2, 4)
        (work / "resumed.json").write_text(json.dumps({"loaded": loaded, "final": record(model)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
