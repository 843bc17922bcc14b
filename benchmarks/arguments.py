"""Command-line argument types shared by the benchmark scripts (no TensorFlow import).

>>> names("sam, plain", ("plain", "sam"), "mode")
['sam', 'plain']
>>> xla_flags("off,on")
[False, True]
>>> at_least(0)("0"), positive("3")
(0, 3)
>>> parser = argparse.ArgumentParser()
>>> add_round_arguments(parser, rounds=9)
>>> args = parser.parse_args(["--steps", "10"])
>>> args.steps, args.rounds, args.settle_steps, args.warmup_steps, args.batch_size
(10, 9, 1, 2, 128)
"""

from __future__ import annotations

import argparse

__all__ = ["add_round_arguments", "at_least", "names", "positive", "xla_flags"]


def names(text: str, allowed, what: str) -> list[str]:
    """The comma-separated names in `text`, each one of `allowed`."""
    given = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in given if n not in allowed]
    if unknown or not given:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; "
            f"expected a comma-separated list of {', '.join(allowed)}"
        )
    return given


def xla_flags(text: str) -> list[bool]:
    """`off`, `on` or `off,on` as a list of booleans."""
    return [n == "on" for n in names(text, ("off", "on"), "xla setting")]


def at_least(minimum: int):
    """An argument type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive = at_least(1)


def add_round_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options of paired, interleaved timing rounds, alike in every timing script."""
    parser.add_argument(
        "--steps", type=positive, default=5,
        help="steps per mode per round; a multiple of 5 keeps LookSAM's mix of full "
        "and cheap steps the same in every round (default %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=positive, default=rounds, help="timing rounds (default %(default)s)"
    )
    parser.add_argument(
        "--settle-steps", type=at_least(0), default=1,
        help="untimed steps of each mode right before its timed steps in every round: "
        "the first step after another mode ran is slower (default %(default)s)",
    )
    parser.add_argument(
        "--warmup-steps", type=positive, default=2,
        help="steps of each of the two warm-up epochs (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=positive, default=128, help="(default %(default)s)"
    )
