"""The step-time benchmark runs end to end and prints its Markdown table.

No speed is asserted anywhere here: timings on a shared machine are noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.timing import summarize

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
