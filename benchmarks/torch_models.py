"""The benchmark's two models in PyTorch, layer for layer as `benchmarks/models.py`.

For timing the common PyTorch SAM (`benchmarks/torch_step_time.py`) on the
same architectures as the Keras rows: the same layers, shapes, strides,
padding and BatchNorm settings (Keras's `momentum` m is PyTorch's `1 - m`).
PyTorch's default NCHW layout, as PyTorch users train.

- `small_cnn`: conv32-BN-ReLU-pool, conv32-BN-ReLU-pool, conv64-BN-ReLU,
  global average pooling, dense 10 (29,418 trainable weights, as in Keras).
- `resnet20`: the CIFAR ResNet-20 with option-A zero-padded shortcuts and
  BatchNorm momentum 0.9, epsilon 1e-5 (269,722 trainable weights, as in Keras).

Example (needs `pip install torch`):

    >>> from benchmarks.torch_models import build  # doctest: +SKIP
    >>> sum(p.numel() for p in build("small_cnn").parameters())  # doctest: +SKIP
    29418
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODEL_NAMES", "build"]

NUM_CLASSES = 10


def _conv_bn_relu(in_channels: int, out_channels: int, bn_momentum: float, bn_eps: float):
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=bn_momentum, eps=bn_eps),
        nn.ReLU(),
    ]


def small_cnn() -> nn.Module:
    """The small CNN; BatchNorm as Keras's default (momentum 0.99, epsilon 1e-3)."""
    bn = {"bn_momentum": 0.01, "bn_eps": 1e-3}
    return nn.Sequential(
        *_conv_bn_relu(3, 32, **bn),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 32, **bn),
        nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64, **bn),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


class _ZeroPadShortcut(nn.Module):
    """Option-A shortcut: every 2nd pixel, the new channels zero (half before, half after)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        extra = out_channels - in_channels
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::2, ::2], self.pad)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.1, eps=1e-5),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.1, eps=1e-5),
        )
        downsample = stride != 1 or in_channels != out_channels
        self.shortcut = (
            _ZeroPadShortcut(in_channels, out_channels) if downsample else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.shortcut(x) + self.residual(x))


def resnet20() -> nn.Module:
    """CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 filters)."""
    layers = [
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16, momentum=0.1, eps=1e-5),
        nn.ReLU(),
    ]
    in_channels = 16
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(_BasicBlock(in_channels, filters, stride))
            in_channels = filters
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, NUM_CLASSES)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    return model


_BUILDERS = {"small_cnn": small_cnn, "resnet20": resnet20}
MODEL_NAMES = tuple(_BUILDERS)


def build(name: str) -> nn.Module:
    """Builds model `name` (one of `MODEL_NAMES`)."""
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}.")
    return _BUILDERS[name]()
