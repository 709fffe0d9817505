"""The two MBConv blocks. Attribute names are timm's/geffnet's so their checkpoints load unmapped."""
from __future__ import annotations

import torch
from torch import nn

from .arch import BN_EPS, Activation, BlockKind, BlockSpec
from .layers import SqueezeExcite, conv2d


def activation(kind: Activation) -> nn.Module:
    return nn.SiLU(inplace=True) if kind is Activation.SILU else nn.ReLU6(inplace=True)


def batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def squeeze_excite(spec: BlockSpec, channels: int, act: Activation) -> nn.Module:
    return SqueezeExcite(channels, spec.se_channels, activation(act)) if spec.se_channels else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """MBConv1: depthwise -> BN -> act -> SE -> 1x1 project -> BN (+ residual)."""

    def __init__(self, spec: BlockSpec, act: Activation) -> None:
        super().__init__()
        ch = spec.in_channels
        self.has_residual = spec.has_residual
        self.conv_dw = conv2d(ch, ch, spec.kernel, spec.stride, groups=ch)
        self.bn1 = batchnorm(ch)
        self.act1 = activation(act)
        self.se = squeeze_excite(spec, ch, act)
        self.conv_pw = conv2d(ch, spec.out_channels, 1)
        self.bn2 = batchnorm(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return y + x if self.has_residual else y


class InvertedResidual(nn.Module):
    """MBConv6: 1x1 expand -> BN -> act -> depthwise -> BN -> act -> SE -> 1x1 project -> BN (+ residual)."""

    def __init__(self, spec: BlockSpec, act: Activation) -> None:
        super().__init__()
        mid = spec.mid_channels
        self.has_residual = spec.has_residual
        self.conv_pw = conv2d(spec.in_channels, mid, 1)
        self.bn1 = batchnorm(mid)
        self.act1 = activation(act)
        self.conv_dw = conv2d(mid, mid, spec.kernel, spec.stride, groups=mid)
        self.bn2 = batchnorm(mid)
        self.act2 = activation(act)
        self.se = squeeze_excite(spec, mid, act)
        self.conv_pwl = conv2d(mid, spec.out_channels, 1)
        self.bn3 = batchnorm(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.has_residual else y


def build_block(spec: BlockSpec, act: Activation) -> nn.Module:
    cls = DepthwiseSeparable if spec.kind is BlockKind.DEPTHWISE_SEPARABLE else InvertedResidual
    return cls(spec, act)
