"""The `keras-sam` command (also `python -m keras_sam`).

Subcommands register themselves through an `add_parser(subparsers)` function
that adds a subparser and sets `func` to the function that runs it:

- `keras-sam demo`: SAM against its base optimizer on MNIST-1D with noisy
  labels (`keras_sam.apps.demo`);
- `keras-sam train`: train a CIFAR ResNet with SAM (`keras_sam.apps.train`).

A bad argument prints one line, `keras-sam demo: error: ...`, and exits with
status 2, as argparse does, but without repeating the usage. So do a
missing dependency (naming the extra to install) and a path the command
cannot write to.

>>> main(["demo", "--noise", "1.5"])
Traceback (most recent call last):
SystemExit: 2
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "fail", "main"]

# Modules that provide a subcommand, in the order of `--help`.
SUBCOMMAND_MODULES = ("keras_sam.apps.demo", "keras_sam.apps.train")


class OneLineErrorParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(command: str, problem) -> int:
    """Prints `keras-sam COMMAND: error: PROBLEM` (its first line) to stderr; returns 2."""
    lines = str(problem).strip().splitlines() or [type(problem).__name__]
    print(f"keras-sam {command}: error: {lines[0]}", file=sys.stderr)
    return 2


def _subcommand_modules():
    for name in SUBCOMMAND_MODULES:
        try:
            yield importlib.import_module(name)
        except ModuleNotFoundError as error:
            # A subcommand whose module is not there is simply absent; a
            # missing dependency *inside* the module is a real error.
            if error.name != name:
                raise


def build_parser() -> argparse.ArgumentParser:
    """The `keras-sam` parser with every available subcommand."""
    parser = OneLineErrorParser(
        prog="keras-sam",
        description="Sharpness-Aware Minimization for Keras 3.",
    )
    from keras_sam import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `keras-sam` with `argv` (default: the process's arguments).

    Returns the exit status; bad arguments raise `SystemExit(2)` after
    printing one line to stderr.
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
