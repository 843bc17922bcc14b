"""The data of the applications: MNIST-1D for `keras-sam demo`, generated locally
(`mnist1d`), and the TFDS image pipelines of `keras-sam train` (`tfds_images`)."""

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(OSError):
    """A dataset is not in its data directory and could not be downloaded and
    prepared there (offline, say); the message is one line."""
