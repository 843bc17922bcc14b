"""Every script in examples/ runs at `--smoke` size, and has `--help`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(script, *args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "agg"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def test_the_five_examples_exist():
    assert [p.name for p in EXAMPLES] == [
        "cifar10_sam_vs_sgd.py",
        "custom_training_loop.py",
        "finetune_kerashub.py",
        "finetune_with_sam.py",
        "label_noise_cifar10.py",
    ]


EXPECTED_OUTPUT = {
    "cifar10_sam_vs_sgd": ["test error", "SGD", "SAM rho=0.05"],
    "label_noise_cifar10": ["Clean test accuracy", " 40%"],
    "custom_training_loop": ["SGD test accuracy", "SAM test accuracy"],
    "finetune_with_sam": ["SAM, frozen backbone", "SAM, top block unfrozen"],
    "finetune_kerashub": ["SAM fine-tuned bert_text_classifier", "saved the fine-tuned"],
}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_smoke_size(script, tmp_path):
    result = run(script, "--smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for text in EXPECTED_OUTPUT[script.stem]:
        assert text in result.stdout
    if script.stem in ("cifar10_sam_vs_sgd", "label_noise_cifar10"):
        # Not the real run's default --out, whose backup a later real run resumes.
        assert [p.name for p in (tmp_path / "runs").iterdir()] == [f"{script.stem}-smoke"]


def test_help_of_every_example(tmp_path):
    # One interpreter for all five: --help must not train or load data.
    code = (
        "import runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = [path, '--help']\n"
        "    try:\n"
        "        runpy.run_path(path, run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (path, exit.code)\n"
        "    print('HELP-OK', path)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, EXAMPLES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("HELP-OK") == len(EXAMPLES) == 5
    assert "--smoke" in result.stdout
    assert not any(tmp_path.iterdir()), "--help wrote files"
