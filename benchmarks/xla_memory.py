"""Peak memory of each XLA program of a training step, from XLA's own buffer assignment.

With XLA the compiler plans every buffer of a program ahead of time, and its
heap simulation gives the program's peak live bytes exactly: no allocator
caching, no op-order noise, the same on every run. This script trains each
mode for two steps with `jit_compile=True`, each mode in its own subprocess
with `XLA_FLAGS=--xla_dump_to=...`, reads the peak of every program the step
compiled ("Stack trace breakdown for peak usage" in the dumped buffer
assignment) and prints a Markdown table: the programs, the largest peak, and
its excess over plain Keras's against the issue's budget of one copy of the
trainable weights plus one of their gradients.

A step made of several programs (keras-sam compiles each pass on its own)
holds, between them, only their small outputs (the first gradient, the loss),
so its peak is its largest program's plus those.

Usage:

    python benchmarks/xla_memory.py
    python benchmarks/xla_memory.py --models small_cnn --modes plain,sam,tfk_sam
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.arguments import names  # noqa: E402
from benchmarks.models import DEFAULT_MODEL_NAMES, MODEL_NAMES  # noqa: E402
from benchmarks.modes import DEFAULT_MODES, MODES  # noqa: E402

_PEAK = re.compile(r"Stack trace breakdown for peak usage: ([\d ]+) bytes")
_PROGRAM = re.compile(r"module_\d+\.a_inference_(.+?)_\d+__\.\d+\.cpu_after_optimizations")


def program_peaks(dump_dir: Path) -> dict[str, int]:
    """{program name: peak live bytes} of every buffer assignment in `dump_dir`.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> name = "module_0108.a_inference_clean_pass_1112__.38.cpu_after_optimizations"
    >>> _ = (d / f"{name}-buffer-assignment.txt").write_text(
    ...     "...\\n  Stack trace breakdown for peak usage: 83 067 764 bytes\\n")
    >>> program_peaks(d)
    {'clean_pass': 83067764}
    """
    peaks = {}
    for path in sorted(dump_dir.glob("*buffer-assignment.txt")):
        peak = _PEAK.search(path.read_text())
        program = _PROGRAM.search(path.name)
        if peak and program:
            name = program.group(1)
            peaks[name] = max(peaks.get(name, 0), int(peak.group(1).replace(" ", "")))
    return peaks


def _child(model_name: str, mode_name: str) -> None:
    """Trains one mode for two XLA steps and prints its JSON line (XLA_FLAGS set by the parent)."""
    from benchmarks.environment import configure_device, random_dataset
    from benchmarks.modes import compile_mode

    configure_device("cpu")
    traced = compile_mode(model_name, MODES[mode_name], xla=True)
    traced.fit(random_dataset(batch_size=128), steps=2)
    weights = sum(int(v.numpy().nbytes) for v in traced.model.trainable_variables)
    print(json.dumps({"trainable_bytes": weights}))


def measure(model_name: str, mode_name: str) -> dict:
    """{"programs": {name: peak bytes}, "trainable_bytes": int} of one mode."""
    with tempfile.TemporaryDirectory() as dump:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.xla_memory", "--child", model_name, mode_name],
            cwd=Path(__file__).resolve().parent.parent,
            env=env, capture_output=True, text=True, timeout=1200,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{model_name}/{mode_name} failed:\n{completed.stderr[-3000:]}")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["programs"] = program_peaks(Path(dump))
    return result


def results_table(results: dict) -> str:
    """Markdown: one row per (model, mode), the excess over the model's plain row."""
    lines = [
        "| model | mode | XLA programs of the step: peak MB | largest peak MB | "
        "extra over plain Keras MB | budget MB (weights + gradients) | within budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for model_name, modes in results.items():
        plain = modes.get("plain")
        plain_peak = max(plain["programs"].values()) if plain else None
        for mode_name, result in modes.items():
            peak = max(result["programs"].values())
            programs = ", ".join(
                f"{name} {bytes_ / 1e6:.3f}" for name, bytes_ in result["programs"].items()
            )
            budget = 2 * result["trainable_bytes"]
            if plain_peak is None or mode_name == "plain":
                extra, verdict = "—", "—"
            else:
                extra = f"{(peak - plain_peak) / 1e6:+.3f}"
                verdict = "yes" if peak - plain_peak <= budget else "**no**"
            lines.append(
                f"| {model_name} | {MODES[mode_name].label} | {programs} | {peak / 1e6:.3f} | "
                f"{extra} | {budget / 1e6:.3f} | {verdict} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=lambda t: names(t, MODEL_NAMES, "model"),
        default=list(DEFAULT_MODEL_NAMES),
        help=f"comma-separated, of {', '.join(MODEL_NAMES)}",
    )
    parser.add_argument(
        "--modes", type=lambda t: names(t, MODES, "mode"), default=list(DEFAULT_MODES),
        help="comma-separated (default: all); the first row compared is plain",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    from benchmarks.modes import unavailable_reason

    results: dict[str, dict] = {}
    for model_name in args.models:
        results[model_name] = {}
        for mode_name in args.modes:
            reason = unavailable_reason(MODES[mode_name])
            if reason:
                print(f"skipped {mode_name}: {reason}", file=sys.stderr)
                continue
            print(f"{model_name} / {mode_name} ...", file=sys.stderr, flush=True)
            results[model_name][mode_name] = measure(model_name, mode_name)
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
