"""EfficientNet: stem -> MBConv stages -> head, built from an `arch.NetworkSpec`."""
from __future__ import annotations

import math

import torch
from torch import nn

from .arch import NetworkSpec, network_spec
from .blocks import activation, batchnorm, build_block
from .contract import num_classes
from .layers import Conv2dSame, conv2d


class EfficientNet(nn.Module):
    """The TF-ported EfficientNet / EfficientNet-Lite; forward returns logits (eval mode by default)."""

    def __init__(self, spec: NetworkSpec, classes: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        act = spec.activation
        self.conv_stem = conv2d(3, spec.stem_channels, 3, stride=2)
        self.bn1 = batchnorm(spec.stem_channels)
        self.act1 = activation(act)
        self.blocks = nn.Sequential(
            *(nn.Sequential(*(build_block(b, act) for b in stage)) for stage in spec.stages)
        )
        self.conv_head = conv2d(spec.blocks[-1].out_channels, spec.head_channels, 1)
        self.bn2 = batchnorm(spec.head_channels)
        self.act2 = activation(act)
        self.dropout = nn.Dropout(spec.variant.dropout)
        self.classifier = nn.Linear(spec.head_channels, classes or num_classes())
        self.input_size: tuple[int, int] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_input_size(self, size: int | tuple[int, int] | None) -> None:
        """Fix every SAME pad for inputs of `size` (static, for export), or None for per-call pads."""
        convs = [m for m in self.modules() if isinstance(m, Conv2dSame)]
        if size is None:
            for conv in convs:
                conv.make_dynamic()
            self.input_size = None
            return
        h, w = (size, size) if isinstance(size, int) else size
        self.input_size = (h, w)
        # Spatial size only changes at strided convs, and those are exactly the Conv2dSame ones,
        # met in forward order by modules(): walk them, tracking the size each one sees.
        for conv in convs:
            conv.fix_padding(h, w)
            h, w = math.ceil(h / conv.stride[0]), math.ceil(w / conv.stride[1])


def build_model(name: str, input_size: int | tuple[int, int] | None = None) -> EfficientNet:
    """An untrained network of variant `name` in eval mode; static pads when `input_size` is given."""
    model = EfficientNet(network_spec(name))
    model.set_input_size(input_size)
    return model.eval()
