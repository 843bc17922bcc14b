"""`keras-sam train`: train a CIFAR ResNet or Wide ResNet with SAM on a TFDS dataset.

The setup of the SAM paper's image experiments, as one command:

    keras-sam train --dataset cifar10 --model wrn28_10 --sam sam --rho 0.05 \\
        --epochs 200 --batch-size 256 --lr 0.1 --weight-decay 5e-4 --out runs/wrn-sam

It trains with SGD (momentum 0.9) or another optimizer on a cosine learning
rate schedule, with random-crop and flip augmentation (`keras_sam.data.
tfds_images`), and writes to `--out`:

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
import tensorflow_datasets as tfds

import keras_sam
from keras_sam import _argtypes as argtypes
from keras_sam._validation import (
    InvalidArgumentError,
    check_alpha,
    check_int,
    check_real,
    check_rho_value,
)
from keras_sam.cli import OneLineErrorParser
from keras_sam.data.tfds_images import load_image_dataset
from keras_sam.models.resnet import MODEL_NAMES, check_model_name, get_model

__all__ = [
    "SAM_CHOICES",
    "TrainConfig",
    "add_parser",
    "build_model",
    "build_optimizer",
    "check_dataset",
    "check_model_name",
    "cosine_schedule",
    "main",
    "run",
    "select_strategy",
    "train",
]

SAM_CHOICES = ("none", "sam", "asam", "gsam", "looksam")
OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "rmsprop")
STRATEGY_CHOICES = ("auto", "mirrored", "multiworker", "tpu")
# Default rho per method: ASAM's ball is scaled by |w|, so its rho is ~10x
# larger (Kwon et al. use 0.5 on CIFAR-10 with SGD).
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5, "gsam": 0.05, "looksam": 0.05}
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}


@dataclasses.dataclass
class TrainConfig:
    """Everything `keras-sam train` takes; the field names are its flags.

    `rho=None` and `lr=None` mean the method's and optimizer's defaults
    (`DEFAULT_RHO`, `DEFAULT_LR`); `out=None` means `runs/<dataset>-<model>-<sam>`.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    model: str = "resnet20"
    shortcut: str = "A"
    dropout: float = 0.0
    sam: str = "sam"
    rho: float | None = None
    alpha: float | None = None
    looksam_k: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    label_noise: float = 0.0
    epochs: int = 200
    batch_size: int = 128
    flip: bool | None = None
    image_size: int | None = None
    cache: bool = True
    mixed_precision: bool = False
    strategy: str = "auto"
    jit: bool | None = None
    steps_per_epoch: int | None = None
    max_examples: int | None = None
    seed: int = 0
    out: str | None = None
    export: bool = True
    verbose: int = 2

    def validated(self) -> TrainConfig:
        """Returns a copy with defaults filled in, or raises InvalidArgumentError."""
        for name, choices in (
            ("sam", SAM_CHOICES),
            ("optimizer", OPTIMIZER_CHOICES),
            ("strategy", STRATEGY_CHOICES),
            ("shortcut", ("A", "B")),
        ):
            if getattr(self, name) not in choices:
                raise InvalidArgumentError(
                    f"`{name}` must be one of {', '.join(choices)}. "
                    f"Received: {name}={getattr(self, name)!r}."
                )
        if not _available(self.sam):
            raise InvalidArgumentError(
                f"`--sam {self.sam}` needs keras_sam.{_VARIANTS[self.sam]}, which this "
                f"version of keras-sam ({keras_sam.__version__}) does not have. Available: "
                f"{', '.join(c for c in SAM_CHOICES if _available(c))}."
            )
        if self.looksam_k is not None and self.sam != "looksam":
            raise InvalidArgumentError(
                f"`looksam_k` is only for `--sam looksam`. "
                f"Received: sam={self.sam!r}, looksam_k={self.looksam_k!r}."
            )
        if self.alpha is not None and self.sam not in _VARIANTS:
            raise InvalidArgumentError(
                f"`alpha` is only for `--sam gsam` and `--sam looksam`. "
                f"Received: sam={self.sam!r}, alpha={self.alpha!r}."
            )
        check_model_name(self.model)
        config = dataclasses.replace(self)
        config.epochs = check_int("epochs", self.epochs, minimum=1)
        config.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        for name in ("steps_per_epoch", "max_examples", "looksam_k", "image_size"):
            if getattr(self, name) is not None:
                setattr(config, name, check_int(name, getattr(self, name), minimum=1))
        config.label_smoothing = check_real(
            "label_smoothing", self.label_smoothing, minimum=0.0, maximum=1.0
        )
        config.label_noise = check_real("label_noise", self.label_noise, minimum=0.0, maximum=1.0)
        config.weight_decay = check_real("weight_decay", self.weight_decay, minimum=0.0)
        config.warmup_epochs = check_real("warmup_epochs", self.warmup_epochs, minimum=0.0)
        # Keras's SGD takes momentum in [0, 1] (and a float only); 1 never decays.
        config.momentum = _below_one("momentum", self.momentum)
        config.dropout = _below_one("dropout", self.dropout)
        if config.dropout and not self.model.startswith("wrn"):  # a checked name
            raise InvalidArgumentError(
                f"`dropout` is only for Wide ResNets (wrn...); {self.model} has no dropout. "
                f"Received: model={self.model!r}, dropout={self.dropout!r}."
            )
        if self.alpha is not None:
            config.alpha = check_alpha(self.alpha)
        config.seed = check_int("seed", self.seed, minimum=0, maximum=argtypes.MAX_SEED)
        config.rho = (
            DEFAULT_RHO.get(self.sam)
            if self.rho is None
            else check_rho_value(self.rho)
        )
        if self.sam == "none":
            config.rho = None
        config.lr = (
            DEFAULT_LR[self.optimizer]
            if self.lr is None
            else check_real("lr", self.lr, minimum=0.0, exclusive_minimum=True)
        )
        default_out = os.path.join("runs", f"{self.dataset}-{self.model}-{self.sam}")
        config.out = str(self.out or default_out)  # a Path too
        problem = argtypes.directory_problem(config.out)
        if problem:
            raise InvalidArgumentError(f"`out` cannot be the output directory: {problem}.")
        return config


def _below_one(name: str, value) -> float:
    """`value` as a float in [0, 1), or raises."""
    value = check_real(name, value, minimum=0.0, maximum=1.0)
    if value == 1.0:
        raise InvalidArgumentError(f"`{name}` must be in [0, 1). Received: {name}={value!r}.")
    return value


def check_dataset(name: str, data_dir: str | None = None) -> str:
    """Returns `name` if TFDS has a builder for it, else raises InvalidArgumentError.

    Only looks the name up and constructs the builder (no download, no data
    read), so that a misspelt `--dataset` fails at once and in one line.

    >>> check_dataset("cifar10")
    'cifar10'
    """
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
def _find_tpu():
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
        resolver = _find_tpu()
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
    options = {}
    if config.alpha is not None:
        options["alpha"] = config.alpha
    if config.looksam_k is not None:
        options["k"] = config.looksam_k
    return wrapper(classifier, rho=config.rho, **options)


_VARIANTS = {"gsam": "GSAMModel", "looksam": "LookSAMModel"}


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
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = mixed_precision_policy(strategy) if config.mixed_precision else "float32"
    _check_resumable(config, out / "backup", policy)

    data = load_image_dataset(
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
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="any TFDS image classification dataset, e.g. cifar10, cifar100, "
        "svhn_cropped, fashion_mnist, mnist (default: %(default)s)",
    )
    data.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    data.add_argument("--train-split", default=defaults.train_split, help="(default: %(default)s)")
    data.add_argument(
        "--test-split",
        default=defaults.test_split,
        help="evaluated after every epoch; 'none' for no test set (default: %(default)s)",
    )
    data.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips (default: on, except for digit/character "
        "datasets such as mnist and svhn_cropped)",
    )
    data.add_argument("--image-size", type=argtypes.positive_int, help="resize images to this size")
    data.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=defaults.cache,
        help="keep decoded images in memory (default: on)",
    )
    data.add_argument(
        "--label-noise",
        type=argtypes.fraction,
        default=defaults.label_noise,
        help="fraction of training labels redrawn uniformly at random, fixed for "
        "the run; the test set stays clean (default: %(default)s)",
    )
    data.add_argument(
        "--max-examples", type=argtypes.positive_int, help="use only this many examples per split"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=defaults.model,
        help=f"{', '.join(MODEL_NAMES)}, or any resnet{{6n+2}} / wrn{{6n+4}}_{{k}} "
        "(default: %(default)s)",
    )
    model.add_argument(
        "--shortcut",
        choices=("A", "B"),
        default=defaults.shortcut,
        help="ResNet shortcut: A = zero-padded identity (He et al.'s CIFAR choice), "
        "B = 1x1 projection (default: %(default)s)",
    )
    model.add_argument(
        "--dropout",
        type=argtypes.fraction_below_one,
        default=defaults.dropout,
        help="Wide ResNet dropout, in [0, 1) (default: %(default)s)",
    )

    sam = parser.add_argument_group("sharpness-aware minimization")
    sam.add_argument("--sam", choices=SAM_CHOICES, default=defaults.sam, help="(default: sam)")
    sam.add_argument(
        "--rho",
        type=argtypes.rho,
        help="neighbourhood radius (default: 0.05; 0.5 for asam)",
    )
    sam.add_argument(
        "--alpha",
        type=argtypes.alpha,
        help="GSAM's or LookSAM's alpha; only with --sam gsam or looksam "
        "(default: the class default)",
    )
    sam.add_argument(
        "--looksam-k", type=argtypes.positive_int, help="LookSAM: SAM step every k steps"
    )

    optimization = parser.add_argument_group("optimization")
    optimization.add_argument(
        "--optimizer", choices=OPTIMIZER_CHOICES, default=defaults.optimizer, help="(default: sgd)"
    )
    optimization.add_argument(
        "--lr",
        type=argtypes.positive,
        help="peak learning rate of the cosine schedule (default: 0.1 for sgd, 1e-3 otherwise)",
    )
    optimization.add_argument(
        "--momentum",
        type=argtypes.fraction_below_one,
        default=defaults.momentum,
        help="SGD's and RMSprop's momentum, in [0, 1) (default: %(default)s)",
    )
    optimization.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    optimization.add_argument(
        "--warmup-epochs",
        type=argtypes.non_negative,
        default=defaults.warmup_epochs,
        help="linear warmup before the cosine decay (default: %(default)s)",
    )
    optimization.add_argument(
        "--weight-decay",
        type=argtypes.non_negative,
        default=defaults.weight_decay,
        help="L2 weight decay: 0.5*wd*||w||^2 of every weight added to the loss "
        "(decoupled for adamw) (default: %(default)s)",
    )
    optimization.add_argument(
        "--label-smoothing",
        type=argtypes.fraction,
        default=defaults.label_smoothing,
        help="(default: %(default)s)",
    )
    optimization.add_argument(
        "--epochs",
        type=argtypes.positive_int,
        default=defaults.epochs,
        help="(default: %(default)s)",
    )
    optimization.add_argument(
        "--batch-size",
        type=argtypes.positive_int,
        default=defaults.batch_size,
        help="global batch size (default: %(default)s)",
    )
    optimization.add_argument(
        "--steps-per-epoch",
        type=argtypes.positive_int,
        help="steps per epoch (default: training examples // batch size)",
    )
    optimization.add_argument(
        "--seed", type=argtypes.seed, default=defaults.seed, help="(default: %(default)s)"
    )

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 on GPU, mixed_bfloat16 on TPU and CPU",
    )
    hardware.add_argument(
        "--strategy",
        choices=STRATEGY_CHOICES,
        default=defaults.strategy,
        help="auto: TPU if found, else Mirrored if >1 GPU, else one device (default: auto)",
    )
    hardware.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA-compile the train step (default: Keras's 'auto')",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        type=argtypes.output_directory,
        help="output directory; rerun with the same --out to resume "
        "(default: runs/<dataset>-<model>-<sam>)",
    )
    output.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=defaults.export,
        help="also export a SavedModel to OUT/saved_model (default: on)",
    )
    output.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=defaults.verbose,
        help="Keras fit verbosity",
    )
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `train` on the `keras-sam` command's subparsers."""
    parser = subparsers.add_parser(
        "train",
        help="train a CIFAR ResNet / Wide ResNet with SAM on a TFDS image dataset",
        description=__doc__.split("\n\n")[0],
    )
    return _configure(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: value for name, value in vars(args).items() if name in fields}
    if values.get("test_split") in ("none", ""):
        values["test_split"] = None
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Runs `keras-sam train` with parsed arguments; returns the exit status."""
    try:
        results = train(config_from_args(args))
    except InvalidArgumentError as error:
        print(f"keras-sam train: error: {error}", file=sys.stderr)
        return 2
    test = ", ".join(f"{name} {value:.4f}" for name, value in results["test"].items())
    print(
        f"Trained {results['model']} ({results['sam']}) on {results['dataset']}: "
        f"{results['epochs_run']} epochs in {results['train_seconds']:.1f} s; "
        f"test: {test or 'not evaluated'}. Written to {results['config']['out']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`keras-sam train` on its own: `python -m keras_sam.train --help`."""
    parser = OneLineErrorParser(prog="keras-sam")  # one-line errors, as `keras-sam train`
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
