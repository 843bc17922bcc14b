"""Argparse value types shared by the `keras-sam` commands.

Each turns the text of one option into a value, or raises
`argparse.ArgumentTypeError` with a one-line reason that argparse prints.

>>> positive_int("3")
3
>>> fraction("0.4")
0.4
"""

from __future__ import annotations

import argparse
import math


def number(text: str, kind=float):
    """`text` as a finite float (or an int with `kind=int`)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _require(ok: bool, value, text: str, accepted: str):
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {accepted}, got {text}")
    return value


def positive(text: str) -> float:
    value = number(text)
    return _require(value > 0, value, text, "> 0")


def non_negative(text: str) -> float:
    value = number(text)
    return _require(value >= 0, value, text, ">= 0")


def positive_int(text: str) -> int:
    value = number(text, int)
    return _require(value >= 1, value, text, "an integer >= 1")


def non_negative_int(text: str) -> int:
    value = number(text, int)
    return _require(value >= 0, value, text, "an integer >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = number(text)
    return _require(0.0 <= value <= 1.0, value, text, "in [0, 1]")


def fraction_below_one(text: str) -> float:
    """A number in [0, 1)."""
    value = number(text)
    return _require(0.0 <= value < 1.0, value, text, "in [0, 1)")
