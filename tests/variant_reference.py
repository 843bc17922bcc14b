"""Float64 NumPy references for the ascent rules and the SAM variants.

Written from the papers and the issue text, not from `keras_sam`: nothing here
imports Keras, TensorFlow or `keras_sam`, so a test that compares the library
with this module compares two implementations that share no code.

Ascent rules (a list of per-variable gradients is one vector; `None` is zero):

- p-norm SAM (Foret et al., 2021): ε̂ = ρ·sign(g)·|g|^(q−1) / (‖g‖_q^q)^(1/p),
  1/p + 1/q = 1; ρ·g/‖g‖₂ for p = 2 and ρ·sign(g) for p = ∞.
- ASAM (Kwon et al., 2021): with T_w = |w| + η, ε̂ = T_w · dual_p(T_w · g),
  which for p = 2 is ρ·T_w²·g / ‖T_w·g‖₂.

Descent directions, from the clean gradient g at w and g_sam at w + ε̂:

- SAM: g_sam. m-sharpness: the batch is cut into contiguous pieces (the first
  n % k pieces one row longer), each with its own ε̂, and the pieces' descent
  directions are averaged with weights size / n.
- GSAM (Zhuang et al., 2022): g_sam − α·g_⊥, g_⊥ the part of g orthogonal to
  g_sam.
- LookSAM (Liu et al., 2022): on steps 0, k, 2k, … SAM, storing g_v, the part of
  g_sam orthogonal to g; other steps g + α·(‖g‖/‖g_v‖)·g_v at the current w.

The network is Dense(h, tanh) → Dense(c) with softmax cross-entropy on logits
(Keras's "sum_over_batch_size": the mean over the batch), parameters in Keras's
`trainable_variables` order [W1, b1, W2, b2]. `normalized_mlp` builds
Dense(h) → LayerNormalization or BatchNormalization (training mode: the batch's
statistics) → tanh → Dense(c), parameters [W1, (b1), γ, β, W2, b2].

>>> import numpy as np
>>> [e.tolist() for e in perturbation([np.array([3.0, 4.0]), None], [0, 0], rho=0.5)[:1]]
[[0.3, 0.4]]
>>> perturbation([np.array([3.0, -4.0])], [0], rho=0.5, p=np.inf)[0].tolist()
[0.5, -0.5]
>>> split_sizes(10, 3)
[4, 3, 3]
>>> [e.tolist() for e in perturbation([np.array([3.0]), np.array([4.0])], [0, 0], rho=1.0,
...                                   chosen=[False, True])]
[[0.0], [1.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

Params = list[np.ndarray]
#: (params, x, y) → (loss, gradient of every param)
Gradient = Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]]


# ------------------------------------------------------------- ascent rules
def dual_direction(gradients: Sequence[np.ndarray], rho: float, p: float) -> Params:
    """ρ·sign(g)·|g|^(q−1) / (‖g‖_q^q)^(1/p) over all arrays together (float64).

    Zero where g is zero or any entry is not finite.
    """
    gradients = [np.asarray(g, np.float64) for g in gradients]
    if not all(np.isfinite(g).all() for g in gradients):
        return [np.zeros_like(g) for g in gradients]
    if np.isinf(p):
        return [rho * np.sign(g) for g in gradients]
    q = p / (p - 1.0)
    # Rescaling g by its largest entry leaves ε̂ unchanged (degree 0) and keeps
    # |g|^q within float64 range.
    largest = max(float(np.abs(g).max(initial=0.0)) for g in gradients)
    if largest == 0.0:
        return [np.zeros_like(g) for g in gradients]
    unit = [g / largest for g in gradients]
    sum_q = sum(float((np.abs(u) ** q).sum()) for u in unit)
    denominator = sum_q ** (1.0 / p)
    return [rho * np.sign(u) * np.abs(u) ** (q - 1.0) / denominator for u in unit]


def perturbation(
    gradients: Sequence[np.ndarray | None],
    weights: Sequence,
    rho: float,
    *,
    p: float = 2.0,
    adaptive: bool = False,
    eta: float = 0.01,
    chosen: Sequence[bool] | None = None,
) -> list[np.ndarray | None]:
    """ε̂ per variable (None where the gradient is None), SAM or ASAM.

    With `chosen` (SAM-ON), only the chosen variables take part: the norm is
    theirs, and every other variable's ε̂ is zero.
    """
    if chosen is not None:
        unchosen = [
            None if g is None else np.zeros_like(np.asarray(g, np.float64))
            for g, keep in zip(gradients, chosen)
        ]
        if not any(keep and g is not None for g, keep in zip(gradients, chosen)):
            return unchosen
        picked = perturbation(
            [g if keep else None for g, keep in zip(gradients, chosen)],
            weights, rho, p=p, adaptive=adaptive, eta=eta,
        )
        return [e if keep else z for e, z, keep in zip(picked, unchosen, chosen)]
    present = [i for i, g in enumerate(gradients) if g is not None]
    result: list[np.ndarray | None] = [None] * len(gradients)
    grads = [np.asarray(gradients[i], np.float64) for i in present]
    if adaptive:
        scales = [np.abs(np.asarray(weights[i], np.float64)) + eta for i in present]
        directions = dual_direction([t * g for t, g in zip(scales, grads)], rho, p)
        directions = [t * d for t, d in zip(scales, directions)]
    else:
        directions = dual_direction(grads, rho, p)
    for i, d in zip(present, directions):
        result[i] = d
    return result


def p_norm(arrays: Sequence[np.ndarray | None], p: float) -> float:
    """‖x‖_p of the concatenation of `arrays` (None skipped)."""
    flat = np.concatenate(
        [np.ravel(np.asarray(a, np.float64)) for a in arrays if a is not None]
    )
    return float(np.linalg.norm(flat, ord=p))


# ------------------------------------------------------------ vector helpers
def dot(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def norm(a: Sequence[np.ndarray]) -> float:
    return float(np.sqrt(dot(a, a)))


def orthogonal_part(u: Sequence[np.ndarray], v: Sequence[np.ndarray]) -> Params:
    """u − (u·v/‖v‖²)·v: the part of u orthogonal to v."""
    coefficient = dot(u, v) / dot(v, v)
    return [x - coefficient * y for x, y in zip(u, v)]


def split_sizes(rows: int, pieces: int) -> list[int]:
    """Contiguous piece sizes; the first rows % pieces pieces get one extra row."""
    return [rows // pieces + (1 if i < rows % pieces else 0) for i in range(pieces)]


# ------------------------------------------------------------------ network
def mlp_loss_and_gradients(params: Params, x, y) -> tuple[float, Params]:
    """Mean softmax cross-entropy of Dense(tanh) → Dense(logits) and its gradient."""
    w1, b1, w2, b2 = (np.asarray(t, np.float64) for t in params)
    x = np.asarray(x, np.float64)
    labels = np.asarray(y).reshape(-1).astype(int)
    hidden = np.tanh(x @ w1 + b1)
    logits = hidden @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = float(-log_probs[rows, labels].mean())
    d_logits = np.exp(log_probs)
    d_logits[rows, labels] -= 1.0
    d_logits /= len(labels)
    d_pre = (d_logits @ w2.T) * (1.0 - hidden**2)
    return loss, [x.T @ d_pre, d_pre.sum(0), hidden.T @ d_logits, d_logits.sum(0)]


def normalized_mlp(norm: str, *, epsilon: float = 1e-3, first_bias: bool = True) -> Gradient:
    """Mean softmax cross-entropy of Dense(h) → norm → tanh → Dense(logits).

    `norm` is "layer" (LayerNormalization over the features of each row) or
    "batch" (BatchNormalization in training mode: each feature normalized by
    the batch's mean and biased variance). Both compute
    γ·(a − μ)/√(σ² + epsilon) + β. Params [W1, b1, γ, β, W2, b2], without b1
    when `first_bias` is False. Returns the gradient function `train` takes.
    """
    if norm not in ("layer", "batch"):
        raise ValueError(norm)
    axis = 1 if norm == "layer" else 0

    def loss_and_gradients(params: Params, x, y) -> tuple[float, Params]:
        params = [np.asarray(t, np.float64) for t in params]
        if first_bias:
            w1, b1, gamma, beta, w2, b2 = params
        else:
            (w1, gamma, beta, w2, b2), b1 = params, 0.0
        x = np.asarray(x, np.float64)
        labels = np.asarray(y).reshape(-1).astype(int)
        pre = x @ w1 + b1
        mean = pre.mean(axis=axis, keepdims=True)
        inverse = 1.0 / np.sqrt(pre.var(axis=axis, keepdims=True) + epsilon)
        normalized = (pre - mean) * inverse
        hidden = np.tanh(gamma * normalized + beta)
        logits = hidden @ w2 + b2
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(labels))
        loss = float(-log_probs[rows, labels].mean())
        d_logits = np.exp(log_probs)
        d_logits[rows, labels] -= 1.0
        d_logits /= len(labels)
        d_out = (d_logits @ w2.T) * (1.0 - hidden**2)  # into γ·n + β
        d_normalized = d_out * gamma
        # Through n = (a − μ)·(σ² + ε)^(−1/2), μ and σ² over `axis`.
        d_pre = inverse * (
            d_normalized
            - d_normalized.mean(axis=axis, keepdims=True)
            - normalized * (d_normalized * normalized).mean(axis=axis, keepdims=True)
        )
        gradients = [x.T @ d_pre]
        if first_bias:
            gradients.append(d_pre.sum(0))
        gradients += [
            (d_out * normalized).sum(0),
            d_out.sum(0),
            hidden.T @ d_logits,
            d_logits.sum(0),
        ]
        return loss, gradients

    return loss_and_gradients


# ---------------------------------------------------------------- optimizer
@dataclass
class SGD:
    """Keras 3 `SGD` without nesterov: m ← μ·m − lr·g; w ← w + m (w − lr·g if μ = 0)."""

    learning_rate: float
    momentum: float = 0.0
    velocities: Params | None = field(default=None, repr=False)

    def apply(self, params: Params, gradients: Params) -> Params:
        if self.momentum == 0.0:
            return [w - self.learning_rate * g for w, g in zip(params, gradients)]
        if self.velocities is None:
            self.velocities = [np.zeros_like(g) for g in gradients]
        self.velocities = [
            self.momentum * m - self.learning_rate * g
            for m, g in zip(self.velocities, gradients)
        ]
        return [w + m for w, m in zip(params, self.velocities)]


# ----------------------------------------------------------------- variants
@dataclass
class Variant:
    """One SAM variant's settings; `name` is "sgd", "sam", "gsam", "looksam" or
    "fsam" (Friendly SAM). `chosen` (SAM-ON): whether the ascent moves each
    variable (None: all)."""

    name: str = "sam"
    rho: float = 0.05
    p: float = 2.0
    adaptive: bool = False
    eta: float = 0.01
    num_batch_splits: int = 1
    alpha: float = 0.0
    k: int = 1
    sigma: float = 1.0
    lmbda: float = 0.9
    chosen: Sequence[bool] | None = None


@dataclass
class LookSAMState:
    """A variant's state between steps (LookSAM's g_v, F-SAM's m)."""

    step: int = 0
    reused_direction: Params | None = None  # g_v (LookSAM)
    average: Params | None = None  # m (Friendly SAM)


VariantState = LookSAMState


def sam_pair(variant: Variant, params: Params, x, y, gradient: Gradient) -> tuple[Params, Params]:
    """(g at w, g_sam at w + ε̂) on one batch."""
    _, g = gradient(params, x, y)
    return g, perturbed_gradient(variant, params, x, y, g, gradient)


def perturbed_gradient(variant: Variant, params: Params, x, y, direction, gradient) -> Params:
    """g_sam: the gradient at w + ε̂, ε̂ the variant's ascent along `direction`."""
    e_hat = perturbation(
        direction, params, variant.rho, p=variant.p, adaptive=variant.adaptive,
        eta=variant.eta, chosen=variant.chosen,
    )
    return gradient([w + e for w, e in zip(params, e_hat)], x, y)[1]


def friendly_ascent_direction(variant: Variant, g: Params, state: VariantState) -> Params:
    """F-SAM's d (d = g on the first step, else g − σ·m), and m moves (advances `state`)."""
    if state.step == 0:
        direction, average = g, g
    else:
        direction = [a - variant.sigma * m for a, m in zip(g, state.average)]
        average = [variant.lmbda * m + (1.0 - variant.lmbda) * a
                   for m, a in zip(state.average, g)]
    state.average = [np.array(m, np.float64) for m in average]
    state.step += 1
    return direction


def descent_direction(
    variant: Variant,
    params: Params,
    x,
    y,
    state: LookSAMState,
    gradient: Gradient = mlp_loss_and_gradients,
    *,
    split: Callable[[int, int], list[int]] = split_sizes,
    equal_weights: bool = False,
) -> Params:
    """The gradient the optimizer applies this step (advances LookSAM's `state`).

    `split` and `equal_weights` model m-sharpness conventions other than the
    spec's (for tests that show the spec's convention is what is checked).
    """
    if variant.name == "sgd":
        return gradient(params, x, y)[1]
    if variant.name == "fsam":
        if variant.num_batch_splits != 1:
            raise ValueError("F-SAM's m moves once per step: num_batch_splits must be 1")
        _, g = gradient(params, x, y)
        direction = friendly_ascent_direction(variant, g, state)
        return perturbed_gradient(variant, params, x, y, direction, gradient)
    if variant.name == "looksam":
        if state.step % variant.k == 0:
            g, g_sam = sam_pair(variant, params, x, y, gradient)
            state.reused_direction = orthogonal_part(g_sam, g)
            direction = g_sam
        else:
            _, g = gradient(params, x, y)
            g_v = state.reused_direction
            scale = variant.alpha * norm(g) / norm(g_v)
            direction = [a + scale * b for a, b in zip(g, g_v)]
        state.step += 1
        return direction
    total = [np.zeros_like(np.asarray(w, np.float64)) for w in params]
    start = 0
    sizes = split(len(x), variant.num_batch_splits)
    for size in sizes:
        piece = slice(start, start + size)
        start += size
        g, g_sam = sam_pair(variant, params, x[piece], y[piece], gradient)
        if variant.name == "gsam":
            g_sam = [s - variant.alpha * o for s, o in zip(g_sam, orthogonal_part(g, g_sam))]
        weight = 1.0 / len(sizes) if equal_weights else size / len(x)
        total = [t + weight * s for t, s in zip(total, g_sam)]
    return total


def train(
    variant: Variant,
    params: Sequence[np.ndarray],
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    optimizer: SGD,
    *,
    state: VariantState | Sequence[VariantState] | None = None,
    gradient: Gradient = mlp_loss_and_gradients,
    rho_at: Callable[[int], float] | None = None,
    replicas: int = 1,
    **conventions,
) -> Params:
    """Weights after one optimizer step per batch, in order, starting from `params`.

    `rho_at(step)` gives ρ of each step (a schedule; step 0 is the first), else
    `variant.rho`. With `replicas` > 1 (data parallelism, each replica's own
    ε̂): each batch is cut into `replicas` contiguous equal shards, each
    replica takes the variant's direction on its shard with its own state
    (`state`, then one `VariantState` per replica, which the caller may read
    afterwards), and the optimizer applies the replicas' mean.
    `conventions` go to `descent_direction`.
    """
    params = [np.asarray(w, np.float64) for w in params]
    if state is None:
        states = [VariantState() for _ in range(replicas)]
    elif isinstance(state, VariantState):
        states = [state]
    else:
        states = list(state)
    if len(states) != replicas:
        raise ValueError(f"{len(states)} states for {replicas} replicas")
    for step, (x, y) in enumerate(batches):
        stepped = variant if rho_at is None else replace(variant, rho=float(rho_at(step)))
        size = len(x) // replicas
        if size * replicas != len(x):
            raise ValueError(f"a batch of {len(x)} rows does not split into {replicas} shards")
        directions = [
            descent_direction(
                stepped, params, x[r * size:(r + 1) * size], y[r * size:(r + 1) * size],
                states[r], gradient, **conventions,
            )
            for r in range(replicas)
        ]
        direction = [np.mean(d, axis=0) for d in zip(*directions)]
        params = optimizer.apply(params, direction)
    return params
