"""Paired, interleaved timing rounds and their statistics.

Other processes on a shared machine slow every mode for a while. Timing all
modes one after another inside each round, and comparing each mode with the
baseline *of the same round*, cancels most of that: a round where the machine
was busy is slower for both. The reported ratio is the median over rounds of
the per-round ratio; its spread (min-max over rounds) shows the noise left.

Interleaving has a cost of its own: the first step of a mode after another
mode ran is slower than the steps after it (on a 2-core CPU, 1.5-2x: the
memory the other mode used is faulted in again). A training run never switches
modes, so in each round a mode can run untimed (`settle`) right before its
timed steps.

Example:

>>> times = {"plain": [10.0, 20.0, 10.0], "sam": [19.0, 41.0, 20.0]}
>>> stats = summarize(times, baseline="plain")
>>> stats["sam"].median_ms, stats["sam"].ratio
(20.0, 2.0)
>>> stats["sam"].ratio_range
(1.9, 2.05)
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

__all__ = ["Summary", "interleaved_rounds", "paired_ratios", "summarize"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-mode result: ms/step over rounds, and the paired ratio to a baseline."""

    median_ms: float
    range_ms: tuple[float, float]
    ratio: float | None
    ratio_range: tuple[float, float] | None


def paired_ratios(times: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round-by-round ratios `times[r] / baseline[r]`."""
    if len(times) != len(baseline):
        raise ValueError(
            f"Paired ratios need as many rounds in both; got {len(times)} and {len(baseline)}."
        )
    return [t / b for t, b in zip(times, baseline)]


def summarize(
    times_ms: dict[str, Sequence[float]], baseline: str | None
) -> dict[str, Summary]:
    """Median ms/step per mode and the median of its paired ratios to `baseline`.

    Args:
        times_ms: per mode, one ms/step value per round.
        baseline: the mode the ratios are taken to; `None` or a mode not in
            `times_ms` gives no ratios.
    """
    result = {}
    for name, times in times_ms.items():
        ratio = ratio_range = None
        if baseline in times_ms:
            ratios = paired_ratios(times, times_ms[baseline])
            ratio = statistics.median(ratios)
            ratio_range = (min(ratios), max(ratios))
        result[name] = Summary(
            median_ms=statistics.median(times),
            range_ms=(min(times), max(times)),
            ratio=ratio,
            ratio_range=ratio_range,
        )
    return result


def interleaved_rounds(
    runners: dict[str, Callable[[], None]],
    rounds: int,
    steps: int,
    clock: Callable[[], float] = time.perf_counter,
    settle: dict[str, Callable[[], None]] | None = None,
    after: dict[str, Callable[[], None]] | None = None,
    after_round: Callable[[int], None] | None = None,
    first_round: int = 0,
) -> dict[str, list[float]]:
    """Times every runner once per round, in turn; returns ms/step per round.

    Each runner runs `steps` training steps when called. The order rotates by
    one each round, so that no mode always follows the same neighbour. In
    every round, `settle[name]` (when given) runs untimed right before the
    mode's timed steps and `after[name]` untimed right after them (e.g. to
    read a counter); `after_round(index)` runs after each round (e.g. another
    process's round of the same index, so that both see the same load).
    Rounds are numbered from `first_round`, which sets the first rotation.

    >>> ticks = iter(range(100))
    >>> calls = []
    >>> out = interleaved_rounds(
    ...     {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
    ...     rounds=2, steps=1, clock=lambda: next(ticks) / 1000,
    ...     settle={"a": lambda: calls.append("settle a"), "b": lambda: calls.append("settle b")},
    ...     after_round=lambda index: calls.append(f"round {index} done"))
    >>> out
    {'a': [1.0, 1.0], 'b': [1.0, 1.0]}
    >>> calls  # doctest: +NORMALIZE_WHITESPACE
    ['settle a', 'a', 'settle b', 'b', 'round 0 done',
     'settle b', 'b', 'settle a', 'a', 'round 1 done']
    """
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(first_round, first_round + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if settle is not None:
                settle[name]()
            start = clock()
            runners[name]()
            times[name].append((clock() - start) * 1000.0 / steps)
            if after is not None:
                after[name]()
        if after_round is not None:
            after_round(round_index)
    return times
