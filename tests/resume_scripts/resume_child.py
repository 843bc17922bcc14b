"""Child process of `tests/integration/test_resume.py`: trains, is killed, resumes.

Two modes, each run in a fresh Python process:

    python resume_child.py kill VARIANT WORK_DIR
        Writes the two uninterrupted references of VARIANT to
        WORK_DIR/VARIANT/, then trains it once more (its initial state in
        `initial.npz`) with two
        `keras.callbacks.BackupAndRestore` callbacks (one backing up at the end
        of each epoch, one every `SAVE_FREQ` steps) and, after global step
        `KILL_AFTER`, writes WORK_DIR/VARIANT/reached and waits for the parent
        to SIGKILL it.

    python resume_child.py resume WORK_DIR VARIANT [VARIANT ...]
        For each VARIANT and each backup kind, builds a fresh model and runs the
        same `fit` with the same `BackupAndRestore`, which restores the backup
        in `on_train_begin`; writes the restored and the final state.

Each state is an `.npz` with one array per variable, `model/<i>` for
`model.variables` (weights, BatchNorm statistics, the dropout seed state,
`rho`, `skipped_steps`, LookSAM's step counter and stored direction) and
`optimizer/<i>` for `model.optimizer.variables` (iterations, learning rate,
Adam's slots), in their order, and `names`.

Keras 3.15's `BackupAndRestore` restores the weights of its last backup and
restarts the epoch that backup was taken in from its first batch (the
backup's `"batch"` is written but never read). A backup taken in the middle of
an epoch therefore trains that epoch's first batches twice. The second
reference, `reference_replay.npz`, sees exactly that order, uninterrupted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np

from keras_sam import LookSAMModel, SAMModel

SEED = 11
ROWS, BATCH, EPOCHS = 16, 4, 3  # 4 steps an epoch, 12 in all
SAVE_FREQ = 3  # step backups after global steps 3, 6, 9
KILL_AFTER = 7  # killed in epoch 1 (its third batch), last backups after steps 4 and 6
STEPS_PER_EPOCH = ROWS // BATCH
# The last step backup before the kill, and where its epoch starts.
LAST_STEP_BACKUP = KILL_AFTER // SAVE_FREQ * SAVE_FREQ
INTERRUPTED_EPOCH = (LAST_STEP_BACKUP - 1) // STEPS_PER_EPOCH
BATCHES_BEFORE_STEP_BACKUP = LAST_STEP_BACKUP - INTERRUPTED_EPOCH * STEPS_PER_EPOCH
BACKUPS = {"epoch": "epoch", "step": SAVE_FREQ}  # kind -> save_freq
VARIANTS = ("sam", "looksam")


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 4)).astype("float32")
    y = rng.normal(size=(ROWS, 2)).astype("float32")
    return x, y


def build(variant: str) -> keras.Model:
    """A compiled tiny MLP with dropout and BatchNorm, the same on every call."""
    keras.utils.set_random_seed(SEED)
    base = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    if variant == "sam":
        # A rho schedule reads the restored iteration count.
        rho = keras.optimizers.schedules.PolynomialDecay(0.2, EPOCHS * STEPS_PER_EPOCH, 0.05)
        model = SAMModel(base, rho=rho)
    elif variant == "looksam":
        # k=5: full steps 0, 5, 10; both resumes start on a step that reuses
        # the stored direction g_v (steps 4 and 6).
        model = LookSAMModel(base, rho=0.1, k=5, alpha=0.7)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    learning_rate = keras.optimizers.schedules.ExponentialDecay(0.02, 1, 0.95)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    # `BackupAndRestore` refuses an unbuilt model, and a wrapper is unbuilt
    # until its first call even when its base is built.
    model.build((None, 4))
    return model


def state(model: keras.Model) -> dict[str, np.ndarray]:
    arrays = {f"model/{i}": np.array(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update(
        {f"optimizer/{i}": np.array(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    )
    arrays["names"] = np.array(
        [v.path for v in model.variables] + [v.path for v in model.optimizer.variables]
    )
    return arrays


def fit(model, x, y, epochs, callbacks=(), initial_epoch=0):
    return model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=list(callbacks),
        verbose=0,
    )


def backup_callbacks(directory: Path) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.BackupAndRestore(str(directory / f"{kind}_backup"), save_freq=freq)
        for kind, freq in BACKUPS.items()
    ]


class WaitForKill(keras.callbacks.Callback):
    """After global step `after`, says so in `marker` and sleeps until killed."""

    def __init__(self, after: int, marker: Path):
        super().__init__()
        self.after, self.marker, self.steps = after, marker, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.after:
            partial = self.marker.with_suffix(".partial")
            partial.write_text(str(self.steps))
            partial.rename(self.marker)  # appears whole or not at all
            time.sleep(600)
            sys.exit("resume_child: was not killed")


class RecordRestored(keras.callbacks.Callback):
    """The state right after `BackupAndRestore.on_train_begin` restored it."""

    def on_train_begin(self, logs=None):
        self.restored = state(self.model)


def kill(variant: str, work: Path) -> None:
    directory = work / variant
    directory.mkdir(parents=True, exist_ok=True)
    x, y = data()

    uninterrupted = build(variant)
    fit(uninterrupted, x, y, EPOCHS)
    np.savez(directory / "reference_uninterrupted.npz", **state(uninterrupted))

    # What a resume from the last step backup trains, in one process.
    replay = build(variant)
    fit(replay, x, y, INTERRUPTED_EPOCH)
    rows = BATCHES_BEFORE_STEP_BACKUP * BATCH
    fit(replay, x[:rows], y[:rows], 1)
    fit(replay, x, y, EPOCHS, initial_epoch=INTERRUPTED_EPOCH)
    np.savez(directory / "reference_replay.npz", **state(replay))

    killed = build(variant)
    np.savez(directory / "initial.npz", **state(killed))
    callbacks = [*backup_callbacks(directory), WaitForKill(KILL_AFTER, directory / "reached")]
    fit(killed, x, y, EPOCHS, callbacks)
    sys.exit("resume_child: training ended before the kill")


def resume(work: Path, variants: list[str]) -> None:
    x, y = data()
    for variant in variants:
        directory = work / variant
        for kind, freq in BACKUPS.items():
            model = build(variant)
            recorder = RecordRestored()
            backup = keras.callbacks.BackupAndRestore(
                str(directory / f"{kind}_backup"), save_freq=freq
            )
            history = fit(model, x, y, EPOCHS, [backup, recorder])
            np.savez(directory / f"restored_{kind}.npz", **recorder.restored)
            np.savez(
                directory / f"resumed_{kind}.npz",
                epochs_run=len(history.history["loss"]),
                **state(model),
            )


def main(argv: list[str]) -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    mode, *args = argv
    if mode == "kill":
        kill(args[0], Path(args[1]))
    elif mode == "resume":
        resume(Path(args[0]), args[1:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
