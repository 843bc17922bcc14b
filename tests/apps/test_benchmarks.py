"""The step-time benchmark runs end to end and prints its Markdown table.

No speed is asserted anywhere here: timings on a shared machine are noise.
What is asserted is what the tables are made of: which modes ran, how many
passes their steps took, which rounds were paired with which. Tests that run
`step_time.py` in this process need it to be a TensorFlow process
(`tensorflow_only`); its JAX rows come from a subprocess of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.timing import interleaved_rounds, summarize

ROOT = Path(__file__).resolve().parents[2]
tensorflow_only = pytest.mark.tensorflow_only
# The smallest run of step_time.py: the tiny model, one step of each mode.
TINY = [
    "--models", "tiny_cnn", "--steps", "1", "--rounds", "1", "--warmup-steps", "1",
    "--batch-size", "4",
]  # fmt: skip


def _table(stdout: str, header_start: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header starts so."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.split("|")[1:-1]])
    return rows


def test_summary_is_median_of_paired_ratios():
    # Round 2 is slow for both modes; pairing keeps its ratio at 2.1.
    times = {"plain": [10.0, 30.0, 10.0, 12.0], "sam": [19.0, 63.0, 22.0, 24.0]}
    stats = summarize(times, baseline="plain")
    assert stats["sam"].median_ms == pytest.approx((22.0 + 24.0) / 2)
    assert stats["sam"].range_ms == (19.0, 63.0)
    # Ratios 1.9, 2.1, 2.2, 2.0: median 2.05.
    assert stats["sam"].ratio == pytest.approx(2.05)
    assert stats["sam"].ratio_range == pytest.approx((1.9, 2.2))
    assert stats["plain"].ratio == 1.0
    assert summarize(times, baseline=None)["sam"].ratio is None


def test_settle_steps_run_untimed_right_before_each_timed_call():
    now, calls = [0.0], []

    def runner(name, seconds):
        def run():
            calls.append(name)
            now[0] += seconds

        return run

    times = interleaved_rounds(
        {"plain": runner("plain", 0.010), "sam": runner("sam", 0.020)},
        rounds=3, steps=2, clock=lambda: now[0],
        settle={"plain": runner("settle plain", 5.0), "sam": runner("settle sam", 7.0)},
    )
    # ms per step of the timed calls only: the slow settle calls are not counted.
    assert times == {"plain": [pytest.approx(5.0)] * 3, "sam": [pytest.approx(10.0)] * 3}
    # Each round starts one mode later; every timed call follows its own settle.
    assert calls == [
        "settle plain", "plain", "settle sam", "sam",
        "settle sam", "sam", "settle plain", "plain",
        "settle plain", "plain", "settle sam", "sam",
    ]


@pytest.mark.slow
def test_script_prints_a_markdown_table():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    completed = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "step_time.py"),
            "--models", "small_cnn", "--modes", "plain,sam", "--xla", "off",
            "--steps", "2", "--rounds", "1", "--warmup-steps", "1", "--batch-size", "16",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| model | mode | xla |"))
    assert "ratio vs plain Keras" in header
    rows = [line for line in lines if line.startswith("| small_cnn |")]
    assert [row.split("|")[2].strip() for row in rows[:2]] == ["plain Keras fit", "SAMModel"]
    assert all("no retracing" in row for row in rows[:2])
    assert any(line.startswith("Machine: CPU") for line in lines)


def test_memory_table_pairs_each_name_with_plain_under_the_same_name():
    from benchmarks.step_time import memory_table

    mib = 1024**2

    def probe(peak_mib):
        return {"weight_bytes": mib, "tensor_peak_bytes": int(peak_mib * mib), "rss_peak_bytes": 0}

    # Two names: plain peaks 80 and 90, SAM 81 and 100 -> extra 1 and 10 MiB.
    memory = {
        ("small_cnn", False, "plain"): [probe(80), probe(90)],
        ("small_cnn", False, "sam"): [probe(81), probe(100)],
    }
    rows = memory_table(memory).splitlines()[2:]
    plain_cells = [cell.strip() for cell in rows[0].split("|")]
    sam_cells = [cell.strip() for cell in rows[1].split("|")]
    assert plain_cells[5:7] == ["80.00–90.00", "—"]
    assert sam_cells[5:8] == ["81.00–100.00", "1.00–10.00", "2.00"]
    # One name: plain numbers, no ranges.
    single = {key: probes[:1] for key, probes in memory.items()}
    assert [c.strip() for c in memory_table(single).splitlines()[3].split("|")][5:7] == [
        "81.00",
        "1.00",
    ]


def test_diagnostic_model_is_the_small_cnn_without_batch_norm():
    import keras

    from benchmarks.models import DEFAULT_MODEL_NAMES, build, weight_shapes

    with_bn, without_bn = build("small_cnn", keras), build("small_cnn_no_bn", keras)
    batch_norm = [
        w for layer in with_bn.layers
        if isinstance(layer, keras.layers.BatchNormalization) for w in layer.weights
    ]
    assert len(batch_norm) == 12
    layer_types = {type(layer) for layer in without_bn.layers}
    assert keras.layers.BatchNormalization not in layer_types
    kept = [tuple(w.shape) for w in with_bn.weights if all(w is not b for b in batch_norm)]
    assert weight_shapes(without_bn) == kept
    assert "small_cnn_no_bn" not in DEFAULT_MODEL_NAMES


@tensorflow_only
def test_device_gpu_without_a_gpu_is_one_line_and_status_2(monkeypatch, capsys):
    import tensorflow as tf

    from benchmarks import step_time

    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config,
        "list_physical_devices",
        lambda kind=None: [] if kind == "GPU" else real(kind),
    )
    assert step_time.main(["--device", "gpu", "--models", "small_cnn", "--modes", "plain"]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        "step_time.py: error: `--device gpu` was asked for, but TensorFlow sees no GPU."
    )


@tensorflow_only
def test_no_mode_that_can_run_is_an_error_not_a_crash(monkeypatch, capsys):
    """E.g. only Keras 2 modes asked for where tf-keras is not installed."""
    from benchmarks import step_time

    monkeypatch.setattr(step_time, "unavailable_reason", lambda mode: "tf-keras is not installed")
    argv = ["--models", "small_cnn", "--modes", "tfk_plain,tfk_sam", "--xla", "off"]
    assert step_time.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "step_time.py: error: none of the modes asked for can run here:"
    assert len(lines) == 3 and all("tf-keras is not installed" in line for line in lines[1:])


def test_torch_benchmark_reference_is_hand_derived_sam():
    """The NumPy SAM step that checks the PyTorch SAM (its docstring example, by hand)."""
    import doctest

    from benchmarks import torch_step_time

    failures, attempted = doctest.testmod(torch_step_time, verbose=False)
    assert (failures, attempted) == (0, 5)


def test_torch_benchmark_reference_is_one_sam_step_not_sgd():
    import numpy as np

    from benchmarks.torch_step_time import numpy_sam_reference

    x, y, w = np.eye(2), np.array([1.0, -1.0]), np.array([0.0, 0.0])
    # g = x^T (x w - y) / 2 = [-0.5, 0.5]; e = rho g / |g|; g' = (w + e - y) / 2.
    e = 0.2 * np.array([-0.5, 0.5]) / np.sqrt(0.5)
    expected = w - 0.1 * (w + e - y) / 2
    np.testing.assert_allclose(numpy_sam_reference(w, x, y, 0.2, 0.1), expected, rtol=1e-10)
    plain_sgd = w - 0.1 * (w - y) / 2
    assert not np.allclose(expected, plain_sgd)


def test_torch_benchmark_without_torch_is_one_line_and_status_2(monkeypatch, capsys):
    from benchmarks import torch_step_time

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert torch_step_time.main(["--models", "small_cnn", "--rounds", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("torch_step_time.py: error: PyTorch is not installed;")
    assert "\n" not in error


def test_torch_benchmark_rejects_unknown_models(capsys):
    from benchmarks import torch_step_time

    with pytest.raises(SystemExit) as exit_info:
        torch_step_time.parse_args(["--models", "small_cnn,vgg"])
    assert exit_info.value.code == 2
    assert (
        "argument --models: unknown model vgg; expected a comma-separated list of "
        "small_cnn, resnet20" in capsys.readouterr().err
    )


def _benchmark_modules() -> list[str]:
    import pkgutil

    import benchmarks

    # torch_models imports PyTorch, which keras-sam does not depend on.
    return sorted(
        f"benchmarks.{info.name}"
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name != "torch_models"
    )


@pytest.mark.parametrize("name", _benchmark_modules())
def test_benchmark_docstring_examples_run(name):
    import doctest
    import importlib

    failures, _ = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert failures == 0


@tensorflow_only
def test_xla_kernel_table_splits_sam_into_its_two_pass_programs():
    from benchmarks.anatomy import xla_kernel_table
    from benchmarks.modes import MODES

    table = xla_kernel_table("small_cnn", {n: MODES[n] for n in ("plain", "sam")}, batch_size=8)
    rows = {
        line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:-1]]
        for line in table.splitlines()[2:]
    }
    plain_all, sam_all = rows["**all**"]
    assert plain_all > 0 and sam_all > 0
    assert rows["program `one_step_on_data`"] == [plain_all, 0.0]
    clean, perturbed = rows["program `clean_pass`"][1], rows["program `perturbed_pass`"][1]
    assert rows["program `clean_pass`"][0] == rows["program `perturbed_pass`"][0] == 0.0
    assert clean > 0 and perturbed > 0
    assert abs(clean + perturbed - sam_all) <= 0.1 + 1e-9  # each printed to 0.1 ms
    assert any(label.startswith("kind `convolution") for label in rows)


def test_mode_groups_keep_the_default_table_and_add_the_variants():
    from benchmarks.modes import DEFAULT_MODES, MODE_GROUPS, MODES, expand_modes
    from benchmarks.step_time import parse_args

    assert DEFAULT_MODES == (
        "plain", "sam", "asam", "looksam", "gsam", "sam_split2",
        "tfk_plain", "tfk_sam", "tfk_sam_train", "tfk_sam_split2",
    )  # fmt: skip
    assert parse_args([]).modes == list(DEFAULT_MODES)
    assert MODE_GROUPS["variants"] == (
        "plain", "sam", "fsam", "sam_on", "msam", "rst", "aesam", "sam_rho0", "sam_late",
    )  # fmt: skip
    assert set(MODE_GROUPS["all"]) == set(MODES)
    # Groups and names mix; each mode once, in order.
    assert expand_modes("sam,variants")[:3] == ["sam", "plain", "fsam"]
    assert parse_args(["--modes", "variants"]).backends == ["tensorflow"]


def test_late_phase_mode_starts_its_sam_phase_after_any_run():
    import keras

    from benchmarks.modes import LATE_PHASE_START, MODES

    model = MODES["sam_late"].wrap(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    assert float(model.rho(LATE_PHASE_START - 1)) == 0.0
    assert float(model.rho(LATE_PHASE_START)) == pytest.approx(0.05)


@tensorflow_only
def test_variant_modes_run_and_take_the_passes_they_should(capsys):
    from benchmarks import step_time

    assert step_time.main([*TINY, "--modes", "variants", "--xla", "off"]) == 0
    out = capsys.readouterr().out
    timed = {row[1]: row for row in _table(out, "| model | mode | xla |")}
    assert len(timed) == 9 and all(row[-1] == "no retracing" for row in timed.values())
    passes = {row[3]: row[4] for row in _table(out, "| model | backend | xla | mode |")}
    two_pass = ("SAMModel", "FriendlySAMModel", 'SAMModel(perturb="normalization")')
    assert {passes[label] for label in two_pass} == {"1 of 1"}
    one_pass = [
        "MSAMModel (one pass)", "SAMModel(rho=0)",
        "SAMModel(rho=LatePhase(0.05, start_step=1_000_000))",
    ]  # fmt: skip
    assert [passes[label] for label in one_pass] == ["0 of 1"] * 3
    assert passes["RandomizedSAMModel(probability=0.5)"] in ("0 of 1", "1 of 1")
    assert "plain Keras fit" not in passes  # counted for keras-sam's models only


@tensorflow_only
def test_jax_rows_come_from_a_subprocess_paired_with_tensorflow_xla_rounds(capsys):
    from benchmarks import step_time

    argv = [*TINY, "--modes", "plain,sam", "--xla", "on", "--backends", "tensorflow,jax"]
    assert step_time.main(argv) == 0
    out = capsys.readouterr().out
    assert "JAX rows: JAX " in out
    rows = _table(out, "| model | mode | TensorFlow XLA ms/step")
    assert [row[1] for row in rows] == ["plain Keras fit", "SAMModel"]
    for row in rows:
        assert row[2] != "—" and row[4] != "—"  # TensorFlow's and JAX's ms/step
        assert row[6] != "—" and "unpaired" not in row[6]  # paired by round
        assert row[-1] == "no retracing"
    targets = _table(out, "| model | JAX SAMModel <= 2.0x")
    assert targets[0][0] == "tiny_cnn" and targets[0][3] == "met"
    assert "TensorFlow SAMModel with XLA" in out and "paired by round" in out
    passes = {
        (row[1], row[3]): row[4] for row in _table(out, "| model | backend | xla | mode |")
    }
    assert passes[("jax", "SAMModel")] == passes[("tensorflow", "SAMModel")] == "1 of 1"


def test_a_partner_prepares_after_compiling_and_runs_each_round_after_ours():
    """`time_group`'s protocol with a partner process, and a partner that fails."""
    import argparse

    from benchmarks.backend_worker import WorkerError
    from benchmarks.modes import MODES
    from benchmarks.step_time import time_group

    class Partner:
        def __init__(self, fail_at=None):
            self.error, self.calls, self.fail_at = None, [], fail_at

        def request(self, command, **fields):
            self.calls.append((command, *fields.values()))
            if command == self.fail_at:
                self.error = "boom"
                raise WorkerError("boom")
            return {"group": {"times": {"plain": [1.0, 1.0]}}} if command == "finish" else {}

    args = argparse.Namespace(
        steps=1, rounds=2, settle_steps=0, warmup_steps=1, batch_size=4, clock="wall"
    )
    partner = Partner()
    group = time_group("tiny_cnn", False, {"plain": MODES["plain"]}, args, partner=partner)
    assert partner.calls == [("prepare", "tiny_cnn"), ("round", 0), ("round", 1), ("finish",)]
    assert group["partner"] == {"times": {"plain": [1.0, 1.0]}}
    assert len(group["times"]["plain"]) == 2 and group["timed_steps"] == 2

    failing = Partner(fail_at="round")
    group = time_group("tiny_cnn", False, {"plain": MODES["plain"]}, args, partner=failing)
    # Our rounds go on without it; its group is None and its error kept.
    assert failing.calls == [("prepare", "tiny_cnn"), ("round", 0)]
    assert group["partner"] is None and failing.error == "boom"
    assert len(group["times"]["plain"]) == 2


def test_jax_tables_pair_rounds_and_say_when_they_could_not():
    from benchmarks.modes import MODES
    from benchmarks.step_time import backends_table, jax_targets, passes_table

    def group(times, two_pass=None, steps=12, **extra):
        return {
            "modes": {name: MODES[name] for name in times},
            "times": times,
            "first_epoch_s": {name: 1.0 for name in times},
            "retraces": {name: 0 for name in times},
            "two_pass_steps": two_pass or {name: None for name in times},
            "timed_steps": steps,
            **extra,
        }

    tf = group({"plain": [10.0, 20.0, 10.0], "sam": [20.0, 40.0, 21.0]})
    # Round 2 slow for both backends: paired, JAX's SAM takes 0.9x TensorFlow's.
    jax = group(
        {"plain": [9.0, 18.0, 9.0], "sam": [18.0, 36.0, 18.9]},
        two_pass={"plain": None, "sam": [4.0, 3.0, 3.0]}, paired=True,
    )
    rows = _table(backends_table({("small_cnn", True): tf}, {"small_cnn": jax}), "| model |")
    assert rows[1][:7] == [
        "small_cnn", "SAMModel", "21.0 (20.0–40.0)", "2.00 (2.00–2.10)", "18.9 (18.0–36.0)",
        "2.00 (2.00–2.10)", "0.90 (0.90–0.90)",
    ]  # fmt: skip
    targets = jax_targets({("small_cnn", True): tf}, {"small_cnn": jax})
    assert "| small_cnn | 2.000: met | 0.900 (0.900–0.900): met | met |" in targets
    assert "JAX takes 0.90x TensorFlow's time (paired by round, 0.90–0.90x)" in targets
    # Not paired (the JAX rounds ran on their own): the medians' ratio, said so.
    alone = {**jax, "paired": False}
    rows = _table(backends_table({("small_cnn", True): tf}, {"small_cnn": alone}), "| model |")
    assert rows[1][6] == "0.90 (unpaired)"
    # No TensorFlow group with XLA: nothing to compare with.
    rows = _table(backends_table({}, {"small_cnn": jax}), "| model |")
    assert rows[1][2] == rows[1][6] == "—"
    # 10 of 12 timed steps (4 a round) took two passes: floor 1.83. Each round
    # over its own floor: 2.00 / 2.00, 2.00 / 1.75, 2.10 / 1.75.
    passes = _table(passes_table([("small_cnn", "jax", True, jax)]), "| model |")
    assert passes == [[
        "small_cnn", "jax", "on", "SAMModel", "10 of 12", "1.83", "2.00 (2.00–2.10)",
        "1.14 (1.00–1.20)",
    ]]


@pytest.mark.slow
def test_benchmark_code_builds_the_models_on_jax_without_tensorflow():
    """The JAX path imports no TensorFlow of its own (keras-sam itself may)."""
    script = (
        "import sys, keras\n"
        "from benchmarks import backend_worker, environment, modes, step_time, timing\n"
        "from benchmarks.models import MODEL_NAMES, build\n"
        "models = [build(name, keras) for name in MODEL_NAMES]\n"
        "images, labels = environment.random_batches(2)\n"
        "assert models[0](images[0]).shape == (2, 10)\n"
        "assert keras.backend.backend() == 'jax'\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]


@tensorflow_only
def test_step_time_refuses_to_run_its_rows_on_another_backend(monkeypatch, capsys):
    import keras

    from benchmarks import step_time

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert step_time.main([*TINY, "--modes", "plain"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("step_time.py: error: this process must run Keras on TensorFlow")
    assert "--backends tensorflow,jax" in error
