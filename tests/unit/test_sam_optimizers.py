"""Every built-in Keras optimizer inside `SAMModel`, against an eager SAM.

The reference is the textbook SAM step written out eagerly on a second copy of
the same model (its gradients by `tf.GradientTape` or `jax.value_and_grad`):
gradient 1 at w, ε̂ = ρ·g / (‖g‖₂ + eps), assign w + ε̂, gradient 2,
restore w from a saved copy, then `optimizer.apply(sam_gradient)` on a fresh
optimizer of the same configuration. Agreement after 3 steps shows that
`SAMModel` hands the optimizer the SAM gradient once per step through its
ordinary `apply`, so that clipping, weight decay and EMA act on it exactly as in
plain Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, numpy, value_and_gradients
from keras import ops, optimizers

from keras_sam import SAMModel

RHO, BATCH, SAMPLES = 0.2, 4, 12  # 3 steps
RTOL, ATOL = 1e-6, 1e-7
FAR = 1e-3  # how far a wrong run must be for a comparison to mean anything

_rng = np.random.default_rng(21)
X = _rng.normal(size=(SAMPLES, 3)).astype("float32")
Y = _rng.normal(size=(SAMPLES, 2)).astype("float32")
INITIAL = [
    (0.5 * _rng.normal(size=shape)).astype("float32") for shape in [(3, 4), (4,), (4, 2), (2,)]
]


def build_base() -> keras.Model:
    """Dense-tanh-Dense with the weights INITIAL (layer names for MultiOptimizer)."""
    base = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    base.set_weights(INITIAL)
    return base


def multi_optimizer():
    """SGD with momentum for the hidden layer, Adam for the head."""
    hidden, head = optimizers.SGD(0.1, momentum=0.5), optimizers.Adam(0.05)
    return optimizers.MultiOptimizer(lambda variable: hidden if "hidden" in variable.path else head)


OPTIMIZERS = {
    "SGD-momentum": lambda: optimizers.SGD(0.1, momentum=0.9),
    "SGD-nesterov": lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "Adam": lambda: optimizers.Adam(0.05),
    "AdamW": lambda: optimizers.AdamW(0.05, weight_decay=0.1),
    "Lion": lambda: optimizers.Lion(0.01),
    "RMSprop": lambda: optimizers.RMSprop(0.01, momentum=0.5),
    "Adagrad": lambda: optimizers.Adagrad(0.1),
    "Adamax": lambda: optimizers.Adamax(0.05),
    "Nadam": lambda: optimizers.Nadam(0.05),
    "Adafactor": lambda: optimizers.Adafactor(0.1),
    "Muon": lambda: optimizers.Muon(0.05),
    "Adadelta": lambda: optimizers.Adadelta(1.0),
    "Ftrl": lambda: optimizers.Ftrl(0.1, l1_regularization_strength=0.01),
    "Lamb": lambda: optimizers.Lamb(0.05),
    "ScheduleFreeAdamW": lambda: optimizers.ScheduleFreeAdamW(0.05),
    "MultiOptimizer": multi_optimizer,
}

# Every built-in optimizer of the installed Keras (the declared range starts at
# 3.10, which has neither ScheduleFreeAdamW nor MultiOptimizer).
for _name in ("Lamb", "Muon", "ScheduleFreeAdamW", "MultiOptimizer"):
    if not hasattr(optimizers, _name):
        del OPTIMIZERS[_name]
# Keras 3.10's Muon cannot train a plain Keras model on TensorFlow either
# (`'ResourceVariable' object has no attribute 'path'` in its `build`).
if ON_TENSORFLOW and keras.__version__.startswith("3.10."):
    OPTIMIZERS.pop("Muon", None)

# ScheduleFreeAdamW.build() copies the weights into its `momentum` slots. When
# it is built inside the traced train function, as plain Keras `fit` builds it
# too, that copy is lost: the momentum starts at zero and the first step moves
# the weights to about zero. Plain Keras `fit` then disagrees with the same
# optimizer applied eagerly (a Keras 3.15 bug, not SAM's); building the
# optimizer before `fit` avoids it.
BUILD_BEFORE_FIT = {"ScheduleFreeAdamW"}

OPTIONS = {
    # name: (optimizer with the option, the same optimizer without it)
    "clipnorm": (lambda: optimizers.SGD(0.1, clipnorm=0.05), lambda: optimizers.SGD(0.1)),
    "global_clipnorm": (
        lambda: optimizers.Adam(0.05, global_clipnorm=0.05),
        lambda: optimizers.Adam(0.05),
    ),
    "clipvalue": (lambda: optimizers.SGD(0.1, clipvalue=0.02), lambda: optimizers.SGD(0.1)),
    "weight_decay": (lambda: optimizers.SGD(0.1, weight_decay=0.5), lambda: optimizers.SGD(0.1)),
    "use_ema": (
        lambda: optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2),
        lambda: optimizers.Adam(0.05),
    ),
}


# Each SAM model trains with Keras's default compilation on TensorFlow (a
# graph on the CPU). On JAX the default is XLA, one compilation of the step
# per optimizer; every optimizer and option trains there without `jax.jit`
# (its `stateless_apply` is the same code in the compiled step), and those
# whose update is least like SGD's with XLA too. (XLA with SGD, momentum,
# Nesterov and Adam against NumPy: test_sam_golden, test_variants.)
JAX_XLA = {"Adam", "Muon", "Adafactor", "ScheduleFreeAdamW", "MultiOptimizer", "use_ema"}


def _compile_modes(names) -> list:
    """`(name, jit_compile)` cases: Keras's default on TensorFlow; on JAX
    without jit, and with it for the names in JAX_XLA."""
    if ON_TENSORFLOW:
        return [pytest.param(name, "auto", id=name) for name in names]
    return [pytest.param(name, False, id=f"{name}-eager") for name in names] + [
        pytest.param(name, True, id=f"{name}-xla") for name in names if name in JAX_XLA
    ]


def fit_sam(
    make_optimizer, build_first: bool = False, jit_compile="auto", **options
) -> list[np.ndarray]:
    base = build_base()
    model = SAMModel(base, rho=RHO, **options)
    model.compile(optimizer=make_optimizer(), loss="mse", jit_compile=jit_compile)
    if build_first:
        model.optimizer.build(model.trainable_variables)
    model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return [np.array(v.numpy()) for v in base.trainable_variables]


@dataclass
class EagerRun:
    weights: list[np.ndarray]
    gradient_change: float  # max over steps of max|g(w+ε̂) - g(w)| / max|g(w)|


def eager_sam(make_optimizer, rho: float = RHO, eps: float = 1e-12) -> EagerRun:
    """The SAM step written out by hand, eagerly, on a copy of the model."""
    base, optimizer = build_base(), make_optimizer()
    variables = base.trainable_variables
    loss_fn = keras.losses.MeanSquaredError()

    def gradient(x, y):
        return value_and_gradients(lambda: loss_fn(y, base(x, training=True)), variables)[1]

    change = 0.0
    for start in range(0, SAMPLES, BATCH):
        x, y = X[start : start + BATCH], Y[start : start + BATCH]
        clean = gradient(x, y)
        norm = ops.sqrt(sum(ops.sum(ops.square(g)) for g in clean))
        saved = [ops.copy(v.value) for v in variables]  # a copy, not an alias
        for v, g in zip(variables, clean):
            v.assign_add(rho * g / (norm + eps))
        sam = gradient(x, y)
        for v, w in zip(variables, saved):
            v.assign(w)
        optimizer.apply(sam, variables)
        scale = max(float(np.max(np.abs(numpy(g)))) for g in clean)
        change = max(
            change,
            max(float(np.max(np.abs(numpy(s) - numpy(g)))) / scale for s, g in zip(sam, clean)),
        )
    optimizer.finalize_variable_values(variables)  # as fit does at the end (EMA)
    return EagerRun([np.array(v.numpy()) for v in variables], change)


def assert_weights_close(actual, desired):
    for i, (a, d) in enumerate(zip(actual, desired, strict=True)):
        np.testing.assert_allclose(a, d, rtol=RTOL, atol=ATOL, err_msg=f"variable {i}")


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("name", "jit_compile"), _compile_modes(OPTIMIZERS))
def test_sam_model_matches_eager_sam_with_every_builtin_optimizer(name, jit_compile):
    make_optimizer = OPTIMIZERS[name]
    expected = eager_sam(make_optimizer)
    actual = fit_sam(make_optimizer, build_first=name in BUILD_BEFORE_FIT, jit_compile=jit_compile)
    assert_weights_close(actual, expected.weights)
    # The reference is SAM: its gradients at w + ε̂ are not the clean ones.
    # (test_sam_golden shows against NumPy that SAMModel is not a plain step.)
    assert expected.gradient_change > FAR


@pytest.mark.parametrize(("name", "jit_compile"), _compile_modes(OPTIONS))
def test_optimizer_options_act_on_the_sam_gradient(name, jit_compile):
    with_option, without_option = OPTIONS[name]
    expected = eager_sam(with_option)
    assert_weights_close(fit_sam(with_option, jit_compile=jit_compile), expected.weights)
    # The option changes the result: a clip threshold binds, decay/EMA act.
    assert max_difference(eager_sam(without_option).weights, expected.weights) > FAR


def test_an_optimizers_loss_scale_factor_leaves_the_ascent_unchanged():
    """`loss_scale_factor` scales the loss and so both gradients; ε̂ is taken
    from the unscaled one, so `eps` keeps its meaning (it is large here)."""
    eps = 0.5
    expected = eager_sam(lambda: optimizers.SGD(0.1), eps=eps)
    scaled = fit_sam(lambda: optimizers.SGD(0.1, loss_scale_factor=1024.0), eps=eps)
    assert_weights_close(scaled, expected.weights)
    assert max_difference(eager_sam(lambda: optimizers.SGD(0.1)).weights, expected.weights) > FAR
