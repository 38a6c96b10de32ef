"""Building blocks shared by the networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x, multiple: int):
    """Zero-pad the last two axes of ``x`` up to a multiple of ``multiple`` (bottom/right).

    Returns
    -------
    padded : Tensor
    size : tuple of int
        The original (height, width), to crop the output back.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
            dilation: int = 1) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for stride 1) followed by batch normalization."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride,
                  padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels))
