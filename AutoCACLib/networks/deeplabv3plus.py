"""A compact DeepLabV3+ for the aorta on axial slices (2.5D input allowed).

Encoder: a small residual network (basic blocks) with output stride 8, its last stages
dilated instead of strided. Atrous spatial pyramid pooling (ASPP): a 1x1 branch, 3x3
branches at several dilation rates and an image-pooling branch. Decoder: the ASPP output,
up-sampled to 1/4 resolution, fused with projected low-level features from the encoder,
refined by two 3x3 convolutions and up-sampled to the input size (Chen et al., 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bn, pad_to_multiple


class BasicBlock(nn.Module):
    """Residual block: two 3x3 convolutions (the first possibly strided), ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_channels, channels, 3, stride=stride, dilation=dilation)
        self.conv2 = conv_bn(channels, channels, 3, dilation=dilation)
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == channels
                         else conv_bn(in_channels, channels, 1, stride=stride))

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


def _stage(in_channels: int, channels: int, n_blocks: int, stride: int, dilation: int):
    blocks = [BasicBlock(in_channels, channels, stride, dilation)]
    blocks += [BasicBlock(channels, channels, 1, dilation) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def _conv_bn_relu(in_channels: int, channels: int, kernel: int = 3, dilation: int = 1):
    return nn.Sequential(conv_bn(in_channels, channels, kernel, dilation=dilation), nn.ReLU())


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3 branches and image pooling."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)]
            + [_conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates])
        # No batch norm on the pooled branch: it has one value per channel and image.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1),
                                  nn.ReLU())
        self.project = _conv_bn_relu((len(rates) + 2) * channels, channels, 1)

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """Compact DeepLabV3+.

    Parameters
    ----------
    in_channels : int
        Number of stacked slices (``2k + 1``).
    n_classes : int
        Output classes, background included.
    base : int
        Width of the stem; encoder stages have ``base * (2, 4, 8, 8)`` channels.
    blocks : tuple of 4 int
        Residual blocks per encoder stage (strides 2, 2, 1, 1; dilations 1, 1, 2, 4).
    aspp_rates : tuple of int
        Dilation rates of the ASPP's 3x3 branches, at output stride 8.

    Notes
    -----
    ``forward`` returns logits of shape ``(batch, n_classes, height, width)``; inputs of
    any size are padded to a multiple of 8 and the output cropped back.
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 3, base: int = 8,
                 blocks: tuple[int, int, int, int] = (1, 2, 2, 1),
                 aspp_rates: tuple[int, ...] = (2, 4, 6)):
        super().__init__()
        w = [2 * base, 4 * base, 8 * base, 8 * base]
        self.stem = _conv_bn_relu(in_channels, base)  # full resolution
        self.layer1 = _stage(base, w[0], blocks[0], stride=2, dilation=1)   # 1/2
        self.layer2 = _stage(w[0], w[1], blocks[1], stride=2, dilation=1)   # 1/4: low level
        self.layer3 = _stage(w[1], w[2], blocks[2], stride=2, dilation=2)   # 1/8
        self.layer4 = _stage(w[2], w[3], blocks[3], stride=1, dilation=4)   # 1/8
        self.aspp = ASPP(w[3], w[1], tuple(aspp_rates))
        low = max(base, w[1] // 4)
        self.low_level = _conv_bn_relu(w[1], low, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(w[1] + low, w[1]), _conv_bn_relu(w[1], w[1]))
        self.head = nn.Conv2d(w[1], n_classes, 1)

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, 8)
        low = self.layer2(self.layer1(self.stem(x)))
        deep = self.aspp(self.layer4(self.layer3(low)))
        deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(self.decoder(torch.cat([deep, self.low_level(low)], dim=1)))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y[..., :h, :w]
