"""Where the time of a SAM step goes: `SAMModel` against variants of its step.

Times `SAMModel`, the variants of `benchmarks/sam_variants.py` and the Keras 2
SAM in the paired, interleaved rounds of `step_time.py`, by default on one
thread and with the process's CPU time, which a busy shared machine inflates
far less than wall time. With `--op-counts` it also lists, exactly, how many
TensorFlow ops of each type one step executes (from a `tf.profiler` trace),
which shows what each mode computes that the others do not. With
`--xla-kernels` it sums, from a trace of XLA steps, the time of the kernels
each XLA program runs, per program and per kernel kind: whether a SAM step's
programs do more than twice a plain step's work.

    python benchmarks/anatomy.py                       # small CNN, XLA off
    python benchmarks/anatomy.py --models resnet20 --op-counts
    python benchmarks/anatomy.py --xla on --clock wall --threads 2
    python benchmarks/anatomy.py --models resnet20 --modes plain,sam --xla on --xla-kernels
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.arguments import add_round_arguments, names, positive, xla_flags
from benchmarks.models import MODEL_NAMES
from benchmarks.modes import MODES, unavailable_reason
from benchmarks.step_time import results_table, time_group

DEFAULT_MODES = (
    "plain", "sam", "sam_inference_ascent", "sam_assign", "sam_unguarded", "tfk_plain", "tfk_sam"
)


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.sam_variants import VARIANTS

    known = {**MODES, **VARIANTS}
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", type=lambda t: names(t, MODEL_NAMES, "model"), default=["small_cnn"]
    )
    parser.add_argument(
        "--modes", type=lambda t: names(t, known, "mode"), default=list(DEFAULT_MODES)
    )
    parser.add_argument("--xla", type=xla_flags, default=[False])
    add_round_arguments(parser, rounds=9)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--threads", type=positive, default=1)
    parser.add_argument(
        "--op-counts", action="store_true", help="also count executed ops per step by type"
    )
    parser.add_argument(
        "--xla-kernels", action="store_true",
        help="also sum the time of the kernels each XLA program runs, by program and kind",
    )
    args = parser.parse_args(argv)
    args.known = known
    return args


# Events of the executor's threads that are the profiler's and executor's own
# bookkeeping, not TensorFlow ops.
_EXECUTOR_EVENTS = frozenset(
    {"StartRegion", "StopRegion", "Process", "Record", "MemoryAllocation", "MemoryDeallocation"}
)


def _trace(traced, iterator, steps: int):
    """The profiler's trace (an `XSpace`) of `steps` training steps."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        traced.train_steps(iterator, steps)
        tf.profiler.experimental.stop()
        (path,) = Path(logdir).rglob("*.xplane.pb")
        return xplane_pb2.XSpace.FromString(path.read_bytes())


def op_counts(traced, iterator, steps: int = 2) -> collections.Counter:
    """Executed TensorFlow ops per step, by op type, from a profiler trace."""
    space = _trace(traced, iterator, steps)
    counts = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue  # the executor's threads; events are "name:OpType"
            for event in line.events:
                op_type = plane.event_metadata[event.metadata_id].name.rsplit(":", 1)[-1]
                if op_type not in _EXECUTOR_EVENTS:
                    counts[op_type] += 1
    return collections.Counter({k: v / steps for k, v in counts.items()})


def op_count_table(model_name: str, modes: dict, xla: bool, batch_size: int) -> str:
    from benchmarks.environment import random_dataset
    from benchmarks.modes import compile_mode

    dataset = random_dataset(batch_size)
    counts = {}
    for name, mode in modes.items():
        traced = compile_mode(model_name, mode, xla)
        traced.fit(dataset, 1)
        iterator = iter(dataset)
        traced.train_steps(iterator, 1)
        counts[name] = op_counts(traced, iterator)
    types = sorted(set().union(*counts.values()), key=lambda t: -max(c[t] for c in counts.values()))
    lines = [
        "| op type | " + " | ".join(counts) + " |",
        "|---|" + "---|" * len(counts),
        "| **all ops** | " + " | ".join(f"{sum(c.values()):.0f}" for c in counts.values()) + " |",
    ]
    for op_type in types:
        cells = [f"{c[op_type]:.0f}" for c in counts.values()]
        if len(set(cells)) > 1:  # only the types where the modes differ
            lines.append(f"| {op_type} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_kind(name: str) -> str:
    """An XLA kernel's kind: its HLO instruction name without the numbering.

    >>> kernel_kind("transpose_copy_fusion.23"), kernel_kind("convolution")
    ('transpose_copy_fusion', 'convolution')
    """
    return re.sub(r"(\.\d+)+$", "", name)


def program_name(module: str) -> str:
    """The `tf.function` an XLA module was compiled from.

    >>> program_name("a_inference_clean_pass_1112__.38")
    'clean_pass'
    """
    match = re.match(r"a_inference_(.+?)_\d+__", module)
    return match.group(1) if match else module


def xla_kernel_times(traced, iterator, steps: int = 5) -> collections.Counter:
    """ms per step of the XLA kernels run, by (program, kernel kind), from a profiler trace.

    The profiler marks each kernel an XLA:CPU program runs with its HLO
    instruction (`hlo_op`) and module (`hlo_module`). Five steps: one full
    step of `LookSAMModel(k=5)` among its cheap ones.
    """
    space = _trace(traced, iterator, steps)
    times = collections.Counter()
    for plane in space.planes:
        stat_names = plane.stat_metadata
        for line in plane.lines:
            for event in line.events:
                stats = {stat_names[s.metadata_id].name: s for s in event.stats}
                if "hlo_op" not in stats or "hlo_module" not in stats:
                    continue
                module = stats["hlo_module"]
                module = module.str_value or stat_names[module.ref_value].name
                kind = kernel_kind(plane.event_metadata[event.metadata_id].name)
                times[(program_name(module), kind)] += event.duration_ps / 1e9 / steps
    return times


def xla_kernel_table(
    model_name: str, modes: dict, batch_size: int, rounds: int = 3, kinds: int = 8
) -> str:
    """Markdown: XLA kernel ms per step of each mode, in all, per program and per kind.

    Each mode is traced once per round, the modes in turn (a busy machine
    slows them alike); each cell is the median over rounds.
    """
    from benchmarks.environment import random_dataset
    from benchmarks.modes import compile_mode

    dataset = random_dataset(batch_size)
    traced, iterators = {}, {}
    for name, mode in modes.items():
        traced[name] = compile_mode(model_name, mode, xla=True)
        traced[name].fit(dataset, 1)
        iterators[name] = iter(dataset)
        traced[name].train_steps(iterators[name], 1)
    traces = {name: [] for name in modes}
    for _ in range(rounds):
        for name in modes:
            traces[name].append(xla_kernel_times(traced[name], iterators[name]))
    times = {
        name: {
            key: statistics.median(t[key] for t in runs)
            for key in set().union(*runs)
        }
        for name, runs in traces.items()
    }

    def row(label, select):
        cells = [sum(ms for key, ms in t.items() if select(key)) for t in times.values()]
        return f"| {label} | " + " | ".join(f"{ms:.1f}" for ms in cells) + " |"

    lines = ["| XLA kernels (ms/step) | " + " | ".join(times) + " |", "|---|" + "---|" * len(times)]
    lines.append(row("**all**", lambda key: True))
    for program in sorted({p for t in times.values() for p, _ in t}):
        lines.append(row(f"program `{program}`", lambda key, p=program: key[0] == p))
    by_kind = collections.Counter()
    for t in times.values():
        for (_, kind), ms in t.items():
            by_kind[kind] = max(by_kind[kind], ms)
    for kind, _ in by_kind.most_common(kinds):
        lines.append(row(f"kind `{kind}`", lambda key, k=kind: key[1] == k))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.environment import configure_device, machine_description

    tf_device = configure_device("cpu", threads=args.threads)
    modes = {}
    for name in args.modes:
        if unavailable_reason(args.known[name]) is None:
            modes[name] = args.known[name]
    results = {
        (model_name, xla): time_group(model_name, xla, modes, args)
        for model_name in args.models
        for xla in args.xla
    }
    print(f"## Anatomy of a SAM step, batch {args.batch_size}, {args.clock} clock, "
          f"{args.threads} thread(s)\n")
    print(f"Command: `python benchmarks/anatomy.py {' '.join(argv or sys.argv[1:])}`  ")
    print(f"Machine: {machine_description(tf_device)}\n")
    print(results_table(results))
    if args.op_counts:
        for model_name in args.models:
            print(f"\n### Ops executed per step, {model_name}, XLA off (types that differ)\n")
            print(op_count_table(model_name, modes, False, args.batch_size))
    if args.xla_kernels:
        for model_name in args.models:
            print(f"\n### Time in XLA kernels per step, {model_name} (XLA on)\n")
            print(xla_kernel_table(model_name, modes, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
