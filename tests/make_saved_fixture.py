"""Writes the forward-compatibility fixture `tests/data/sam_model_v0_1_0.*`.

`sam_model_v0_1_0.keras` is a tiny `SAMModel` (Dense 4 -> 3, rho=0.07, p=2,
SGD with momentum, trained one step so that the optimizer has state) saved by
keras-sam 0.1.0; `sam_model_v0_1_0.json` holds what loading it must give back:
the constructor arguments, the weights, the optimizer state, a fixed probe
batch and the model's predictions on it.

`tests/unit/test_sam_keras_integration.py` loads the committed files with every
later release, so a change that can no longer read models saved by 0.1.0 fails
there. Regenerate the files only for a deliberate format break (and then bump
the file name):

    TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=. python tests/make_saved_fixture.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_sam
from keras_sam import SAMModel

FIXTURE_DIR = Path(__file__).resolve().parent / "data"
STEM = "sam_model_v0_1_0"

# What the saved model was built with; the test checks each comes back.
ARGUMENTS = {
    "rho": 0.07,
    "p": 2.0,
    "adaptive": False,
    "eta": 0.01,
    "num_batch_splits": 1,
    "sync_perturbation": False,
    "skip_nonfinite": False,
    "eps": 1e-12,
    "name": "sam_fixture",
}
OPTIMIZER = {"class_name": "SGD", "learning_rate": 0.1, "momentum": 0.9}
LOSS = "mean_squared_error"
METRICS = ["mean_absolute_error"]


def _as_list(array) -> list:
    # float32 -> float64 -> JSON is exact, and so is the way back.
    return np.asarray(array, np.float64).tolist()


def build_model() -> SAMModel:
    """The fixture model, compiled and untrained."""
    keras.utils.set_random_seed(2024)
    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")], name="linear")
    model = SAMModel(base, **ARGUMENTS)
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=OPTIMIZER["learning_rate"], momentum=OPTIMIZER["momentum"]
        ),
        loss=LOSS,
        metrics=METRICS,
    )
    return model


def write_fixture(output_dir: Path = FIXTURE_DIR) -> tuple[Path, Path]:
    """Trains the fixture one step, saves it and its expected values."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model()
    rng = np.random.default_rng(7)
    x_train = rng.normal(size=(6, 4)).astype("float32")
    y_train = rng.normal(size=(6, 3)).astype("float32")
    model.fit(x_train, y_train, batch_size=6, epochs=1, shuffle=False, verbose=0)

    x_probe = rng.normal(size=(5, 4)).astype("float32")
    y_probe = rng.normal(size=(5, 3)).astype("float32")
    dense = model.base_model.get_layer("dense")
    momentums = {v.path: m for v, m in zip(model.trainable_variables, model.optimizer.momentums)}
    expected = {
        "versions": {
            "keras_sam": keras_sam.__version__,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
        "arguments": ARGUMENTS,
        "optimizer": {**OPTIMIZER, "iterations": int(model.optimizer.iterations.numpy())},
        "loss": LOSS,
        "metrics": METRICS,
        "weights": {"kernel": _as_list(dense.kernel), "bias": _as_list(dense.bias)},
        "momentums": {
            "kernel": _as_list(momentums[dense.kernel.path]),
            "bias": _as_list(momentums[dense.bias.path]),
        },
        "x": _as_list(x_probe),
        "y": _as_list(y_probe),
        "predictions": _as_list(model.predict(x_probe, verbose=0)),
    }
    model_path = output_dir / f"{STEM}.keras"
    json_path = output_dir / f"{STEM}.json"
    model.save(model_path)
    json_path.write_text(json.dumps(expected, indent=1) + "\n")
    return model_path, json_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=FIXTURE_DIR)
    args = parser.parse_args()
    for path in write_fixture(args.output_dir):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
