"""Quiets TensorFlow's C++ start-up notes when keras-sam runs as a command.

Imported by `keras_sam/__init__.py` before anything that imports TensorFlow
(so `keras_sam.apps` imports nothing itself). In `keras-sam ...` and
`python -m keras_sam[.module] ...` those notes (the
CPU instruction sets TensorFlow was built for, oneDNN being on, ...) would
come before the command's own output, and before a bad flag's one-line error.
Most obey `TF_CPP_MIN_LOG_LEVEL`, which the command sets to 1; some are logged
before TensorFlow's logger reads it (TensorFlow 2.21 on a CPU with AVX-512
VNNI or AMX prints "oneDNN custom operations are on" twice whatever the level
says), so the command also imports TensorFlow with its stderr captured and
passes on everything but informational notes. Warnings and errors still show,
and an explicit `TF_CPP_MIN_LOG_LEVEL` wins (`0` shows every note). Imported as
a library, keras-sam leaves TensorFlow's logging alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# The prefix of a line from TensorFlow's C++ logger (absl): severity, date,
# time, thread, file:line. `I` is an informational note.
_NATIVE_LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def started_as_the_command(argv0: str, orig_argv: list[str]) -> bool:
    """Whether a process started as `argv0` / `orig_argv` runs keras-sam's command.

    >>> started_as_the_command("/venv/bin/keras-sam", ["python", "/venv/bin/keras-sam"])
    True
    >>> started_as_the_command("-m", ["python", "-m", "keras_sam.apps.train", "--help"])
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


def without_informational_notes(text: str) -> str:
    """`text` without the C++ logger's informational notes and their preamble.

    A note's continuation lines (those up to the next logger line) go with it;
    warnings, errors and anything else stay.

    >>> print(without_informational_notes(
    ...     "WARNING: All log messages before absl::InitializeLog() is called are "
    ...     "written to STDERR\\n"
    ...     "I0000 00:00:1796053282.734905   12155 port.cc:153] oneDNN custom operations are on.\\n"
    ...     "W0000 00:00:1796053282.734905   12155 gpu.cc:1] Cannot dlopen some GPU libraries.\\n"
    ...     "I0000 00:00:1796053283.083331   12155 cpu_feature_guard.cc:227] Optimized\\n"
    ...     "To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\\n"
    ...     "E0000 00:00:1796053283.083331   12155 cuda.cc:9] failed call to cuInit\\n"
    ... ), end="")
    W0000 00:00:1796053282.734905   12155 gpu.cc:1] Cannot dlopen some GPU libraries.
    E0000 00:00:1796053283.083331   12155 cuda.cc:9] failed call to cuInit
    """
    kept, in_note = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(_ABSL_PREAMBLE):
            continue
        if _NATIVE_LOG_LINE.match(line):
            in_note = line.startswith("I")
        if not in_note:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def informational_notes_hidden():
    """Runs the body with file descriptor 2 captured, then writes what it
    caught back to stderr without the informational notes. Where stderr
    cannot be captured (none, or no temporary file), the body runs as is."""
    try:
        sys.stderr.flush()
        captured = tempfile.TemporaryFile()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            sys.stderr.write(without_informational_notes(text))
            sys.stderr.flush()
    finally:
        os.close(saved)
        captured.close()


def _quiet_tensorflow_start() -> None:
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if level == "0" or "tensorflow" in sys.modules:
        return
    with informational_notes_hidden():
        import tensorflow  # noqa: F401


if started_as_the_command(sys.argv[0] if sys.argv else "", getattr(sys, "orig_argv", [])):
    _quiet_tensorflow_start()
