"""Argparse value types shared by the `keras-sam` commands.

Each turns the text of one option into a value, or raises
`argparse.ArgumentTypeError` with a one-line reason that argparse prints.

>>> positive_int("3")
3
>>> fraction("0.4")
0.4
>>> seed("7")
7
>>> output_directory("runs/first")
'runs/first'
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from keras_sam._validation import MAX_ALPHA, MAX_RHO


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


def rho(text: str) -> float:
    """A SAM radius: 0 to `MAX_RHO` (1e4), as the model classes accept."""
    value = number(text)
    return _require(0.0 <= value <= MAX_RHO, value, text, f"in [0, {MAX_RHO:g}]")


def alpha(text: str) -> float:
    """GSAM's or LookSAM's alpha: 0 to `MAX_ALPHA` (1e4), as the classes accept."""
    value = number(text)
    return _require(0.0 <= value <= MAX_ALPHA, value, text, f"in [0, {MAX_ALPHA:g}]")


# Keras's `set_random_seed` seeds NumPy's legacy generator, which takes 32 bits.
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """An integer seed that `keras.utils.set_random_seed` accepts: 0 to 2**32 - 1."""
    value = number(text, int)
    return _require(0 <= value <= MAX_SEED, value, text, f"an integer in [0, {MAX_SEED}]")


def _blocking_ancestor(path: Path) -> Path | None:
    """The nearest of `path` and its ancestors that exists, if it is not a directory."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def directory_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be (created as) a directory, or None if it can.

    It cannot when it, or the nearest of its ancestors that exists, is not a
    directory (a regular file, say): `mkdir(parents=True)` would fail there.
    Permissions are left to the operating system.

    >>> directory_problem("a/new/folder") is None
    True
    """
    path = Path(path)
    blocking = _blocking_ancestor(path)
    if blocking is None:
        return None
    if blocking == path:
        return f"{str(path)!r} exists and is not a directory"
    return f"{str(blocking)!r} is not a directory, so {str(path)!r} cannot be created"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at `path` (after creating its folder), or None.

    >>> file_problem(".")
    "'.' is a directory, not a file"
    """
    path = Path(path)
    if path.is_dir():
        return f"{str(path)!r} is a directory, not a file"
    blocking = _blocking_ancestor(path.parent)
    if blocking is None:
        return None
    return f"{str(blocking)!r} is not a directory, so {str(path)!r} cannot be created"


def output_directory(text: str) -> str:
    """A directory that exists or can be created (`directory_problem`)."""
    problem = directory_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def output_file(text: str) -> str:
    """A file path that can be written (`file_problem`)."""
    problem = file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
