"""`keras-sam train`: train a CIFAR ResNet or Wide ResNet with SAM on a TFDS dataset.

The setup of the SAM paper's image experiments, as one command:

    keras-sam train --dataset cifar10 --model wrn28_10 --sam sam --rho 0.05 \\
        --epochs 200 --batch-size 256 --lr 0.1 --weight-decay 5e-4 --out runs/wrn-sam

It trains with SGD (momentum 0.9) or another optimizer on a cosine learning
rate schedule, with random-crop and flip augmentation
(`keras_sam.apps.data.tfds_images`), and writes to `--out`:

- `history.csv`: one row per epoch (`keras.callbacks.CSVLogger`);
- `tensorboard/`: TensorBoard logs;
- `backup/`: the training state after every epoch
  (`keras.callbacks.BackupAndRestore`). Rerunning the same command with the
  same `--out` resumes from the last finished epoch; rerunning with a larger
  `--epochs` continues a finished run (the cosine schedule is then stretched
  to the new total);
- `model.keras`: the trained model (`keras.saving.load_model` after
  `import keras_sam`);
- `saved_model/`: the classifier exported for serving (`model.export`); it
  takes float32 images scaled to [0, 1];
- `results.json`: the final test metrics and the configuration.

From Python, `train(TrainConfig(...))` does the same and returns the results.
The options are `TrainConfig`'s fields, defined once (`keras_sam.apps._options`):
the command line is derived from them, and both check values alike.

It needs the `[train]` extra (tensorflow-datasets, tensorboard,
importlib_resources): `pip install "keras-sam[train]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

import keras_sam
from keras_sam._validation import InvalidArgumentError
from keras_sam.apps import _argtypes as argtypes
from keras_sam.apps import _extras
from keras_sam.apps import _options as options
from keras_sam.apps._options import setting
from keras_sam.apps.cli import OneLineErrorParser, fail
from keras_sam.apps.data import DatasetUnavailableError
from keras_sam.models.resnet import MODEL_NAMES, check_model_name, get_model

__all__ = [
    "SAM_CHOICES",
    "TrainConfig",
    "add_parser",
    "build_model",
    "build_optimizer",
    "check_dataset",
    "check_model_name",
    "config_from_args",
    "cosine_schedule",
    "find_tpu",
    "main",
    "mixed_precision_policy",
    "run",
    "select_strategy",
    "train",
    "wrap_for_sam",
]

SAM_CHOICES = ("none", "sam", "asam", "gsam", "looksam")
OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "rmsprop")
STRATEGY_CHOICES = ("auto", "mirrored", "multiworker", "tpu")
# Default rho per method: ASAM's ball is scaled by |w|, so its rho is ~10x
# larger (Kwon et al. use 0.5 on CIFAR-10 with SGD).
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5, "gsam": 0.05, "looksam": 0.05}
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
# The sections of `keras-sam train --help`, in order.
_GROUPS = ("data", "model", "sharpness-aware minimization", "optimization", "hardware", "output")
# `--sam` methods that take `alpha` and their classes (newer than SAMModel).
_VARIANTS = {"gsam": "GSAMModel", "looksam": "LookSAMModel"}


def _model_name(name: str, value) -> str:
    return check_model_name(value)


def _data(help, default=None, **option):
    return setting(default, help, group="data", **option)


def _model(help, default=None, **option):
    return setting(default, help, group="model", **option)


def _sam(help, default=None, **option):
    return setting(default, help, group="sharpness-aware minimization", **option)


def _optimization(help, default=None, **option):
    return setting(default, help, group="optimization", **option)


def _hardware(help, default=None, **option):
    return setting(default, help, group="hardware", **option)


def _output(help, default=None, **option):
    return setting(default, help, group="output", **option)


@dataclasses.dataclass
class TrainConfig:
    """Everything `keras-sam train` takes; the field names are its flags.

    `rho=None` and `lr=None` mean the method's and optimizer's defaults
    (`DEFAULT_RHO`, `DEFAULT_LR`); `out=None` means `runs/<dataset>-<model>-<sam>`.
    Each field's default, help text and check are defined here once; `keras-sam
    train --help` shows them, and `validated` checks a config made from Python
    as the command line checks its options.
    """

    dataset: str = _data(
        "any TFDS image classification dataset, e.g. cifar10, cifar100, svhn_cropped, "
        "fashion_mnist, mnist",
        "cifar10",
    )
    data_dir: str | None = _data(
        "TFDS data directory; it must exist (TFDS downloads into it what it does not hold)",
        check=argtypes.existing_directory,
        shown_default="TFDS's own",
    )
    train_split: str = _data("the training split (TFDS slicing such as train[:90%] works)", "train")
    test_split: str | None = _data(
        "evaluated after every epoch; 'none' for no test set",
        "test",
        parse=argtypes.optional_text,
    )
    model: str = _model(
        f"{', '.join(MODEL_NAMES)}, or any resnet{{6n+2}} / wrn{{6n+4}}_{{k}}",
        "resnet20",
        check=_model_name,
    )
    shortcut: str = _model(
        "ResNet shortcut: A = zero-padded identity (He et al.'s CIFAR choice), "
        "B = 1x1 projection",
        "A",
        choices=("A", "B"),
    )
    dropout: float = _model(
        "Wide ResNet dropout, in [0, 1)",
        0.0,
        parse=argtypes.number,
        check=argtypes.fraction_below_one,
    )
    sam: str = _sam("the SAM method; none trains without SAM", "sam", choices=SAM_CHOICES)
    rho: float | None = _sam(
        "neighbourhood radius; not with --sam none",
        parse=argtypes.number,
        check=argtypes.rho,
        shown_default=f"{DEFAULT_RHO['sam']}; {DEFAULT_RHO['asam']} for asam",
    )
    alpha: float | None = _sam(
        "GSAM's or LookSAM's alpha; only with --sam gsam or looksam",
        parse=argtypes.number,
        check=argtypes.alpha,
        shown_default="the class default",
    )
    looksam_k: int | None = _sam(
        "LookSAM: a SAM step every k steps; only with --sam looksam",
        parse=argtypes.integer,
        check=argtypes.positive_int,
        shown_default="the class default",
    )
    optimizer: str = _optimization(
        "the optimizer, on a cosine learning rate schedule", "sgd", choices=OPTIMIZER_CHOICES
    )
    lr: float | None = _optimization(
        "peak learning rate of the cosine schedule",
        parse=argtypes.number,
        check=argtypes.positive,
        shown_default=f"{DEFAULT_LR['sgd']:g} for sgd, {DEFAULT_LR['adam']:g} otherwise",
    )
    momentum: float = _optimization(
        "SGD's and RMSprop's momentum, in [0, 1)",
        0.9,
        parse=argtypes.number,
        check=argtypes.fraction_below_one,
    )
    nesterov: bool = _optimization("Nesterov momentum", False, switch="on")
    warmup_epochs: float = _optimization(
        "linear warmup before the cosine decay",
        0.0,
        parse=argtypes.number,
        check=argtypes.non_negative,
    )
    weight_decay: float = _optimization(
        "L2 weight decay: 0.5*wd*||w||^2 of every weight added to the loss "
        "(decoupled for adamw)",
        5e-4,
        parse=argtypes.number,
        check=argtypes.non_negative,
    )
    label_smoothing: float = _optimization(
        "label smoothing of the cross-entropy, in [0, 1]",
        0.0,
        parse=argtypes.number,
        check=argtypes.fraction,
    )
    label_noise: float = _data(
        "fraction of training labels redrawn uniformly at random, fixed for the run; "
        "the test set stays clean",
        0.0,
        parse=argtypes.number,
        check=argtypes.fraction,
    )
    epochs: int = _optimization(
        "training epochs", 200, parse=argtypes.integer, check=argtypes.positive_int
    )
    batch_size: int = _optimization(
        "global batch size", 128, parse=argtypes.integer, check=argtypes.positive_int
    )
    flip: bool | None = _data(
        "random horizontal flips",
        switch="on/off",
        shown_default="on, except for digit/character datasets such as mnist and svhn_cropped",
    )
    image_size: int | None = _data(
        "resize images to this size",
        parse=argtypes.integer,
        check=argtypes.positive_int,
        shown_default="the dataset's",
    )
    cache: bool = _data("keep decoded images in memory", True, switch="on/off")
    mixed_precision: bool = _hardware(
        "mixed_float16 on GPU, mixed_bfloat16 on TPU and CPU", False, switch="on"
    )
    strategy: str = _hardware(
        "auto: TPU if found, else Mirrored if >1 GPU, else one device",
        "auto",
        choices=STRATEGY_CHOICES,
    )
    jit: bool | None = _hardware(
        "XLA-compile the train step", switch="on/off", shown_default="Keras's 'auto'"
    )
    steps_per_epoch: int | None = _optimization(
        "steps per epoch",
        parse=argtypes.integer,
        check=argtypes.positive_int,
        shown_default="training examples // batch size",
    )
    max_examples: int | None = _data(
        "use only this many examples per split",
        parse=argtypes.integer,
        check=argtypes.positive_int,
        shown_default="all",
    )
    seed: int = _optimization(
        "seed of the initial weights, the label noise and the data order",
        0,
        parse=argtypes.integer,
        check=argtypes.seed,
    )
    out: str | None = _output(
        "output directory; rerun with the same --out to resume",
        check=argtypes.output_directory,
        shown_default="runs/<dataset>-<model>-<sam>",
    )
    export: bool = _output(
        "also export a SavedModel to OUT/saved_model", True, switch="on/off"
    )
    verbose: int = _output(
        "Keras fit verbosity", 2, parse=argtypes.integer, choices=(0, 1, 2)
    )

    def validated(self) -> TrainConfig:
        """Returns a copy with defaults filled in, or raises InvalidArgumentError.

        Each setting gets the check its option gets on the command line;
        then settings that do not apply to the chosen `sam` or `model` are
        refused rather than ignored.
        """
        config = dataclasses.replace(self, **options.checked(self))
        if not _available(config.sam):
            raise InvalidArgumentError(
                f"`--sam {config.sam}` needs keras_sam.{_VARIANTS[config.sam]}, which this "
                f"version of keras-sam ({keras_sam.__version__}) does not have. Available: "
                f"{', '.join(c for c in SAM_CHOICES if _available(c))}."
            )
        if config.rho is not None and config.sam == "none":
            raise InvalidArgumentError(
                "`rho` is only for the SAM methods (`--sam sam`, `asam`, `gsam`, `looksam`); "
                f"`--sam none` has no radius. Received: sam={config.sam!r}, rho={self.rho!r}."
            )
        if config.alpha is not None and config.sam not in _VARIANTS:
            raise InvalidArgumentError(
                f"`alpha` is only for `--sam gsam` and `--sam looksam`. "
                f"Received: sam={config.sam!r}, alpha={self.alpha!r}."
            )
        if config.looksam_k is not None and config.sam != "looksam":
            raise InvalidArgumentError(
                f"`looksam_k` is only for `--sam looksam`. "
                f"Received: sam={config.sam!r}, looksam_k={self.looksam_k!r}."
            )
        if config.dropout and not config.model.startswith("wrn"):  # a checked name
            raise InvalidArgumentError(
                f"`dropout` is only for Wide ResNets (wrn...); {config.model} has no dropout. "
                f"Received: model={config.model!r}, dropout={self.dropout!r}."
            )
        if config.rho is None:
            config.rho = DEFAULT_RHO.get(config.sam)  # None for "none"
        if config.lr is None:
            config.lr = DEFAULT_LR[config.optimizer]
        default_out = os.path.join("runs", f"{config.dataset}-{config.model}-{config.sam}")
        config.out = str(argtypes.output_directory("out", config.out or default_out))
        return config


def check_dataset(name: str, data_dir: str | None = None) -> str:
    """Returns `name` if TFDS has a builder for it, else raises InvalidArgumentError.

    Only looks the name up and constructs the builder (no download, no data
    read), so that a misspelt `--dataset` fails at once and in one line.

    >>> check_dataset("cifar10")
    'cifar10'
    """
    import tensorflow_datasets as tfds

    try:
        tfds.builder(name, data_dir=data_dir)
        return name
    except tfds.core.DatasetNotFoundError:
        # TFDS's own message lists every dataset it knows, hundreds of lines.
        problem = "is not a TFDS dataset"
    except (ValueError, AssertionError, TypeError) as error:
        # A malformed name, or an unknown config, version or builder argument.
        reason = str(error).strip().split("\n")[0].split(" Here are ")[0].rstrip(".")
        problem = f"cannot be loaded ({reason or type(error).__name__})"
    close = difflib.get_close_matches(
        name, tfds.list_builders(with_community_datasets=False), n=3, cutoff=0.85
    )
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise InvalidArgumentError(
        f"`dataset` {name!r} {problem}; {hint}`tfds.list_builders()` lists the datasets "
        "(image classification: cifar10, cifar100, svhn_cropped, fashion_mnist, mnist, ...). "
        f"Received: dataset={name!r}."
    )


# ---------------------------------------------------------------- devices
def find_tpu():
    """A TPUClusterResolver when a TPU is reachable (Colab, TPU VM), else None."""
    for tpu in (None, "local"):
        try:
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        except (ValueError, RuntimeError, tf.errors.NotFoundError):
            # "local" only exists on TPU VMs; elsewhere skip the slow attempt.
            if not os.path.exists("/dev/accel0") and not os.path.exists("/dev/vfio/0"):
                return None
    return None


def select_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `--strategy` `name`.

    `auto` is a `TPUStrategy` when a TPU is found, else `MirroredStrategy`
    when there is more than one GPU, else the default (one-device) strategy.
    """
    if name not in STRATEGY_CHOICES:
        raise InvalidArgumentError(
            f"`strategy` must be one of {', '.join(STRATEGY_CHOICES)}. Received: {name!r}."
        )
    if name in ("auto", "tpu"):
        resolver = find_tpu()
        if resolver is not None:
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        if name == "tpu":
            raise InvalidArgumentError(
                "`--strategy tpu` was asked for, but TPUClusterResolver found no TPU "
                "(set TPU_NAME, or run on a TPU VM or a Colab TPU runtime)."
            )
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _is_tpu(strategy) -> bool:
    return isinstance(strategy, tf.distribute.TPUStrategy)


def mixed_precision_policy(strategy) -> str:
    """`mixed_float16` on GPUs, `mixed_bfloat16` on TPUs and CPUs."""
    if not _is_tpu(strategy) and tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16"


# ------------------------------------------------------------------ model
def build_model(config: TrainConfig, num_classes: int, image_shape, mean, variance) -> keras.Model:
    """The classifier (standardisation + network), wrapped for `config.sam`.

    Build it inside `strategy.scope()`, after setting the dtype policy.
    """
    network = get_model(
        config.model,
        num_classes,
        image_shape,
        # AdamW decays weights itself (decoupled); every other optimizer gets
        # coupled L2 in the loss, which SAM's ascent then also sees.
        weight_decay=0.0 if config.optimizer == "adamw" else config.weight_decay,
        dropout=config.dropout,
        shortcut=config.shortcut,
    )
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    standardized = keras.layers.Normalization(
        mean=list(mean), variance=list(variance), name="standardize"
    )(inputs)
    classifier = keras.Model(inputs, network(standardized), name=network.name)
    return wrap_for_sam(classifier, config)


def wrap_for_sam(classifier: keras.Model, config: TrainConfig) -> keras.Model:
    """`classifier` itself (`sam="none"`) or in the chosen SAM wrapper."""
    if config.sam == "none":
        return classifier
    if config.sam in ("sam", "asam"):
        return keras_sam.SAMModel(classifier, rho=config.rho, adaptive=config.sam == "asam")
    # Looked up when used: GSAM and LookSAM are newer than SAMModel.
    wrapper = getattr(keras_sam, _VARIANTS[config.sam])
    arguments = {}
    if config.alpha is not None:
        arguments["alpha"] = config.alpha
    if config.looksam_k is not None:
        arguments["k"] = config.looksam_k
    return wrapper(classifier, rho=config.rho, **arguments)


def _available(sam: str) -> bool:
    return sam not in _VARIANTS or hasattr(keras_sam, _VARIANTS[sam])


def cosine_schedule(config: TrainConfig, total_steps: int):
    """Cosine decay from `config.lr` to 0 over `total_steps`, after a linear warmup."""
    warmup_steps = min(total_steps - 1, round(config.warmup_epochs * total_steps / config.epochs))
    if warmup_steps > 0:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=config.lr, warmup_steps=warmup_steps
        )
    return keras.optimizers.schedules.CosineDecay(config.lr, total_steps)


def build_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """`config.optimizer` on the `cosine_schedule`."""
    schedule = cosine_schedule(config, total_steps)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    return keras.optimizers.RMSprop(schedule, momentum=config.momentum)


# ---------------------------------------------------------------- resuming
_SETTINGS_FILE = "settings.json"
# What `BackupAndRestore` writes at the end of each epoch.
_BACKUP_METADATA = "training_metadata.json"
# Settings a rerun may change and still resume the backup: a larger `epochs`
# continues a finished run; the others say where data and outputs live and
# how the step is run (`--strategy auto` names no hardware anyway).
_FREE_ON_RESUME = ("epochs", "verbose", "export", "data_dir", "out", "strategy", "jit", "cache")


def _run_settings(config: TrainConfig, dtype_policy: str) -> dict:
    """What `settings.json` records: the config, and the dtype policy it gave
    on this hardware (`--mixed-precision` is bfloat16 on TPU and CPU, float16
    with a loss scaler on GPU: a backup of one does not load into the other)."""
    return json.loads(json.dumps({**dataclasses.asdict(config), "dtype_policy": dtype_policy}))


def _check_resumable(config: TrainConfig, backup_dir: Path, dtype_policy: str) -> None:
    """Raises InvalidArgumentError if `backup_dir` holds another run's backup.

    `BackupAndRestore` would otherwise fail deep inside Keras (another model's
    weights do not fit) or, worse, resume a different run silently.
    """
    path = backup_dir / _SETTINGS_FILE
    # Nothing to resume: a fresh --out, or a run stopped before its first
    # epoch ended (a retry with a smaller batch after running out of memory).
    # A backup without settings predates this check.
    if not (backup_dir / _BACKUP_METADATA).exists() or not path.exists():
        return
    before = json.loads(path.read_text())
    now = _run_settings(config, dtype_policy)
    changed = [
        f"{name}={before[name]!r} there, {now[name]!r} now"
        for name in now
        if name in before and name not in _FREE_ON_RESUME and before[name] != now[name]
    ]
    if changed:
        raise InvalidArgumentError(
            f"`out` ({config.out}) holds the backup of a different run ({'; '.join(changed)}). "
            "Rerun with that run's settings to resume it (only --epochs and the output "
            "options may change), or use another --out."
        )


# -------------------------------------------------------------- training
def train(config: TrainConfig, callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Trains as `keras-sam train` does; returns the contents of `results.json`.

    Args:
        config: the run's settings.
        callbacks: extra Keras callbacks, called after the built-in ones
            (`BackupAndRestore`, `CSVLogger`, `TensorBoard`).
    """
    _extras.require("train")
    from keras_sam.apps.data import tfds_images

    config = config.validated()
    check_dataset(config.dataset, config.data_dir)
    keras.utils.set_random_seed(config.seed)
    strategy = select_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.jit and replicas > 1 and not _is_tpu(strategy):
        raise InvalidArgumentError(
            f"`--jit` does not work under {type(strategy).__name__} with {replicas} "
            "replicas in Keras 3 (whole-step XLA cannot reach other replicas' variables); "
            "drop --jit."
        )
    if config.batch_size % replicas:
        raise InvalidArgumentError(
            f"`batch_size` ({config.batch_size}) must be a multiple of the number of "
            f"replicas ({replicas})."
        )
    out = argtypes.make_directory("out", config.out)
    policy = mixed_precision_policy(strategy) if config.mixed_precision else "float32"
    _check_resumable(config, out / "backup", policy)

    data = tfds_images.load_image_dataset(
        config.dataset,
        batch_size=config.batch_size,
        data_dir=config.data_dir,
        train_split=config.train_split,
        test_split=config.test_split,
        max_examples=config.max_examples,
        label_noise=config.label_noise,
        flip=config.flip,
        image_size=config.image_size,
        cache=config.cache,
        drop_test_remainder=_is_tpu(strategy),
        seed=config.seed,
    )
    steps_per_epoch = config.steps_per_epoch or data.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = build_model(
                config, data.num_classes, data.image_shape, data.mean, data.variance
            )
            model.compile(
                optimizer=build_optimizer(config, total_steps),
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=config.label_smoothing
                ),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile="auto" if config.jit is None else config.jit,
            )
            if not model.built:  # BackupAndRestore restores into a built model only
                model.build((None, *data.image_shape))
        backup_dir = out / "backup"
        resuming = (backup_dir / _BACKUP_METADATA).exists()
        backup_dir.mkdir(exist_ok=True)
        settings = _run_settings(config, policy)
        (backup_dir / _SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        all_callbacks = [
            # First, so that the state is restored before anything else starts.
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=resuming),
            # Scalars only: writing the graph of a SAM step is slow and rarely read.
            keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False),
            *callbacks,
        ]
        started = time.perf_counter()
        history = model.fit(
            data.train,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=data.test,
            callbacks=all_callbacks,
            verbose=config.verbose,
        )
        train_seconds = time.perf_counter() - started
        test_metrics = model.evaluate(data.test, return_dict=True, verbose=0) if data.test else {}
        model.save(out / "model.keras")
        if config.export:
            model.export(str(out / "saved_model"), verbose=False)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    results = {
        "dataset": config.dataset,
        "model": config.model,
        "sam": config.sam,
        "rho": config.rho,
        "epochs_run": len(history.epoch),
        "first_epoch": history.epoch[0] if history.epoch else config.epochs,
        "steps_per_epoch": steps_per_epoch,
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "train_examples": data.train_examples,
        "flip": data.flip,
        "num_classes": data.num_classes,
        "image_shape": list(data.image_shape),
        "parameters": getattr(model, "base_model", model).count_params(),
        "dtype_policy": policy,
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "train_seconds": round(train_seconds, 3),
        "test": {name: float(value) for name, value in test_metrics.items()},
        "config": dataclasses.asdict(config),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


# -------------------------------------------------------------------- cli
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `train` on the `keras-sam` command's subparsers.

    Its options are `TrainConfig`'s fields (`keras_sam.apps._options`).
    """
    parser = subparsers.add_parser(
        "train",
        help="train a CIFAR ResNet / Wide ResNet with SAM on a TFDS image dataset",
        description=__doc__.split("\n\n")[0],
    )
    options.add_arguments(parser, TrainConfig, groups=_GROUPS)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed `train` arguments: the options given, and
    `TrainConfig`'s defaults for the others."""
    return TrainConfig(**options.given(args, TrainConfig))


def run(args: argparse.Namespace) -> int:
    """Runs `keras-sam train` with parsed arguments; returns the exit status.

    A setting that does not fit the others, a missing `[train]` dependency, a
    dataset that cannot be had and a path that cannot be written are one line
    on stderr and exit status 2.
    """
    try:
        results = train(config_from_args(args))
    except (InvalidArgumentError, _extras.MissingExtraError, DatasetUnavailableError) as error:
        return fail("train", error)
    except OSError as error:
        if error.filename is None:  # not about a path: a real failure
            raise
        return fail("train", argtypes.os_problem(error))
    test = ", ".join(f"{name} {value:.4f}" for name, value in results["test"].items())
    print(
        f"Trained {results['model']} ({results['sam']}) on {results['dataset']}: "
        f"{results['epochs_run']} epochs in {results['train_seconds']:.1f} s; "
        f"test: {test or 'not evaluated'}. Written to {results['config']['out']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`keras-sam train` on its own: `python -m keras_sam.apps.train --help`."""
    parser = OneLineErrorParser(prog="keras-sam")  # one-line errors, as `keras-sam train`
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
