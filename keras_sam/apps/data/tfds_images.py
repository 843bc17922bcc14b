"""The `tf.data` input pipeline of `keras-sam train` for TFDS image datasets.

`load_image_dataset("cifar10", batch_size=128)` returns an `ImageDataset`:
batched `(image, one_hot_label)` pipelines for training and testing plus the
facts a model needs (number of classes, image shape, steps per epoch, and the
per-channel mean and variance to normalise with).

Training examples go through, in order:

1. `tfds.load(..., as_supervised=True, shuffle_files=False)`, then the first
   `max_examples` only, if given;
2. label noise, if any (symmetric: with probability `label_noise` the label is
   replaced by one drawn uniformly from all classes, the protocol of Jiang et
   al. 2018 used by the SAM paper). The draws are a table indexed by the
   example's position in the (unshuffled) split, made from `seed`, so every
   epoch sees the same noisy labels; the test split is never corrupted;
3. `cache()` of the decoded images (CIFAR-10 is 150 MB), then a shuffle;
4. augmentation: a random 32x32 crop of the image zero-padded by 4 pixels on
   each side, and a random horizontal flip, except on digit and character
   datasets (MNIST, SVHN, EMNIST, KMNIST), where a mirrored 2 or 5 is not the
   same class;
5. pixels scaled to [0, 1], labels one-hot, `batch(drop_remainder=True)`,
   `repeat()`, `prefetch`.

Standardising with the dataset's mean and variance is left to the model (a
`keras.layers.Normalization` built from `ImageDataset.mean`/`.variance`), so
that the saved and exported model takes [0, 1] images.

Works offline in tests under `tfds.testing.mock_data`, whose random splits
have no known size: sizes are counted once instead.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_sam._validation import InvalidArgumentError, check_int, check_real
from keras_sam.apps.data import DatasetUnavailableError

__all__ = [
    "DatasetUnavailableError",
    "ImageDataset",
    "NO_FLIP_DATASETS",
    "load_image_dataset",
    "symmetric_label_noise",
]

# Digits and characters change meaning when mirrored.
NO_FLIP_DATASETS = frozenset(
    {"mnist", "svhn_cropped", "emnist", "kmnist", "binary_alpha_digits", "mnist_corrupted"}
)
CROP_PADDING = 4
_STATISTICS_EXAMPLES = 5_000


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Batched pipelines and what a model needs to know about them.

    Attributes:
        train: repeated `(image, one_hot)` batches; iterate `steps_per_epoch`
            of them per epoch.
        test: one pass over the test split, `(image, one_hot)` batches, or
            `None` when no test split was asked for.
        name: the TFDS name.
        num_classes: number of classes.
        image_shape: (height, width, channels) of each image.
        train_examples: training examples used (after `max_examples`).
        steps_per_epoch: `train_examples // batch_size`.
        mean, variance: per-channel statistics of the [0, 1] training images.
        flip: whether training images are randomly flipped.
    """

    train: tf.data.Dataset
    test: tf.data.Dataset | None
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_examples: int
    steps_per_epoch: int
    mean: tuple[float, ...]
    variance: tuple[float, ...]
    flip: bool


def symmetric_label_noise(
    num_examples: int, rate: float, num_classes: int, seed: int = 0
) -> np.ndarray:
    """For each example index, the class that replaces its label, or -1 to keep it.

    Each label is replaced, with probability `rate`, by a class drawn
    uniformly from all `num_classes` (so it may stay the same: the expected
    fraction of wrong labels is `rate * (num_classes - 1) / num_classes`).
    The table depends only on its arguments, so every epoch, and every
    process, sees the same noisy labels.

    >>> table = symmetric_label_noise(5, rate=1.0, num_classes=10, seed=0)
    >>> table.shape, bool((table >= 0).all())
    ((5,), True)
    >>> bool((symmetric_label_noise(5, 0.0, 10) == -1).all())
    True
    """
    rng = np.random.default_rng(seed)
    replaced = rng.random(num_examples) < rate
    new_labels = rng.integers(num_classes, size=num_examples)
    return np.where(replaced, new_labels, -1)


def _count(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    # Unknown size (mocked data, or a filtered split): count once.
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def _channel_statistics(images: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of [0, 1] images, in float64."""
    total = total_squares = None
    count = 0
    for batch in images.batch(1_000).as_numpy_iterator():
        pixels = batch.reshape(-1, batch.shape[-1]).astype(np.float64) / 255.0
        total = pixels.sum(0) if total is None else total + pixels.sum(0)
        squares = np.square(pixels).sum(0)
        total_squares = squares if total_squares is None else total_squares + squares
        count += pixels.shape[0]
    mean = total / count
    return mean, np.maximum(total_squares / count - np.square(mean), 1e-12)


def _augment(image, flip: bool):
    height, width, channels = image.shape
    padded = tf.pad(image, [[CROP_PADDING] * 2, [CROP_PADDING] * 2, [0, 0]])
    image = tf.image.random_crop(padded, [height, width, channels])
    return tf.image.random_flip_left_right(image) if flip else image


def _dataset_facts(builder_info, image_size):
    image_key, label_key = builder_info.supervised_keys or (None, None)
    if image_key is None:
        raise InvalidArgumentError(
            f"TFDS dataset {builder_info.name!r} has no (image, label) supervised keys; "
            "`keras-sam train` needs an image classification dataset."
        )
    label_feature = builder_info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    shape = tuple(builder_info.features[image_key].shape)
    if not isinstance(num_classes, int) or len(shape) != 3:
        raise InvalidArgumentError(
            f"TFDS dataset {builder_info.name!r} is not an image classification dataset "
            f"(image shape {shape}, label {type(label_feature).__name__})."
        )
    if image_size is not None:
        shape = (image_size, image_size, shape[2])
    elif None in shape:
        raise InvalidArgumentError(
            f"Images of {builder_info.name!r} have no fixed size {shape}: pass "
            "`image_size` (`--image-size`) to resize them."
        )
    return num_classes, shape


def load_image_dataset(
    name: str,
    *,
    batch_size: int,
    data_dir: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    max_examples: int | None = None,
    label_noise: float = 0.0,
    flip: bool | None = None,
    augment: bool = True,
    image_size: int | None = None,
    cache: bool = True,
    shuffle_buffer: int = 50_000,
    drop_test_remainder: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """Loads a TFDS image classification dataset as batched training pipelines.

    Example (offline, with TFDS's random mock data):

    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=16):
    ...     data = load_image_dataset("cifar10", batch_size=8)
    >>> data.num_classes, data.image_shape, data.steps_per_epoch, data.flip
    (10, (32, 32, 3), 2, True)
    >>> images, labels = next(iter(data.train))
    >>> images.shape, labels.shape
    (TensorShape([8, 32, 32, 3]), TensorShape([8, 10]))

    Args:
        name: a TFDS image classification dataset (`"cifar10"`, `"cifar100"`,
            `"svhn_cropped"`, `"fashion_mnist"`, `"mnist"`, ...).
        batch_size: the global batch size.
        data_dir: TFDS data directory. Defaults to TFDS's own.
        train_split, test_split: split names (TFDS slicing such as
            `"train[:90%]"` works); `test_split=None` for no test pipeline.
            Default to `"train"` and `"test"`.
        max_examples: use only the first this many examples of each split
            (smoke tests). Defaults to all.
        label_noise: fraction of training labels to redraw uniformly, in
            [0, 1]. Defaults to `0.0`.
        flip: random horizontal flips; `None` flips unless the dataset is in
            `NO_FLIP_DATASETS`. Defaults to `None`.
        augment: random crops (and flips); `False` for none. Defaults to `True`.
        image_size: resize images to this square size (needed for datasets
            whose images vary in size). Defaults to the dataset's own size.
        cache: keep decoded images in memory after the first epoch. Defaults
            to `True`.
        shuffle_buffer: shuffle buffer size. Defaults to `50_000`.
        drop_test_remainder: drop the last partial test batch (static shapes
            for TPUs). Defaults to `False`.
        seed: seed of the label noise. Defaults to `0`.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if max_examples is not None:
        max_examples = check_int("max_examples", max_examples, minimum=1)
    label_noise = check_real("label_noise", label_noise, minimum=0.0, maximum=1.0)
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=1)
    if flip is not None and not isinstance(flip, bool):
        raise InvalidArgumentError(f"`flip` must be True, False or None. Received: flip={flip!r}.")
    if not isinstance(seed, numbers.Integral):
        raise InvalidArgumentError(f"`seed` must be an integer. Received: seed={seed!r}.")

    builder = tfds.builder(name, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except (OSError, tfds.download.DownloadError) as error:
        # Offline, TFDS retries for minutes and then raises from deep inside
        # its downloader (requests' ConnectionError is an OSError).
        reason = (str(error).strip().splitlines() or [""])[0]
        raise DatasetUnavailableError(
            f"{name!r} is not prepared in {builder.data_dir!r} and could not be downloaded and "
            f"prepared there ({type(error).__name__}: {reason}); connect to the internet, or "
            "pass a data directory that holds it prepared (`--data-dir`)."
        ) from error
    num_classes, image_shape = _dataset_facts(builder.info, image_size)
    if flip is None:
        flip = name.split("/")[0] not in NO_FLIP_DATASETS

    def load(split):
        dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        if max_examples is not None:
            dataset = dataset.take(max_examples)
        if image_size is not None:
            dataset = dataset.map(
                lambda image, label: (
                    tf.cast(tf.image.resize(image, image_shape[:2]), tf.uint8),
                    label,
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return dataset

    def finish(image, label):
        image = tf.ensure_shape(tf.cast(image, tf.float32) / 255.0, image_shape)
        return image, tf.one_hot(label, num_classes)

    train = load(train_split)
    train_examples = _count(train)
    if train_examples < batch_size:
        raise InvalidArgumentError(
            f"The training split {train_split!r} of {name!r} has {train_examples} examples, "
            f"fewer than one batch (batch_size={batch_size})."
        )
    mean, variance = _channel_statistics(
        train.take(_STATISTICS_EXAMPLES).map(lambda image, _: image)
    )
    if label_noise:
        replacements = tf.constant(
            symmetric_label_noise(train_examples, label_noise, num_classes, seed), tf.int64
        )

        def corrupt(index, example):
            image, label = example
            new_label = replacements[index]
            return image, tf.where(new_label >= 0, tf.cast(new_label, label.dtype), label)

        train = train.enumerate().map(corrupt, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        train = train.cache()
    train = train.shuffle(min(shuffle_buffer, train_examples), reshuffle_each_iteration=True)
    if augment:
        train = train.map(
            lambda image, label: (_augment(image, flip), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    train = (
        train.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )

    test = None
    if test_split is not None:
        test = load(test_split)
        if cache:
            test = test.cache()
        test = (
            test.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=drop_test_remainder)
            .prefetch(tf.data.AUTOTUNE)
        )

    return ImageDataset(
        train=train,
        test=test,
        name=name,
        num_classes=num_classes,
        image_shape=image_shape,
        train_examples=train_examples,
        steps_per_epoch=train_examples // batch_size,
        mean=tuple(float(m) for m in mean),
        variance=tuple(float(v) for v in variance),
        flip=flip and augment,
    )
