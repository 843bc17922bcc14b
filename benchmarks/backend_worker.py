"""Times Keras 3 modes on another Keras backend, in a process of its own, round by round.

A process has one Keras backend, so `step_time.py --backends tensorflow,jax`
starts this module as a subprocess with `KERAS_BACKEND=jax` and drives it
over a pipe: the subprocess compiles and warms up the same models and modes
with the same batch, optimizer and data (`GroupTimer`, as TensorFlow's rows),
and runs one round of interleaved, settled steps each time it is asked. The
parent asks for round r right after its own TensorFlow round r with XLA, so
both backends' rounds see the same load, and JAX's ms can be paired with
TensorFlow's round by round. JAX always compiles (Keras's `jit_compile=True`
on JAX: `jax.jit` of the whole step). Nothing in this path imports TensorFlow
(keras-sam itself may).

The protocol: one JSON object per line on stdin (`{"command": "prepare",
"model": "small_cnn"}`, then `{"command": "round", "index": 0}` per round,
then `{"command": "finish"}`; `describe` for the backend's device), one
answer per command on stdout, after `MARKER` (`{"ok": true, ...}` or `{"ok":
false, "error": ...}`); progress goes to stderr. End of input ends it.

The parent's side is `BackendWorker`:

>>> from benchmarks.backend_worker import command_line
>>> command_line(["plain", "sam"], steps=5, settle_steps=1, warmup_steps=2,
...              batch_size=128, clock="wall")[-12:]  # doctest: +NORMALIZE_WHITESPACE
['--modes', 'plain,sam', '--steps', '5', '--settle-steps', '1', '--warmup-steps', '2',
 '--batch-size', '128', '--clock', 'wall']
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = ["MARKER", "BackendWorker", "WorkerError", "command_line"]

MARKER = "@@backend_worker@@ "
_ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """The worker failed, or answered a command with an error."""


def command_line(
    modes: list[str], *, steps: int, settle_steps: int, warmup_steps: int, batch_size: int,
    clock: str,
) -> list[str]:
    """The worker's command line (the backend comes from `KERAS_BACKEND`)."""
    return [
        sys.executable, "-m", "benchmarks.backend_worker",
        "--modes", ",".join(modes), "--steps", str(steps),
        "--settle-steps", str(settle_steps), "--warmup-steps", str(warmup_steps),
        "--batch-size", str(batch_size), "--clock", clock,
    ]  # fmt: skip


def backend_environment(backend: str, device: str) -> dict[str, str]:
    """The environment of a worker on `backend` for `--device` (cpu, gpu, auto)."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    if backend == "jax":
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        elif device == "gpu":
            env["JAX_PLATFORMS"] = "cuda"
    return env


class BackendWorker:
    """The parent's handle on a worker process (see the module docstring)."""

    def __init__(self, backend: str, modes: list[str], args, device: str = "cpu"):
        self.backend = backend
        self.modes = list(modes)
        self.error: str | None = None
        self._process = subprocess.Popen(
            command_line(
                self.modes, steps=args.steps, settle_steps=args.settle_steps,
                warmup_steps=args.warmup_steps, batch_size=args.batch_size, clock=args.clock,
            ),
            cwd=_ROOT, env=backend_environment(backend, device), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def request(self, command: str, **fields) -> dict:
        """Sends one command and returns its answer; raises `WorkerError`."""
        if self.error is not None:
            raise WorkerError(self.error)
        try:
            self._process.stdin.write(json.dumps({"command": command, **fields}) + "\n")
            self._process.stdin.flush()
            for line in self._process.stdout:
                if line.startswith(MARKER):
                    answer = json.loads(line[len(MARKER):])
                    break
            else:
                answer = {
                    "ok": False,
                    "error": f"the {self.backend} worker exited with status "
                    f"{self._process.wait()} (its errors are above, on stderr)",
                }
        except (BrokenPipeError, OSError) as error:
            answer = {"ok": False, "error": f"the {self.backend} worker is gone: {error}"}
        if not answer.get("ok"):
            self.error = answer.get("error", "no error message")
            raise WorkerError(self.error)
        return answer

    def close(self) -> None:
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _describe() -> dict:
    import keras

    description = {"backend": keras.backend.backend(), "keras": keras.__version__}
    if description["backend"] == "jax":
        import jax

        device = jax.devices()[0]
        description["device"] = f"{device.platform.upper()} ({device.device_kind})"
        description["version"] = f"JAX {jax.__version__}"
    return description


def serve(args, protocol) -> int:
    """Answers commands from stdin until it ends."""
    import keras

    from benchmarks.modes import MODES, compile_mode  # noqa: F401 (import errors: early)
    from benchmarks.step_time import GroupTimer

    backend, timer = keras.backend.backend(), None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            command = request["command"]
            if command == "describe":
                answer = _describe()
            elif command == "prepare":
                modes = {name: MODES[name] for name in args.modes}
                timer = GroupTimer(request["model"], True, modes, args, label=backend)
                timer.prepare()
                answer = {}
            elif command == "round":
                times = timer.run_rounds(1, first_round=int(request["index"]))
                answer = {"times": times}
            elif command == "finish":
                answer = {"group": _jsonable(timer.finish())}
                timer = None
            else:
                raise ValueError(f"unknown command {command!r}")
            answer["ok"] = True
        except Exception:  # answered, then the worker ends: the parent goes on without it
            answer = {"ok": False, "error": traceback.format_exc()}
        protocol.write(MARKER + json.dumps(answer) + "\n")
        protocol.flush()
        if not answer["ok"]:
            return 1
    return 0


def _jsonable(group: dict) -> dict:
    """A `GroupTimer.finish` result without its `Mode` objects (the parent has them)."""
    return {key: value for key, value in group.items() if key != "modes"}


def main(argv=None) -> int:
    from benchmarks.arguments import add_round_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=lambda text: text.split(","), required=True)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    add_round_arguments(parser, rounds=1)
    args = parser.parse_args(argv)
    # The answers keep the real stdout; anything else printed (by Python or
    # by C++ libraries) goes to stderr, beside the progress lines.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(args, protocol)


if __name__ == "__main__":
    sys.exit(main())
