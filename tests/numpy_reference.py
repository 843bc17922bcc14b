"""An independent float64 NumPy implementation of SAM, for golden tests.

Nothing here imports Keras or TensorFlow: forward passes, losses and their
gradients are derived by hand, so a test that compares `SAMModel` with this
module compares two implementations that share no code.

A *network* is a pair of functions over a list of parameter arrays, in the
order of Keras's `trainable_variables` (kernel, bias, kernel, bias, ...):

- `forward(params, x) -> (outputs, cache)`
- `backward(params, cache, d_outputs) -> gradients`

An *objective* combines a network with a loss (Keras's "sum over batch size"
reduction: sum of the sample-weighted per-sample losses divided by the batch
size) and an optional L2 penalty on kernels; it maps `(params, batch)` to
`(loss, gradients)`. `sam_step` and `train` implement the SAM algorithm over any
objective:

1. loss L(w) and gradient g at w;
2. ε̂ = ρ·g / (‖g‖₂ + eps), the norm over all parameters together; ε̂ = 0 when
   ‖g‖ is not finite;
3. loss L(w + ε̂) and the SAM gradient at w + ε̂;
4. the optimizer applies the SAM gradient to w.

Example:

>>> import numpy as np
>>> net = linear()
>>> objective = make_objective(net, mean_squared_error)
>>> w = [np.ones((2, 1)), np.zeros(1)]
>>> batch = (np.array([[1.0, 0.0]]), np.array([[0.0]]), None)
>>> step = sam_step(objective, w, batch, rho=0.1)
>>> round(step.loss, 6), round(step.perturbed_loss, 6)
(1.0, 1.302843)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Params = list[np.ndarray]
Batch = tuple  # (x, y, sample_weight or None)


# ---------------------------------------------------------------- networks
@dataclass(frozen=True)
class Network:
    """A differentiable function of a parameter list (see module docstring)."""

    forward: Callable
    backward: Callable


def linear() -> Network:
    """outputs = x @ W + b; params [W, b]."""

    def forward(params, x):
        kernel, bias = params
        return x @ kernel + bias, x

    def backward(params, x, d_outputs):
        return [x.T @ d_outputs, d_outputs.sum(axis=0)]

    return Network(forward, backward)


_ACTIVATIONS = {
    # name: (function, derivative written in terms of the pre-activation)
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype)),
}


def mlp(activation: str = "tanh") -> Network:
    """outputs = act(x @ W1 + b1) @ W2 + b2; params [W1, b1, W2, b2]."""
    act, act_derivative = _ACTIVATIONS[activation]

    def forward(params, x):
        w1, b1, w2, b2 = params
        pre = x @ w1 + b1
        hidden = act(pre)
        return hidden @ w2 + b2, (x, pre, hidden)

    def backward(params, cache, d_outputs):
        _, _, w2, _ = params
        x, pre, hidden = cache
        d_pre = (d_outputs @ w2.T) * act_derivative(pre)
        return [x.T @ d_pre, d_pre.sum(axis=0), hidden.T @ d_outputs, d_outputs.sum(axis=0)]

    return Network(forward, backward)


# ------------------------------------------------------------------ losses
# Each loss returns (per-sample losses, d per-sample loss / d outputs).
def mean_squared_error(outputs, targets):
    """Keras "mse": mean over the last axis of (outputs - targets)²."""
    diff = outputs - targets
    return (diff**2).mean(axis=-1), 2.0 * diff / diff.shape[-1]


def softmax_cross_entropy(logits, labels):
    """Keras `SparseCategoricalCrossentropy(from_logits=True)`; integer labels."""
    labels = np.asarray(labels).reshape(-1).astype(int)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = np.arange(len(labels))
    one_hot = np.zeros_like(logits)
    one_hot[rows, labels] = 1.0
    return -log_probs[rows, labels], np.exp(log_probs) - one_hot


def make_objective(
    network: Network,
    loss: Callable,
    *,
    l2: float = 0.0,
    l2_params: Sequence[int] = (),
) -> Callable:
    """(params, (x, y, sample_weight)) -> (loss, gradients), in float64.

    The data loss is Keras's "sum_over_batch_size" reduction; `l2` adds
    `l2 * sum(W**2)` for each parameter index in `l2_params` (Keras's
    `regularizers.L2(l2)` on those kernels).
    """

    def objective(params, batch):
        x, y, sample_weight = batch
        params = [np.asarray(p, np.float64) for p in params]
        outputs, cache = network.forward(params, np.asarray(x, np.float64))
        per_sample, d_per_sample = loss(outputs, np.asarray(y, np.float64))
        weights = (
            np.ones(len(per_sample))
            if sample_weight is None
            else np.asarray(sample_weight, np.float64).reshape(-1)
        )
        size = len(per_sample)
        value = float((weights * per_sample).sum() / size)
        d_outputs = d_per_sample * (weights / size)[:, None]
        gradients = network.backward(params, cache, d_outputs)
        for i in l2_params:
            value += l2 * float((params[i] ** 2).sum())
            gradients[i] = gradients[i] + 2.0 * l2 * params[i]
        return value, gradients

    return objective


# --------------------------------------------------------------------- SAM
def ascent(gradients: Params, rho: float, eps: float = 1e-12) -> Params:
    """ε̂ = ρ·g / (‖g‖₂ + eps) over all parameters together; 0 if ‖g‖ is not finite."""
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in gradients))
    if not np.isfinite(norm):
        return [np.zeros_like(g, np.float64) for g in gradients]
    return [rho * g / (norm + eps) for g in gradients]


@dataclass
class SAMStep:
    """What one SAM step computes."""

    loss: float  # L(w), what Keras logs as `loss`
    perturbed_loss: float  # L(w + ε̂)
    gradients: Params  # g at w
    e_hat: Params  # ε̂
    sam_gradients: Params  # the gradient at w + ε̂, handed to the optimizer

    @property
    def sharpness(self) -> float:
        return self.perturbed_loss - self.loss


def sam_step(
    objective: Callable,
    params: Params,
    batch: Batch,
    rho: float,
    *,
    eps: float = 1e-12,
    perturbed_objective: Callable | None = None,
) -> SAMStep:
    """One SAM gradient computation (no update). `perturbed_objective`, if given,
    replaces `objective` in the pass at w + ε̂ (to model a wrong implementation)."""
    loss, gradients = objective(params, batch)
    e_hat = ascent(gradients, rho, eps)
    perturbed = [np.asarray(p, np.float64) + e for p, e in zip(params, e_hat)]
    perturbed_loss, sam_gradients = (perturbed_objective or objective)(perturbed, batch)
    return SAMStep(loss, perturbed_loss, gradients, e_hat, sam_gradients)


# -------------------------------------------------------------- optimizers
@dataclass
class SGD:
    """Keras 3 `SGD`: m = μ·m − lr·g; w += m (nesterov: w += μ·m − lr·g)."""

    learning_rate: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    _velocities: Params | None = field(default=None, repr=False)

    def apply(self, params: Params, gradients: Params) -> Params:
        if self.momentum == 0.0:
            return [p - self.learning_rate * g for p, g in zip(params, gradients)]
        if self._velocities is None:
            self._velocities = [np.zeros_like(g) for g in gradients]
        new_params = []
        for i, (p, g) in enumerate(zip(params, gradients)):
            m = self.momentum * self._velocities[i] - self.learning_rate * g
            self._velocities[i] = m
            step = self.momentum * m - self.learning_rate * g if self.nesterov else m
            new_params.append(p + step)
        return new_params


@dataclass
class Adam:
    """Keras 3 `Adam` (no amsgrad): bias correction folded into the step size."""

    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    _state: tuple | None = field(default=None, repr=False)

    def apply(self, params: Params, gradients: Params) -> Params:
        if self._state is None:
            zeros = [np.zeros_like(g) for g in gradients]
            self._state = (0, zeros, [z.copy() for z in zeros])
        t, ms, vs = self._state
        t += 1
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        ms = [m + (g - m) * (1 - self.beta_1) for m, g in zip(ms, gradients)]
        vs = [v + (g**2 - v) * (1 - self.beta_2) for v, g in zip(vs, gradients)]
        self._state = (t, ms, vs)
        return [p - alpha * m / (np.sqrt(v) + self.epsilon) for p, m, v in zip(params, ms, vs)]


# ---------------------------------------------------------------- training
@dataclass
class History:
    """Parameters after every step, and the per-step losses."""

    params: list[Params]  # params[0] is the start, params[k] after step k
    losses: list[float]
    sharpness: list[float]


def train(
    objective: Callable,
    params: Params,
    batches: Sequence[Batch],
    optimizer,
    rho: float | Callable[[int], float],
    *,
    eps: float = 1e-12,
    perturbed_objective: Callable | None = None,
) -> History:
    """SAM over `batches` in order. `rho` may be a function of the step index
    (the optimizer's iteration count before the step, as Keras schedules see it).
    """
    current = [np.asarray(p, np.float64) for p in params]
    history = History([current], [], [])
    for iteration, batch in enumerate(batches):
        radius = rho(iteration) if callable(rho) else rho
        step = sam_step(
            objective, current, batch, radius, eps=eps, perturbed_objective=perturbed_objective
        )
        current = optimizer.apply(current, step.sam_gradients)
        history.params.append(current)
        history.losses.append(step.loss)
        history.sharpness.append(step.sharpness)
    return history


def train_plain(
    objective: Callable, params: Params, batches: Sequence[Batch], optimizer
) -> History:
    """Plain gradient descent (the step SAM must differ from)."""
    return train(objective, params, batches, optimizer, rho=0.0)


def batches_of(x, y, batch_size: int, sample_weight=None) -> list[Batch]:
    """Contiguous batches in order, as `fit(shuffle=False)` yields them."""
    out = []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        out.append((x[rows], y[rows], None if sample_weight is None else sample_weight[rows]))
    return out
