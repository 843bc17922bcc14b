"""The step-time benchmark runs end to end and prints its Markdown table.

No speed is asserted anywhere here: timings on a shared machine are noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.timing import interleaved_rounds, summarize

ROOT = Path(__file__).resolve().parent.parent


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
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
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
