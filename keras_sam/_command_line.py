"""Quiets TensorFlow's C++ start-up notes when keras-sam runs as a command.

Imported by `keras_sam/__init__.py` before anything that imports TensorFlow.
In `keras-sam ...` and `python -m keras_sam[.module] ...` those notes (the
CPU instruction sets TensorFlow was built for, ...) would come before the
command's own output, and before a bad flag's one-line error. Warnings and
errors still show, and an explicit `TF_CPP_MIN_LOG_LEVEL` wins. Imported as a
library, keras-sam leaves TensorFlow's logging alone.
"""

from __future__ import annotations

import os
import sys


def started_as_the_command(argv0: str, orig_argv: list[str]) -> bool:
    """Whether a process started as `argv0` / `orig_argv` runs keras-sam's command.

    >>> started_as_the_command("/venv/bin/keras-sam", ["python", "/venv/bin/keras-sam"])
    True
    >>> started_as_the_command("-m", ["python", "-m", "keras_sam.train", "--help"])
    True
    >>> started_as_the_command("train.py", ["python", "train.py"])
    False
    """
    if os.path.basename(argv0).split(".")[0] in ("keras-sam", "keras-sam-script"):
        return True
    return any(
        flag == "-m" and module.split(".")[0] == "keras_sam"
        for flag, module in zip(orig_argv, orig_argv[1:])
    )


if started_as_the_command(sys.argv[0] if sys.argv else "", getattr(sys, "orig_argv", [])):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
