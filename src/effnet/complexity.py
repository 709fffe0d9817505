"""Model complexity as the Open Model Zoo cards state it: parameters (raw and BN-folded) and GFLOPs.

Parameters
    ``params``         every trainable tensor of the PyTorch network (BatchNorm's weight and bias included;
                       its running statistics are buffers, not parameters). B7: 66,347,960.
    ``params_folded``  the same network after folding each BatchNorm into the convolution before it, which
                       is what an OpenVINO IR holds and what the card's "MParams" counts: conv weights plus
                       one bias per BatchNorm channel. B7: 66,192,600 = card's 66.193.

FLOPs
    The card numbers come from OpenVINO's model_analyzer run on the IR that Model Optimizer wrote when
    the cards were made. What reproduces them is an IR of that era (v7: conv biases inside the
    Convolution layer, SiLU as Sigmoid + Eltwise(mul), the input mean/scale as a ScaleShift layer,
    global pooling as a Pooling layer; worked out from the numbers, no such IR file was at hand).
    model_analyzer counts, per layer, ops per output element x output elements
    (``model_analyzer/layer_provider.py``); for the layers this network has:

    ================================  ==========================  ===================================
    layer (what it is here)           ops per output element      so, in this network
    ================================  ==========================  ===================================
    Convolution, depthwise too        2 x C_in/groups x k x k     2 x MACs; bias not counted
    FullyConnected (classifier)       2 x in_features             2 x MACs; bias not counted
    Sigmoid                           3                           SiLU = x * sigmoid(x): 3 + 3 = 6
    Eltwise, two inputs               2 x 2 - 1 = 3               SiLU's product, SE gate, residual
    Pooling (global average)          kernel area = H x W         1 per *input* element (SE, head)
    ScaleShift (input mean/scale)     2                           2 per input pixel value
    Clamp (ReLU6 of the Lite models)  min + max = 2
    ================================  ==========================  ===================================

    Padding, reshapes and dropout cost nothing. SE's reduce/expand are 1x1 convolutions like any other.
    This rule reproduces the OMZ EfficientNet-B0/B5/B7 cards to all the decimals they print:
    B0 0.81882 (cards efficientnet-b0, efficientnet-b0-pytorch: 0.819), B5 21.25224 (efficientnet-b5,
    efficientnet-b5-pytorch: 21.252), B7 77.61836 (efficientnet-b7_auto_aug, efficientnet-b7-pytorch:
    77.618). Plain 2 x MACs (convolutions + classifier) would give 75.492 for B7; the rest is SiLU
    (1.556), SE gates (0.369), SE pooling (0.123), residual sums (0.076), head pooling, input scaling.
    The PyTorch cards' IR ends at the classifier (logits), so no Softmax is counted (it would add 5 per
    class: 5,000 FLOPs). Today's IR (v11: conv bias as an Add, SiLU fused into Swish = 5, ReduceMean
    uncounted by model_analyzer) would come to about 77.227 for B7 and 0.812 for B0, which no card says.

``flop_breakdown`` computes this analytically from ``arch.network_spec`` (instant, any input size);
``measure_flops`` counts the same categories with forward hooks on a built module, as a cross-check.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from .arch import Activation, BlockKind, network_spec, variant
from .blocks import DepthwiseSeparable, InvertedResidual
from .contract import num_classes
from .layers import SqueezeExcite
from .model import EfficientNet, build_model

# model_analyzer's ops per output element for the IR v7 layers this network becomes.
CONV_OPS_PER_MAC = 2  # multiply + add
SIGMOID_OPS = 3
ELTWISE_OPS = 3  # 2 * inputs - 1
SILU_OPS = SIGMOID_OPS + ELTWISE_OPS  # Sigmoid, then Eltwise(mul) with its input
CLAMP_OPS = 2  # ReLU6
SCALESHIFT_OPS = 2  # input normalisation: x * scale + shift
POOL_OPS_PER_INPUT = 1  # global average pooling: kernel area (H*W) adds per output element

ACTIVATION_OPS = {Activation.SILU: SILU_OPS, Activation.RELU6: CLAMP_OPS}

# Breakdown keys, in network order.
CATEGORIES = ("input_scale", "conv", "activation", "se_pool", "se_gate", "residual", "head_pool", "fc")

# (convolution, batchnorm) attribute pairs per module type; timm's names (see blocks.py, model.py).
FOLD_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
    DepthwiseSeparable: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


@dataclass(frozen=True)
class Complexity:
    """What `effnet info` prints about a variant at one input size."""

    name: str
    input_size: int
    params: int  # trainable tensors of the PyTorch network
    params_folded: int  # after folding BatchNorm into the convolutions: the card's MParams
    macs: int  # multiply-accumulates of the convolutions and the classifier
    flops: int  # the card's counting rule (see the module docstring)
    gflops: float  # flops / 1e9: the card's GFLOPs


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (shared ones once; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (eval statistics) into `conv` in place: conv(x) * s + t, with s = gamma / sqrt(var + eps)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm of {bn.num_features} channels after a conv of {conv.out_channels}")
    w = conv.weight
    dtype = w.dtype
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight = nn.Parameter((w.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter((beta + (bias - mean) * scale).to(dtype))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy with every BatchNorm folded into the convolution before it (and replaced by Identity).

    Uses the running statistics, so the copy computes what `model` computes in eval mode. Every
    BatchNorm must be one of the known (conv, bn) pairs of FOLD_PAIRS; anything else is an error.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        for conv_name, bn_name in FOLD_PAIRS.get(type(module), ()):
            bn = getattr(module, bn_name)
            if isinstance(bn, nn.Identity):
                continue  # already folded
            _fold_pair(getattr(module, conv_name), bn)
            setattr(module, bn_name, nn.Identity())
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"BatchNorm layers with no known convolution to fold into: {', '.join(left)}")
    return folded


def _conv_out(size: int, stride: int) -> int:
    return math.ceil(size / stride)  # TF 'SAME' (and symmetric k//2 padding for the odd kernels here)


def flop_breakdown(name: str, input_size: int | None = None) -> tuple[dict[str, int], int]:
    """(FLOPs per category of CATEGORIES, MACs) of variant `name` at `input_size` (default: native),
    counted from the architecture table with the card's rule (module docstring)."""
    spec = network_spec(name)
    size = _check_size(input_size if input_size is not None else spec.variant.resolution)
    act_ops = ACTIVATION_OPS[spec.activation]
    flops: Counter[str] = Counter({c: 0 for c in CATEGORIES})
    macs = 0

    def conv(c_in: int, c_out: int, kernel: int, groups: int, out_pixels: int) -> None:
        nonlocal macs
        m = c_in // groups * kernel * kernel * c_out * out_pixels
        macs += m
        flops["conv"] += CONV_OPS_PER_MAC * m

    flops["input_scale"] += SCALESHIFT_OPS * 3 * size * size
    h = _conv_out(size, 2)
    conv(3, spec.stem_channels, 3, 1, h * h)
    flops["activation"] += act_ops * spec.stem_channels * h * h
    for b in spec.blocks:
        mid = b.in_channels
        if b.kind is BlockKind.INVERTED_RESIDUAL:
            mid = b.mid_channels
            conv(b.in_channels, mid, 1, 1, h * h)
            flops["activation"] += act_ops * mid * h * h
        h = _conv_out(h, b.stride)
        conv(mid, mid, b.kernel, mid, h * h)
        flops["activation"] += act_ops * mid * h * h
        if b.se_channels:
            flops["se_pool"] += POOL_OPS_PER_INPUT * mid * h * h
            conv(mid, b.se_channels, 1, 1, 1)
            flops["activation"] += act_ops * b.se_channels
            conv(b.se_channels, mid, 1, 1, 1)
            flops["se_gate"] += SIGMOID_OPS * mid + ELTWISE_OPS * mid * h * h
        conv(mid, b.out_channels, 1, 1, h * h)
        if b.has_residual:
            flops["residual"] += ELTWISE_OPS * b.out_channels * h * h
    conv(spec.blocks[-1].out_channels, spec.head_channels, 1, 1, h * h)
    flops["activation"] += act_ops * spec.head_channels * h * h
    flops["head_pool"] += POOL_OPS_PER_INPUT * spec.head_channels * h * h
    macs += spec.head_channels * num_classes()
    flops["fc"] += CONV_OPS_PER_MAC * spec.head_channels * num_classes()
    return dict(flops), macs


def measure_flops(model: EfficientNet, input_size: int) -> tuple[dict[str, int], int]:
    """The same count as `flop_breakdown`, taken with forward hooks during one pass of a zero input.

    A model built on the meta device (``with torch.device("meta")``) runs shapes only: instant.
    """
    device = next(model.parameters()).device
    flops: Counter[str] = Counter({c: 0 for c in CATEGORIES})
    macs = 0

    def on_conv(m: nn.Conv2d, inp, out) -> None:
        nonlocal macs
        n = out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        macs += n
        flops["conv"] += CONV_OPS_PER_MAC * n

    def on_linear(m: nn.Linear, inp, out) -> None:
        nonlocal macs
        macs += out.numel() * m.in_features
        flops["fc"] += CONV_OPS_PER_MAC * out.numel() * m.in_features

    def on_act(m: nn.Module, inp, out) -> None:
        flops["activation"] += (SILU_OPS if isinstance(m, nn.SiLU) else CLAMP_OPS) * out.numel()

    def on_se(m: SqueezeExcite, inp, out) -> None:
        x = inp[0]
        flops["se_pool"] += POOL_OPS_PER_INPUT * x.numel()
        flops["se_gate"] += SIGMOID_OPS * x.shape[0] * x.shape[1] + ELTWISE_OPS * out.numel()

    def on_block(m: nn.Module, inp, out) -> None:
        if m.has_residual:
            flops["residual"] += ELTWISE_OPS * out.numel()

    def on_input(m: nn.Module, inp) -> None:
        flops["input_scale"] += SCALESHIFT_OPS * inp[0].numel()

    def on_features(m: nn.Module, inp, out) -> None:
        flops["head_pool"] += POOL_OPS_PER_INPUT * out.numel()  # forward_head's global mean reads these

    handles = [model.register_forward_pre_hook(on_input), model.act2.register_forward_hook(on_features)]
    for m in model.modules():
        hook = (on_conv if isinstance(m, nn.Conv2d) else on_linear if isinstance(m, nn.Linear)
                else on_act if isinstance(m, (nn.SiLU, nn.ReLU6)) else on_se if isinstance(m, SqueezeExcite)
                else on_block if isinstance(m, (DepthwiseSeparable, InvertedResidual)) else None)
        if hook is not None:
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return dict(flops), macs


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"input size must be a positive integer, got {size!r}")
    return size


def complexity(name: str, input_size: int | None = None) -> Complexity:
    """Parameters (raw and BN-folded) and the card's GFLOPs of variant `name` at `input_size`
    (default: its native resolution, 600 for B7). Instant: the network is built on the meta device."""
    size = _check_size(input_size if input_size is not None else variant(name).resolution)
    with torch.device("meta"):
        model = build_model(name)
    flops, macs = flop_breakdown(name, size)
    total = sum(flops.values())
    return Complexity(name=name, input_size=size, params=count_parameters(model),
                      params_folded=count_parameters(fold_batchnorm(model)), macs=macs,
                      flops=total, gflops=total / 1e9)
