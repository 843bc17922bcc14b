"""Command-line argument types shared by the benchmark scripts (no TensorFlow import).

>>> names("sam, plain", ("plain", "sam"), "mode")
['sam', 'plain']
>>> xla_flags("off,on")
[False, True]
>>> at_least(0)("0"), positive("3")
(0, 3)
"""

from __future__ import annotations

import argparse

__all__ = ["at_least", "names", "positive", "xla_flags"]


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
