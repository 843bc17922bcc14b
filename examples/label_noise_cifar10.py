"""SAM's robustness to label noise: CIFAR-10 with 20, 40, 60 and 80% noisy labels.

The protocol of the SAM paper (Foret et al., ICLR 2021, section 3.3 and its
label-noise table, after Jiang et al. 2018/2019): corrupt a fraction of the
CIFAR-10 training labels with symmetric noise (each label, with that
probability, replaced by a class drawn uniformly from all ten), train on the
noisy set, and report accuracy on the clean test set. The paper's finding is
that SAM alone, with no noise-specific machinery, holds up far better than
SGD as the noise grows; rho is worth tuning per noise level.

The noisy labels are fixed for a run (drawn once from `--seed`), and the test
set is never corrupted: `keras-sam train --label-noise` does this (see
`keras_sam.apps.data.tfds_images.symmetric_label_noise`). Each setting is one
`keras_sam.apps.train` run under `--out/<method>_<rate>`, resumable.

    python examples/label_noise_cifar10.py --out runs/label_noise          # GPU: hours
    python examples/label_noise_cifar10.py --rates 0.8 --epochs 50
    python examples/label_noise_cifar10.py --smoke   # offline, TFDS mock data

Defaults: a ResNet-32 (as in the paper's table), SGD with momentum, cosine
learning rate from 0.1, weight decay 5e-4, batch 128, 200 epochs, rho 0.1.
`--smoke` trains a ResNet-8 for one step per setting on 16 random mock
examples at 40% noise only; it shows that the script runs, nothing more.
It needs the `[train]` extra: `pip install "keras-sam[train]"`.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from keras_sam.apps.train import TrainConfig, train

PAPER_RATES = (0.2, 0.4, 0.6, 0.8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        default=PAPER_RATES,
        help="comma-separated noise rates (default: 0.2,0.4,0.6,0.8)",
    )
    parser.add_argument("--model", default="resnet32", help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=200, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.1, help="(default: %(default)s)")
    parser.add_argument("--rho", type=float, default=0.1, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noisy labels")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument(
        "--out", help="(default: runs/label_noise_cifar10; with --smoke, the same ending in -smoke)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny offline run on TFDS mock data (for tests)"
    )
    args = parser.parse_args(argv)
    if args.out is None:  # a smoke run never lands in a real run's backup
        args.out = "runs/label_noise_cifar10" + ("-smoke" if args.smoke else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = dict(
        dataset="cifar10",
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
    )
    rates = args.rates
    mock = contextlib.nullcontext()
    if args.smoke:
        import tensorflow_datasets as tfds

        rates = (0.4,)
        settings.update(
            model="resnet8", epochs=1, batch_size=8, max_examples=16, steps_per_epoch=1,
            export=False,
        )
        mock = tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE)

    accuracy = {}
    with mock:
        for rate in rates:
            for method, rho in (("none", None), ("sam", args.rho)):
                results = train(
                    TrainConfig(
                        sam=method,
                        rho=rho,
                        label_noise=rate,
                        out=os.path.join(args.out, f"{method}_{rate:g}"),
                        **settings,
                    )
                )
                accuracy[method, rate] = results["test"]["accuracy"]

    print(f"\nClean test accuracy, {settings['model']}, {settings['epochs']} epochs")
    print("noise   SGD      SAM")
    for rate in rates:
        print(f"{rate:>4.0%}  {accuracy['none', rate]:6.2%}  {accuracy['sam', rate]:6.2%}")
    return accuracy


if __name__ == "__main__":
    main()
