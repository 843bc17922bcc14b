"""Reference architectures: the demo's 1D CNN, CIFAR ResNets and Wide ResNets."""

from keras_sam.models.cnn1d import mnist1d_cnn
from keras_sam.models.resnet import MODEL_NAMES, ZeroPadShortcut, get_model, resnet
from keras_sam.models.wrn import wide_resnet

__all__ = ["MODEL_NAMES", "ZeroPadShortcut", "get_model", "mnist1d_cnn", "resnet", "wide_resnet"]
