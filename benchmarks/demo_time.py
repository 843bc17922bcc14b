"""Training time of the demo's two runs: one step per call against one epoch per call.

`keras-sam demo` trains a CNN of 8,010 weights, whose step is so small that
the fixed cost of each call into TensorFlow (Keras's per-step loop, the
function call, the iterator) is a large share of it. The demo therefore
compiles with `steps_per_execution` = one epoch. This script trains the demo's
base and SAM runs both ways, from the same start on the same batches, in
interleaved rounds in one process, and prints a Markdown table: the median
seconds of each, the speed-up, and whether the final weights are identical
bit for bit (they must be: only the number of calls changes).

Usage (the defaults are the demo's: 100 epochs of MNIST-1D; about 5 minutes
on 2 cores):

    python benchmarks/demo_time.py
    python benchmarks/demo_time.py --epochs 10 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.arguments import positive  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=positive, default=100, help="(default: 100)")
    parser.add_argument(
        "--num-samples", type=positive, default=None,
        help="MNIST-1D size (default: the demo's, 5,000)",
    )
    parser.add_argument("--rounds", type=positive, default=2, help="(default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    return parser.parse_args(argv)


def time_runs(settings, seed: int, rounds: int) -> dict:
    """{(method, per_call): ([seconds per round], final weights)}; per_call is 1 or "epoch"."""
    import numpy as np

    from keras_sam.apps import demo

    train, test = demo.load_noisy_mnist1d(
        settings.noise, seed=seed, num_samples=settings.num_samples
    )
    initial = demo.starting_weights(seed)
    results = {}
    for round_index in range(rounds):
        for method in settings.methods:  # the demo's: base and SAM
            for per_call in (1, "epoch"):
                steps = 1 if per_call == 1 else None  # None: the demo's one epoch
                started = time.perf_counter()
                model, _ = demo.train_run(
                    method, initial, train, test, settings, seed, steps_per_execution=steps
                )
                seconds = time.perf_counter() - started
                print(
                    f"round {round_index + 1}/{rounds}: {method}, steps per call "
                    f"{per_call}: {seconds:.1f} s",
                    file=sys.stderr, flush=True,
                )
                times, _ = results.get((method, per_call), ([], None))
                results[method, per_call] = (
                    times + [seconds],
                    [np.array(w) for w in model.get_weights()],
                )
    return results


def results_table(results: dict) -> str:
    import numpy as np

    lines = [
        "| run | s, 1 step per call | s, 1 epoch per call | speed-up | same weights bit for bit |",
        "|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(method for method, _ in results):
        one, one_weights = results[method, 1]
        epoch, epoch_weights = results[method, "epoch"]
        same = all(np.array_equal(a, b) for a, b in zip(one_weights, epoch_weights))
        slow, fast = statistics.median(one), statistics.median(epoch)
        lines.append(
            f"| {method} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.environment import machine_description
    from keras_sam.apps.demo import DemoSettings

    settings = DemoSettings(epochs=args.epochs, num_samples=args.num_samples, verbose=0)
    results = time_runs(settings, args.seed, args.rounds)
    print(machine_description("CPU:0"))
    print(
        f"\nThe demo's training runs, {args.epochs} epochs, seed {args.seed}, "
        f"median of {args.rounds} interleaved rounds:\n"
    )
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
