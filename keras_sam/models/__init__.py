"""Small reference architectures used by the demo, the examples and the tests."""

from keras_sam.models.cnn1d import mnist1d_cnn

__all__ = ["mnist1d_cnn"]
