"""`keras-sam train` and its tf.data pipeline, offline on TFDS mock data.

Every listed dataset and model trains for one or two tiny steps; the checks
are on what a run must leave behind (history rows, optimizer iterations,
weights that moved, files that load back and agree with each other), on the
pipeline's numbers (crops, flips, label noise against NumPy and binomial
bounds), and on the choice of strategy, precision and SAM wrapper.
"""

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_sam
from keras_sam._validation import InvalidArgumentError
from keras_sam.apps import cli
from keras_sam.apps import train as train_module
from keras_sam.apps.data import tfds_images
from keras_sam.apps.data.tfds_images import load_image_dataset, symmetric_label_noise
from keras_sam.apps.train import TrainConfig, main, train
from keras_sam.models.resnet import get_model

TINY = dict(max_examples=16, batch_size=8, epochs=1, verbose=0)


@pytest.fixture(autouse=True)
def offline_mock_data():
    # Random examples from the datasets' own code: no download, no metadata.
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


class WeightRecorder(keras.callbacks.Callback):
    """Records the trainable weights when training starts and ends."""

    def on_train_begin(self, logs=None):
        self.start = [np.array(w) for w in self.model.trainable_weights]
        self.jit_compile = self.model.jit_compile
        self.wrapper = type(self.model).__name__
        classifier = getattr(self.model, "base_model", self.model)
        network = classifier.layers[-1]  # after the Normalization layer
        self.model_name = network.name
        self.compute_dtype = network.layers[1].compute_dtype

    def on_train_end(self, logs=None):
        self.end = [np.array(w) for w in self.model.trainable_weights]


def read_history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


# With the CLI test (mnist) one run per dataset; with the resume and CLI tests
# they cover every SAM method and three of the four listed models. Only
# the first evaluates, exports and loads the model back (each costs a graph
# trace); the others take one step.
ONE_STEP = {"steps_per_epoch": 1, "test_split": None, "export": False}
RUNS = [
    # dataset, model, sam, classes, shape, flips, extra settings
    pytest.param("cifar10", "resnet8", "sam", 10, (32, 32, 3), True, {}, id="cifar10"),
    pytest.param("cifar100", "resnet20", "none", 100, (32, 32, 3), True,
                 {"jit": False, **ONE_STEP}, id="cifar100"),
    pytest.param("svhn_cropped", "wrn16_8", "none", 10, (32, 32, 3), False, ONE_STEP,
                 id="svhn_cropped"),
    pytest.param("fashion_mnist", "resnet8", "looksam", 10, (28, 28, 1), True,
                 {"mixed_precision": True, "label_smoothing": 0.1, **ONE_STEP},
                 id="fashion_mnist"),
    # Not ResNet-56: it is ResNet-20's code with n = 9 (test_models.py checks
    # its parameter count), and its first trace alone costs ~40 CPU seconds.
]


@pytest.mark.parametrize("dataset, model, sam, classes, shape, flips, extra", RUNS)
def test_train_each_dataset_and_model(
    tmp_path, dataset, model, sam, classes, shape, flips, extra
):
    recorder = WeightRecorder()
    config = TrainConfig(
        dataset=dataset, model=model, sam=sam, out=str(tmp_path), **TINY, **extra
    )
    results = train(config, callbacks=[recorder])
    steps = extra.get("steps_per_epoch", 2)  # 16 examples / batch 8
    full_check = not extra

    assert (results["num_classes"], tuple(results["image_shape"])) == (classes, shape)
    assert results["flip"] is flips
    assert results["steps_per_epoch"] == steps and results["optimizer_iterations"] == steps
    expected_wrapper = {"none": "Functional", "sam": "SAMModel", "looksam": "LookSAMModel"}[sam]
    assert recorder.wrapper == expected_wrapper
    assert recorder.model_name == model
    moved = [not np.array_equal(a, b) for a, b in zip(recorder.start, recorder.end)]
    assert all(moved), "every trainable weight must receive an update"

    history = read_history(tmp_path)
    assert [row["epoch"] for row in history] == ["0"]
    assert np.isfinite(float(history[0]["loss"]))
    assert ("sharpness" in history[0]) is (sam != "none")
    assert (history[0]["val_accuracy"] != "NA") is full_check  # CSVLogger writes NA
    assert set(results["test"]) == ({"loss", "accuracy"} if full_check else set())
    assert any((tmp_path / "tensorboard" / "train").iterdir())
    assert (tmp_path / "backup" / "training_metadata.json").exists()
    assert (tmp_path / "model.keras").stat().st_size > 0
    assert (tmp_path / "saved_model").exists() is full_check
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["sam"] == sam and saved["optimizer_iterations"] == steps

    if full_check:
        # The saved model holds the final weights; the SavedModel serves the same.
        loaded = keras.saving.load_model(tmp_path / "model.keras")
        assert len(loaded.trainable_weights) == len(recorder.end)
        for saved_weight, final in zip(loaded.trainable_weights, recorder.end):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved_weight), final)
        x = np.random.default_rng(0).uniform(size=(3, *shape)).astype("float32")
        logits = loaded.predict(x, verbose=0)
        assert logits.shape == (3, classes) and logits.dtype == np.float32
        served = tf.saved_model.load(str(tmp_path / "saved_model"))
        np.testing.assert_allclose(served.serve(x).numpy(), logits, rtol=1e-5, atol=1e-5)
        assert float(history[0]["val_accuracy"]) == pytest.approx(results["test"]["accuracy"])
    if "jit" in extra:
        assert recorder.jit_compile is extra["jit"]
    if extra.get("mixed_precision"):
        assert results["dtype_policy"] == "mixed_bfloat16"  # on CPU
        assert recorder.compute_dtype == "bfloat16"
        assert keras.mixed_precision.global_policy().name == "float32", "policy restored"


def test_rerun_with_same_out_resumes(tmp_path, capsys):
    """Epoch 1 only, then `--epochs 2`: the second run continues, not restarts."""
    config = TrainConfig(
        model="resnet8", sam="asam", out=str(tmp_path), export=False, test_split=None,
        steps_per_epoch=1, **TINY
    )
    first = train(config)
    after_first = [
        keras.ops.convert_to_numpy(w)
        for w in keras.saving.load_model(tmp_path / "model.keras").trainable_weights
    ]

    recorder = WeightRecorder()
    config.epochs = 2
    second = train(config, callbacks=[recorder])

    assert (first["epochs_run"], second["epochs_run"], second["first_epoch"]) == (1, 1, 1)
    assert recorder.wrapper == "SAMModel" and second["config"]["rho"] == 0.5  # ASAM
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0", "1"]
    # The optimizer state came back too: 1 + 1 steps, not 1.
    assert second["optimizer_iterations"] == 2
    # Training started from the first run's final weights.
    assert len(recorder.start) == len(after_first)
    for start, previous_end in zip(recorder.start, after_first):
        np.testing.assert_array_equal(start, previous_end)

    # Another model (or method) in the same --out: a one-line error before
    # any data is read, not Keras's failure to load the backup into it.
    changed = dataclasses.replace(config, model="resnet14", sam="sam")
    with pytest.raises(InvalidArgumentError, match="model='resnet8' there, 'resnet14' now"):
        train(changed)
    status = main(["--model", "resnet8", "--sam", "gsam", "--out", str(tmp_path)])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith("keras-sam train: error: `out`") and "sam='asam' there" in lines[0]


class _CrashAtFirstBatch(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("out of memory (simulated)")


def test_a_run_that_died_in_its_first_epoch_can_be_retried_with_other_settings(
    tmp_path, monkeypatch
):
    """Nothing was backed up yet, so there is nothing to resume or protect;
    once an epoch is, another run's settings are refused before any data."""
    config = TrainConfig(
        model="resnet8", sam="sam", out=tmp_path, export=False, test_split=None,
        steps_per_epoch=1, mixed_precision=True, **TINY
    )
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, callbacks=[_CrashAtFirstBatch()])
    backup = tmp_path / "backup"
    assert (backup / "settings.json").exists()
    assert not (backup / "training_metadata.json").exists()
    # A retry with a smaller batch is accepted: it trains (and dies again).
    smaller = dataclasses.replace(config, batch_size=4)
    with pytest.raises(RuntimeError, match="simulated"):
        train(smaller, callbacks=[_CrashAtFirstBatch()])
    assert json.loads((backup / "settings.json").read_text())["batch_size"] == 4

    # Once an epoch is backed up, another batch size is refused.
    (backup / "training_metadata.json").write_text("{}")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(tfds_images, "load_image_dataset", no_data)
    with pytest.raises(InvalidArgumentError, match="batch_size=4 there, 8 now"):
        train(config)
    # So is other hardware's mixed precision (float16 and a loss scaler on a
    # GPU against bfloat16 on this CPU), with the same settings.
    monkeypatch.setattr(train_module, "mixed_precision_policy", lambda strategy: "mixed_float16")
    with pytest.raises(
        InvalidArgumentError, match="dtype_policy='mixed_bfloat16' there, 'mixed_float16' now"
    ):
        train(smaller)


def test_cli_main_trains_and_writes(tmp_path, capsys):
    status = main(
        ["--dataset", "mnist", "--model", "resnet8", "--sam", "gsam", "--alpha", "0.2",
         "--max-examples", "16", "--batch-size", "8", "--epochs", "1", "--steps-per-epoch", "1",
         "--test-split", "none", "--no-export", "--verbose", "0", "--label-noise", "0.4",
         "--out", str(tmp_path)]
    )
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["optimizer_iterations"] == 1 and results["test"] == {}
    assert results["image_shape"] == [28, 28, 1] and results["flip"] is False  # digits
    assert results["config"]["label_noise"] == 0.4 and results["config"]["test_split"] is None
    assert [row["epoch"] for row in read_history(tmp_path)] == ["0"]
    assert "Trained resnet8 (gsam) on mnist" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert config["class_name"] == "GSAMModel" and config["config"]["alpha"] == 0.2


def test_add_parser_registers_train_with_run():
    parser = argparse.ArgumentParser(prog="keras-sam")
    train_module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--sam", "gsam", "--rho", "0.1", "--no-flip"])
    assert args.func is train_module.run
    config = train_module.config_from_args(args)
    assert (config.sam, config.rho, config.flip, config.model) == ("gsam", 0.1, False, "resnet20")


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--dataset", "--data-dir", "--model", "--sam", "--rho", "--optimizer", "--lr",
        "--weight-decay", "--label-smoothing", "--label-noise", "--epochs", "--batch-size",
        "--mixed-precision", "--strategy", "--jit", "--steps-per-epoch", "--max-examples",
        "--out",
    ):
        assert flag in text
    for choice in ("none,sam,asam,gsam,looksam", "auto,mirrored,multiworker,tpu"):
        assert choice in text


def test_missing_variant_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delattr(keras_sam, "LookSAMModel", raising=False)
    status = main(["--sam", "looksam", "--out", str(tmp_path), "--max-examples", "16",
                   "--batch-size", "8"])
    assert status == 2
    assert "`--sam looksam` needs keras_sam.LookSAMModel" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sam": "sgd"}, "`sam` must be one of none, sam, asam, gsam, looksam"),
        ({"epochs": 0}, "`epochs` must be an integer >= 1"),
        ({"label_noise": 1.5}, "`label_noise`"),
        ({"rho": -0.1}, "`rho`"),
        ({"batch_size": 32}, "fewer than one batch"),
        ({"strategy": "tpu"}, "found no TPU"),
        ({"momentum": 1.0}, "`momentum` must be a finite real number >= 0 and < 1"),
        ({"dropout": 0.3}, "only for Wide ResNets"),
        ({"model": "wrn16_1", "dropout": 1.0}, "`dropout` must be a finite real number >= 0 "),
        ({"shortcut": "C"}, "`shortcut` must be one of A, B"),
        ({"alpha": 0.3}, "`alpha` is only for `--sam gsam` and `--sam looksam`"),
        ({"sam": "none", "rho": 0.3}, "`rho` is only for the SAM methods"),
        ({"sam": "asam", "looksam_k": 2}, "`looksam_k` is only for `--sam looksam`"),
        ({"batch_size": 2.5}, "`batch_size` must be an integer >= 1"),
        ({"flip": "yes"}, "`flip` must be True or False"),
        ({"data_dir": "/nonexistent/tfds"}, "`data_dir` must be an existing directory"),
        ({"sam": "gsam", "alpha": -1.0}, "`alpha` must be a finite real number >= 0"),
        ({"seed": 2**32}, "`seed` must be an integer >= 0 and <= 4294967295"),
        ({"model": "resnet21"}, "`model` must be one of"),
        ({"dataset": "not_a_dataset"}, "is not a TFDS dataset"),
    ],
)
def test_bad_settings_raise_before_training(tmp_path, change, message):
    settings = {**TINY, "out": str(tmp_path), **change}
    with pytest.raises(InvalidArgumentError, match=message):
        train(TrainConfig(**settings))


# One-line errors of `keras-sam train`: (arguments, what the line must contain).
# "{file}" is an existing regular file.
BAD_TRAIN_ARGUMENTS = [
    # Values: the library's checks (keras_sam._validation) give the reasons.
    (["--momentum", "-1"], ["argument --momentum: `momentum` must be a finite real number >= 0 "
                            "and < 1. Received: momentum=-1.0."]),
    (["--momentum", "1"], ["argument --momentum: `momentum` must be a finite real number >= 0 "
                           "and < 1. Received: momentum=1.0."]),
    (["--dataset", "not_a_dataset"], ["`dataset` 'not_a_dataset' is not a TFDS dataset",
                                      "dataset='not_a_dataset'"]),
    (["--dataset", "cifar-10"], ["`dataset` 'cifar-10' cannot be loaded", "did you mean cifar10"]),
    (["--dataset", "cifar10/nope"], ["`dataset` 'cifar10/nope' cannot be loaded",
                                     "BuilderConfig nope not found", "dataset='cifar10/nope'"]),
    (["--model", "resnet21"], ["argument --model: `model` must be one of", "model='resnet21'"]),
    (["--model", "wrn16_0"], ["`model` must be one of", "model='wrn16_0'"]),
    (["--model", "vgg16"], ["`model` must be one of", "model='vgg16'"]),
    (["--alpha", "-1", "--sam", "gsam"], ["argument --alpha: `alpha` must be a finite real number "
                                          ">= 0.0 and <= 10000.0. Received: alpha=-1.0."]),
    (["--alpha", "1e5", "--sam", "looksam"], ["argument --alpha: `alpha` must be",
                                              "Received: alpha=100000.0."]),
    (["--rho", "-0.1"], ["argument --rho: `rho` must be a finite real number >= 0.0 and "
                         "<= 10000.0. Received: rho=-0.1."]),
    (["--rho", "3e38"], ["argument --rho: `rho` must be", "Received: rho=3e+38."]),
    (["--rho", "nan"], ["argument --rho: `rho` must be a finite real", "Received: rho=nan."]),
    (["--rho", "inf"], ["argument --rho: `rho` must be a finite real", "Received: rho=inf."]),
    (["--rho", "lots"], ["argument --rho: expected a number, got 'lots'"]),
    (["--lr", "0"], ["argument --lr: `lr` must be a finite real number > 0.0", "lr=0.0."]),
    (["--weight-decay", "-0.0005"], ["argument --weight-decay: `weight_decay` must be a finite "
                                     "real number >= 0.0", "Received: weight_decay=-0.0005."]),
    (["--warmup-epochs", "-1"], ["argument --warmup-epochs: `warmup_epochs` must be a finite real "
                                 "number >= 0.0", "Received: warmup_epochs=-1.0."]),
    (["--epochs", "0"], ["argument --epochs: `epochs` must be an integer >= 1. Received: "
                         "epochs=0."]),
    (["--epochs", "2.5"], ["argument --epochs: expected an integer, got '2.5'"]),
    (["--batch-size", "0"], ["argument --batch-size: `batch_size` must be an integer >= 1. "
                             "Received: batch_size=0."]),
    (["--seed", "-1"], ["argument --seed: `seed` must be an integer >= 0 and <= 4294967295. "
                        "Received: seed=-1."]),
    (["--dropout", "1", "--model", "wrn16_1"], ["argument --dropout: `dropout` must be a finite "
                                                "real number >= 0 and < 1.", "dropout=1.0."]),
    # Options that do not apply to the chosen method or model: refused, not ignored.
    (["--alpha", "0.3", "--sam", "sam"], ["`alpha` is only for `--sam gsam` and `--sam looksam`",
                                          "sam='sam', alpha=0.3"]),
    (["--alpha", "0.3", "--sam", "none"], ["`alpha` is only for", "sam='none', alpha=0.3"]),
    (["--rho", "0.5", "--sam", "none"], ["`rho` is only for the SAM methods",
                                         "sam='none', rho=0.5"]),
    (["--looksam-k", "3", "--sam", "gsam"], ["`looksam_k` is only for `--sam looksam`",
                                             "sam='gsam', looksam_k=3"]),
    (["--dropout", "0.3"], ["`dropout` is only for Wide ResNets", "dropout=0.3"]),
    # Paths.
    (["--out", "{file}"], ["argument --out: `out` cannot be a directory: '{file}' exists and is "
                           "not a directory"]),
    (["--out", "{file}/run"], ["argument --out: `out` cannot be a directory: '{file}' is not a "
                               "directory, so '{file}/run'"]),
    (["--data-dir", "{file}"], ["argument --data-dir: `data_dir` must be an existing directory: "
                                "'{file}' is not a directory"]),
    (["--data-dir", "{file}/tfds"], ["argument --data-dir: `data_dir` must be an existing "
                                     "directory: '{file}/tfds' does not exist"]),
]


@pytest.mark.parametrize("arguments, expected", BAD_TRAIN_ARGUMENTS)
@pytest.mark.parametrize("entry", ["keras-sam", "python -m keras_sam.apps.train"])
def test_bad_train_arguments_are_one_line_before_any_data(
    arguments, expected, entry, tmp_path, monkeypatch, capsys
):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(tfds_images, "load_image_dataset", no_data)
    afile = tmp_path / "afile"
    afile.write_text("")
    arguments = [a.format(file=afile) for a in arguments]
    expected = [e.format(file=afile) for e in expected]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "run")]
    try:
        if entry == "keras-sam":
            status = cli.main(["train", *arguments])
        else:
            status = main(arguments)
    except SystemExit as exit_info:  # argparse's errors
        status = exit_info.code
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("keras-sam train: error: ")
    for part in expected:
        assert part in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written


@pytest.mark.parametrize(
    "name",
    ["resnet21", "resnet2", "resnet0", "resnet", "ResNet20", "resnet20 ", "wrn16_0", "wrn12_2",
     "wrn4_1", "wrn16", "wrn16_8_1", "vgg16", "", "resnet8", "resnet020", "wrn10_1"],
)
def test_model_names_are_checked_as_get_model_builds_them(name):
    """`check_model_name` (no building) agrees with `get_model` (which builds)."""
    try:
        network = get_model(name, num_classes=2, input_shape=(8, 8, 1))
    except InvalidArgumentError:
        with pytest.raises(InvalidArgumentError, match=f"Received: model={name!r}"):
            train_module.check_model_name(name)
    else:
        assert network.count_params() > 0
        assert train_module.check_model_name(name) == name


def test_integer_momentum_becomes_the_float_keras_needs():
    config = TrainConfig(momentum=0, seed=2**32 - 1).validated()
    assert type(config.momentum) is float and config.momentum == 0.0
    assert train_module.build_optimizer(config, total_steps=8).momentum == 0.0


def test_defaults_are_filled_per_method_and_optimizer():
    assert TrainConfig(sam="sam").validated().rho == 0.05
    assert TrainConfig(sam="asam").validated().rho == 0.5
    assert TrainConfig(sam="none").validated().rho is None
    assert TrainConfig(optimizer="adam").validated().lr == 1e-3
    assert TrainConfig(dataset="mnist", model="wrn16_8", sam="none").validated().out.endswith(
        "mnist-wrn16_8-none"
    )


def test_cosine_schedule_with_warmup():
    config = TrainConfig(lr=0.2, epochs=10, warmup_epochs=1).validated()
    schedule = train_module.cosine_schedule(config, total_steps=100)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.1) and lr(10) == pytest.approx(0.2)
    # Cosine from step 10 to 100: half-way at 55.
    assert lr(55) == pytest.approx(0.1, rel=1e-5) and lr(100) == pytest.approx(0.0, abs=1e-7)
    optimizer = train_module.build_optimizer(TrainConfig().validated(), total_steps=8)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    adamw = train_module.build_optimizer(TrainConfig(optimizer="adamw").validated(), 8)
    assert adamw.weight_decay == 5e-4


def test_adamw_decays_in_the_optimizer_not_the_loss():
    data = dict(num_classes=10, image_shape=(32, 32, 3), mean=[0.5] * 3, variance=[0.1] * 3)
    sgd = train_module.build_model(TrainConfig(model="resnet8").validated(), **data)
    adamw = train_module.build_model(
        TrainConfig(model="resnet8", optimizer="adamw").validated(), **data
    )
    x = np.zeros((1, 32, 32, 3), "float32")
    sgd(x), adamw(x)
    assert len(sgd.base_model.losses) == len(sgd.base_model.trainable_weights) == 23
    assert adamw.base_model.losses == []


# ------------------------------------------------------------ strategies
def test_auto_strategy_here_is_the_default_one():
    strategy = train_module.select_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert train_module.mixed_precision_policy(strategy) == "mixed_bfloat16"


def test_auto_strategy_mirrors_over_several_gpus(monkeypatch):
    made = []
    monkeypatch.setattr(train_module, "find_tpu", lambda: None)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["g0", "g1"])
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", lambda: made.append("mirrored"))
    train_module.select_strategy("auto")
    assert made == ["mirrored"]
    assert train_module.mixed_precision_policy(object()) == "mixed_float16"


def test_auto_strategy_prefers_a_tpu(monkeypatch):
    calls = []
    resolver = object()
    monkeypatch.setattr(train_module, "find_tpu", lambda: resolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", calls.append)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", calls.append)
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: ("tpu", r))
    assert train_module.select_strategy("auto") == ("tpu", resolver)
    assert calls == [resolver, resolver]


# -------------------------------------------------------------- pipeline
def test_label_noise_rate_uniformity_and_determinism():
    rate, classes, n = 0.4, 10, 200_000
    labels = np.arange(n) % classes
    table = symmetric_label_noise(n, rate, classes, seed=7)
    np.testing.assert_array_equal(table, symmetric_label_noise(n, rate, classes, seed=7))
    noisy = np.where(table >= 0, table, labels)
    for observed, expected in (
        (np.mean(table >= 0), rate),  # redrawn
        (np.mean(noisy != labels), rate * (classes - 1) / classes),  # actually wrong
    ):
        assert abs(observed - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    # Redrawn labels are uniform over all classes (the true class included).
    counts = np.bincount(table[table >= 0], minlength=classes)
    chi2 = np.sum((counts - counts.mean()) ** 2 / counts.mean())
    assert chi2 < 40  # 9 degrees of freedom: P(chi2 > 40) < 1e-5
    assert not np.array_equal(symmetric_label_noise(n, rate, classes, seed=8), table)
    assert np.all(symmetric_label_noise(n, 0.0, classes) == -1)


def _labels_by_image(dataset, batches):
    found = {}
    for images, labels in dataset.take(batches).as_numpy_iterator():
        for image, label in zip(images, labels):
            found[image.tobytes()] = int(np.argmax(label))
    return found


def test_noisy_labels_stay_fixed_across_epochs_and_test_stays_clean():
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        clean = load_image_dataset("cifar10", batch_size=8, augment=False)
        noisy = load_image_dataset("cifar10", batch_size=8, augment=False, label_noise=1.0)
    clean_labels = _labels_by_image(clean.train, 8)
    epoch1 = _labels_by_image(noisy.train, 8)
    epoch2 = _labels_by_image(noisy.train.skip(8), 8)
    assert len(clean_labels) == len(epoch1) == 64
    assert epoch1 == epoch2
    changed = np.mean([epoch1[k] != clean_labels[k] for k in clean_labels])
    assert 0.9 * 0.6 < changed  # expected 0.9 at rate 1.0; 64 draws
    assert _labels_by_image(noisy.test, 8) == _labels_by_image(clean.test, 8)


def test_crop_with_4_pixel_padding_and_flip_against_numpy():
    """Every training image is a 32x32 crop of the image zero-padded by 4
    pixels, flipped about half the time (and never with `flip=False`)."""
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        plain = load_image_dataset("cifar10", batch_size=1, augment=False, test_split=None)
        flipping = load_image_dataset("cifar10", batch_size=1, flip=True, test_split=None)
        cropping = load_image_dataset("cifar10", batch_size=1, flip=False, test_split=None)
    (image,), _ = next(plain.train.as_numpy_iterator())
    assert image.shape == (32, 32, 3) and image.max() > 0
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
    window = lambda dy, dx: padded[dy:dy + 32, dx:dx + 32]  # noqa: E731
    crops = {window(dy, dx).tobytes() for dy in range(9) for dx in range(9)}
    flips = {window(dy, dx)[:, ::-1].tobytes() for dy in range(9) for dx in range(9)}
    assert len(crops) == len(flips) == 81 and not crops & flips
    tf.random.set_seed(0)
    seen, flipped = set(), 0
    for (out,), _ in flipping.train.take(120).as_numpy_iterator():
        assert out.tobytes() in crops or out.tobytes() in flips
        flipped += out.tobytes() not in crops
        seen.add(out.tobytes())
    assert 30 < flipped < 90 and len(seen) > 40  # ~half flipped, many offsets
    for (out,), _ in cropping.train.take(20).as_numpy_iterator():
        assert out.tobytes() in crops


def test_pipeline_batches_statistics_and_digit_datasets():
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_image_dataset("svhn_cropped", batch_size=8, max_examples=18)
        raw = np.stack([image for image, _ in tfds.load(
            "svhn_cropped", split="train", as_supervised=True).take(18).as_numpy_iterator()])
    assert (data.train_examples, data.steps_per_epoch, data.flip) == (18, 2, False)
    assert {"svhn_cropped", "mnist"} <= tfds_images.NO_FLIP_DATASETS
    pixels = raw.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(data.variance, pixels.var(0), rtol=1e-8)
    images, labels = next(iter(data.train))
    assert images.dtype == tf.float32 and 0 <= images.numpy().min() <= images.numpy().max() <= 1
    assert labels.shape == (8, 10) and np.all(labels.numpy().sum(1) == 1)
    test_batches = [len(y) for _, y in data.test]
    assert test_batches == [8, 8, 2]  # the test remainder is kept (except on TPU)


@pytest.mark.slow
def test_multiworker_strategy_with_xla_in_a_subprocess(tmp_path):
    """`--strategy multiworker --jit` (one worker): its own process, as collectives are global."""
    script = (
        "import sys, tensorflow_datasets as tfds\n"
        "from keras_sam.apps.train import main\n"
        "with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):\n"
        "    sys.exit(main(sys.argv[1:]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script, "--strategy", "multiworker", "--jit", "--model",
         "resnet8", "--max-examples", "16", "--batch-size", "8", "--epochs", "1",
         "--steps-per-epoch", "1", "--test-split", "none", "--no-export", "--verbose", "0",
         "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["strategy"] == "CollectiveAllReduceStrategy"  # MultiWorkerMirrored
    assert results["optimizer_iterations"] == 1 and results["config"]["jit"] is True


def test_tfds_can_reach_its_download_step():
    """TFDS 4.9 imports `importlib_resources` when preparing a real dataset but
    declares it only for Python < 3.9 (tensorflow/datasets#11212): without it
    every real `keras-sam train` run fails before downloading anything."""
    builder_class = type(tfds.builder("cifar10"))
    assert builder_class.code_path.name == "cifar.py"  # imports importlib_resources
