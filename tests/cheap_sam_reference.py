"""Float64 NumPy references for the cheaper SAM modes: MSAM, RST and AE-SAM.

Written from the papers and the rules below, not from `keras_sam`: nothing
here imports Keras, TensorFlow or `keras_sam`, so a test comparing the library
with this module compares two implementations that share no code. The network
(Dense(h, tanh) → Dense(c), mean softmax cross-entropy on logits), SAM's
ascent and Keras's SGD come from `variant_reference`, which is equally
independent. A list of per-variable arrays is one vector throughout.

- MSAM (Becker et al., 2024): with v_0 = 0, step t takes its one gradient
  g_t at w_t − ρ·v_t/(‖v_t‖₂ + eps) (at w_t while ‖v_t‖ = 0), then
  v_{t+1} = μ·v_t + g_t, and the optimizer applies g_t at w_t.
- RST (Zhao et al., 2022): step t is a SAM step iff u_t < p(t), else the
  plain step; u_t = `uniform_draw(seed, t)`, a 32-bit integer hash:
  mix(x) = twice { x = ((x >> 16) ^ x)·0x45D9F3B }, then (x >> 16) ^ x, all
  mod 2**32; u = (mix(mix(seed) + t) >> 8)·2**-24.
- AE-SAM (Jiang et al., ICLR 2023): with s = ‖g‖² of the clean gradient,
  μ_t = δ·μ_{t−1} + (1−δ)·s, σ²_t = δ·σ²_{t−1} + (1−δ)·(s − μ_t)², from
  μ_0 = 0 and σ²_0 = 1e-10; a SAM step iff s >= μ_t + c_t·σ_t.

Under `MirroredStrategy` (`replicas` > 1) the global batch is cut into equal
contiguous shards; a replica's gradient is its share (its shard's mean-loss
gradient divided by the number of replicas) and the optimizer applies the
sum of the shares.

>>> [float(u) for u in uniform_draw(0, np.arange(3))][:1]
[0.0]
>>> bool(mix(np.uint64(1)) == mix(np.uint64(1 + 2**32)))
True
>>> linear(1.0, -1.0, 4)(2), linear(1.0, -1.0, 4)(9)
(0.0, -1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from variant_reference import SGD, mlp_loss_and_gradients, norm

__all__ = [
    "SGD",
    "Adam",
    "linear",
    "mix",
    "msam_train",
    "rst_train",
    "aesam_train",
    "shards",
    "uniform_draw",
]

Params = list[np.ndarray]
Gradient = Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]]
Schedule = Callable[[int], float]

MASK = 0xFFFFFFFF
MULTIPLIER = 0x45D9F3B


# ------------------------------------------------------------ the RST draw
def mix(x):
    """The 32-bit hash, elementwise, on unsigned integers (uint64 holds the products)."""
    x = np.asarray(x, np.uint64) & np.uint64(MASK)
    for _ in range(2):
        x = (((x >> np.uint64(16)) ^ x) * np.uint64(MULTIPLIER)) & np.uint64(MASK)
    return (x >> np.uint64(16)) ^ x


def uniform_draw(seed: int, step) -> np.ndarray:
    """u in [0, 1) for `seed` and each `step`: the top 24 bits of the hash (exact)."""
    mixed = mix((mix(np.uint64(seed)) + np.asarray(step, np.uint64)) & np.uint64(MASK))
    return (mixed >> np.uint64(8)).astype(np.float64) * 2.0**-24


def linear(start: float, end: float, steps: int) -> Schedule:
    """start + (end − start)·min(t/steps, 1)."""
    return lambda t: start + (end - start) * min(t / steps, 1.0)


def constant(value: float) -> Schedule:
    return lambda t: value


# ------------------------------------------------------------- optimizers
@dataclass
class Adam:
    """Keras 3 `Adam` (no amsgrad): m ← m + (g − m)(1 − β1), v ← v + (g² − v)(1 − β2),
    w ← w − lr·√(1 − β2^t)/(1 − β1^t) · m/(√v + ε)."""

    learning_rate: float
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    iterations: int = 0
    m: Params | None = field(default=None, repr=False)
    v: Params | None = field(default=None, repr=False)

    def apply(self, params: Params, gradients: Params) -> Params:
        if self.m is None:
            self.m = [np.zeros_like(g) for g in gradients]
            self.v = [np.zeros_like(g) for g in gradients]
        self.iterations += 1
        t = self.iterations
        self.m = [m + (g - m) * (1 - self.beta_1) for m, g in zip(self.m, gradients)]
        self.v = [v + (g * g - v) * (1 - self.beta_2) for v, g in zip(self.v, gradients)]
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        return [
            w - alpha * m / (np.sqrt(v) + self.epsilon) for w, m, v in zip(params, self.m, self.v)
        ]


# ---------------------------------------------------------------- helpers
def shards(x, y, replicas: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """MirroredStrategy's split of a global batch: equal contiguous pieces."""
    size = len(x) // replicas
    assert size * replicas == len(x), "the global batch must split evenly"
    return [(x[r * size:(r + 1) * size], y[r * size:(r + 1) * size]) for r in range(replicas)]


def _add(a: Params, b: Params, scale: float = 1.0) -> Params:
    return [u + scale * w for u, w in zip(a, b)]


def _zeros(params: Params) -> Params:
    return [np.zeros_like(w) for w in params]


def _float64(params: Sequence) -> Params:
    return [np.asarray(w, np.float64) for w in params]


def share_gradient(
    gradient: Gradient, params: Params, x, y, replicas: int
) -> tuple[float, Params]:
    """(loss, gradient) of one replica's shard, the gradient divided by `replicas`."""
    loss, g = gradient(params, x, y)
    return loss, [gi / replicas for gi in g]


# ------------------------------------------------------------------- MSAM
@dataclass
class MSAMRun:
    """Per step t (0-based): the weights after it, each replica's v after it,
    the decisions' offsets and the loss of its one pass (mean over shards)."""

    weights: list[Params] = field(default_factory=list)
    velocities: list[list[Params]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)


def msam_offset(v: Params, rho: float, eps: float = 1e-12) -> Params:
    """−ρ·v/(‖v‖₂ + eps); zero while ‖v‖ = 0."""
    size = norm(v)
    if size == 0.0:
        return _zeros(v)
    return [-rho * vi / (size + eps) for vi in v]


def msam_train(
    params: Sequence,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    optimizer,
    *,
    rho: float,
    momentum: float,
    eps: float = 1e-12,
    replicas: int = 1,
    sync: bool = False,
    gradient: Gradient = mlp_loss_and_gradients,
    convention: str = "spec",
) -> MSAMRun:
    """MSAM, one optimizer step per batch.

    With `replicas` > 1 each replica keeps the v of its own share (or, with
    `sync`, one v of the summed shares, the same on every replica).
    `convention` other than "spec" models a wrong rule, for tests that show
    the golden tests can tell it from the spec's: "ascent" (w + ρ·v/‖v‖),
    "unnormalized" (w − ρ·v), "stay" (the optimizer applies g at the
    perturbed point), "clean_velocity" (v accumulates the gradient at w).
    """
    params = _float64(params)
    keeps = 1 if sync else replicas
    velocities = [_zeros(params) for _ in range(keeps)]
    run = MSAMRun()
    for x, y in batches:
        total, loss_sum, new_velocities = _zeros(params), 0.0, []
        pieces = shards(x, y, replicas)
        offsets = [msam_offset(v, rho, eps) for v in velocities]
        if convention == "ascent":
            offsets = [[-o for o in offset] for offset in offsets]
        elif convention == "unnormalized":
            offsets = [[-rho * vi for vi in v] for v in velocities]
        shares = []
        for r, (xs, ys) in enumerate(pieces):
            offset = offsets[0 if sync else r]
            loss, g = share_gradient(gradient, _add(params, offset), xs, ys, replicas)
            shares.append(g)
            loss_sum += loss
            total = _add(total, g)
        if sync:
            clean = total
            if convention == "clean_velocity":
                clean = _zeros(params)
                for xs, ys in pieces:
                    clean = _add(clean, share_gradient(gradient, params, xs, ys, replicas)[1])
            new_velocities = [_add([momentum * vi for vi in velocities[0]], clean)]
        else:
            for r, (v, g) in enumerate(zip(velocities, shares)):
                if convention == "clean_velocity":
                    g = share_gradient(gradient, params, *pieces[r], replicas)[1]
                new_velocities.append(_add([momentum * vi for vi in v], g))
        velocities = new_velocities
        start = _add(params, offsets[0]) if convention == "stay" else params
        params = optimizer.apply(start, total)
        run.weights.append(params)
        run.velocities.append(velocities)
        run.losses.append(loss_sum / replicas)
        run.passes.append(1)
    return run


# ---------------------------------------------------- RST and AE-SAM steps
def sam_direction(
    params: Params, x, y, rho: float, *, eps: float = 1e-12, replicas: int = 1,
    sync: bool = False, gradient: Gradient = mlp_loss_and_gradients,
) -> Params:  # fmt: skip
    """The summed shares of SAM gradients: each replica climbs along its own
    share's ε̂ = ρ·g/(‖g‖ + eps) (with `sync`, along the summed shares')."""
    pieces = shards(x, y, replicas)
    clean = [share_gradient(gradient, params, xs, ys, replicas)[1] for xs, ys in pieces]
    if sync:
        summed = clean[0]
        for g in clean[1:]:
            summed = _add(summed, g)
        clean = [summed] * replicas
    total = _zeros(params)
    for g, (xs, ys) in zip(clean, pieces):
        e_hat = [rho * gi / (norm(g) + eps) for gi in g]
        total = _add(total, share_gradient(gradient, _add(params, e_hat), xs, ys, replicas)[1])
    return total


def plain_direction(params: Params, x, y, *, replicas: int = 1,
                    gradient: Gradient = mlp_loss_and_gradients) -> Params:
    total = _zeros(params)
    for xs, ys in shards(x, y, replicas):
        total = _add(total, share_gradient(gradient, params, xs, ys, replicas)[1])
    return total


@dataclass
class PolicyRun:
    """Per step t: the weights after it, whether it was a SAM step, its
    forward/backward passes per replica, and the decision's margin (how far
    the compared quantities were apart, relative: a decision with a tiny
    margin could flip under float32 rounding)."""

    weights: list[Params] = field(default_factory=list)
    sam_steps: list[bool] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)
    squared_norms: list[float] = field(default_factory=list)
    replica_statistics: list[tuple[float, float]] = field(default_factory=list)


def rst_train(
    params: Sequence,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    optimizer,
    *,
    rho: float,
    probability: float | Schedule,
    seed: int,
    start_step: int = 0,
    eps: float = 1e-12,
    replicas: int = 1,
    sync: bool = False,
    gradient: Gradient = mlp_loss_and_gradients,
) -> PolicyRun:
    """RST: SAM on the steps whose draw is below p(t), else plain.

    `start_step` is the optimizer's iteration count before the first batch.
    With `replicas` > 1 each replica climbs along its own share's ε̂ (with
    `sync`, along the summed shares').
    """
    schedule = probability if callable(probability) else constant(probability)
    params = _float64(params)
    run = PolicyRun()
    for t, (x, y) in enumerate(batches, start=start_step):
        u, p = float(uniform_draw(seed, t)), float(schedule(t))
        sam = u < p and rho > 0
        if sam:
            direction = sam_direction(params, x, y, rho, eps=eps, replicas=replicas,
                                      sync=sync, gradient=gradient)
        else:
            direction = plain_direction(params, x, y, replicas=replicas, gradient=gradient)
        params = optimizer.apply(params, direction)
        run.weights.append(params)
        run.sam_steps.append(sam)
        run.passes.append(2 if sam else 1)
        run.margins.append(abs(u - p))
    return run


def aesam_train(
    params: Sequence,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    optimizer,
    *,
    rho: float,
    decay: float,
    threshold: float | Schedule,
    eps: float = 1e-12,
    mean: float = 0.0,
    variance: float = 1e-10,
    start_step: int = 0,
    replicas: int = 1,
    sync: bool = False,
    gradient: Gradient = mlp_loss_and_gradients,
) -> PolicyRun:
    """AE-SAM, one optimizer step per batch.

    `mean`, `variance` and `start_step` are the state before the first batch.
    With `replicas` > 1 each replica keeps the statistics of its own share's
    s and a step is a SAM step on every replica if it is one on any (each
    replica climbing along its own share's ε̂); with `sync`, one set of
    statistics of the summed shares' s (the global batch's) and one ε̂. The
    run's `means`, `variances` and `squared_norms` are replica 0's (with
    `sync`, the global ones), `margins` the smallest over replicas, and
    `replica_statistics` each replica's final (μ, σ²).
    """
    schedule = threshold if callable(threshold) else constant(threshold)
    params = _float64(params)
    keeps = 1 if sync else replicas
    means, variances = [mean] * keeps, [variance] * keeps
    run = PolicyRun()
    for t, (x, y) in enumerate(batches, start=start_step):
        pieces = shards(x, y, replicas)
        clean = [share_gradient(gradient, params, xs, ys, replicas)[1] for xs, ys in pieces]
        if sync:
            summed = _zeros(params)
            for g in clean:
                summed = _add(summed, g)
            clean = [summed]
        votes, margins, squared = [], [], []
        for r, g in enumerate(clean):
            s = norm(g) ** 2
            means[r] = decay * means[r] + (1 - decay) * s
            variances[r] = decay * variances[r] + (1 - decay) * (s - means[r]) ** 2
            bar = means[r] + schedule(t) * np.sqrt(variances[r])
            votes.append(s >= bar)
            margins.append(abs(s - bar) / s)
            squared.append(s)
        sam = any(votes) and rho > 0
        if sam:
            direction = sam_direction(params, x, y, rho, eps=eps, replicas=replicas,
                                      sync=sync, gradient=gradient)
        else:
            direction = plain_direction(params, x, y, replicas=replicas, gradient=gradient)
        params = optimizer.apply(params, direction)
        run.weights.append(params)
        run.sam_steps.append(bool(sam))
        run.passes.append(2 if sam else 1)
        run.margins.append(min(margins))
        run.means.append(means[0])
        run.variances.append(variances[0])
        run.squared_norms.append(squared[0])
    run.replica_statistics = list(zip(means, variances))
    return run
