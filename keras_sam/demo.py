"""`keras-sam demo`: SAM against its base optimizer on MNIST-1D with noisy labels.

The demo trains the small MNIST-1D CNN twice, from the same initial weights
and on the same sequence of batches: once with the base optimizer alone and
once wrapped in `keras_sam.SAMModel`. A share of the training labels (40% by
default) is replaced by wrong classes; the test labels stay clean. The base
optimizer memorises the wrong labels and ends in a sharp minimum whose clean
test accuracy collapses; SAM ends in a flatter one and generalises better
(Foret et al., 2021, Sec. 3.3).

It prints a table (clean test accuracy, final training loss, sharpness as
the top Hessian eigenvalue of the training loss) and writes a figure with
the test-accuracy curves and a 1D loss landscape through each solution.

From the command line::

    keras-sam demo                      # about 1.5 minutes on 2 CPU cores
    keras-sam demo --seeds 0 1 2 --json results.json
    keras-sam demo --quick --json r.json --out /tmp/demo    # smoke test

From Python (it prints the table and returns its rows)::

    from keras_sam.demo import DemoSettings, run_demo
    rows = run_demo(DemoSettings(noise=0.2, rho=0.1), seeds=[0, 1])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_sam import _argtypes as argtypes
from keras_sam import diagnostics
from keras_sam.data.mnist1d import load_noisy_mnist1d
from keras_sam.models.cnn1d import mnist1d_cnn
from keras_sam.sam_model import SAMModel

__all__ = [
    "OPTIMIZERS",
    "DemoSettings",
    "add_parser",
    "make_optimizer",
    "run",
    "run_demo",
    "seeded_batches",
    "starting_weights",
    "train_run",
]

# name -> (Keras class, its fixed arguments, default peak learning rate).
OPTIMIZERS: dict[str, tuple[str, dict, float]] = {
    "sgd": ("SGD", {"momentum": 0.9}, 0.05),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}, 0.05),
    "adam": ("Adam", {}, 1e-3),
    "adamw": ("AdamW", {}, 1e-3),
    "rmsprop": ("RMSprop", {}, 1e-3),
}

# SAM's default radius; ASAM's ball is scale-invariant and wants about 10x.
DEFAULT_RHO = 0.2
DEFAULT_ADAPTIVE_RHO = 2.0


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything one demo run depends on besides the seed.

    Args:
        noise: share of training labels replaced by a wrong class, in [0, 1).
            Defaults to `0.4`.
        rho: SAM's radius ρ (ASAM's when `adaptive`). Defaults to `0.2`.
        adaptive: train the SAM run with ASAM's scale-invariant ball.
            Defaults to `False`.
        optimizer: a key of `OPTIMIZERS`; both runs use it. Defaults to
            `"sgd"` (momentum 0.9).
        learning_rate: peak learning rate of the cosine decay. Defaults to
            `None`: the optimizer's default in `OPTIMIZERS`.
        epochs: training epochs of each run. Defaults to `100`.
        batch_size: training batch size. Defaults to `128`.
        num_samples: MNIST-1D size (80% train, 20% test). Defaults to `None`,
            the `mnist1d` default of 5,000.
        hessian_iterations: Lanczos steps for the top Hessian eigenvalue.
            Defaults to `20`.
        landscape_points: points of the 1D loss landscape. Defaults to `21`.
        verbose: Keras's `verbose` for `fit`; 1 shows progress bars.
            Defaults to `1`.
    """

    noise: float = 0.4
    rho: float = DEFAULT_RHO
    adaptive: bool = False
    optimizer: str = "sgd"
    learning_rate: float | None = None
    epochs: int = 100
    batch_size: int = 128
    num_samples: int | None = None
    hessian_iterations: int = 20
    landscape_points: int = 21
    verbose: int = 1

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return OPTIMIZERS[self.optimizer][2]


# `--quick`: a smoke-sized run for tests (~15 s with TensorFlow loaded).
QUICK = {"epochs": 3, "num_samples": 1000, "hessian_iterations": 5, "landscape_points": 7}


def make_optimizer(name: str, learning_rate: float, decay_steps: int) -> keras.Optimizer:
    """A fresh optimizer from `OPTIMIZERS` with a cosine-decayed learning rate.

    >>> optimizer = make_optimizer("sgd", 0.05, decay_steps=100)
    >>> type(optimizer).__name__, optimizer.momentum
    ('SGD', 0.9)
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer` must be one of {sorted(OPTIMIZERS)}. Received: optimizer={name!r}."
        )
    class_name, arguments, _ = OPTIMIZERS[name]
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    return getattr(keras.optimizers, class_name)(learning_rate=schedule, **arguments)


def seeded_batches(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int, seed: int
) -> tf.data.Dataset:
    """`epochs` passes over `(x, y)` in mini-batches, reshuffled each epoch by `seed`.

    The order comes from NumPy's generator seeded with `seed`, so two datasets
    built with the same seed yield the same batches in the same order, and two
    `fit` runs on them see identical data. Pass it to `fit` with
    `steps_per_epoch=ceil(len(x) / batch_size)`: Keras then keeps one
    iterator across epochs.

    >>> import numpy as np
    >>> batches = seeded_batches(np.arange(5), np.arange(5), batch_size=2, epochs=2, seed=0)
    >>> [y.numpy().tolist() for _, y in batches]
    [[2, 4], [3, 0], [1], [4, 1], [2, 0], [3]]
    """
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` differ in length: {len(x)} and {len(y)}.")
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(len(x)) for _ in range(epochs)])
    x, y = tf.constant(x), tf.constant(y)
    rows = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    return rows.map(lambda r: (tf.gather(x, r), tf.gather(y, r))).prefetch(tf.data.AUTOTUNE)


def starting_weights(seed: int) -> list[np.ndarray]:
    """The CNN's initial weights for `seed`; both runs of the demo start from them.

    >>> import numpy as np
    >>> first, again = starting_weights(0), starting_weights(0)
    >>> all(np.array_equal(a, b) for a, b in zip(first, again))
    True
    """
    keras.utils.set_random_seed(seed)
    return mnist1d_cnn().get_weights()


def _compiled(model: keras.Model, optimizer="sgd", steps_per_execution: int = 1) -> keras.Model:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def train_run(
    method: str,
    initial_weights: list[np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    settings: DemoSettings,
    seed: int,
    *,
    steps_per_execution: int | None = None,
) -> tuple[keras.Model, dict]:
    """Trains the CNN from `initial_weights` with the base optimizer or SAM.

    Both methods get a fresh optimizer of the same configuration and the same
    batches (`seeded_batches` with `seed`); only the wrapper differs. The test
    set is Keras's validation data, so the history holds the per-epoch clean
    test accuracy as `val_accuracy`.

    Args:
        method: `"base"` or `"sam"`.
        initial_weights: the starting weights, from `get_weights()`.
        train: `(x, y)` training arrays (labels possibly noisy).
        test: `(x, y)` clean test arrays.
        settings: the demo's settings.
        seed: the seed of the batch order.
        steps_per_execution: training steps per call into TensorFlow.
            Defaults to `None`: one call per epoch. The CNN's step is so
            small that the per-call overhead of one step per call costs about
            a third of the training time; the weights are the same bit for bit
            (`python benchmarks/demo_time.py` measures both).

    Returns:
        `(model, history)`: the trained plain CNN (for SAM, the wrapped base
        model), compiled for evaluation, and `History.history`.
    """
    if method not in ("base", "sam"):
        raise ValueError(f"`method` must be 'base' or 'sam'. Received: method={method!r}.")
    model = mnist1d_cnn()
    model.set_weights(initial_weights)
    steps_per_epoch = math.ceil(len(train[0]) / settings.batch_size)
    optimizer = make_optimizer(
        settings.optimizer, settings.peak_learning_rate, settings.epochs * steps_per_epoch
    )
    trainer = (
        model if method == "base" else SAMModel(model, rho=settings.rho, adaptive=settings.adaptive)
    )
    _compiled(trainer, optimizer, steps_per_execution=steps_per_execution or steps_per_epoch)
    batches = seeded_batches(
        *train, batch_size=settings.batch_size, epochs=settings.epochs, seed=seed
    )
    history = trainer.fit(
        batches,
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the batches are already in their seeded order
        validation_data=test,
        validation_batch_size=len(test[0]),
        verbose=settings.verbose,
    )
    if method == "sam":
        _compiled(model)
    return model, history.history


def _measure(model: keras.Model, train, test, settings: DemoSettings):
    """The table's numbers for a trained model, and its 1D loss landscape."""
    test_loss, test_accuracy = model.evaluate(*test, batch_size=1000, verbose=0)
    train_loss, train_accuracy = model.evaluate(*train, batch_size=1000, verbose=0)
    # Big batches: the same full-training-set averages in fewer steps.
    (top_eigenvalue,) = diagnostics.hessian_eigenvalues(
        model, train, k=1, iterations=settings.hessian_iterations, batch_size=1000
    )
    # SAM's own first-order measure at rho 0.05, for comparison only: at the
    # end of training it grows with the gradient, not with the curvature.
    first_order = diagnostics.sharpness(model, train, rho=0.05, batch_size=1000)
    landscape = diagnostics.loss_landscape(
        model, train, points=settings.landscape_points, seed=0, batch_size=1000
    )
    metrics = {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_accuracy),
        "sharpness": float(top_eigenvalue),
        "first_order_sharpness": float(first_order),
    }
    return metrics, landscape


def run_demo(settings: DemoSettings, seeds: Sequence[int] = (0,), out="keras-sam-demo"):
    """Runs the base and SAM trainings for each seed; returns the table rows.

    Writes one figure per seed to `out` and prints the table. Each row is a
    dict with `method`, `optimizer`, `rho`, `adaptive`, `seed`, `noise`,
    `epochs`, `test_accuracy` (clean, 0-1), `train_loss` and
    `train_accuracy` (on the noisy training labels), `sharpness` (top Hessian
    eigenvalue of the training loss), `first_order_sharpness` (L(w+ε̂) − L(w)
    at rho 0.05 on the training set), `seconds` (training time) and
    `test_accuracy_per_epoch`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        train, test = load_noisy_mnist1d(
            settings.noise, seed=seed, num_samples=settings.num_samples
        )
        initial_weights = starting_weights(seed)
        curves, landscapes = {}, {}
        for method in ("base", "sam"):
            if settings.verbose:
                print(f"\n[seed {seed}] training with {_method_label(method, settings)}")
            started = time.perf_counter()
            model, history = train_run(method, initial_weights, train, test, settings, seed)
            seconds = time.perf_counter() - started
            metrics, landscapes[method] = _measure(model, train, test, settings)
            curves[method] = [float(a) for a in history["val_accuracy"]]
            rows.append(
                {
                    "method": method,
                    "optimizer": settings.optimizer,
                    "rho": settings.rho if method == "sam" else 0.0,
                    "adaptive": settings.adaptive and method == "sam",
                    "seed": seed,
                    "noise": settings.noise,
                    "epochs": settings.epochs,
                    **metrics,
                    "seconds": seconds,
                    "test_accuracy_per_epoch": curves[method],
                }
            )
        figure = _figure(curves, landscapes, settings, seed)
        figure.savefig(out / f"sam_vs_base_seed{seed}.png", dpi=120)
    print(format_table(rows, settings))
    print(f"\nFigures written to {out.resolve()}/")
    return rows


def _method_label(method: str, settings: DemoSettings) -> str:
    if method == "base":
        return settings.optimizer
    name = "ASAM" if settings.adaptive else "SAM"
    return f"{name}(rho={settings.rho:g}) + {settings.optimizer}"


def _figure(curves: dict, landscapes: dict, settings: DemoSettings, seed: int):
    """Test accuracy per epoch and the loss landscapes, side by side."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    figure.suptitle(
        f"MNIST-1D, {settings.noise:.0%} noisy training labels, seed {seed}: "
        "the base optimizer's sharp minimum against SAM's flat one"
    )
    accuracy_axes, landscape_axes = figure.subplots(1, 2)
    labels = [_method_label(method, settings) for method in curves]
    for label, curve in zip(labels, curves.values()):
        accuracy_axes.plot(range(1, len(curve) + 1), curve, label=label)
    accuracy_axes.set(xlabel="epoch", ylabel="clean test accuracy", title="test accuracy")
    accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    accuracy_axes.grid(alpha=0.3)
    accuracy_axes.legend()
    diagnostics.plot_loss_landscape(list(landscapes.values()), labels=labels, ax=landscape_axes)
    landscape_axes.set(ylabel="training loss (noisy labels)", title="loss along a random direction")
    landscape_axes.grid(alpha=0.3)
    return figure


def format_table(rows: Sequence[dict], settings: DemoSettings) -> str:
    """The demo's results as a plain-text table, one line per run."""
    header = (
        f"MNIST-1D, {settings.noise:.0%} symmetric label noise, {settings.optimizer}, "
        f"{settings.epochs} epochs"
    )
    columns = (
        "seed",
        "method",
        "clean test acc",
        "train loss",
        "top Hessian eig",
        "L(w+e)-L(w)",
        "train time",
    )
    template = "{:>4}  {:<24}  {:>14}  {:>10}  {:>15}  {:>11}  {:>10}"
    lines = [header, "", template.format(*columns)]
    for row in rows:
        method = _method_label(row["method"], settings)
        lines.append(
            f"{row['seed']:>4}  {method:<24}  {row['test_accuracy']:>14.1%}  "
            f"{row['train_loss']:>10.3f}  {row['sharpness']:>15.2f}  "
            f"{row.get('first_order_sharpness', float('nan')):>11.4f}  {row['seconds']:>9.0f}s"
        )
    lines.append(
        "(top Hessian eig: sharpness of the minimum. L(w+e)-L(w), rho 0.05: SAM's first-order"
        " measure, which grows with the gradient and is no flatness measure at the end)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers the `demo` subcommand on an argparse subparsers object."""
    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="SAM vs its base optimizer on MNIST-1D with noisy labels",
        description=(
            "Trains a small 1D CNN on MNIST-1D (generated locally) with noisy "
            "training labels twice, from the same initial weights and batches: "
            "with the base optimizer and with SAM. Prints clean test accuracy, "
            "final training loss and sharpness (top Hessian eigenvalue), and "
            "writes a figure of test accuracy and the loss landscape."
        ),
    )
    parser.add_argument(
        "--noise",
        type=argtypes.fraction_below_one,
        default=defaults.noise,
        help="share of training labels replaced by a wrong class, in [0, 1) (default: %(default)s)",
    )
    parser.add_argument(
        "--rho",
        type=argtypes.rho,
        default=None,
        help=f"SAM radius (default: {DEFAULT_RHO}; {DEFAULT_ADAPTIVE_RHO} with --adaptive)",
    )
    parser.add_argument("--adaptive", action="store_true", help="use ASAM's scale-invariant ball")
    parser.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default=defaults.optimizer,
        help="base optimizer of both runs (default: %(default)s; sgd and nesterov "
        "use momentum 0.9)",
    )
    parser.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=argtypes.positive,
        default=None,
        help="peak learning rate of the cosine decay (default: 0.05 for sgd and "
        "nesterov, 0.001 otherwise)",
    )
    parser.add_argument(
        "--epochs",
        type=argtypes.positive_int,
        default=None,
        help=f"epochs of each run (default: {defaults.epochs}; {QUICK['epochs']} with --quick)",
    )
    parser.add_argument(
        "--batch-size",
        type=argtypes.positive_int,
        default=defaults.batch_size,
        help="training batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        "--seeds",
        dest="seeds",
        type=argtypes.seed,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="one or more seeds; each trains both runs (default: 0)",
    )
    # Both paths are checked here, so that a bad one fails before training
    # rather than after it (argparse checks the default --out too).
    parser.add_argument(
        "--out",
        type=argtypes.output_directory,
        default="keras-sam-demo",
        help="folder for the figures (default: ./%(default)s/)",
    )
    parser.add_argument(
        "--json",
        type=argtypes.output_file,
        metavar="FILE",
        help="also write the table to FILE as JSON",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke-sized run ({QUICK['epochs']} epochs, {QUICK['num_samples']} signals): "
        "checks that everything runs, too short to show SAM's gain",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=defaults.verbose,
        help="Keras fit verbosity: 1 shows progress bars (default: %(default)s)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        dest="verbose",
        action="store_const",
        const=0,
        help="no progress bars (same as --verbose 0)",
    )
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The `DemoSettings` of parsed `demo` arguments (explicit > --quick > default)."""
    values = dict(QUICK) if args.quick else {}
    if args.epochs is not None:
        values["epochs"] = args.epochs
    rho = args.rho
    if rho is None:
        rho = DEFAULT_ADAPTIVE_RHO if args.adaptive else DEFAULT_RHO
    return DemoSettings(
        noise=args.noise,
        rho=rho,
        adaptive=args.adaptive,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        verbose=args.verbose,
        **values,
    )


class _NotRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning.

    TensorFlow counts traces by the Python function traced, and Keras builds
    every model's train and test functions from the same one: the demo's
    models (one per method and seed), each traced once, read to it as one
    function retraced in a loop.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def run(args: argparse.Namespace) -> int:
    """Runs `keras-sam demo` from parsed arguments; returns the exit code."""
    settings = settings_from_args(args)
    quiet = _NotRetracing()
    tf.get_logger().addFilter(quiet)
    try:
        rows = run_demo(settings, seeds=args.seeds, out=args.out)
    finally:
        tf.get_logger().removeFilter(quiet)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"Table written to {path.resolve()}")
    return 0
