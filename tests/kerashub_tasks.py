"""Tiny KerasHub tasks built from configurations (nothing downloaded), and their data.

- `bert_classifier()`: a one-layer BERT text classifier with a 15-word
  in-memory vocabulary and its preprocessor (raw strings in);
- `resnet_classifier()`: a one-block ResNet image classifier whose image
  converter resizes and rescales raw uint8 images.
"""

from __future__ import annotations

import keras_hub
import numpy as np

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "quick",
    "brown",
    "fox",
    "good",
    "bad",
    "movie",
    "great",
    "awful",
    "a",
]


def text_data(n=32):
    rng = np.random.default_rng(0)
    good = ["a great movie", "the good movie", "great fox"]
    bad = ["a bad movie", "the awful movie", "bad fox"]
    y = rng.integers(0, 2, n).astype("int32")
    x = np.array([(good if t else bad)[i % 3] for i, t in enumerate(y)])
    return x, y


def bert_classifier(**kw):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor, **kw
    )


def image_data(n=16, size=20):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 3)).astype("uint8")  # raw images, other size
    y = rng.integers(0, 3, n).astype("int32")
    return x, y


def resnet_classifier(**kw):
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(16, 16, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(16, 16), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone, num_classes=3, preprocessor=preprocessor, **kw
    )
