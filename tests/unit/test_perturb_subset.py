"""`perturb=` (SAM-ON, Mueller et al., NeurIPS 2023) against a float64 NumPy reference.

With `perturb`, the ascent sees only the chosen variables: ε̂ = ρ·g_S/‖g_S‖
over the chosen set S, the other variables are read unperturbed in the second
pass, and every variable descends along its gradient from that pass (taken at
the partly perturbed point). `"normalization"` chooses the trainable weights of
every Keras normalization layer in the base, nested models included; a
callable chooses by variable.

Dense(6) → LayerNormalization (or BatchNormalization in training mode) → tanh
→ Dense(3) trains with `fit` (SGD with momentum, a fixed batch order) and is
compared with `variant_reference.train(..., gradient=normalized_mlp(...))`,
whose `Variant.chosen` is the selection, to 1e-5 relative. Choosing everything
is SAM and choosing nothing the plain Keras step, bit for bit. The
MirroredStrategy run (2 replicas, `distributed_scripts/subset_mirrored.py`)
compares with a per-replica reference.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW, PassCounter, passes, tensorflow_only
from distributed_scripts.launcher import ScriptRun

import keras_sam
from keras_sam import FriendlySAMModel, GSAMModel, LookSAMModel, SAMModel

import variant_reference as ref

BATCH = 10
STEPS = 5
LEARNING_RATE = 0.1
MOMENTUM = 0.9
RHO = 0.3
RTOL = 1e-5

_rng = np.random.default_rng(20231210)
X = _rng.normal(size=(6 * BATCH, 4)).astype("float32")
Y = _rng.integers(0, 3, size=6 * BATCH).astype("int32")
# [W1, b1, γ, β, W2, b2]: γ and β away from their initial 1 and 0.
INITIAL_WEIGHTS = [
    (0.7 * _rng.normal(size=(4, 6))).astype("float32"),
    (0.1 * _rng.normal(size=6)).astype("float32"),
    (1.0 + 0.2 * _rng.normal(size=6)).astype("float32"),
    (0.1 * _rng.normal(size=6)).astype("float32"),
    (0.7 * _rng.normal(size=(6, 3))).astype("float32"),
    (0.1 * _rng.normal(size=3)).astype("float32"),
]
NORMALIZATION = (False, False, True, True, False, False)
FIRST_KERNEL = (True, False, False, False, False, False)


def _batches(steps: int = STEPS):
    return [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]


def _normalization(kind: str) -> keras.layers.Layer:
    if kind == "layer":
        return keras.layers.LayerNormalization()
    return keras.layers.BatchNormalization()


def _base(kind: str = "layer", nesting: str | None = None, dropout: bool = False) -> keras.Model:
    """Dense(6) → norm → tanh → Dense(3), the norm layer nested per `nesting`."""
    norm = _normalization(kind)
    if nesting == "sequential":
        norm = keras.Sequential([keras.Input((6,)), norm], name="nested")
    elif nesting == "functional":
        inputs = keras.Input((6,))
        inner = keras.Sequential([keras.Input((6,)), norm], name="inner")
        norm = keras.Model(inputs, keras.layers.Activation("linear")(inner(inputs)), name="outer")
    layers = [keras.Input((4,)), keras.layers.Dense(6), norm, keras.layers.Activation("tanh")]
    if dropout:
        layers.append(keras.layers.Dropout(0.25, seed=3))
    base = keras.Sequential([*layers, keras.layers.Dense(3)])
    for variable, value in zip(base.trainable_variables, INITIAL_WEIGHTS, strict=True):
        variable.assign(value)
    return base


def _compile(model: keras.Model, jit: bool = False) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def _fit(model: keras.Model, steps: int = STEPS, start: int = 0) -> keras.Model:
    model.fit(X[start * BATCH:steps * BATCH], Y[start * BATCH:steps * BATCH], batch_size=BATCH,
              epochs=1, shuffle=False, verbose=0)
    return model


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v) for v in model.trainable_variables]


def _state(model: keras.Model) -> list[tuple[str, np.ndarray]]:
    """Every variable of the base (BatchNorm statistics and the dropout seeds
    included) and of the optimizer."""
    base = getattr(model, "base_model", model)
    return [(v.path, np.array(v)) for v in [*base.variables, *model.optimizer.variables]]


def _assert_close(actual, expected, rtol=RTOL):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * np.abs(e).max())


def _assert_bitwise(actual, expected, what: str):
    assert len(actual) == len(expected), what
    different = [n for (n, a), (_, e) in zip(actual, expected) if not np.array_equal(a, e)]
    assert not different, f"{what}: not bit-identical: {different}"


def _gap(a, b) -> float:
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))


def _reference(variant: ref.Variant, kind: str = "layer", steps: int = STEPS):
    return ref.train(variant, INITIAL_WEIGHTS, _batches(steps), ref.SGD(LEARNING_RATE, MOMENTUM),
                     gradient=ref.normalized_mlp(kind))


def _first_kernel(base: keras.Model):
    kernel = base.trainable_variables[0]
    return lambda variable: variable is kernel


# ------------------------------------------------------------------ golden
@pytest.mark.parametrize(
    ("kind", "jit"), [("layer", False), ("batch", False), ("layer", True)],
    ids=["layernorm-graph", "batchnorm-graph", "layernorm-xla"],
)
def test_normalization_matches_float64_reference(kind, jit):
    model = _fit(_compile(SAMModel(_base(kind), rho=RHO, perturb="normalization"), jit))
    expected = _reference(ref.Variant("sam", rho=RHO, chosen=NORMALIZATION), kind)
    _assert_close(_weights(model), expected)


def test_a_callable_choosing_the_first_kernel_matches_float64_reference():
    base = _base()
    model = _fit(_compile(SAMModel(base, rho=RHO, perturb=_first_kernel(base))))
    _assert_close(_weights(model), _reference(ref.Variant("sam", rho=RHO, chosen=FIRST_KERNEL)))


VARIANTS = {
    "gsam": (lambda b, **kw: GSAMModel(b, alpha=0.3, **kw), ref.Variant("gsam", alpha=0.3)),
    # k=2: full steps 0, 2, 4 store g_v of the partly perturbed g_sam; 1, 3 reuse it.
    "looksam": (lambda b, **kw: LookSAMModel(b, k=2, alpha=0.7, **kw),
                ref.Variant("looksam", k=2, alpha=0.7)),
    "fsam": (lambda b, **kw: FriendlySAMModel(b, sigma=1.0, lmbda=0.5, **kw),
             ref.Variant("fsam", sigma=1.0, lmbda=0.5)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_with_normalization_match_float64_reference(name):
    factory, variant = VARIANTS[name]
    model = _fit(_compile(factory(_base(), rho=RHO, perturb="normalization")))
    variant = ref.Variant(**{**variant.__dict__, "rho": RHO, "chosen": NORMALIZATION})
    _assert_close(_weights(model), _reference(variant))


def test_the_reference_tells_the_subset_from_its_neighbours():
    """The chosen subsets differ from full SAM, from SGD and from each other,
    and from the convention the paper rules out (the norm over every
    weight, ε̂ then kept on the chosen ones only), by far more than the
    tolerance."""
    results = {
        "normalization": _reference(ref.Variant("sam", rho=RHO, chosen=NORMALIZATION)),
        "first_kernel": _reference(ref.Variant("sam", rho=RHO, chosen=FIRST_KERNEL)),
        "sam": _reference(ref.Variant("sam", rho=RHO)),
        "sgd": _reference(ref.Variant("sgd")),
    }

    def norm_over_all(params, x, y):
        full = ref.perturbation(ref.normalized_mlp("layer")(params, x, y)[1], params, RHO)
        moved = [w + (e if keep else 0.0) for w, e, keep in zip(params, full, NORMALIZATION)]
        return ref.normalized_mlp("layer")(moved, x, y)

    # SGD on the gradient at that partly perturbed point is the convention.
    results["norm_over_all"] = ref.train(ref.Variant("sgd"), INITIAL_WEIGHTS, _batches(),
                                         ref.SGD(LEARNING_RATE, MOMENTUM), gradient=norm_over_all)
    names = sorted(results)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert _gap(results[first], results[second]) > 100 * RTOL, (first, second)


# -------------------------------------------------- everything or nothing
def test_choosing_every_weight_is_sam_bit_for_bit():
    runs = []
    for perturb in (None, lambda variable: True):
        keras.utils.set_random_seed(0)
        runs.append(_state(_fit(_compile(SAMModel(_base(dropout=True), rho=RHO,
                                                  perturb=perturb)))))
    _assert_bitwise(runs[1], runs[0], "perturb=lambda v: True against perturb=None")


def test_normalization_choosing_every_trainable_weight_is_sam_bit_for_bit():
    """With the Dense layers frozen, the normalization layer holds every
    trainable weight: "normalization" is SAM."""
    runs = []
    for perturb in (None, "normalization"):
        base = _base()
        for layer in base.layers:
            if isinstance(layer, keras.layers.Dense):
                layer.trainable = False
        keras.utils.set_random_seed(0)
        runs.append(_state(_fit(_compile(SAMModel(base, rho=RHO, perturb=perturb)))))
    _assert_bitwise(runs[1], runs[0], "perturb='normalization' against perturb=None")
    assert _gap([runs[0][2][1]], [INITIAL_WEIGHTS[2]]) > 1e-3  # γ moved


PASSES = []  # TensorFlow: one entry per forward pass at run time


class _CountsPasses(PassCounter):
    """The identity; each forward pass at run time appends to `PASSES` (on
    JAX: is counted by `PassCounter`'s seed generator; see `_passes`)."""

    def call(self, inputs):
        if not ON_TENSORFLOW:
            return super().call(inputs)
        import tensorflow as tf

        def count():
            PASSES.append(1)
            return np.float32(0.0)

        zero = tf.py_function(count, [], tf.float32)
        zero.set_shape(())
        return inputs + zero

    def compute_output_shape(self, input_shape):
        return input_shape


def _nothing_chosen_base(kind: str, counting: bool = False) -> keras.Model:
    """A base for which `perturb` chooses nothing (`kind`), with dropout."""
    if kind == "no_normalization_layer":
        layers = [keras.Input((4,)), keras.layers.Dense(6, activation="tanh")]
    else:
        layers = [keras.Input((4,)), keras.layers.Dense(6), keras.layers.BatchNormalization(),
                  keras.layers.Activation("tanh")]
    if counting:
        layers.insert(1, _CountsPasses())
    keras.utils.set_random_seed(5)
    base = keras.Sequential([*layers, keras.layers.Dropout(0.3, seed=1), keras.layers.Dense(3)])
    if kind == "frozen_normalization":
        base.layers[1 + counting].trainable = False
    return base


NOTHING_CHOSEN = {
    "callable_false": ("batchnorm", lambda variable: False),
    "no_normalization_layer": ("no_normalization_layer", "normalization"),
    "frozen_normalization": ("frozen_normalization", "normalization"),
}


@pytest.mark.parametrize("case", list(NOTHING_CHOSEN))
def test_choosing_nothing_is_the_plain_keras_step_bit_for_bit(case):
    kind, perturb = NOTHING_CHOSEN[case]
    keras.utils.set_random_seed(0)
    plain = _state(_fit(_compile(_nothing_chosen_base(kind))))
    keras.utils.set_random_seed(0)
    sam = _state(_fit(_compile(SAMModel(_nothing_chosen_base(kind), rho=RHO, perturb=perturb))))
    _assert_bitwise(sam, plain, f"{case} against plain Keras")


def _passes(model) -> int:
    """The forward passes counted so far (by every counter, on TensorFlow)."""
    return len(PASSES) if ON_TENSORFLOW else passes(model)


def test_choosing_nothing_takes_one_pass_per_step():
    model = _compile(SAMModel(_nothing_chosen_base("batchnorm", counting=True), rho=RHO,
                              perturb=lambda variable: False))
    PASSES.clear()
    _fit(model)
    assert _passes(model) == STEPS
    chosen = _compile(SAMModel(_nothing_chosen_base("batchnorm", counting=True), rho=RHO,
                               perturb="normalization"))
    PASSES.clear()
    _fit(chosen)
    assert _passes(chosen) == 2 * STEPS


@pytest.mark.parametrize("case", list(NOTHING_CHOSEN))
def test_choosing_nothing_warns_naming_perturb(case):
    kind, perturb = NOTHING_CHOSEN[case]
    model = _compile(SAMModel(_nothing_chosen_base(kind), rho=RHO, perturb=perturb))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model)
    said = [str(w.message) for w in caught if "chooses none" in str(w.message)]
    assert len(said) >= 1
    assert said[0].startswith(f"`perturb={perturb!r}` chooses none of the ")
    assert "plain step (one pass)" in said[0]


def test_choosing_some_weights_does_not_warn():
    model = _compile(SAMModel(_nothing_chosen_base("batchnorm"), rho=RHO, perturb="normalization"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model)
    assert not [w for w in caught if "chooses none" in str(w.message)]


# ---------------------------------------------------------- nested layers
@pytest.mark.parametrize("nesting", ["sequential", "functional"])
def test_normalization_layers_of_nested_models_are_chosen(nesting):
    model = _fit(_compile(SAMModel(_base(nesting=nesting), rho=RHO, perturb="normalization")))
    _assert_close(_weights(model), _reference(ref.Variant("sam", rho=RHO, chosen=NORMALIZATION)))


class _Block(keras.layers.Layer):
    """A custom layer holding a normalization layer of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(5)
        self.norm = keras.layers.RMSNormalization() if hasattr(
            keras.layers, "RMSNormalization") else keras.layers.LayerNormalization(center=False)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build((*input_shape[:-1], 5))

    def call(self, inputs):
        return self.norm(self.dense(inputs))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 5)


def _every_kind_base() -> tuple[keras.Model, list]:
    """Every normalization layer Keras ships, at several depths, and the
    variables "normalization" must choose."""
    keras.utils.set_random_seed(9)
    inner_inputs = keras.Input((6,))
    batch_norm = keras.layers.BatchNormalization()
    inner = keras.Model(inner_inputs, batch_norm(keras.layers.Dense(6)(inner_inputs)))
    group_norm = keras.layers.GroupNormalization(groups=2)
    layer_norm = keras.layers.LayerNormalization()
    block = _Block()
    base = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(6),
        layer_norm,
        keras.Sequential([keras.Input((6,)), inner, keras.layers.Activation("tanh")]),
        keras.Sequential([keras.Input((6,)), group_norm, keras.layers.UnitNormalization()]),
        block,
        keras.layers.Dense(3),
    ])
    chosen = [*layer_norm.trainable_variables, *batch_norm.trainable_variables,
              *group_norm.trainable_variables, *block.norm.trainable_variables]
    assert len(chosen) == 7
    return base, chosen


def test_normalization_chooses_exactly_the_normalization_weights_at_every_depth():
    """"normalization" equals, bit for bit, a callable that names γ and β of
    the LayerNormalization, BatchNormalization (in a functional model in a
    Sequential), GroupNormalization (beside a weightless UnitNormalization)
    and the RMSNormalization inside a custom layer; and differs from a
    selection without the deepest ones."""
    runs = {}
    for name in ("string", "callable", "shallow_only"):
        base, chosen = _every_kind_base()
        ids = {id(v) for v in (chosen[:2] if name == "shallow_only" else chosen)}
        perturb = "normalization" if name == "string" else (lambda v, ids=ids: id(v) in ids)
        keras.utils.set_random_seed(0)
        runs[name] = _state(_fit(_compile(SAMModel(base, rho=RHO, perturb=perturb))))
    _assert_bitwise(runs["string"], runs["callable"], "'normalization' against the callable")
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(runs["string"],
                                                                  runs["shallow_only"]))


# ------------------------------------------------------------------ saving
def test_the_string_is_saved_and_loaded(tmp_path):
    model = _compile(SAMModel(_base(), rho=RHO, perturb="normalization"))
    _fit(model, 2)
    model.save(tmp_path / "sam_on.keras")
    loaded = keras.models.load_model(tmp_path / "sam_on.keras")
    assert loaded.perturb == "normalization"
    assert loaded.get_config()["perturb"] == "normalization"
    _fit(loaded, STEPS, start=2)
    _assert_close(_weights(loaded), _reference(ref.Variant("sam", rho=RHO, chosen=NORMALIZATION)))
    _fit(model, STEPS, start=2)
    _assert_bitwise(_state(loaded), _state(model), "loaded and trained on")


def _callable_model(cls) -> keras.Model:
    base = _base()
    model = _compile(cls(base, rho=RHO, perturb=_first_kernel(base)))
    model(X[:2])
    return model


@pytest.mark.parametrize("cls", [SAMModel, GSAMModel, LookSAMModel, FriendlySAMModel])
def test_a_callable_cannot_be_saved_says_so_and_writes_no_file(cls, tmp_path):
    """A clear ValueError naming `perturb`, raised before anything is written."""
    model = _callable_model(cls)
    with pytest.raises(ValueError, match="`perturb`") as error:
        model.get_config()
    assert "serializ" in str(error.value)
    path = tmp_path / "callable.keras"
    with pytest.raises(ValueError, match="`perturb`"):
        model.save(path)
    assert list(tmp_path.iterdir()) == [], "a file was written"


@pytest.mark.parametrize("cls", [SAMModel, FriendlySAMModel])
def test_a_callable_that_cannot_be_saved_leaves_an_earlier_file_intact(cls, tmp_path):
    """A good `.keras` file already at the path (an earlier checkpoint) is
    left as it was, and still loads."""
    path = tmp_path / "model.keras"
    cls(_base(), rho=RHO, perturb="normalization").save(path)
    saved = path.read_bytes()
    with pytest.raises(ValueError, match="`perturb`"):
        _callable_model(cls).save(path)
    assert path.read_bytes() == saved, "the earlier file was overwritten"
    assert keras.models.load_model(path).perturb == "normalization"


@pytest.mark.parametrize("cls", [SAMModel, FriendlySAMModel])
def test_a_callable_saves_and_loads_its_weights(cls, tmp_path):
    base = _base()
    model = _compile(cls(base, rho=RHO, perturb=_first_kernel(base)))
    _fit(model, 1)
    model.save_weights(tmp_path / "callable.weights.h5")
    restored = _compile(cls(_base(), rho=RHO, perturb=lambda variable: True))
    restored.load_weights(tmp_path / "callable.weights.h5")
    _assert_bitwise(_state(restored), _state(model), "weights file")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_keep_the_string_in_their_config_after_load(name, tmp_path):
    factory, _ = VARIANTS[name]
    model = factory(_base(), rho=RHO, perturb="normalization")
    model(X[:2])
    model.save(tmp_path / "variant.keras")
    loaded = keras.models.load_model(tmp_path / "variant.keras")
    assert type(loaded) is type(model)
    assert loaded.perturb == "normalization"
    assert loaded.get_config()["perturb"] == "normalization"
    assert loaded.get_config() == {**model.get_config(),
                                   "base_model": loaded.get_config()["base_model"]}


# --------------------------------------------------------------- arguments
BAD_VALUES = ["norm", "Normalization", "normalisation", "", "batchnorm", 3, 1.5, True,
              ["normalization"], ("normalization",), b"normalization", {"normalization"}]


@pytest.mark.parametrize("cls", [SAMModel, GSAMModel, LookSAMModel, FriendlySAMModel])
@pytest.mark.parametrize("value", BAD_VALUES, ids=[repr(v) for v in BAD_VALUES])
def test_a_bad_perturb_is_refused_naming_it(cls, value):
    with pytest.raises(keras_sam.InvalidArgumentError, match="`perturb`"):
        cls(_base(), perturb=value)


def _only_kernels(variable) -> bool:
    return "kernel" in variable.path


@pytest.mark.parametrize("value", [None, "normalization", _only_kernels])
def test_the_documented_values_are_accepted(value):
    assert SAMModel(_base(), perturb=value).perturb is value


# ------------------------------------------------------- MirroredStrategy
# Must match distributed_scripts/subset_mirrored.py.
MIRRORED_BATCH, MIRRORED_EPOCHS, MIRRORED_RHO, MIRRORED_LR, MIRRORED_MOMENTUM = 16, 2, 0.3, 0.1, 0.5


@pytest.fixture(scope="module", autouse=True)
def _mirrored_run(request):
    """Starts the mirrored subprocess when the module starts (if a slow test
    of it is selected), so that it runs beside the other tests."""
    wanted = any(item.path == request.path and item.get_closest_marker("slow")
                 for item in request.session.items)
    run = ScriptRun("subset_mirrored.py", "2") if wanted else None
    try:
        yield run
    finally:
        if run is not None:
            run.stop()


@pytest.fixture(scope="module")
def mirrored(_mirrored_run):
    return _mirrored_run.result(timeout=900)


def _mirrored_reference(results: dict, run: dict, replicas: int, chosen) -> list[np.ndarray]:
    x, y = np.asarray(results["x"], np.float64), np.asarray(results["y"])
    batches = [(x[i:i + MIRRORED_BATCH], y[i:i + MIRRORED_BATCH])
               for i in range(0, len(x), MIRRORED_BATCH)] * MIRRORED_EPOCHS
    return ref.train(ref.Variant("sam", rho=MIRRORED_RHO, chosen=chosen), run["initial"], batches,
                     ref.SGD(MIRRORED_LR, MIRRORED_MOMENTUM), replicas=replicas,
                     gradient=ref.normalized_mlp("layer"))


@tensorflow_only  # tf.distribute.MirroredStrategy, in a subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "chosen", "replicas"),
    [("normalization", NORMALIZATION, 2), ("first_kernel", FIRST_KERNEL, 2),
     ("normalization_sync", NORMALIZATION, 1)],
)
def test_mirrored_matches_the_per_replica_reference(mirrored, name, chosen, replicas):
    """Each replica climbs along its own chosen gradient (with
    `sync_perturbation=True`: the global batch's, as one device)."""
    run = mirrored[name]
    if "raised" in run:
        pytest.fail(f"the {name!r} run raised:\n{run['raised']}")
    assert run["identical_after_each_step"] == [True] * 4
    expected = _mirrored_reference(mirrored, run, replicas, chosen)
    _assert_close([np.asarray(copies[0], np.float32) for copies in run["weights"]], expected)
    other = _mirrored_reference(mirrored, run, 3 - replicas, chosen)
    assert _gap(other, expected) > 100 * RTOL
