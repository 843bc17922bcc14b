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

    from keras_sam.apps.demo import DemoSettings, run_demo
    rows = run_demo(DemoSettings(noise=0.2, rho=0.1), seeds=[0, 1])

The methods it trains come from a registry, `METHODS` (name -> `DemoMethod`:
how to build the model that `fit` trains, and how many forward/backward
passes of the network its step takes), so that methods of different cost can
be compared at equal compute: every row carries `passes_per_step` and the
training time in `seconds`. `DemoSettings(methods=...)` (`--methods`) picks
them; the default is `base` and `sam`.

The demo's own code is backend-neutral (NumPy arrays and Keras APIs). It
needs the `[demo]` extra (mnist1d, matplotlib): `pip install "keras-sam[demo]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_sam import (
    AESAMModel,
    FriendlySAMModel,
    LookSAMModel,
    MSAMModel,
    RandomizedSAMModel,
    SAMModel,
    diagnostics,
    schedules,
)
from keras_sam._validation import InvalidArgumentError, check_int
from keras_sam.apps import _argtypes as argtypes
from keras_sam.apps import _extras
from keras_sam.apps import _options as options
from keras_sam.apps._options import setting
from keras_sam.apps.cli import fail
from keras_sam.apps.data.mnist1d import load_noisy_mnist1d
from keras_sam.models.cnn1d import mnist1d_cnn

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "DemoCommand",
    "DemoMethod",
    "RunPlan",
    "DemoSettings",
    "add_parser",
    "format_table",
    "make_optimizer",
    "passes_per_step",
    "register_method",
    "run",
    "run_demo",
    "seeded_batches",
    "settings_from_args",
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


# ------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a method's model may need to know of the run it trains in.

    Attributes:
        seed: the run's seed (its batches, RST's draws).
        steps_per_epoch: training steps per epoch.
        total_steps: the steps of the base's schedule (`epochs` epochs),
            where schedules that switch SAM on or off are placed.
    """

    seed: int
    steps_per_epoch: int
    total_steps: int


@dataclasses.dataclass(frozen=True)
class DemoMethod:
    """One way the demo trains its CNN: an entry of `METHODS`.

    Every method trains the same network from the same initial weights on the
    same sequence of batches with a fresh optimizer of the same configuration
    (`train_run`); a method decides what model `fit` trains and, for
    `base-matched`, for how many epochs.

    Attributes:
        name: its key in `METHODS`, `--methods` and the rows' `method`.
        build: `build(network, settings, plan)` returns the model that `fit`
            trains: `network` itself, or a wrapper that trains `network`'s own
            variables (`SAMModel(network, ...)`).
        label: `label(settings)`, its name in the table and the figure.
        radius: `radius(settings)`, the rows' `rho` (0 without a SAM ball).
        adaptive: `adaptive(settings)`, the rows' `adaptive` (ASAM's ball).
        epochs_factor: its epochs as a multiple of `settings.epochs` (over
            the same sequence of batches, continued); 2 gives the base as many
            forward/backward passes as SAM.
    """

    name: str
    build: Callable[[keras.Model, DemoSettings, RunPlan], keras.Model]
    label: Callable[[DemoSettings], str]
    radius: Callable[[DemoSettings], float] = lambda settings: 0.0
    adaptive: Callable[[DemoSettings], bool] = lambda settings: False
    epochs_factor: int = 1


#: The methods the demo can train, by name, in registration order.
METHODS: dict[str, DemoMethod] = {}


def register_method(method: DemoMethod) -> DemoMethod:
    """Adds `method` to `METHODS` (replacing one of the same name); returns it."""
    if not isinstance(method, DemoMethod):
        raise InvalidArgumentError(
            f"`method` must be a `DemoMethod`. Received: method={method!r}."
        )
    check_int("epochs_factor", method.epochs_factor, minimum=1)
    METHODS[method.name] = method
    return method


def _sam_label(settings: DemoSettings) -> str:
    name = "ASAM" if settings.adaptive else "SAM"
    return f"{name}(rho={settings.rho:g}) + {settings.optimizer}"


# The cheaper modes' settings as docs/cheap-sam.md recommends them for this
# task: MSAM's rho and late SAM's share chosen on a validation split of the
# noisy training data; LookSAM, RST and AE-SAM at their papers' defaults,
# which kept more of SAM's gain than the settings the split chose.
LOOKSAM = {"k": 5, "alpha": 0.7}
MSAM_RHO = 1.0
RST_PROBABILITY = 0.5
AESAM_THRESHOLD = (1.0, -1.0)  # c_t from 1 to -1 over the run, as the paper
LATE_FRACTION = 0.75  # SAM for the last three quarters of the steps


def _sam(network, settings, plan, rho=None, **options):
    rho = settings.rho if rho is None else rho
    return SAMModel(network, rho=rho, adaptive=settings.adaptive, **options)


def _in_sams_ball(name: str, build, label) -> DemoMethod:
    """A method that climbs in SAM's ball: its rows carry the settings' rho
    and `adaptive`."""
    return DemoMethod(
        name=name,
        build=build,
        label=label,
        radius=lambda settings: settings.rho,
        adaptive=lambda settings: settings.adaptive,
    )


def _late_sam(network, settings, plan):
    """SAM for the last `LATE_FRACTION` of the base's steps, plain steps before."""
    start = round(plan.total_steps * (1 - LATE_FRACTION))
    return _sam(network, settings, plan, rho=schedules.LatePhase(settings.rho, start))


register_method(
    DemoMethod(
        name="base",
        build=lambda network, settings, plan: network,
        label=lambda settings: settings.optimizer,
    )
)
register_method(_in_sams_ball("sam", _sam, _sam_label))
register_method(
    DemoMethod(
        name="base-matched",
        build=lambda network, settings, plan: network,
        label=lambda settings: f"{settings.optimizer}, 2x epochs",
        epochs_factor=2,
    )
)
register_method(
    _in_sams_ball(
        "looksam",
        lambda network, settings, plan: LookSAMModel(
            network, rho=settings.rho, adaptive=settings.adaptive, **LOOKSAM
        ),
        lambda settings: f"LookSAM(k={LOOKSAM['k']}) + {settings.optimizer}",
    )
)
register_method(
    DemoMethod(
        name="msam",
        build=lambda network, settings, plan: MSAMModel(network, rho=MSAM_RHO),
        label=lambda settings: f"MSAM(rho={MSAM_RHO:g}) + {settings.optimizer}",
        radius=lambda settings: MSAM_RHO,
    )
)
register_method(
    _in_sams_ball(
        "rst",
        lambda network, settings, plan: RandomizedSAMModel(
            network, rho=settings.rho, adaptive=settings.adaptive,
            probability=RST_PROBABILITY, seed=plan.seed,
        ),  # fmt: skip
        lambda settings: f"RST(p={RST_PROBABILITY:g}) + {settings.optimizer}",
    )
)
register_method(
    _in_sams_ball(
        "aesam",
        lambda network, settings, plan: AESAMModel(
            network, rho=settings.rho, adaptive=settings.adaptive,
            threshold=schedules.Linear(*AESAM_THRESHOLD, plan.total_steps),
        ),  # fmt: skip
        lambda settings: f"AE-SAM + {settings.optimizer}",
    )
)
register_method(
    _in_sams_ball(
        "late",
        _late_sam,
        lambda settings: f"late SAM ({LATE_FRACTION:.0%}) + {settings.optimizer}",
    )
)
register_method(
    _in_sams_ball(
        "fsam",
        lambda network, settings, plan: FriendlySAMModel(
            network, rho=settings.rho, adaptive=settings.adaptive
        ),
        lambda settings: f"F-SAM(rho={settings.rho:g}) + {settings.optimizer}",
    )
)
# SAM-ON perturbs the normalization layers' weights only. The demo's CNN has
# none, so here it is the plain step (one pass, the base's numbers; the model
# warns): the method is for comparing networks that have them.
register_method(
    _in_sams_ball(
        "sam-on",
        lambda network, settings, plan: _sam(network, settings, plan, perturb="normalization"),
        lambda settings: f"SAM-ON(rho={settings.rho:g}) + {settings.optimizer}",
    )
)


def passes_per_step(history: dict, method: DemoMethod) -> float:
    """Forward/backward passes per step of the base's schedule, counted.

    A SAM model whose steps are not all alike logs `sam_steps`, each epoch's
    share of SAM steps (two passes); one that always climbs logs only
    `sharpness` (two passes a step); a plain model neither (one). Epochs have
    equal steps, so the mean over epochs is the run's share; `base-matched`
    runs `epochs_factor` times the base's steps.
    """
    return float(np.mean(_passes_per_epoch(history))) * method.epochs_factor


def _passes_per_epoch(history: dict) -> list[float]:
    """Each epoch's forward/backward passes, in epochs of the base."""
    if "sam_steps" in history:
        return [1.0 + float(share) for share in history["sam_steps"]]
    per_epoch = 2.0 if "sharpness" in history else 1.0
    return [per_epoch] * len(history["loss"])


def _method(name: str) -> DemoMethod:
    if name not in METHODS:
        raise InvalidArgumentError(
            f"`method` must be one of {', '.join(METHODS)}. Received: method={name!r}."
        )
    return METHODS[name]


def _method_names(name: str, value) -> str:
    if value not in METHODS:
        raise InvalidArgumentError(
            f"`{name}` must name methods of keras_sam.apps.demo.METHODS ({', '.join(METHODS)}). "
            f"Received: {value!r}."
        )
    return value


# ------------------------------------------------------------------ settings
# `--quick`: a smoke-sized run for tests (~15 s with TensorFlow loaded).
QUICK = {"epochs": 3, "num_samples": 1000, "hessian_iterations": 5, "landscape_points": 7}


def _at_least_ten(name: str, value) -> int:
    return check_int(name, value, minimum=10)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything one demo run depends on besides the seed.

    Each field's default, help text (for `keras-sam demo --help`) and check
    are defined here once; a bad value raises `InvalidArgumentError`, from
    Python as on the command line.

    Args:
        noise: share of training labels replaced by a wrong class, in [0, 1).
            Defaults to `0.4`.
        rho: SAM's radius ρ (ASAM's when `adaptive`). Defaults to `None`:
            `0.2`, or `2.0` when `adaptive`.
        adaptive: train the SAM run with ASAM's scale-invariant ball.
            Defaults to `False`.
        optimizer: a key of `OPTIMIZERS`; every method uses it. Defaults to
            `"sgd"` (momentum 0.9).
        learning_rate: peak learning rate of the cosine decay. Defaults to
            `None`: the optimizer's default in `OPTIMIZERS`.
        epochs: training epochs of each run. Defaults to `100`.
        batch_size: training batch size. Defaults to `128`.
        num_samples: MNIST-1D size (80% train, 20% test), at least 10.
            Defaults to `None`, the `mnist1d` default of 5,000.
        hessian_iterations: Lanczos steps for the top Hessian eigenvalue.
            Defaults to `20`.
        landscape_points: points of the 1D loss landscape. Defaults to `21`.
        verbose: Keras's `verbose` for `fit`; 1 shows progress bars.
            Defaults to `1`.
        methods: the `METHODS` to train, in order. Defaults to
            `("base", "sam")`.
    """

    noise: float = setting(
        0.4,
        "share of training labels replaced by a wrong class, in [0, 1)",
        parse=argtypes.number,
        check=argtypes.fraction_below_one,
    )
    rho: float | None = setting(
        None,
        "SAM radius",
        parse=argtypes.number,
        check=argtypes.rho,
        shown_default=f"{DEFAULT_RHO}; {DEFAULT_ADAPTIVE_RHO} with --adaptive",
    )
    adaptive: bool = setting(False, "use ASAM's scale-invariant ball", switch="on")
    optimizer: str = setting(
        "sgd",
        "base optimizer of every method; sgd and nesterov use momentum 0.9",
        choices=tuple(sorted(OPTIMIZERS)),
    )
    learning_rate: float | None = setting(
        None,
        "peak learning rate of the cosine decay",
        parse=argtypes.number,
        check=argtypes.positive,
        flags=("--lr", "--learning-rate"),
        shown_default=f"{OPTIMIZERS['sgd'][2]:g} for sgd and nesterov, "
        f"{OPTIMIZERS['adam'][2]:g} otherwise",
    )
    epochs: int = setting(
        100,
        f"epochs of each run; {QUICK['epochs']} with --quick",
        parse=argtypes.integer,
        check=argtypes.positive_int,
    )
    batch_size: int = setting(
        128, "training batch size", parse=argtypes.integer, check=argtypes.positive_int
    )
    # Not options of the command (`--quick` sets them): checked all the same.
    num_samples: int | None = setting(None, check=_at_least_ten)
    hessian_iterations: int = setting(20, check=argtypes.positive_int)
    landscape_points: int = setting(21, check=argtypes.positive_int)
    verbose: int = setting(
        1,
        "Keras fit verbosity: 1 shows progress bars",
        parse=argtypes.integer,
        choices=(0, 1, 2),
    )
    methods: tuple[str, ...] = setting(
        ("base", "sam"),
        "the methods to train (keys of keras_sam.apps.demo.METHODS: base, sam, ...), "
        "each from the same initial weights on the same batches",
        check=_method_names,
        many=True,
        metavar="METHOD",
    )

    def __post_init__(self):
        values = options.checked(self)
        if len(set(values["methods"])) != len(values["methods"]):
            raise InvalidArgumentError(
                f"`methods` must not repeat a method. Received: methods={self.methods!r}."
            )
        if values["rho"] is None:
            values["rho"] = DEFAULT_ADAPTIVE_RHO if values["adaptive"] else DEFAULT_RHO
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return OPTIMIZERS[self.optimizer][2]


@dataclasses.dataclass(frozen=True)
class DemoCommand:
    """The options of `keras-sam demo` besides `DemoSettings`: seeds, outputs, size.

    Args:
        seeds: one or more seeds; each trains every method. Defaults to `(0,)`.
        out: folder for the figures. Defaults to `"keras-sam-demo"`.
        json: also write the table to this file as JSON. Defaults to `None`.
        quick: a smoke-sized run (`QUICK`). Defaults to `False`.
    """

    seeds: tuple[int, ...] = setting(
        (0,),
        "one or more seeds; each trains every method",
        parse=argtypes.integer,
        check=argtypes.seed,
        many=True,
        flags=("--seed", "--seeds"),
        metavar="SEED",
    )
    # Both paths are checked when parsed, so that a bad one fails before
    # training rather than after it.
    out: str = setting(
        "keras-sam-demo",
        "folder for the figures",
        check=argtypes.output_directory,
        shown_default="./keras-sam-demo/",
    )
    json: str | None = setting(
        None, "also write the table to FILE as JSON", check=argtypes.output_file, metavar="FILE"
    )
    quick: bool = setting(
        False,
        f"smoke-sized run ({QUICK['epochs']} epochs, {QUICK['num_samples']} signals): "
        "checks that everything runs, too short to show SAM's gain",
        switch="on",
    )

    def __post_init__(self):
        for name, value in options.checked(self).items():
            object.__setattr__(self, name, value)


_COMMAND_DEFAULTS = DemoCommand()


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
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`epochs` passes over `(x, y)` in mini-batches, reshuffled each epoch by `seed`.

    The order comes from NumPy's generator seeded with `seed`, so two
    generators made with the same seed yield the same batches in the same
    order, and two `fit` runs on them see identical data. The batches are
    NumPy arrays, which every Keras backend takes. Pass them to `fit` with
    `steps_per_epoch=ceil(len(x) / batch_size)`: Keras then reads one
    generator across epochs.

    >>> import numpy as np
    >>> batches = seeded_batches(np.arange(5), np.arange(5), batch_size=2, epochs=2, seed=0)
    >>> [y.tolist() for _, y in batches]
    [[2, 4], [3, 0], [1], [4, 1], [2, 0], [3]]
    """
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` differ in length: {len(x)} and {len(y)}.")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(x)) for _ in range(epochs)]  # drawn up front, as before
    x, y = np.asarray(x), np.asarray(y)

    def batches():
        for order in orders:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                yield x[rows], y[rows]

    return batches()


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
    """Trains the CNN from `initial_weights` with one of the `METHODS`.

    Every method gets a fresh optimizer of the same configuration and the
    same batches (`seeded_batches` with `seed`); only the model that `fit`
    trains (`DemoMethod.build`) differs. The test set is Keras's validation
    data, so the history holds the per-epoch clean test accuracy as
    `val_accuracy`.

    Args:
        method: a key of `METHODS`: `"base"` or `"sam"` by default.
        initial_weights: the starting weights, from `get_weights()`.
        train: `(x, y)` training arrays (labels possibly noisy).
        test: `(x, y)` clean test arrays.
        settings: the demo's settings.
        seed: the seed of the batch order.
        steps_per_execution: training steps per call into the backend.
            Defaults to `None`: one call per epoch. The CNN's step is so
            small that the per-call overhead of one step per call costs about
            a third of the training time; the weights are the same bit for bit
            (`python benchmarks/demo_time.py` measures both).

    Returns:
        `(model, history)`: the trained plain CNN (for a wrapper such as
        SAM's, the wrapped network), compiled for evaluation, and
        `History.history`.
    """
    entry = _method(method)
    model = mnist1d_cnn()
    model.set_weights(initial_weights)
    steps_per_epoch = math.ceil(len(train[0]) / settings.batch_size)
    epochs = settings.epochs * entry.epochs_factor
    optimizer = make_optimizer(
        settings.optimizer, settings.peak_learning_rate, epochs * steps_per_epoch
    )
    plan = RunPlan(seed, steps_per_epoch, settings.epochs * steps_per_epoch)
    trainer = entry.build(model, settings, plan)
    _compiled(trainer, optimizer, steps_per_execution=steps_per_execution or steps_per_epoch)
    batches = seeded_batches(*train, batch_size=settings.batch_size, epochs=epochs, seed=seed)
    history = trainer.fit(
        batches,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the batches are already in their seeded order
        validation_data=test,
        validation_batch_size=len(test[0]),
        verbose=settings.verbose,
    )
    if trainer is not model:
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


def run_demo(
    settings: DemoSettings,
    seeds: Sequence[int] = _COMMAND_DEFAULTS.seeds,
    out=_COMMAND_DEFAULTS.out,
):
    """Trains each of `settings.methods` for each seed; returns the table rows.

    Writes one figure per seed to `out` and prints the table. Each row is a
    dict with `method`, `optimizer`, `rho`, `adaptive`, `seed`, `noise`,
    `epochs`, `test_accuracy` (clean, 0-1), `test_loss`, `train_loss` and
    `train_accuracy` (on the noisy training labels), `sharpness` (top Hessian
    eigenvalue of the training loss), `first_order_sharpness` (L(w+ε̂) − L(w)
    at rho 0.05 on the training set), `passes_per_step` (forward/backward
    passes through the network per step of the base's schedule, counted),
    `seconds` (training wall time), `seconds_vs_base` (over the base's of the
    same seed, or None without a base run) and `test_accuracy_per_epoch`.
    """
    if not isinstance(settings, DemoSettings):
        raise InvalidArgumentError(
            f"`settings` must be a `DemoSettings`. Received: settings={settings!r}."
        )
    command = DemoCommand(seeds=seeds, out=out)  # checks them
    out = argtypes.make_directory("out", command.out)
    rows = []
    for seed in command.seeds:
        train, test = load_noisy_mnist1d(
            settings.noise, seed=seed, num_samples=settings.num_samples
        )
        initial_weights = starting_weights(seed)
        curves, landscapes = {}, {}
        for name in settings.methods:
            method = METHODS[name]
            if settings.verbose:
                print(f"\n[seed {seed}] training with {method.label(settings)}")
            started = time.perf_counter()
            model, history = train_run(name, initial_weights, train, test, settings, seed)
            seconds = time.perf_counter() - started
            metrics, landscapes[name] = _measure(model, train, test, settings)
            curves[name] = (
                np.cumsum(_passes_per_epoch(history)).tolist(),
                [float(a) for a in history["val_accuracy"]],
            )
            rows.append(
                {
                    "method": name,
                    "optimizer": settings.optimizer,
                    "rho": method.radius(settings),
                    "adaptive": method.adaptive(settings),
                    "seed": seed,
                    "noise": settings.noise,
                    "epochs": settings.epochs,
                    **metrics,
                    "passes_per_step": passes_per_step(history, method),
                    "seconds": seconds,
                    "test_accuracy_per_epoch": curves[name][1],
                }
            )
        base_seconds = next((r["seconds"] for r in rows[-len(settings.methods):]
                             if r["method"] == "base"), None)  # fmt: skip
        for row in rows[-len(settings.methods):]:
            row["seconds_vs_base"] = None if base_seconds is None else row["seconds"] / base_seconds
        figure = _figure(curves, landscapes, settings, seed)
        figure.savefig(out / f"sam_vs_base_seed{seed}.png", dpi=120)
    print(format_table(rows, settings))
    print(f"\nFigures written to {out.resolve()}/")
    return rows


def _method_label(method: str, settings: DemoSettings) -> str:
    return _method(method).label(settings)


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
    for label, (compute, curve) in zip(labels, curves.values()):
        accuracy_axes.plot(compute, curve, label=label)
    accuracy_axes.set(
        xlabel="compute: forward/backward passes, in epochs of the base",
        ylabel="clean test accuracy",
        title="test accuracy at equal compute",
    )
    accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy_axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    accuracy_axes.grid(alpha=0.3)
    accuracy_axes.legend()
    diagnostics.plot_loss_landscape(list(landscapes.values()), labels=labels, ax=landscape_axes)
    landscape_axes.set(ylabel="training loss (noisy labels)", title="loss along a random direction")
    landscape_axes.grid(alpha=0.3)
    return figure


def format_table(rows: Sequence[dict], settings: DemoSettings) -> str:
    """The demo's results as a plain-text table, one line per run.

    `passes/step` is the forward/backward passes through the network per step
    of the base's schedule, counted, so runs of different methods compare at
    equal compute; `vs base` is the training time over the base's.
    """
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
        "passes/step",
        "train time",
        "vs base",
    )
    template = "{:>4}  {:<30}  {:>14}  {:>10}  {:>15}  {:>11}  {:>11}  {:>10}  {:>7}"
    lines = [header, "", template.format(*columns)]
    for row in rows:
        method = _method_label(row["method"], settings)
        relative = row.get("seconds_vs_base")
        lines.append(
            f"{row['seed']:>4}  {method:<30}  {row['test_accuracy']:>14.1%}  "
            f"{row['train_loss']:>10.3f}  {row['sharpness']:>15.2f}  "
            f"{row.get('first_order_sharpness', float('nan')):>11.4f}  "
            f"{row.get('passes_per_step', float('nan')):>11.2f}  {row['seconds']:>9.0f}s  "
            + (f"{relative:>6.2f}x" if relative is not None else f"{'':>7}")
        )
    lines.append(
        "(top Hessian eig: sharpness of the minimum. L(w+e)-L(w), rho 0.05: SAM's first-order"
        " measure, which grows with the gradient and is no flatness measure at the end)"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers the `demo` subcommand on an argparse subparsers object.

    Its options are the fields of `DemoSettings` and `DemoCommand`
    (`keras_sam.apps._options`), and `-q`.
    """
    parser = subparsers.add_parser(
        "demo",
        help="SAM vs its base optimizer on MNIST-1D with noisy labels",
        description=(
            "Trains a small 1D CNN on MNIST-1D (generated locally) with noisy "
            "training labels twice, from the same initial weights and batches: "
            "with the base optimizer and with SAM. Prints clean test accuracy, "
            "final training loss, sharpness (top Hessian eigenvalue), passes per "
            "step and training time, and writes a figure of test accuracy and the "
            "loss landscape."
        ),
    )
    options.add_arguments(parser, DemoSettings)
    options.add_arguments(parser, DemoCommand)
    parser.add_argument(
        "-q",
        "--quiet",
        dest="verbose",
        action="store_const",
        const=0,
        default=argparse.SUPPRESS,
        help="no progress bars (same as --verbose 0)",
    )
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The `DemoSettings` of parsed `demo` arguments (explicit > --quick > default)."""
    quick = QUICK if getattr(args, "quick", False) else {}
    return DemoSettings(**{**quick, **options.given(args, DemoSettings)})


def command_from_args(args: argparse.Namespace) -> DemoCommand:
    """The `DemoCommand` of parsed `demo` arguments."""
    return DemoCommand(**options.given(args, DemoCommand))


class _NotRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning.

    TensorFlow counts traces by the Python function traced, and Keras builds
    every model's train and test functions from the same one: the demo's
    models (one per method and seed), each traced once, read to it as one
    function retraced in a loop. (A filter on the standard `tensorflow`
    logger, so no TensorFlow import: other backends log nothing there.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def run(args: argparse.Namespace) -> int:
    """Runs `keras-sam demo` from parsed arguments; returns the exit code.

    A missing `[demo]` dependency and an output path that cannot be written
    are one line on stderr and exit status 2, before any training.
    """
    try:
        _extras.require("demo")
        settings = settings_from_args(args)
        command = command_from_args(args)
        if command.json:
            argtypes.writable_file("json", command.json)
        argtypes.make_directory("out", command.out)
        quiet = _NotRetracing()
        logging.getLogger("tensorflow").addFilter(quiet)
        try:
            rows = run_demo(settings, seeds=command.seeds, out=command.out)
        finally:
            logging.getLogger("tensorflow").removeFilter(quiet)
        if command.json:
            path = Path(command.json)
            path.write_text(json.dumps(rows, indent=2) + "\n")
            print(f"Table written to {path.resolve()}")
    except (InvalidArgumentError, _extras.MissingExtraError) as error:
        return fail("demo", error)
    except OSError as error:
        if error.filename is None:  # not about a path: a real failure
            raise
        return fail("demo", argtypes.os_problem(error))
    return 0
