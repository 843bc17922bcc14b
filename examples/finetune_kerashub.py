"""Fine-tuning a KerasHub text classifier with SAM, on raw strings.

A KerasHub task keeps its preprocessor and its compile defaults when
`SAMModel` wraps it: `fit`, `evaluate` and `predict` take raw strings, as the
task's own do, and `compile()` with no arguments uses the task's optimizer,
loss and metrics.

1. load a pretrained classifier: `keras_hub.models.BertTextClassifier.
   from_preset("bert_tiny_en_uncased", num_classes=2)` (downloaded once);
2. wrap it in `SAMModel` and `compile()` (the task's Adam(5e-5), its loss and
   accuracy);
3. fine-tune on IMDb movie reviews (`tensorflow_datasets`, downloaded once)
   and report the test accuracy; save the fine-tuned classifier alone, which
   plain KerasHub loads.

    python examples/finetune_kerashub.py                     # downloads; minutes on a CPU
    python examples/finetune_kerashub.py --smoke             # offline, a few seconds

`--smoke` builds a one-layer BERT from a configuration with a 15-word
vocabulary and trains it on a handful of made-up reviews: nothing is
downloaded. It needs keras-hub (see docs/usage.md, "KerasHub tasks", for
installing it beside tensorflow-cpu) and, without `--smoke`,
tensorflow-datasets (`pip install "keras-sam[train]"`).
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

from keras_sam import SAMModel

SMOKE_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "movie",
                    "film", "great", "good", "fine", "bad", "awful", "dull"]  # fmt: skip


def smoke_task():
    """A tiny BERT classifier built from a configuration (no download)."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=SMOKE_VOCABULARY, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(SMOKE_VOCABULARY), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8,
    )  # fmt: skip
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)


def smoke_reviews(count: int, seed: int):
    """Made-up reviews: positive ones praise the film, negative ones do not."""
    rng = np.random.default_rng(seed)
    good, bad = ["great", "good", "fine"], ["bad", "awful", "dull"]
    labels = rng.integers(0, 2, count).astype("int32")
    words = [rng.choice(good if label else bad) for label in labels]
    texts = np.array([f"a {word} {rng.choice(['movie', 'film'])}" for word in words])
    return texts, labels


def imdb(split: str, limit: int | None):
    import tensorflow_datasets as tfds

    data = tfds.load("imdb_reviews", split=split, as_supervised=True, batch_size=-1)
    texts, labels = (np.asarray(t) for t in tfds.as_numpy(data))
    return texts[:limit], labels[:limit].astype("int32")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bert_tiny_en_uncased", help="a KerasHub preset")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's radius")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=5000)
    parser.add_argument("--out", default="finetuned_classifier.keras",
                        help="where the fine-tuned classifier is saved")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="offline, tiny model, seconds")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    if args.smoke:
        task = smoke_task()
        (x, y), (x_test, y_test) = smoke_reviews(64, seed=0), smoke_reviews(32, seed=1)
        epochs, batch_size = 3, 16
    else:
        import keras_hub

        task = keras_hub.models.BertTextClassifier.from_preset(args.preset, num_classes=2)
        (x, y), (x_test, y_test) = imdb("train", args.train_examples), imdb("test", 2000)
        epochs, batch_size = args.epochs, args.batch_size

    model = SAMModel(task, rho=args.rho)
    model.compile()  # the task's defaults: Adam(5e-5), sparse cross-entropy, accuracy
    if args.smoke:  # a tiny model from scratch learns faster than a pretrained one
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_split=0.25, verbose=2)
    results = model.evaluate(x_test, y_test, batch_size=batch_size, return_dict=True, verbose=0)
    print(f"SAM fine-tuned {task.name}: test accuracy {results['sparse_categorical_accuracy']:.1%}")
    print("prediction for 'a great film':", model.predict(np.array(["a great film"]), verbose=0))
    model.base_model.save(args.out)  # the classifier alone: plain KerasHub loads it
    print(f"saved the fine-tuned classifier to {args.out}")


if __name__ == "__main__":
    main()
