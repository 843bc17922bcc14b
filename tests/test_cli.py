"""The `keras-sam` command line: help, subcommands, and one-line argument errors."""

import os
import subprocess
import sys

import pytest

from keras_sam import cli
from keras_sam.demo import DEFAULT_ADAPTIVE_RHO, DEFAULT_RHO, QUICK, settings_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*arguments, tf_log_level="2"):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=tf_log_level, PYTHONPATH=ROOT)
    if tf_log_level is None:
        del environment["TF_CPP_MIN_LOG_LEVEL"]
    return subprocess.run(
        [sys.executable, "-m", "keras_sam", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )


def python_lines(stderr):
    """stderr without what TensorFlow's CUDA build may log about a missing GPU
    on a machine without one (README's `[cpu]` install has none)."""
    return [
        line
        for line in stderr.splitlines()
        if not line.startswith("WARNING: All log messages before absl::InitializeLog()")
        and "cudart_stub.cc" not in line
    ]


def test_python_m_keras_sam_help_lists_the_demo():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keras-sam")
    assert "demo" in result.stdout
    assert "Traceback" not in result.stderr


def test_bad_argument_in_a_subprocess_is_one_line_and_status_2():
    # As a user runs it: TensorFlow's log level not set, so its start-up notes
    # (CPU instruction sets) would precede the error unless the command hid them.
    result = run_module("demo", "--noise", "1.5", tf_log_level=None)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert python_lines(result.stderr) == [
        "keras-sam demo: error: argument --noise: must be in [0, 1), got 1.5 "
        "(see 'keras-sam demo --help')"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "arguments, option",
    [
        (["--noise", "1"], "--noise"),
        (["--noise", "-0.1"], "--noise"),
        (["--noise", "lots"], "--noise"),
        (["--rho", "-0.01"], "--rho"),
        (["--rho", "nan"], "--rho"),
        (["--optimizer", "lion"], "--optimizer"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "2.5"], "--epochs"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "4294967296"], "--seed"),  # beyond NumPy's 32-bit seeds
        (["--lr", "0"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_demo_arguments_exit_2_with_one_line(arguments, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *arguments])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("keras-sam demo: error: argument ")
    assert option in lines[0]


@pytest.mark.parametrize(
    "option, value, culprit, reason",
    [
        ("--out", "{file}", "afile", "exists and is not a directory"),
        ("--out", "{file}/figures", "afile", "is not a directory, so"),
        ("--json", "{folder}", "afolder", "is a directory, not a file"),
        ("--json", "{file}/table.json", "afile", "is not a directory, so"),
    ],
)
def test_bad_demo_paths_fail_before_training(
    option, value, culprit, reason, tmp_path, monkeypatch, capsys
):
    """A path the demo could not write to is refused up front, not after the
    runs (whose results would be lost) and not as a traceback."""
    from keras_sam import demo

    def no_training(*args, **kwargs):
        raise AssertionError("the demo started training")

    monkeypatch.setattr(demo, "run_demo", no_training)
    (tmp_path / "afile").write_text("")
    (tmp_path / "afolder").mkdir()
    value = value.format(file=tmp_path / "afile", folder=tmp_path / "afolder")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--quick", "-q", "--out", str(tmp_path / "out"), option, value])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"keras-sam demo: error: argument {option}: ")
    assert reason in lines[0] and repr(str(tmp_path / culprit)) in lines[0]
    assert lines[0].endswith("(see 'keras-sam demo --help')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "afolder"]  # nothing written


def test_demo_paths_that_do_not_exist_yet_are_accepted(tmp_path):
    args = cli.build_parser().parse_args(
        ["demo", "--out", str(tmp_path / "a" / "b"), "--json", str(tmp_path / "c" / "t.json")]
    )
    assert (args.out, args.json) == (str(tmp_path / "a" / "b"), str(tmp_path / "c" / "t.json"))
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


def test_missing_or_unknown_subcommand_exits_2(capsys):
    for arguments in ([], ["dance"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(arguments)
        assert exit_info.value.code == 2
        assert len(capsys.readouterr().err.splitlines()) == 1


def test_version(capsys):
    from keras_sam import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"keras-sam {__version__}"


def test_a_subcommand_whose_module_is_missing_is_absent(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("keras_sam.demo", "keras_sam.no_such_module"))
    subparsers = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert list(subparsers.choices) == ["demo"]


def test_quick_defaults_give_way_to_explicit_arguments():
    parser = cli.build_parser()
    quick = settings_from_args(parser.parse_args(["demo", "--quick"]))
    assert (quick.epochs, quick.num_samples) == (QUICK["epochs"], QUICK["num_samples"])
    assert quick.rho == DEFAULT_RHO and not quick.adaptive
    longer = settings_from_args(parser.parse_args(["demo", "--quick", "--epochs", "7"]))
    assert longer.epochs == 7 and longer.num_samples == QUICK["num_samples"]
    full = settings_from_args(parser.parse_args(["demo"]))
    assert (full.epochs, full.num_samples, full.noise, full.optimizer) == (100, None, 0.4, "sgd")
    assert settings_from_args(parser.parse_args(["demo", "--adaptive"])).rho == (
        DEFAULT_ADAPTIVE_RHO
    )
    assert settings_from_args(parser.parse_args(["demo", "--adaptive", "--rho", "0.5"])).rho == 0.5
    args = parser.parse_args(["demo", "--seeds", "0", "1", "2", "-q"])
    assert args.seeds == [0, 1, 2] and args.verbose == 0


def test_the_pipelines_are_attributes_of_the_package():
    """`keras_sam.train.select_strategy(...)` works after a bare
    `import keras_sam`; a typo is still an AttributeError."""
    import doctest
    import importlib

    import keras_sam

    for name in ("train", "demo", "data"):
        assert getattr(keras_sam, name) is importlib.import_module(f"keras_sam.{name}")
    assert callable(keras_sam.train.select_strategy)
    with pytest.raises(AttributeError, match="'keras_sam' has no attribute 'trian'"):
        keras_sam.trian  # noqa: B018
    failures, tried = doctest.testmod(keras_sam)
    assert tried > 0 and failures == 0


def test_only_the_command_quiets_tensorflows_start_up_notes():
    import doctest

    from keras_sam import _command_line

    failures, tried = doctest.testmod(_command_line)
    assert tried == 4 and failures == 0
    # As a library (this test process), TensorFlow's logging is left alone.
    assert not _command_line.started_as_the_command(sys.argv[0], getattr(sys, "orig_argv", []))
    # `python -m pip ...` names a module too, but not ours.
    assert not _command_line.started_as_the_command("-m", ["python", "-m", "pip", "keras_sam"])
