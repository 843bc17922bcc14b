"""CIFAR ResNets and Wide ResNets: sizes against the papers, shapes, layers, saving.

Parameter counts are checked two independent ways: against the papers'
published sizes (He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-56 0.85M;
Zagoruyko & Komodakis 2016, Table 5 and 9: WRN-16-8 11.0M, WRN-28-10 36.5M),
and exactly against a count derived by hand from the architecture below.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from backend_neutral import ON_TENSORFLOW

from keras_sam._validation import InvalidArgumentError
from keras_sam.models.resnet import MODEL_NAMES, ZeroPadShortcut, get_model, resnet
from keras_sam.models.wrn import wide_resnet


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def conv(k, cin, cout):
    return k * k * cin * cout  # no bias: every conv is followed by BatchNorm


def bn(c):
    return 2 * c  # trainable gamma and beta


def resnet_count(depth, classes, shortcut="A", channels=3):
    n = (depth - 2) // 6
    total = conv(3, channels, 16) + bn(16)
    cin = 16
    for cout in (16, 32, 64):
        for _ in range(n):
            total += conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
            if cin != cout and shortcut == "B":
                total += conv(1, cin, cout) + bn(cout)
            cin = cout
    return total + 64 * classes + classes


def wrn_count(depth, k, classes, channels=3):
    n = (depth - 4) // 6
    total = conv(3, channels, 16)
    cin = 16
    for cout in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += bn(cin) + conv(3, cin, cout) + bn(cout) + conv(3, cout, cout)
            if cin != cout:
                total += conv(1, cin, cout)
            cin = cout
    return total + bn(cin) + cin * classes + classes


PAPER_SIZES = [
    ("resnet20", 0.27, resnet_count(20, 10)),
    ("resnet56", 0.85, resnet_count(56, 10)),
    ("wrn16_8", 11.0, wrn_count(16, 8, 10)),
    # Building WRN-28-10 (36M weights) takes seconds; it is never trained here.
    # On JAX (where Keras compiles each new weight shape's initializer) it
    # takes ~5 s for nothing WRN-16-8, the same builder, does not check there.
    *([("wrn28_10", 36.5, wrn_count(28, 10, 10))] if ON_TENSORFLOW else []),
]


@pytest.mark.parametrize("name, paper_millions, expected", PAPER_SIZES)
def test_parameter_counts_match_the_papers(name, paper_millions, expected):
    model = get_model(name, num_classes=10, input_shape=(32, 32, 3))
    count = trainable_count(model)
    assert count == expected
    assert round(count / 1e6, 2 if paper_millions < 1 else 1) == paper_millions
    assert model.output_shape == (None, 10)
    assert model.name == name


def test_the_listed_names_are_the_four_of_the_issue():
    assert MODEL_NAMES == ("resnet20", "resnet56", "wrn16_8", "wrn28_10")


def test_option_b_adds_exactly_the_two_projections():
    b = resnet(20, 10, shortcut="B")
    assert trainable_count(b) == resnet_count(20, 10, "B")
    assert trainable_count(b) - 269_722 == (16 * 32 + 64) + (32 * 64 + 128)
    assert not any(isinstance(layer, ZeroPadShortcut) for layer in b.layers)
    a = resnet(8, 10, shortcut="A")
    assert sum(isinstance(layer, ZeroPadShortcut) for layer in a.layers) == 2


@pytest.mark.parametrize("shape, classes", [((28, 28, 1), 10), ((32, 32, 3), 100)])
def test_other_image_shapes_and_class_counts(shape, classes):
    for model in (resnet(8, classes, shape), wide_resnet(10, 1, classes, shape)):
        logits = model(np.zeros((2, *shape), "float32"))
        assert logits.shape == (2, classes)
    assert trainable_count(resnet(8, classes, shape)) == resnet_count(8, classes, "A", shape[2])


def test_zero_pad_shortcut_against_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(ZeroPadShortcut(filters=8, strides=2)(x))
    expected = np.zeros((2, 3, 3, 8), "float32")
    expected[..., 2:5] = x[:, ::2, ::2, :]  # (8 - 3) // 2 = 2 zero channels first
    np.testing.assert_array_equal(out, expected)
    assert ZeroPadShortcut(8, 2).compute_output_shape((None, 5, 6, 3)) == (None, 3, 3, 8)


@pytest.mark.parametrize("build", [lambda wd: resnet(8, 10, weight_decay=wd),
                                   lambda wd: wide_resnet(10, 1, 10, weight_decay=wd)])
def test_weight_decay_is_half_wd_times_every_squared_weight(build):
    wd = 5e-4
    model = build(wd)
    model(np.zeros((1, 32, 32, 3), "float32"))
    penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    weights = [keras.ops.convert_to_numpy(w).astype(np.float64) for w in model.trainable_weights]
    expected = 0.5 * wd * sum(float(np.sum(w**2)) for w in weights)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    # One term per trainable weight: kernels, the classifier's bias, gamma, beta.
    assert len(model.losses) == len(weights)
    assert build(0.0).losses == []


def test_dropout_only_in_wide_resnets():
    model = get_model("wrn10_2", 10, dropout=0.3)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.3] * 3
    plain = get_model("wrn10_2", 10)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    with pytest.raises(InvalidArgumentError, match="dropout"):
        get_model("resnet20", 10, dropout=0.3)


def test_logits_are_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for model in (resnet(8, 10), wide_resnet(10, 1, 10)):
            assert model.layers[1].compute_dtype == "bfloat16"
            assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_save_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    model = resnet(8, 10)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: resnet(21, 10), "6n \\+ 2"),
        (lambda: resnet(2, 10), "6n \\+ 2"),
        (lambda: resnet(20, 10, shortcut="C"), "shortcut"),
        (lambda: wide_resnet(28.0, 10, 10), "6n \\+ 4"),
        (lambda: wide_resnet(28, 0, 10), "width"),
        (lambda: wide_resnet(28, 1, 10, dropout=1.0), "dropout"),
        (lambda: get_model("vgg16", 10), "Unknown model name 'vgg16'"),
        (lambda: get_model(20, 10), "name"),
    ],
)
def test_invalid_arguments_name_the_argument(call, message):
    with pytest.raises(InvalidArgumentError, match=message):
        call()


def test_import_keras_sam_registers_the_custom_layer(tmp_path):
    """`keras.saving.load_model` of a `keras-sam train` model needs only `import keras_sam`."""
    code = (
        "import keras, keras_sam\n"
        "assert 'keras_sam>ZeroPadShortcut' in keras.saving.get_custom_objects()\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
