"""A 2D V-Net for the coronary tree, applied 2.5D (neighbouring axial slices as channels).

The V-Net layout (Milletari et al., 2016) in 2D: residual convolution stages with PReLU,
down-sampling by strided convolutions that double the width, up-sampling by transposed
convolutions that halve it, and skip connections that concatenate encoder features into
the decoder stages. Batch normalization follows every convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import conv_bn, pad_to_multiple


class ResidualStage(nn.Module):
    """``n_convs`` convolutions with PReLU whose output is added to the (projected) input.

    Parameters
    ----------
    in_channels, channels : int
        Input and output widths; a 1x1 convolution projects the input when they differ.
    n_convs : int
        Number of convolutions in the stage.
    kernel : int
        Convolution kernel size.
    """

    def __init__(self, in_channels: int, channels: int, n_convs: int, kernel: int = 3):
        super().__init__()
        layers = []
        for i in range(n_convs):
            layers.append(conv_bn(in_channels if i == 0 else channels, channels, kernel))
            if i < n_convs - 1:
                layers.append(nn.PReLU(channels))
        self.body = nn.Sequential(*layers)
        self.shortcut = (nn.Identity() if in_channels == channels
                         else nn.Conv2d(in_channels, channels, 1, bias=False))
        self.activation = nn.PReLU(channels)

    def forward(self, x):
        return self.activation(self.body(x) + self.shortcut(x))


def _resample_block(in_channels: int, out_channels: int, up: bool) -> nn.Sequential:
    conv = (nn.ConvTranspose2d if up else nn.Conv2d)(in_channels, out_channels, 2, stride=2,
                                                     bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.PReLU(out_channels))


class VNet2D(nn.Module):
    """2D V-Net.

    Parameters
    ----------
    in_channels : int
        Number of stacked slices (``2k + 1``).
    n_classes : int
        Output classes, background included.
    base : int
        Width of the first stage; stage ``i`` has ``base * 2**i`` channels.
    depth : int
        Number of down-sampling steps; inputs of any size are padded to a multiple of
        ``2**depth`` and the output is cropped back.
    convs : tuple of int
        Convolutions per resolution level, from full resolution down (the V-Net paper's
        1, 2, 3, 3, 3); the last entry repeats for deeper levels. Decoder stages use the
        count of their level.
    kernel : int
        Convolution kernel size.

    Notes
    -----
    ``forward`` returns logits of shape ``(batch, n_classes, height, width)``.
    """

    def __init__(self, in_channels: int = 5, n_classes: int = 5, base: int = 8, depth: int = 4,
                 convs: tuple[int, ...] = (1, 2, 3, 3, 3), kernel: int = 3):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        n_convs = [convs[min(i, len(convs) - 1)] for i in range(depth + 1)]
        self.depth = depth
        self.input_stage = ResidualStage(in_channels, widths[0], n_convs[0], kernel)
        self.down = nn.ModuleList(_resample_block(widths[i], widths[i + 1], up=False)
                                  for i in range(depth))
        self.encoder = nn.ModuleList(ResidualStage(widths[i + 1], widths[i + 1], n_convs[i + 1],
                                                   kernel) for i in range(depth))
        self.up = nn.ModuleList(_resample_block(widths[i + 1], widths[i], up=True)
                                for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(ResidualStage(2 * widths[i], widths[i], max(n_convs[i], 1),
                                                   kernel) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x):
        x, (h, w) = pad_to_multiple(x, 2 ** self.depth)
        x = self.input_stage(x)
        skips = []
        for down, stage in zip(self.down, self.encoder):
            skips.append(x)
            x = stage(down(x))
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips)):
            x = stage(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]
