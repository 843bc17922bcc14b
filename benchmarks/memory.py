"""Peak memory of one training mode, measured in a fresh subprocess per mode.

Two numbers per mode, both relative to the same process right after the model
was built and compiled (weights allocated, nothing traced or run yet):

- tensor memory: the peak bytes TensorFlow's allocator held while training,
  from `tf.config.experimental.get_memory_info` (on a GPU its own allocator; on
  CPU the probe turns on TensorFlow's BFC allocator with
  `TF_CPU_ALLOCATOR_USE_BFC=true`, which keeps these statistics). This is the
  number to compare with a copy of the weights: it holds activations,
  gradients, optimizer slots and SAM's ε̂, w + ε̂ and second gradient.
- RSS: the process's peak resident memory (`resource.getrusage` maxrss) minus
  its RSS after the build.

Each probe runs TensorFlow with one inter-op thread, so that ops run in a
steadier order (with a pool the peak varied by ±10 MiB from run to run; with
one thread plain Keras's small-CNN peak still differed by up to 18 MiB between
two runs under the same name). It also counts tracing and graph optimization,
and the allocator's caching, so it is coarse (several MiB of noise).

Without XLA the peak also depends on the order in which TensorFlow's graph
executor runs ready ops, and that order follows the ops' names: `--name`
renames the trained model (its ops are named after it) to see how much. With
XLA the compiler's own scheduler decides and names do not matter.

Run one probe by hand (prints one JSON line):

    python -m benchmarks.memory small_cnn sam off --steps 2
    python -m benchmarks.memory small_cnn sam off --steps 2 --name a
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["measure", "probe"]

_MARKER = "MEMORY_PROBE "
_ROOT = Path(__file__).resolve().parent.parent


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def probe(
    model_name: str,
    mode_name: str,
    xla: bool,
    steps: int,
    device: str,
    name: str | None = None,
    batch_size: int = 128,
) -> dict:
    """Trains one mode for two epochs of `steps` steps; returns its memory use.

    `name`, when given, renames the model that `fit` trains (the wrapper, for
    a SAM mode) before its train function is traced. On a CPU, start the
    process with `TF_CPU_ALLOCATOR_USE_BFC=true` (`measure` and `main` do).
    """
    from benchmarks.environment import configure_device, random_dataset

    tf_device = configure_device(device)
    import tensorflow as tf

    # One inter-op thread: a steadier op order, so the peak varies less from
    # run to run (see the module docstring).
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from benchmarks.modes import MODES, compile_mode

    dataset = random_dataset(batch_size)
    traced = compile_mode(model_name, MODES[mode_name], xla)
    if name is not None:
        # Keras 3 names are plain attributes; tf-keras's `name` is read-only.
        setattr(traced.model, "_name" if traced.mode.framework == "tf_keras" else "name", name)
    weight_bytes = sum(
        int(v.numpy().nbytes) for v in traced.model.trainable_weights
    )
    rss_after_build = _current_rss_bytes()
    tensors_after_build = tf.config.experimental.get_memory_info(tf_device)["current"]
    tf.config.experimental.reset_memory_stats(tf_device)
    traced.fit(dataset, steps)
    traced.fit(dataset, steps)
    peak = tf.config.experimental.get_memory_info(tf_device)["peak"]
    return {
        "weight_bytes": weight_bytes,
        "tensor_peak_bytes": int(peak - tensors_after_build),
        "rss_peak_bytes": int(_peak_rss_bytes() - rss_after_build),
    }


def measure(
    model_name: str,
    mode_name: str,
    xla: bool,
    steps: int,
    device: str,
    name: str | None = None,
    timeout: float = 900,
    batch_size: int = 128,
) -> dict:
    """Runs `probe` in a fresh Python process and returns its result."""
    env = dict(os.environ)
    env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    command = [
        sys.executable, "-m", "benchmarks.memory", model_name, mode_name,
        "on" if xla else "off", "--steps", str(steps), "--device", device,
        "--batch-size", str(batch_size),
    ] + ([] if name is None else ["--name", name])
    completed = subprocess.run(
        command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    for line in completed.stdout.splitlines():
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER):])
    raise RuntimeError(
        f"The memory probe for {model_name}/{mode_name} (xla {xla}) failed with exit "
        f"code {completed.returncode}:\n{completed.stderr[-3000:]}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("mode")
    parser.add_argument("xla", choices=("on", "off"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"))
    parser.add_argument("--name", default=None, help="rename the trained model")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    # Before TensorFlow starts: on a CPU only the BFC allocator keeps the
    # statistics read here (`measure` sets it for its subprocess too).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    result = probe(
        args.model, args.mode, args.xla == "on", args.steps, args.device, args.name,
        args.batch_size,
    )
    print(_MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
