"""The values of the `keras-sam` commands' options: parsing and checks.

An option's text becomes a value in two steps. A parser (`integer`,
`number`, `text`, `optional_text`) turns the text into a Python value, or
raises `argparse.ArgumentTypeError`. A check, `check(name, value) -> value`,
accepts the value or raises keras_sam's `InvalidArgumentError`: the
library's own checks in `keras_sam._validation` (`check_real`, `check_int`,
`check_rho_value`, `check_alpha`, ...), or the few below built on them.

The same checks run when the settings come from Python (`TrainConfig`,
`DemoSettings`), so an option is refused with the same one-line reason
either way; `argument_type` turns the error into the
`argparse.ArgumentTypeError` that argparse prints.

>>> convert = argument_type("epochs", integer, positive_int)
>>> convert("3")
3
>>> convert("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: `epochs` must be an integer >= 1. Received: epochs=0.
>>> convert("2.5")
Traceback (most recent call last):
argparse.ArgumentTypeError: expected an integer, got '2.5'
>>> argument_type("noise", number, fraction_below_one)("0.4")
0.4
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keras_sam._validation import (
    InvalidArgumentError,
    check_alpha,
    check_bool,
    check_int,
    check_real,
    check_rho_value,
)

Check = Callable[[str, Any], Any]

# Keras's `set_random_seed` seeds NumPy's legacy generator, which takes 32 bits.
MAX_SEED = 2**32 - 1


# ------------------------------------------------------------------ parsers
def integer(text: str) -> int:
    """`text` as an int."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    """`text` as a float (`nan` and `inf` too: the checks refuse them)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def text(text: str) -> str:
    """`text` itself."""
    return text


def optional_text(text: str) -> str | None:
    """`text`, or None for `none` or an empty string."""
    return None if text in ("", "none") else text


def argument_type(name: str, parse: Callable[[str], Any], check: Check | None = None):
    """An argparse `type`: `parse`, then `check(name, value)` if given.

    The check's `InvalidArgumentError` becomes an `argparse.ArgumentTypeError`
    with the same message.
    """

    def convert(text: str):
        value = parse(text)
        if check is None:
            return value
        try:
            return check(name, value)
        except InvalidArgumentError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


# ------------------------------------------------------------------- checks
def positive(name: str, value) -> float:
    return check_real(name, value, minimum=0.0, exclusive_minimum=True)


def non_negative(name: str, value) -> float:
    return check_real(name, value, minimum=0.0)


def fraction(name: str, value) -> float:
    """A number in [0, 1]."""
    return check_real(name, value, minimum=0.0, maximum=1.0)


def fraction_below_one(name: str, value) -> float:
    """A number in [0, 1): a share that must leave something, a momentum."""
    checked = check_real(name, value)
    if not 0.0 <= checked < 1.0:
        raise InvalidArgumentError(
            f"`{name}` must be a finite real number >= 0 and < 1. Received: {name}={value!r}."
        )
    return checked


def positive_int(name: str, value) -> int:
    return check_int(name, value, minimum=1)


def seed(name: str, value) -> int:
    """An integer seed that `keras.utils.set_random_seed` accepts: 0 to 2**32 - 1."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def rho(name: str, value) -> float:
    """A SAM radius, as the model classes accept it (`check_rho_value`)."""
    return check_rho_value(value)


def alpha(name: str, value) -> float:
    """GSAM's or LookSAM's alpha, as the classes accept it (`check_alpha`)."""
    return check_alpha(value)


def boolean(name: str, value) -> bool:
    return check_bool(name, value)


def one_of(choices) -> Check:
    """A check that `value` is one of `choices`."""

    def check(name: str, value):
        if value not in choices:
            raise InvalidArgumentError(
                f"`{name}` must be one of {', '.join(map(str, choices))}. "
                f"Received: {name}={value!r}."
            )
        return value

    return check


# -------------------------------------------------------------------- paths
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
    Permissions are left to the operating system (`make_directory`).

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


def _path_text(name: str, value) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"`{name}` must be a path (a str or os.PathLike). Received: {name}={value!r}."
        )
    return os.fspath(value)


def output_directory(name: str, value):
    """A directory that exists or can be created (`directory_problem`)."""
    problem = directory_problem(_path_text(name, value))
    if problem:
        raise InvalidArgumentError(f"`{name}` cannot be a directory: {problem}.")
    return value


def output_file(name: str, value):
    """A file path that can be written (`file_problem`)."""
    problem = file_problem(_path_text(name, value))
    if problem:
        raise InvalidArgumentError(f"`{name}` cannot be written: {problem}.")
    return value


def existing_directory(name: str, value):
    """A directory that exists; a URL (`gs://...`) is left to whoever opens it."""
    path = _path_text(name, value)
    if "://" in path or os.path.isdir(path):
        return value
    problem = "is not a directory" if os.path.lexists(path) else "does not exist"
    raise InvalidArgumentError(
        f"`{name}` must be an existing directory: {path!r} {problem}. Received: {name}={path!r}."
    )


def os_problem(error: OSError) -> str:
    """An `OSError` as one line: `No such file or directory: '/proc/x'`."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{reason}: {error.filename!r}" if error.filename is not None else reason


def make_directory(name: str, path) -> Path:
    """Creates the directory `path` (and its parents), or raises `InvalidArgumentError`
    with the operating system's reason (no such file system, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidArgumentError(
            f"`{name}` cannot be created: {os_problem(error)}. Received: {name}={str(path)!r}."
        ) from None
    return path


def writable_file(name: str, path) -> Path:
    """Creates the folder of the file `path` and checks that the file can be
    written, without changing it; raises `InvalidArgumentError` if not."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "a"):
            pass
    except OSError as error:
        raise InvalidArgumentError(
            f"`{name}` cannot be written: {os_problem(error)}. Received: {name}={str(path)!r}."
        ) from None
    if not existed:
        path.unlink()
    return path
