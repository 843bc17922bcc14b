"""What each application needs beyond the core install, and the one-line
error that names the extra to install when something is missing.

>>> print(needs_message("demo"))
needs mnist1d and matplotlib; install them with: pip install "keras-sam[demo]"
>>> require("no-such-extra")
Traceback (most recent call last):
KeyError: 'no-such-extra'
"""

from __future__ import annotations

import importlib

__all__ = ["EXTRAS", "MissingExtraError", "needs_message", "require"]

# extra -> (import name, distribution name) of each package it brings, as
# setup.cfg declares them.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "demo": (("mnist1d", "mnist1d"), ("matplotlib", "matplotlib")),
    # TFDS 4.9 imports importlib_resources when it prepares a real dataset
    # but does not declare it (tensorflow/datasets#11212).
    "train": (
        ("tensorflow_datasets", "tensorflow-datasets"),
        ("tensorboard", "tensorboard"),
        ("importlib_resources", "importlib_resources"),
    ),
    "plot": (("matplotlib", "matplotlib"),),
}


class MissingExtraError(ImportError):
    """A package of an extra is not installed; the message says which extra to install."""


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def needs_message(extra: str) -> str:
    """`needs A and B; install them with: pip install "keras-sam[extra]"`."""
    names = [distribution for _, distribution in EXTRAS[extra]]
    pronoun = "it" if len(names) == 1 else "them"
    return f'needs {_listed(names)}; install {pronoun} with: pip install "keras-sam[{extra}]"'


def require(extra: str) -> None:
    """Imports every package of `extra`, or raises `MissingExtraError`.

    Imported, not only looked up: a package that is there but cannot be
    imported (or is blocked with `sys.modules[name] = None`) is missing too.
    """
    for module, _ in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingExtraError(needs_message(extra)) from error
