"""SAM in your own `tf.GradientTape` loop, with `keras_sam.perturbation`.

`SAMModel` is the easy way; this is the same algorithm written out, for loops
that `fit` cannot express. One SAM step (Foret et al., 2021):

1. g = ∇L(w) on the batch;
2. ε̂ = ρ·g/‖g‖ (`keras_sam.perturbation`; `adaptive=True` for ASAM);
3. copy w, climb to w + ε̂, take g_sam = ∇L(w + ε̂) on the same batch;
4. restore w **from the copy** (subtracting ε̂ again is not exact in floating
   point, and the error accumulates), then let the optimizer step with g_sam.

The data is MNIST-1D (Greydanus 2020), generated locally by
`mnist1d.data.make_dataset`: 40-sample 1-D signals of ten digit templates,
small enough for a CPU and hard enough that models differ. The model is an MLP
without BatchNorm or dropout, so both passes see the same function; with
BatchNorm, the second pass would also update the moving statistics (which
`SAMModel` avoids).

    python examples/custom_training_loop.py            # 4,000 examples, 30 epochs
    python examples/custom_training_loop.py --smoke    # a few seconds

It needs mnist1d, from the `[demo]` extra: `pip install "keras-sam[demo]"`.
"""

from __future__ import annotations

import argparse

import keras
import mnist1d.data
import numpy as np
import tensorflow as tf

import keras_sam


def make_mnist1d(num_samples: int, seed: int = 42):
    """Train and test arrays of MNIST-1D, generated (not downloaded)."""
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    data = mnist1d.data.make_dataset(args)
    as_float = lambda x: x.astype("float32")  # noqa: E731
    return (as_float(data["x"]), data["y"]), (as_float(data["x_test"]), data["y_test"])


def make_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((40,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def make_train_step(model, optimizer, rho: float | None):
    """A compiled step: SAM when `rho` is a number, plain SGD when it is None."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    def loss_and_gradients(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return loss, tape.gradient(loss, variables)

    @tf.function
    def train_step(x, y):
        loss, gradients = loss_and_gradients(x, y)
        if rho is not None:
            e_hat = keras_sam.perturbation(gradients, variables, rho)
            w = [tf.identity(v) for v in variables]  # a copy, not an alias of v
            for v, e in zip(variables, e_hat):
                v.assign_add(e)  # climb to w + ε̂
            _, gradients = loss_and_gradients(x, y)  # the SAM gradient
            for v, saved in zip(variables, w):
                v.assign(saved)  # back to w, bit for bit
        optimizer.apply(gradients, variables)
        return loss

    return train_step


def train(method: str, data, epochs: int, batch_size: int, rho: float, seed: int = 0):
    (x, y), (x_test, y_test) = data
    model = make_model(seed)
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    step = make_train_step(model, optimizer, rho if method == "sam" else None)
    batches = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed)
        .batch(batch_size, drop_remainder=True)
    )
    progress = keras.utils.Progbar(epochs, unit_name="epoch", verbose=1)
    for epoch in range(epochs):
        losses = [float(step(xb, yb)) for xb, yb in batches]
        progress.update(epoch + 1, values=[("loss", np.mean(losses))])
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    return float(accuracy)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="(default: %(default)s)")
    parser.add_argument("--rho", type=float, default=0.05, help="(default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny run (for tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.epochs, args.batch_size = 200, 2, 40

    data = make_mnist1d(args.samples)
    accuracies = {}
    for method in ("sgd", "sam"):
        print(f"{method.upper()}:")
        accuracies[method] = train(method, data, args.epochs, args.batch_size, args.rho)
    for method, accuracy in accuracies.items():
        print(f"{method.upper()} test accuracy: {accuracy:.3f}")
    return accuracies


if __name__ == "__main__":
    main()
