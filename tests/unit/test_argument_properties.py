"""Whatever a user passes, they get a working model or an error that names it.

Issue #5, bad input.

- Property tests (hypothesis, construction only): every constructor argument
  of `SAMModel`, `GSAMModel` and `LookSAMModel` gets random values of random
  types (ints of any size, floats with nan, ±inf, subnormals and negatives,
  strings, None, bools, lists, NumPy scalars, tensors). Construction either
  succeeds, for exactly the values the docstrings accept, and reads the value
  back, or raises `keras_sam.InvalidArgumentError` (a `ValueError` and a
  `TypeError`; any other exception fails the test) whose message names the argument
  and shows the value. "Accepts" includes "fits in float32": the step computes
  in float32, where a value beyond ~3.4e38 is inf.
- Edge values that are accepted train: a deterministic list (rho=0, p just
  above 1, p=inf, NumPy scalars, eta=0, k=1, tiny eps with a zero gradient,
  ...) is each fitted for one step, which must end with finite weights. A
  value that is refused must be refused at construction, naming itself.
- Bad data given to `fit` (x only, a 3-tuple whose third element is not a
  weight, a 4-tuple, the wrong input structure or width, mismatched lengths)
  gives the error plain Keras gives for the same data, raised from Keras's
  own code rather than from inside SAM's passes. Wrong label shapes, an
  uncompiled model and a base with nothing to train are in
  `test_sam_errors.py`.
"""

from __future__ import annotations

import math
import numbers
import re
import traceback
from pathlib import Path

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_sam
from keras_sam import GSAMModel, LookSAMModel, SAMModel
from keras_sam._validation import MAX_ALPHA, MAX_RHO

INT64_MAX = 2**63 - 1

# ------------------------------------------------------------------ domains
# What each argument accepts, as the docstrings say, and how it reads back.


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value) -> float | None:
    try:
        return float(value)
    except OverflowError:  # an int beyond float64
        return None


def _float32_finite(value) -> bool:
    """True if `value` stays finite as float32 (what the step computes in)."""
    number = _as_float(value)
    if number is None or not math.isfinite(number):
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(number)))


def _nonnegative(value) -> bool:
    return _real(value) and _float32_finite(value) and value >= 0


def _at_most(maximum: float):
    """Accepts a nonnegative float32-finite real no larger than `maximum`."""
    return lambda value: _nonnegative(value) and value <= maximum


def _positive(value) -> bool:
    return _real(value) and _float32_finite(value) and value > 0


def _p(value) -> bool:
    number = _as_float(value) if _real(value) else None
    return number is not None and number > 1  # nan is not > 1; inf is accepted


def _integer_at_least_1(value, maximum=None) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return False
    return maximum is None or value <= maximum


def _bool(value) -> bool:
    return isinstance(value, bool)


ACCEPTS = {
    # At most 1e4: near float32's largest value w + ε̂ overflows.
    "rho": _at_most(MAX_RHO),
    "p": _p,
    "adaptive": _bool,
    "eta": _nonnegative,
    # Each piece's passes are unrolled into the traced step.
    "num_batch_splits": lambda value: _integer_at_least_1(value, maximum=128),
    "sync_perturbation": _bool,
    "skip_nonfinite": _bool,
    "eps": _positive,
    "alpha": _at_most(MAX_ALPHA),
    # The step counter is an int64 variable.
    "k": lambda value: _integer_at_least_1(value, maximum=INT64_MAX),
}
READ_BACK = {
    "rho": float,
    "p": float,
    "eta": float,
    "eps": float,
    "alpha": float,
    "num_batch_splits": int,
    "k": int,
}
SAM_ARGUMENTS = [
    "rho",
    "p",
    "adaptive",
    "eta",
    "num_batch_splits",
    "sync_perturbation",
    "skip_nonfinite",
    "eps",
]
CASES = [
    *[(SAMModel, a) for a in SAM_ARGUMENTS],
    *[(GSAMModel, a) for a in [*SAM_ARGUMENTS, "alpha"]],
    *[(LookSAMModel, a) for a in [*SAM_ARGUMENTS, "k", "alpha"]],
]


def _accepted(cls, argument, value) -> bool:
    if cls is LookSAMModel and argument == "num_batch_splits":
        return _integer_at_least_1(value) and value == 1  # no m-sharpness
    return ACCEPTS[argument](value)


ANY_VALUE = st.one_of(
    st.integers(),  # unbounded: some beyond float64
    st.floats(),  # nan, ±inf, ±0, subnormals, huge
    st.floats(min_value=0.0, max_value=4.0),  # the useful range, more often
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.floats(allow_nan=False), max_size=2),
    st.floats(width=32).map(np.float32),
    st.integers(-(2**63), INT64_MAX).map(np.int64),
    st.booleans().map(np.bool_),
    st.floats(width=32, allow_nan=False).map(keras.ops.convert_to_tensor),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e39, 2**64, 10**400, -1, 0, 1]),
)


@pytest.fixture(scope="module")
def base() -> keras.Model:
    # One base for every example: construction does not change it.
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


@pytest.mark.parametrize(("cls", "argument"), CASES, ids=[f"{c.__name__}-{a}" for c, a in CASES])
@settings(max_examples=60, deadline=None, derandomize=True)
@given(value=ANY_VALUE)
def test_any_value_gives_a_model_or_an_error_naming_the_argument(base, cls, argument, value):
    try:
        model = cls(base, **{argument: value})
    except keras_sam.InvalidArgumentError as error:  # both a ValueError and a TypeError
        message = str(error)
        assert f"`{argument}`" in message, message
        assert f"Received: {argument}=" in message, message
        assert not _accepted(cls, argument, value), f"refused an accepted value: {message}"
        return
    assert _accepted(cls, argument, value), f"accepted {argument}={value!r}"
    read = getattr(model, argument)
    if argument in READ_BACK:
        assert read == READ_BACK[argument](value) and type(read) is READ_BACK[argument]
    else:
        assert read is value


# --------------------------------------------------- accepted edge values fit
def _linear(zero: bool) -> keras.Model:
    keras.utils.set_random_seed(3)
    initializer = "zeros" if zero else "glorot_uniform"
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(2, kernel_initializer=initializer, bias_initializer=initializer),
        ]
    )


# (class, arguments, zero gradient). A zero-initialised model with zero labels
# has a zero gradient: the case where eps alone keeps ε̂ finite.
EDGE_VALUES = [
    (SAMModel, {"rho": 0}, False),
    (SAMModel, {"rho": np.float32(0.05)}, False),
    (SAMModel, {"rho": 2}, False),
    (SAMModel, {"rho": 1e4}, False),
    (SAMModel, {"rho": 1e4 * (1 + 2**-20)}, False),
    (SAMModel, {"rho": float(np.finfo(np.float32).max)}, False),
    (SAMModel, {"rho": 1e39}, False),
    (SAMModel, {"rho": 10**400}, False),
    (SAMModel, {"p": 1.0001}, False),
    (SAMModel, {"p": math.inf}, False),
    (SAMModel, {"p": np.float64(3)}, True),
    (SAMModel, {"adaptive": True, "eta": 0}, False),
    (SAMModel, {"adaptive": True, "eta": 1e39}, False),
    (SAMModel, {"eps": np.finfo(np.float32).tiny}, True),
    (SAMModel, {"eps": 1e-45}, True),
    (SAMModel, {"eps": 1e-300}, True),
    (SAMModel, {"eps": 1e-300, "p": 3}, True),
    (SAMModel, {"num_batch_splits": np.int64(2)}, False),
    (SAMModel, {"num_batch_splits": 129}, False),
    (SAMModel, {"num_batch_splits": 10**6}, False),
    (GSAMModel, {"alpha": 0}, False),
    (GSAMModel, {"alpha": 1e4}, False),
    (GSAMModel, {"alpha": 1e39}, False),
    (LookSAMModel, {"k": 2, "alpha": float(np.finfo(np.float32).max)}, False),
    (LookSAMModel, {"k": 1, "alpha": 0}, False),
    (LookSAMModel, {"k": INT64_MAX}, False),
    (LookSAMModel, {"k": 2**64}, False),
]


def _edge_id(case) -> str:
    cls, arguments, zero = case

    def short(value) -> str:
        text = repr(value)
        return text if len(text) < 24 else f"{text[:4]}...({len(text)} digits)"

    shown = ",".join(f"{k}={short(v)}" for k, v in arguments.items())
    return f"{cls.__name__}({shown}){'-zero_gradient' if zero else ''}"


@pytest.mark.parametrize(
    ("cls", "arguments", "zero_gradient"), EDGE_VALUES, ids=[_edge_id(c) for c in EDGE_VALUES]
)
def test_an_accepted_edge_value_trains_one_finite_step(cls, arguments, zero_gradient):
    base = _linear(zero_gradient)
    try:
        model = cls(base, **arguments)
    except keras_sam.InvalidArgumentError as error:
        assert any(f"`{name}`" in str(error) for name in arguments), str(error)
        return
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 4)).astype("float32")
    y = np.zeros((4, 2), "float32") if zero_gradient else rng.normal(size=(4, 2)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    for weight in base.get_weights():
        assert np.all(np.isfinite(weight)), f"{arguments} left non-finite weights"


# ------------------------------------------------------ bad data given to fit
_SAM_SOURCE = str(Path(keras_sam.__file__).parent)


def _errors(run, wrappers) -> list[Exception]:
    """The error `run(model)` raises for each `wrapper(base)`."""
    errors = []
    for wrap in wrappers:
        keras.utils.set_random_seed(0)
        model = wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
        model.compile(optimizer="sgd", loss="mse", jit_compile=False)
        with pytest.raises(Exception) as error:
            run(model)
        errors.append(error.value)
    return errors


_NUMBERED = re.compile(r"\b([A-Za-z_]+?)_\d+\b")  # dense_3, keras_tensor_12, compile_loss_1


def _is_op_error(error: Exception) -> bool:
    """Whether `error` is TensorFlow's error of a compiled op that failed."""
    if not ON_TENSORFLOW:
        return False
    import tensorflow as tf

    return isinstance(error, tf.errors.OpError)


def _what_the_user_reads(error: Exception) -> str:
    """The message without graph details that differ between any two models."""
    if _is_op_error(error):
        # "Graph execution error: Detected at node ... defined at <stack>
        # <the op's error> [[{{node ...}}]] [Op:...]": keep the op's error.
        message = error.message.strip().split("\n\n")[-1]
        message = re.sub(r"\s*\[\[\{\{node .*", "", message, flags=re.S)
    else:
        message = str(error)
    message = re.sub(r"\{\{node [^}]*\}\}", "", message)
    # Of two ops that fail on the same shapes, either may fail first.
    message = re.sub(
        r"Incompatible shapes: (\S+) vs\. (\S+)",
        lambda match: "Incompatible shapes: " + " vs. ".join(sorted(match.groups())),
        message,
    )
    message = _NUMBERED.sub(r"\1", message)
    return re.sub(r"\b(sequential|sam_model)(?=/)", "model", message)


# SAM's modules of the step after the clean forward pass: the ascent, the
# gradient arithmetic, the hooks' frame and the guard; and the perturbed pass
# (a public function of the passes module, beside the first pass).
_SAM_MATH_MODULES = ("perturbation.py", "gradient_math.py", "gradient_frame.py", "guard.py")


def _is_sam_math(filename: str, function: str) -> bool:
    return filename.startswith(_SAM_SOURCE) and (
        filename.endswith(_SAM_MATH_MODULES) or function == "perturbed_pass"
    )


_DEFINED_AT = re.compile(r'File "([^"]+)", line \d+, in (\w+)')


def _sam_error_with_every_frame(run) -> Exception:
    """SAM's error with Keras's traceback filtering off, so that the frames of
    Keras and TensorFlow are there too."""
    filtering = keras.config.is_traceback_filtering_enabled()
    keras.config.disable_traceback_filtering()
    try:
        return _errors(run, [SAMModel])[0]
    finally:
        if filtering:
            keras.config.enable_traceback_filtering()


def _assert_raised_by_keras_before_sam_math(error: Exception) -> None:
    if _is_op_error(error):
        # A compiled op failed: look at the Python stack that defined it. It
        # may be Keras's own op or the clean pass's gradient of it (as in
        # plain Keras's step), never an op of the ascent or perturbed pass.
        defined_at = _DEFINED_AT.findall(error.message)
        assert defined_at, error.message
        assert not any(_is_sam_math(*frame) for frame in defined_at), defined_at
        # Defined in the clean pass (or before it), as in plain Keras's step.
        passes = [f for f in defined_at if f[0].endswith("passes.py")]
        assert all(function in ("first_pass", "_forward_loss") for _, function in passes), passes
        return
    frames = traceback.extract_tb(error.__traceback__)
    assert not frames[-1].filename.startswith(_SAM_SOURCE), frames[-1]
    assert not any(_is_sam_math(f.filename, f.name) for f in frames), frames


_X = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
_Y = np.zeros((8, 3), "float32")


class _Dataset(keras.utils.PyDataset):
    """`parts` (arrays of as many rows) in batches of 4: a tuple of them, or
    the one array."""

    def __init__(self, parts):
        super().__init__()
        self.parts = parts

    def __len__(self):
        return -(-len(self.parts[0]) // 4)

    def __getitem__(self, index):
        batch = tuple(part[4 * index : 4 * index + 4] for part in self.parts)
        return batch if len(batch) > 1 else batch[0]


def _dataset(*parts) -> keras.utils.PyDataset:
    return _Dataset(parts)


BAD_DATA = {
    "x_only": lambda m: m.fit(_X, batch_size=4, verbose=0),
    "dataset_of_x_only": lambda m: m.fit(_dataset(_X), verbose=0),
    "third_element_is_not_a_weight": lambda m: m.fit(
        _dataset(_X, _Y, np.array(["a"] * 8)), verbose=0
    ),
    "weight_of_the_wrong_shape": lambda m: m.fit(
        _dataset(_X, _Y, np.ones((8, 5), "float32")), verbose=0
    ),
    "four_elements": lambda m: m.fit(
        _dataset(_X, _Y, np.ones(8, "float32"), np.ones(8, "float32")), verbose=0
    ),
    "dict_input_with_an_unknown_key": lambda m: m.fit({"x": _X}, _Y, batch_size=4, verbose=0),
    "wrong_input_width": lambda m: m.fit(np.ones((8, 5), "float32"), _Y, batch_size=4, verbose=0),
    "x_and_y_lengths_differ": lambda m: m.fit(_X, _Y[:6], batch_size=4, verbose=0),
    "string_input": lambda m: m.fit(np.full((8, 4), "a"), _Y, batch_size=4, verbose=0),
    "python_lists": lambda m: m.fit(_X.tolist(), _Y, batch_size=4, verbose=0),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_gives_the_plain_keras_error_from_keras_code(case):
    plain, sam = _errors(BAD_DATA[case], [lambda base: base, SAMModel])
    assert type(sam) is type(plain)
    assert _what_the_user_reads(sam) == _what_the_user_reads(plain)
    # Raised by Keras or TensorFlow, before any of SAM's gradient code ran.
    _assert_raised_by_keras_before_sam_math(_sam_error_with_every_frame(BAD_DATA[case]))
