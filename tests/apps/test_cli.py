"""The `keras-sam` command line: help, subcommands, and one-line errors.

A bad argument, a missing extra and a path the command cannot use are each
one line on stderr, `keras-sam COMMAND: error: ...`, and exit status 2,
never a traceback; the library itself imports none of the applications'
dependencies.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from keras_sam.apps import cli
from keras_sam.apps._command_line import _NATIVE_LOG_LINE
from keras_sam.apps.demo import DEFAULT_ADAPTIVE_RHO, DEFAULT_RHO, QUICK, settings_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def run_python(code, *, cwd=ROOT):
    """`python -c code` as a user runs it, with the working tree's keras_sam."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=300,
    )


def error_lines(stderr):
    """stderr without TensorFlow's native log lines and start-up notes (`python -c`
    runs do not hide them as the command does), and without a CUDA build's complaints."""
    return [
        line
        for line in python_lines(stderr)
        if not _NATIVE_LOG_LINE.match(line)
        and not line.startswith("To enable the following instructions")
    ]


def assert_one_line_error(result, command, *parts):
    """Exit status 2 and a single `keras-sam COMMAND: error: ...` line holding `parts`."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"keras-sam {command}: error: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    assert result.returncode == 2
    return lines[0]


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
    # The library's own check (keras_sam._validation) gives the reason.
    assert python_lines(result.stderr) == [
        "keras-sam demo: error: argument --noise: `noise` must be a finite real number >= 0 "
        "and < 1. Received: noise=1.5. (see 'keras-sam demo --help')"
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
        (["--methods", "adam"], "--methods"),
        (["--verbose", "3"], "--verbose"),
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
    from keras_sam.apps import demo

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
    monkeypatch.setattr(
        cli, "SUBCOMMAND_MODULES", ("keras_sam.apps.demo", "keras_sam.apps.no_such_module")
    )
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
    assert settings_from_args(args).verbose == 0 and full.verbose == 1
    assert full.methods == ("base", "sam")
    only = settings_from_args(parser.parse_args(["demo", "--methods", "sam"]))
    assert only.methods == ("sam",)


def test_the_options_and_the_settings_share_their_checks_and_defaults(capsys):
    """A value the command line refuses, `DemoSettings` refuses with the same
    reason; a default exists once, in the dataclass."""
    from keras_sam import InvalidArgumentError
    from keras_sam.apps.demo import DemoSettings

    for option, field, value in (("--noise", "noise", 1.5), ("--rho", "rho", -1.0),
                                 ("--epochs", "epochs", 0), ("--lr", "learning_rate", 0.0)):
        with pytest.raises(InvalidArgumentError) as from_python:
            DemoSettings(**{field: value})
        with pytest.raises(SystemExit):
            cli.main(["demo", option, str(value)])
        line = capsys.readouterr().err
        assert f"argument {option}" in line and f": {from_python.value} (see" in line
    with pytest.raises(InvalidArgumentError, match="must not repeat"):
        DemoSettings(methods=("base", "base"))
    assert DemoSettings().rho == DEFAULT_RHO
    assert DemoSettings(adaptive=True).rho == DEFAULT_ADAPTIVE_RHO


def test_the_applications_are_apart_from_the_library():
    """`import keras_sam` (and building the command's parser) imports none of
    the applications' dependencies; `keras_sam.train` and the like say where
    the applications went; `keras_sam.apps.train` works without an import."""
    result = run_python(
        """
        import sys
        import keras  # which itself imports matplotlib where it is installed

        def imported():
            return {m.split(".")[0] for m in sys.modules} & {
                "tensorflow_datasets", "matplotlib", "mnist1d"}

        by_keras = imported()
        import keras_sam
        after_library = sorted(imported() - by_keras)
        import keras_sam.apps.cli
        keras_sam.apps.cli.build_parser()
        after_parser = sorted(imported() - by_keras)
        print(after_library, after_parser)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0] == "[] []"

    import doctest
    import importlib

    import keras_sam
    import keras_sam.apps

    for name in ("train", "demo", "data"):
        with pytest.raises(AttributeError, match=f"it moved to keras_sam.apps.{name}"):
            getattr(keras_sam, name)
        assert getattr(keras_sam.apps, name) is importlib.import_module(f"keras_sam.apps.{name}")
    assert callable(keras_sam.apps.train.select_strategy)
    with pytest.raises(AttributeError, match="'keras_sam' has no attribute 'trian'"):
        keras_sam.trian  # noqa: B018
    for module in (keras_sam, keras_sam.apps):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0


def test_only_the_command_quiets_tensorflows_start_up_notes():
    import doctest

    from keras_sam.apps import _command_line

    failures, tried = doctest.testmod(_command_line)
    assert tried == 4 and failures == 0
    # As a library (this test process), TensorFlow's logging is left alone.
    assert not _command_line.started_as_the_command(sys.argv[0], getattr(sys, "orig_argv", []))
    # `python -m pip ...` names a module too, but not ours.
    assert not _command_line.started_as_the_command("-m", ["python", "-m", "pip", "keras_sam"])


def test_the_option_helpers_doctests():
    import doctest

    from keras_sam.apps import _argtypes, _extras, _options

    for module in (_argtypes, _extras, _options):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


# ------------------------------------------------- missing extras, in subprocesses
def test_demo_without_mnist1d_names_the_extra(tmp_path):
    result = run_python(
        f"""
        import sys
        sys.modules["mnist1d"] = None  # as if not installed
        from keras_sam.apps.cli import main
        sys.exit(main(["demo", "--quick", "-q", "--out", {str(tmp_path / "out")!r}]))
        """
    )
    line = assert_one_line_error(result, "demo")
    assert line == (
        'keras-sam demo: error: needs mnist1d and matplotlib; install them with: '
        'pip install "keras-sam[demo]"'
    )
    assert not (tmp_path / "out").exists()


def test_train_without_tensorflow_datasets_names_the_extra(tmp_path):
    result = run_python(
        f"""
        import sys
        sys.modules["tensorflow_datasets"] = None  # as if not installed
        from keras_sam.apps.cli import main
        sys.exit(main(["train", "--out", {str(tmp_path / "run")!r}]))
        """
    )
    assert_one_line_error(
        result,
        "train",
        "needs tensorflow-datasets, tensorboard and importlib_resources; "
        'install them with: pip install "keras-sam[train]"',
    )
    assert not (tmp_path / "run").exists()


def test_plot_loss_landscape_without_matplotlib_names_the_extra():
    result = run_python(
        """
        import sys
        sys.modules["matplotlib"] = None  # as if not installed
        from keras_sam import diagnostics  # works without it
        try:
            diagnostics.plot_loss_landscape([])
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        'plot_loss_landscape needs matplotlib; install it with: pip install "keras-sam[plot]"'
    )


# -------------------------------------------- paths the command cannot use
needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where nothing can be created"
)


@needs_proc
def test_demo_out_that_cannot_be_created_is_one_line():
    result = run_module("demo", "--quick", "-q", "--out", "/proc/forbidden")
    assert_one_line_error(
        result, "demo", "`out` cannot be created", "'/proc/forbidden'", "out='/proc/forbidden'"
    )
    assert result.stdout == ""  # before any training


@needs_proc
def test_demo_json_that_cannot_be_written_is_one_line(tmp_path):
    result = run_module(
        "demo", "--quick", "-q", "--out", str(tmp_path / "out"), "--json", "/proc/forbidden/t.json"
    )
    assert_one_line_error(
        result, "demo", "`json` cannot be written", "json='/proc/forbidden/t.json'"
    )
    assert result.stdout == "" and not (tmp_path / "out").exists()  # before any training


@needs_proc
def test_train_out_that_cannot_be_created_is_one_line():
    result = run_module("train", "--out", "/proc/forbidden/x", "--max-examples", "16")
    assert_one_line_error(result, "train", "`out` cannot be created", "out='/proc/forbidden/x'")
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_train_data_dir_that_is_no_directory_is_one_line(kind, tmp_path):
    if kind == "missing":
        data_dir, problem = tmp_path / "nonexistent", "does not exist"
    else:
        data_dir, problem = tmp_path / "afile", "is not a directory"
        data_dir.write_text("")
    result = run_module(
        "train", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "1"
    )
    assert_one_line_error(
        result, "train", "argument --data-dir: `data_dir` must be an existing directory", problem
    )
    assert not (tmp_path / "run").exists() and not (tmp_path / "nonexistent").exists()


def test_train_offline_download_failure_is_one_line(tmp_path):
    """Offline, TFDS retries for minutes, then fails deep in its downloader:
    here the download fails at once as it finally does, and the command says
    so in one line."""
    result = run_python(
        f"""
        import sys
        import requests
        import tensorflow_datasets as tfds

        def offline(self, *args, **kwargs):
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries "
                "exceeded (Caused by NameResolutionError(Failed to resolve))")

        tfds.core.DatasetBuilder.download_and_prepare = offline
        from keras_sam.apps.cli import main
        sys.exit(main(["train", "--data-dir", {str(tmp_path)!r}, "--out",
                       {str(tmp_path / "run")!r}, "--epochs", "1", "--verbose", "0"]))
        """
    )
    assert_one_line_error(
        result,
        "train",
        "'cifar10' is not prepared in",
        "could not be downloaded",
        "ConnectionError: HTTPSConnectionPool(host='www.cs.toronto.edu'",
        "--data-dir",
    )


def test_train_rho_without_sam_is_refused_like_alpha(tmp_path):
    for arguments, option in ((["--rho", "0.5"], "rho"), (["--alpha", "0.5"], "alpha")):
        result = run_module("train", "--sam", "none", *arguments, "--out", str(tmp_path / "r"))
        assert_one_line_error(result, "train", f"`{option}` is only for", "sam='none'")
    assert not (tmp_path / "r").exists()
