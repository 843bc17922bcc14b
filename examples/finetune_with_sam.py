"""Fine-tuning a pretrained Keras model with SAM.

The usual transfer-learning recipe, with `SAMModel` in place of the plain
model in both fine-tuning stages:

1. take a pretrained backbone. In real use that is e.g.
   `keras.applications.EfficientNetB0(include_top=False, weights="imagenet",
   pooling="avg")`; to stay offline and fast, this script pretrains its own
   small 1-D CNN on MNIST-1D digits 0-4 (generated locally by `mnist1d`);
2. freeze it, put a new head on it for the new task (digits 5-9, from only
   `--shots` examples per class), and train the head with SAM;
3. unfreeze the top convolution of the backbone and train on with SAM at a
   10x lower learning rate.

Two details matter with any pretrained backbone:
- BatchNorm layers stay frozen, also when the layers around them are
  unfrozen: Keras 3 runs a frozen `BatchNormalization` in inference mode, with
  its pretrained moving statistics. (In Keras 3 a `training=False` on the
  backbone's call does not do this inside `fit`: `fit`'s `training=True`
  reaches the nested model, and an unfrozen BatchNorm would normalize with
  the small fine-tuning batches and overwrite its pretrained statistics.)
- `SAMModel` perturbs only trainable weights, so the frozen backbone costs the
  second SAM pass only its forward computation. Recompile after changing
  `trainable` (the train step is retraced).

    python examples/finetune_with_sam.py             # ~1-2 minutes on a CPU
    python examples/finetune_with_sam.py --smoke     # a few seconds

It needs mnist1d, from the `[demo]` extra: `pip install "keras-sam[demo]"`.
"""

from __future__ import annotations

import argparse

import keras
import mnist1d.data
import numpy as np

from keras_sam import SAMModel


def make_mnist1d(num_samples: int, seed: int = 42):
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    data = mnist1d.data.make_dataset(args)
    as_signal = lambda x: x.astype("float32")[..., None]  # noqa: E731  (N, 40, 1)
    return as_signal(data["x"]), data["y"], as_signal(data["x_test"]), data["y_test"]


def select_digits(x, y, digits, per_class=None, seed=0):
    """Examples of `digits`, relabelled 0..len(digits)-1; `per_class` of each."""
    rng = np.random.default_rng(seed)
    keep = []
    for digit in digits:
        indices = np.flatnonzero(y == digit)
        keep.extend(indices if per_class is None else rng.permutation(indices)[:per_class])
    keep = np.sort(np.asarray(keep))
    return x[keep], np.searchsorted(np.asarray(digits), y[keep])


def make_backbone() -> keras.Model:
    """A small 1-D CNN; stands in for a keras.applications model."""
    inputs = keras.Input((40, 1))
    x = inputs
    for i, filters in enumerate((32, 64, 64)):
        x = keras.layers.Conv1D(filters, 5, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 2:
            x = keras.layers.MaxPooling1D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling1D(name="features")(x)
    return keras.Model(inputs, x, name="backbone")


def with_head(backbone: keras.Model, num_classes: int, name: str) -> keras.Model:
    inputs = keras.Input((40, 1))
    features = backbone(inputs)
    outputs = keras.layers.Dense(num_classes, name=f"{name}_head")(
        keras.layers.Dropout(0.2)(features)
    )
    return keras.Model(inputs, outputs, name=name)


def compile_for(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000, help="(default: %(default)s)")
    parser.add_argument("--shots", type=int, default=40, help="new-task examples per class")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each fine-tune stage")
    parser.add_argument("--rho", type=float, default=0.05, help="(default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.shots, args.pretrain_epochs, args.epochs = 300, 4, 1, 1
    keras.utils.set_random_seed(0)
    verbose = 0 if args.smoke else 2

    x, y, x_test, y_test = make_mnist1d(args.samples)
    old_digits, new_digits = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)

    # 1. "Pretraining" (in real use: weights="imagenet").
    backbone = make_backbone()
    pretrain = with_head(backbone, 5, "pretrain")
    backbone.trainable = True
    compile_for(pretrain, 0.05)
    pretrain.fit(*select_digits(x, y, old_digits), epochs=args.pretrain_epochs, batch_size=64,
                 verbose=verbose)

    # 2. Frozen backbone, new head, SAM.
    x_new, y_new = select_digits(x, y, new_digits, per_class=args.shots)
    x_new_test, y_new_test = select_digits(x_test, y_test, new_digits)
    backbone.trainable = False
    model = SAMModel(with_head(backbone, 5, "finetune"), rho=args.rho)
    compile_for(model, 0.05)
    model.fit(x_new, y_new, epochs=args.epochs, batch_size=20, verbose=verbose)
    head_only = model.evaluate(x_new_test, y_new_test, return_dict=True, verbose=0)

    # 3. Unfreeze the last convolution (its BatchNorm stays frozen, so in
    # inference mode); SAM at a 10x lower learning rate.
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = layer.name == "conv2"
    compile_for(model, 0.005)  # recompile after changing `trainable`
    model.fit(x_new, y_new, epochs=args.epochs, batch_size=20, verbose=verbose)
    unfrozen = model.evaluate(x_new_test, y_new_test, return_dict=True, verbose=0)

    print(f"new digits 5-9 from {args.shots} examples each; test accuracy:")
    print(f"  SAM, frozen backbone:    {head_only['accuracy']:.3f}")
    print(f"  SAM, top block unfrozen: {unfrozen['accuracy']:.3f}")
    return {"frozen": head_only["accuracy"], "unfrozen": unfrozen["accuracy"]}


if __name__ == "__main__":
    main()
