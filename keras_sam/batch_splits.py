"""m-sharpness: SAM on contiguous pieces of the batch, each with its own ε̂.

The SAM paper's m-sharpness cuts each device's batch into pieces of m
samples; each piece climbs to its own w + ε̂ and the descent direction is the
pieces' mean. Here it is a loop around the one-piece SAM step:

    direction = Σᵢ (rowsᵢ / rows) · one_piece_step(pieceᵢ)

which is the batch's direction for a loss averaged over the rows (Keras's
default reduction). Each piece's clean pass starts from the same model state
and returns its state update (BatchNorm statistics) instead of assigning it;
the step then assigns the size-weighted mean of the updates once, one
momentum step towards the pieces' mean statistics, as the paper's devices
average theirs.

Example:

>>> from keras_sam.batch_splits import piece_bounds
>>> piece_bounds(10, 3)
[(0, 4), (4, 7), (7, 10)]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import keras
import numpy as np

__all__ = ["MAX_BATCH_SPLITS", "PieceStep", "piece_bounds", "run_pieces", "warn_if_misweighted"]

# Each piece adds its own two passes to the traced training graph, so tracing
# time grows with the number of pieces. 128 pieces cut a batch of 128 into
# single samples, the smallest m the SAM paper studies.
MAX_BATCH_SPLITS = 128


class PieceStep(NamedTuple):
    """What the one-piece SAM step returns.

    Attributes:
        direction: the descent direction, one (scaled) gradient per variable.
        checked_gradients: gradients that must be finite for the step to be
            applied (the ascent's).
        losses: the losses of the passes (for `skip_nonfinite`).
        state_update: the model state's new values (only when collected).
        variant_state: `(variable, new value)` pairs a variant keeps.
        second_pass: whether the step took the perturbed pass (a bool, or a
            bool tensor decided as the step runs).
    """

    direction: list
    checked_gradients: list
    losses: list
    state_update: list
    variant_state: list
    second_pass: object = True


def piece_bounds(rows: int, pieces: int) -> list[tuple[int, int]]:
    """[(start, stop)] of `pieces` contiguous pieces whose sizes differ by at most one."""
    smaller, larger_count = divmod(rows, pieces)
    bounds, start = [], 0
    for i in range(pieces):
        stop = start + smaller + (1 if i < larger_count else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def run_pieces(
    one_piece: Callable[..., PieceStep],
    data: tuple,
    num_splits: int,
    model_state: list,
    *,
    after: Callable,
    rows_of: Callable,
    same_rows_checks: Callable,
) -> PieceStep:
    """The step of the whole batch from `one_piece(x, y, sample_weight, collect_state)`.

    `after(tensors, function)` runs `function` once `tensors` are computed
    (the pieces run one after the other: side by side they would hold all
    their activations at once); `rows_of(x)` counts a batch's rows, and
    `same_rows_checks(message, tensors)` checks at run time that tensors of
    unknown length agree (the backend's).
    """
    x, y, sample_weight = data
    if num_splits == 1:
        return one_piece(x, y, sample_weight, collect_state=False)
    pieces = _cut(data, num_splits, rows_of, same_rows_checks)
    total, results = None, []
    for piece, weight in pieces:
        previous = [] if total is None else [g for g in total if g is not None]
        result = after(previous, lambda piece=piece: one_piece(*piece, collect_state=True))
        results.append((weight, result))
        weighted = [
            None if g is None else g * keras.ops.cast(weight, g.dtype) for g in result.direction
        ]
        total = weighted if total is None else [
            a if b is None else (b if a is None else a + b) for a, b in zip(total, weighted)
        ]
    _assign_mean_state(model_state, [(w, r.state_update) for w, r in results])
    return PieceStep(
        direction=total,
        checked_gradients=[g for _, r in results for g in r.checked_gradients],
        losses=[loss for _, r in results for loss in r.losses],
        state_update=[],
        variant_state=[],
        second_pass=not all(r.second_pass is False for _, r in results),
    )


def warn_if_misweighted(num_splits: int, loss) -> None:
    """Warns when the compiled `loss` is not averaged over the rows.

    The pieces' gradients are weighted by their share of the rows, which adds
    up to the batch's gradient only for losses averaged over the rows
    (Keras's default reduction).
    """
    if num_splits == 1:
        return
    reductions = sorted(
        {
            reduction
            for item in keras.tree.flatten(loss)
            if (reduction := getattr(item, "reduction", None)) in ("sum", "mean_with_sample_weight")
        }
    )
    if reductions:
        warnings.warn(
            f"SAMModel: `num_batch_splits={num_splits}` weights each "
            "piece's gradient by its share of the batch's rows, which is exact for "
            "losses averaged over the rows (`reduction=\"sum_over_batch_size\"`, "
            f"Keras's default). With `reduction={reductions[0]!r}` the step is not "
            "the batch's: a summed loss's step comes out about num_batch_splits "
            "times smaller, and a loss averaged over sample weights weighs the "
            "pieces by rows, not by their share of the weights. Use the default "
            "reduction (and scale the learning rate) for m-sharpness.",
            stacklevel=4,
        )


def _first_tensor(structure):
    return next(t for t in keras.tree.flatten(structure) if t is not None)


def _cut(data, k, rows_of, same_rows_checks):
    """[((x, y, sample_weight), weight)] for each of the `k` pieces."""
    x = data[0]
    rows = _first_tensor(x).shape[0]
    if rows is not None and rows < k:
        raise ValueError(
            f"`num_batch_splits={k}` needs at least {k} samples per replica "
            f"batch; got a batch of {rows}."
        )
    checks = _same_rows(data, k, same_rows_checks)
    if rows is not None:
        bounds = piece_bounds(rows, k)
        # The float32 quotient, as the run-time branch below computes it.
        return [
            (_slice(data, start, stop, checks), np.float32(stop - start) / np.float32(rows))
            for start, stop in bounds
        ]
    # The batch size is known only when the step runs (a short last batch):
    # pieces whose sizes differ by at most one, empty ones counting zero.
    rows = rows_of(x)
    smaller, larger_count = rows // k, rows % k
    pieces, start = [], 0
    for i in range(k):
        size = smaller + keras.ops.cast(i < larger_count, smaller.dtype)
        stop = start + size
        weight = keras.ops.cast(size, "float32") / keras.ops.cast(rows, "float32")
        pieces.append((_slice(data, start, stop, checks), weight))
        start = stop
    return pieces


def _slice(data, start, stop, checks):
    def rows(t):
        if t is None:
            return None
        return t[start:stop] if not checks else checks(t)[start:stop]

    return tuple(keras.tree.map_structure(rows, part) for part in data)


def _same_rows(data, k, same_rows_checks):
    """Checks that x, y and sample_weight have as many rows each.

    Cut apart row by row, pieces of different lengths would broadcast against
    each other and train on mismatched rows without an error (uncut, plain
    Keras's loss fails on the shapes). Raises at trace time when the shapes
    are known; otherwise returns a function that ties a tensor to run-time
    checks (or None when there is nothing to check).
    """
    named = [
        (name, t)
        for name, part in zip(("x", "y", "sample_weight"), data)
        for t in keras.tree.flatten(part)
        if t is not None and len(t.shape)
    ]
    reference_name, reference = named[0]
    message = (
        f"`num_batch_splits={k}` cuts each batch row by row, so x, y and "
        "sample_weight must have the same number of rows (the first dimension)"
    )
    unknown = []
    for name, t in named[1:]:
        if reference.shape[0] is not None and t.shape[0] is not None:
            if reference.shape[0] != t.shape[0]:
                raise ValueError(
                    f"{message}; got {reference.shape[0]} rows in {reference_name} "
                    f"and {t.shape[0]} in {name}."
                )
            continue
        unknown.append((f"{message}; {reference_name} and {name} differ:", reference, t))
    if not unknown:
        return None
    return same_rows_checks(unknown)


def _assign_mean_state(model_state, updates) -> None:
    """One update of the model's state from the pieces' `(weight, update)`.

    Non-float state takes the first piece's value.
    """
    for i, variable in enumerate(model_state):
        values = [(w, u[i]) for w, u in updates if u[i] is not None]
        if not values:
            continue
        if not variable.dtype.startswith("float"):
            variable.assign(values[0][1])
            continue
        weights = [keras.ops.cast(w, variable.dtype) for w, _ in values]
        total = _sum(weights)
        mean = _sum([w * u for w, (_, u) in zip(weights, values)]) / total
        variable.assign(mean)


def _sum(tensors):
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total
