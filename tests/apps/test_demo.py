"""`keras-sam demo`: its data, its fairness between the two runs, and one quick run.

The claim that SAM beats the base optimizer is a long run: see
tests/apps/test_demo_claim.py (slow). Here:

- the label noise changes exactly the requested number of training labels,
  each to a different class, uniformly, and never a test label;
- MNIST-1D is generated locally (no network, no file written) and leaves the
  caller's global random state alone;
- both runs start from the same weights and see the same batches: trained by
  `train_run`, the base optimizer and SAM with rho=0 (which is the base step)
  end at the same weights; with a different batch order they do not;
- the methods come from a registry whose `passes_per_step` is what a
  training step really costs (counted), and each row carries it with the
  training time;
- `keras-sam demo --quick` writes a JSON table and a PNG figure that agree
  with what Keras recorded during training.
"""

import json
import logging
import random
import socket

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from keras_sam import InvalidArgumentError
from keras_sam.apps import demo
from keras_sam.apps.cli import main
from keras_sam.apps.data.mnist1d import load_mnist1d, load_noisy_mnist1d, symmetric_label_noise
from keras_sam.apps.demo import (
    METHODS,
    DemoMethod,
    DemoSettings,
    register_method,
    seeded_batches,
    starting_weights,
    train_run,
)


# ------------------------------------------------------------------ label noise
@pytest.mark.parametrize(
    "size, fraction, expected", [(4000, 0.4, 1600), (1000, 0.25, 250), (7, 0.5, 4), (50, 0.0, 0)]
)
def test_noise_changes_exactly_the_requested_number_of_labels(size, fraction, expected):
    labels = np.random.default_rng(1).integers(0, 10, size).astype("int32")
    original = labels.copy()
    noisy = symmetric_label_noise(labels, fraction, seed=3)
    np.testing.assert_array_equal(labels, original)  # input untouched
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    assert int(np.sum(noisy != labels)) == expected  # each changed label is a different class


def test_noise_is_uniform_over_the_other_classes_and_seeded():
    labels = np.repeat(np.arange(10, dtype="int32"), 5000)
    noisy = symmetric_label_noise(labels, 0.5, seed=0)
    changed = noisy != labels
    # Every class loses half its labels (sampling without replacement over the
    # whole set: within 3 standard deviations of 2500).
    lost = np.bincount(labels[changed], minlength=10)
    assert np.all(np.abs(lost - 2500) < 3 * np.sqrt(5000 * 0.25))
    # The wrong class is uniform over the 9 others: counts of (old, new) pairs.
    pairs = np.zeros((10, 10), int)
    np.add.at(pairs, (labels[changed], noisy[changed]), 1)
    assert np.all(np.diag(pairs) == 0)
    off_diagonal = pairs[~np.eye(10, dtype=bool)]
    expected = 25000 / 90
    chi_square = np.sum((off_diagonal - expected) ** 2 / expected)
    assert chi_square < 150  # 89 degrees of freedom: p(chi2 > 150) < 1e-4
    np.testing.assert_array_equal(noisy, symmetric_label_noise(labels, 0.5, seed=0))
    assert not np.array_equal(noisy, symmetric_label_noise(labels, 0.5, seed=1))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((np.zeros(4, "int32"), 1.5), "fraction"),
        ((np.zeros(4, "int32"), -0.1), "fraction"),
        ((np.zeros(4, "float32"), 0.5), "integer classes"),
        ((np.full(4, 10, "int32"), 0.5), "0..9"),
    ],
)
def test_noise_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        symmetric_label_noise(*arguments)


# --------------------------------------------------------------------- MNIST-1D
@pytest.fixture(scope="module")
def default_mnist1d():
    return load_mnist1d()


def test_mnist1d_defaults_are_4000_train_and_1000_test(default_mnist1d):
    (x_train, y_train), (x_test, y_test) = default_mnist1d
    assert x_train.shape == (4000, 40, 1) and x_test.shape == (1000, 40, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # mnist1d centres and scales the whole set to mean 0 and std 1.
    everything = np.concatenate([x_train, x_test])
    assert abs(everything.mean()) < 1e-5 and abs(everything.std() - 1) < 1e-5


def test_noisy_mnist1d_changes_training_labels_only(default_mnist1d):
    (x_train, y_train), (x_test, y_test) = default_mnist1d
    (noisy_x, noisy_y), (same_x, same_y) = load_noisy_mnist1d(0.4, seed=2)
    assert int(np.sum(noisy_y != y_train)) == 1600
    np.testing.assert_array_equal(noisy_x, x_train)
    np.testing.assert_array_equal(same_x, x_test)
    np.testing.assert_array_equal(same_y, y_test)


def test_mnist1d_is_generated_offline_and_keeps_global_random_state(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    (x_train, _), (x_test, _) = load_mnist1d(num_samples=60)
    assert x_train.shape == (48, 40, 1) and x_test.shape == (12, 40, 1)
    assert list(tmp_path.iterdir()) == []  # no cached pickle written
    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)


# ----------------------------------------------- same start, same batches
def test_starting_weights_depend_on_the_seed_only():
    first, again, other = starting_weights(4), starting_weights(4), starting_weights(5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_seeded_batches_repeat_the_same_order_and_cover_each_epoch():
    x = np.arange(10, dtype="float32")[:, None]
    y = np.arange(10, dtype="int32")

    def epochs_of(seed):
        batches = [
            b.tolist() for _, b in seeded_batches(x, y, batch_size=4, epochs=3, seed=seed)
        ]
        assert [len(b) for b in batches] == [4, 4, 2] * 3
        return [sum(batches[i : i + 3], []) for i in range(0, 9, 3)]

    epochs = epochs_of(7)
    assert epochs == epochs_of(7)
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert epochs != epochs_of(8)


def test_seeded_batches_are_numpy_arrays_of_the_given_rows():
    """Backend-neutral batches: NumPy rows of x and y, dtypes kept."""
    x = np.arange(20, dtype="float32").reshape(10, 2, 1)
    y = np.arange(10, dtype="int32")
    for bx, by in seeded_batches(x, y, batch_size=4, epochs=2, seed=3):
        assert isinstance(bx, np.ndarray) and isinstance(by, np.ndarray)
        assert bx.dtype == np.float32 and by.dtype == np.int32
        np.testing.assert_array_equal(bx, x[by])


def test_base_and_sam_with_rho_zero_train_to_the_same_weights():
    """SAM with rho=0 takes the base optimizer's step, so identical starts and
    identical batches must give identical weights; a different batch order
    must not (which shows the comparison can fail)."""
    (x, y), test = load_noisy_mnist1d(0.4, seed=0, num_samples=200)
    train = (x, y)
    settings = DemoSettings(rho=0.0, epochs=2, batch_size=32, verbose=0)
    initial = starting_weights(0)
    base, base_history = train_run("base", initial, train, test, settings, seed=0)
    sam, sam_history = train_run("sam", initial, train, test, settings, seed=0)
    shuffled, _ = train_run("base", initial, train, test, settings, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, base.get_weights()))
    # Bit-identical on TF 2.21 CPU; the tolerance only allows for kernels that
    # fuse the two graphs differently. A different batch order moves weights
    # by ~1e-2 (checked below).
    for a, b in zip(base.get_weights(), sam.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(base_history["loss"], sam_history["loss"], rtol=1e-6)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(base.get_weights(), shuffled.get_weights()))
    assert gap > 1e-3


@pytest.mark.parametrize("method", ["base", "sam"])
def test_one_epoch_per_call_trains_to_the_same_weights_as_one_step_per_call(
    method, monkeypatch
):
    """The demo runs an epoch per call into TensorFlow; only the number of
    calls may change, not one bit of the weights or of the logged history."""
    compiled = []
    original_compile = keras.Model.compile

    def recording_compile(model, *args, **kwargs):
        compiled.append(kwargs.get("steps_per_execution", 1))
        return original_compile(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", recording_compile)
    train, test = load_noisy_mnist1d(0.4, seed=0, num_samples=250)  # 200 train: 7 steps
    settings = DemoSettings(epochs=2, batch_size=32, verbose=0)
    initial = starting_weights(0)
    per_epoch, per_epoch_history = train_run(method, initial, train, test, settings, seed=0)
    per_step, per_step_history = train_run(
        method, initial, train, test, settings, seed=0, steps_per_execution=1
    )
    # The trainer's compile; SAM's base is compiled again for evaluation.
    assert compiled[:: 2 if method == "sam" else 1] == [7, 1]
    assert any(not np.array_equal(a, b) for a, b in zip(initial, per_epoch.get_weights()))
    for a, b in zip(per_epoch.get_weights(), per_step.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert per_epoch_history == per_step_history


# ------------------------------------------------------------ the methods
@pytest.mark.parametrize("name", list(METHODS))
def test_passes_per_step_is_what_the_steps_cost(name, monkeypatch):
    """`passes_per_step`, counted from a run's logs, against a count of the
    network's training-mode forward passes, run eagerly so that each pass is
    a Python call (in a compiled step it would be counted once, at tracing)."""
    calls = []
    original_call = keras.Sequential.call

    def counting_call(model, inputs, training=None, **kwargs):
        if training:
            calls.append(model.name)
        return original_call(model, inputs, training=training, **kwargs)

    monkeypatch.setattr(keras.Sequential, "call", counting_call)
    settings = DemoSettings(epochs=2, batch_size=16, verbose=0)
    method = METHODS[name]
    network = keras.Sequential(
        [keras.Input((40, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name="network"
    )
    steps_per_epoch, epochs = 5, settings.epochs * method.epochs_factor
    plan = demo.RunPlan(seed=0, steps_per_epoch=steps_per_epoch,
                        total_steps=settings.epochs * steps_per_epoch)  # fmt: skip
    trainer = method.build(network, settings, plan)
    trainer.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    x = np.random.default_rng(0).normal(size=(80, 40, 1)).astype("float32")
    y = np.arange(80, dtype="int32") % 10
    history = trainer.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False).history
    base_steps = settings.epochs * steps_per_epoch
    assert calls.count("network") == pytest.approx(
        demo.passes_per_step(history, method) * base_steps
    )


def test_the_registry_takes_new_methods_and_checks_them():
    assert list(METHODS) == [
        "base", "sam", "base-matched", "looksam", "msam", "rst", "aesam", "late", "fsam",
        "sam-on",
    ]  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="epochs_factor"):
        register_method(
            DemoMethod("free", build=lambda *args: args[0], label=str, epochs_factor=0)
        )
    with pytest.raises(InvalidArgumentError, match="`method` must be one of base, sam"):
        train_run("sgdr", [], (None, None), (None, None), DemoSettings(), seed=0)
    with pytest.raises(InvalidArgumentError, match="`methods`"):
        DemoSettings(methods=("base", "sgdr"))
    assert "free" not in METHODS


def test_a_registered_method_is_trained_and_reported(tmp_path, monkeypatch, capsys):
    """A method added to the registry trains like the others (same start,
    same batches) and gets its row, its passes per step and its time."""
    monkeypatch.setitem(
        METHODS,
        "again",  # the base step again: the same numbers, its own row
        DemoMethod("again", build=lambda network, *_: network, label=lambda s: "again"),
    )
    settings = DemoSettings(
        methods=("base", "again"), verbose=0, epochs=2, num_samples=200,
        hessian_iterations=2, landscape_points=3,
    )
    rows = demo.run_demo(settings, seeds=[0], out=tmp_path)
    assert [row["method"] for row in rows] == ["base", "again"]
    assert [row["passes_per_step"] for row in rows] == [1, 1]
    assert rows[0]["test_accuracy_per_epoch"] == rows[1]["test_accuracy_per_epoch"]
    assert rows[0]["train_loss"] == rows[1]["train_loss"]
    assert all(row["seconds"] > 0 and row["rho"] == 0.0 for row in rows)
    assert rows[0]["seconds_vs_base"] == 1.0 and rows[1]["seconds_vs_base"] > 0
    table = capsys.readouterr().out
    assert "passes/step" in table and "again" in table and "vs base" in table


def test_sam_on_is_the_base_on_the_demos_cnn_and_f_sam_climbs(tmp_path):
    """The demo's CNN has no normalization layer: SAM-ON perturbs nothing, so
    it is the base step (one pass, the same numbers); F-SAM takes two."""
    settings = DemoSettings(
        methods=("base", "sam-on", "fsam"), verbose=0, epochs=2, num_samples=200,
        hessian_iterations=2, landscape_points=3,
    )
    with pytest.warns(UserWarning, match="chooses none of the 8 trainable variables"):
        rows = demo.run_demo(settings, seeds=[0], out=tmp_path)
    base, sam_on, fsam = rows
    assert [row["passes_per_step"] for row in rows] == [1, 1, 2]
    assert sam_on["test_accuracy_per_epoch"] == base["test_accuracy_per_epoch"]
    assert sam_on["train_loss"] == base["train_loss"]
    assert fsam["train_loss"] != base["train_loss"] and fsam["rho"] == settings.rho


def test_base_matched_has_twice_the_passes_over_the_same_batches(tmp_path):
    """`base-matched` trains the base for twice the epochs: its first epochs'
    batches are the base run's, so the passes are the ones SAM spends."""
    settings = DemoSettings(
        methods=("base", "base-matched"), verbose=0, epochs=2, num_samples=200,
        hessian_iterations=2, landscape_points=3,
    )
    rows = demo.run_demo(settings, seeds=[0], out=tmp_path)
    assert [row["passes_per_step"] for row in rows] == [1, 2]
    assert len(rows[1]["test_accuracy_per_epoch"]) == 2 * len(rows[0]["test_accuracy_per_epoch"])


# -------------------------------------------------------------- the quick run
class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quick_demo_writes_table_and_figure(tmp_path, capsys):
    table, out = tmp_path / "table.json", tmp_path / "figures"
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        assert main(["demo", "--quick", "-q", "--json", str(table), "--out", str(out)]) == 0
    finally:
        tf.get_logger().removeHandler(records)
    # Each model's functions are traced once: no retracing warning on screen.
    assert not [m for m in records.messages if "retracing" in m], records.messages
    rows = json.loads(table.read_text())
    assert [row["method"] for row in rows] == ["base", "sam"]
    quick_epochs = 3
    for row in rows:
        assert row["seed"] == 0 and row["epochs"] == quick_epochs and row["noise"] == 0.4
        assert isinstance(row["test_accuracy"], float) and 0.0 <= row["test_accuracy"] <= 1.0
        assert isinstance(row["train_loss"], float) and 0.0 < row["train_loss"] < 10.0
        assert isinstance(row["sharpness"], float) and np.isfinite(row["sharpness"])
        assert row["sharpness"] > 0  # the top curvature of a loss being minimised
        # The final evaluation and Keras's last validation pass see the same
        # weights and the same clean test set.
        assert len(row["test_accuracy_per_epoch"]) == quick_epochs
        assert row["test_accuracy"] == pytest.approx(row["test_accuracy_per_epoch"][-1], abs=1e-6)
        assert isinstance(row["seconds"], float) and row["seconds"] > 0
    assert rows[0]["rho"] == 0.0 and rows[1]["rho"] == 0.2
    assert [row["passes_per_step"] for row in rows] == [1, 2]
    printed = capsys.readouterr().out
    assert "clean test acc" in printed and "SAM(rho=0.2) + sgd" in printed
    assert "passes/step" in printed and "train time" in printed

    figure = out / "sam_vs_base_seed0.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(figure)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn
