"""The applications that come with keras-sam, apart from the library.

- `keras-sam demo` (`keras_sam.apps.demo`): SAM against its base optimizer on
  MNIST-1D with noisy labels; needs the `[demo]` extra (mnist1d, matplotlib);
- `keras-sam train` (`keras_sam.apps.train`): CIFAR ResNets and Wide ResNets
  with SAM on TFDS image datasets; needs the `[train]` extra
  (tensorflow-datasets, tensorboard, importlib_resources);
- `keras_sam.apps.data`: their data (MNIST-1D, TFDS image pipelines);
- `keras_sam.apps.cli`: the `keras-sam` command (also `python -m keras_sam`).

Importing this package imports nothing else: `keras_sam` imports its
`_command_line` before TensorFlow. The submodules above are attributes on
first use.

>>> import keras_sam.apps
>>> callable(keras_sam.apps.train.select_strategy)
True
"""

_SUBMODULES = ("cli", "data", "demo", "train")


def __getattr__(name: str):
    """`keras_sam.apps.train` and the others without an import of their own."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
