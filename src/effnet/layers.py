"""TensorFlow 'SAME' padding and squeeze-excite: the two layers the TF-ported weights depend on."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) pads of TF 'SAME' along one axis; the smaller half goes first (left/top)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def needs_same_padding(kernel: int, stride: int) -> bool:
    """Only strided convs can pad asymmetrically; stride 1 with an odd kernel is ordinary padding."""
    return stride > 1 or kernel % 2 == 0


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding.

    Dynamic by default (pads computed from each input); `fix_padding(h, w)` makes them constants for
    a known input size, which is what exporters need (no Pad op fed by shape arithmetic). Where the
    fixed pads are symmetric they move into the convolution itself and no Pad op remains at all.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)
        self.fixed_pad: tuple[int, int, int, int] | None = None  # (left, right, top, bottom)
        self.dynamic = True

    def fix_padding(self, height: int, width: int) -> None:
        (top, bottom), (left, right) = (
            same_padding(height, self.kernel_size[0], self.stride[0]),
            same_padding(width, self.kernel_size[1], self.stride[1]),
        )
        if top == bottom and left == right:
            self.padding, self.fixed_pad = (top, left), None
        else:
            self.padding, self.fixed_pad = (0, 0), (left, right, top, bottom)
        self.dynamic = False

    def make_dynamic(self) -> None:
        self.padding, self.fixed_pad, self.dynamic = (0, 0), None, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            (top, bottom), (left, right) = (
                same_padding(x.shape[-2], self.kernel_size[0], self.stride[0]),
                same_padding(x.shape[-1], self.kernel_size[1], self.stride[1]),
            )
            x = F.pad(x, (left, right, top, bottom))
        elif self.fixed_pad is not None:
            x = F.pad(x, self.fixed_pad)
        return super().forward(x)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
           groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A TF-'SAME' conv: a plain nn.Conv2d where the padding is symmetric for every input size."""
    if needs_same_padding(kernel_size, stride):
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups, bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                     groups=groups, bias=bias)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> reduce (from the block's input width) -> act -> expand -> sigmoid."""

    def __init__(self, channels: int, reduced_channels: int, act: nn.Module) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.act1 = act
        self.conv_expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * s.sigmoid()
