"""The EfficientNet family as data: B0's seven stages, a scaling row per variant, Lite's switches.

Everything the model builder needs is derived here, so `effnet info` and the tests read the same
numbers the network is built from (Tan & Le 2019, Table 1; TF reference `efficientnet_builder.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from .errors import UnknownModelError


class BlockKind(Enum):
    DEPTHWISE_SEPARABLE = "ds"  # MBConv1: no expansion conv
    INVERTED_RESIDUAL = "ir"  # MBConv6: 1x1 expand, depthwise, SE, 1x1 project


class Activation(Enum):
    SILU = "silu"
    RELU6 = "relu6"


@dataclass(frozen=True)
class Stage:
    """One row of the paper's Table 1 (for B0)."""

    block: BlockKind
    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int


DS, IR = BlockKind.DEPTHWISE_SEPARABLE, BlockKind.INVERTED_RESIDUAL

B0_STAGES: tuple[Stage, ...] = (
    Stage(DS, repeats=1, kernel=3, stride=1, expansion=1, channels=16),
    Stage(IR, repeats=2, kernel=3, stride=2, expansion=6, channels=24),
    Stage(IR, repeats=2, kernel=5, stride=2, expansion=6, channels=40),
    Stage(IR, repeats=3, kernel=3, stride=2, expansion=6, channels=80),
    Stage(IR, repeats=3, kernel=5, stride=1, expansion=6, channels=112),
    Stage(IR, repeats=4, kernel=5, stride=2, expansion=6, channels=192),
    Stage(IR, repeats=1, kernel=3, stride=1, expansion=6, channels=320),
)
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280
SE_RATIO = 0.25  # of the block's *input* channels
BN_EPS = 1e-3  # TensorFlow's default, which the ported weights were trained with


@dataclass(frozen=True)
class Family:
    """What differs between EfficientNet and EfficientNet-Lite: switches, not a second implementation."""

    name: str
    activation: Activation
    squeeze_excite: bool
    scale_stem_and_head: bool
    scale_first_and_last_depth: bool


EFFICIENTNET = Family("EfficientNet", Activation.SILU, True, True, True)
EFFICIENTNET_LITE = Family("EfficientNet-Lite", Activation.RELU6, False, False, False)


@dataclass(frozen=True)
class Variant:
    """A compound-scaling row: width and depth multipliers, native resolution, dropout."""

    name: str
    family: Family
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("efficientnet_b0", EFFICIENTNET, 1.0, 1.0, 224, 0.2),
        Variant("efficientnet_b1", EFFICIENTNET, 1.0, 1.1, 240, 0.2),
        Variant("efficientnet_b2", EFFICIENTNET, 1.1, 1.2, 260, 0.3),
        Variant("efficientnet_b3", EFFICIENTNET, 1.2, 1.4, 300, 0.3),
        Variant("efficientnet_b4", EFFICIENTNET, 1.4, 1.8, 380, 0.4),
        Variant("efficientnet_b5", EFFICIENTNET, 1.6, 2.2, 456, 0.4),
        Variant("efficientnet_b6", EFFICIENTNET, 1.8, 2.6, 528, 0.5),
        Variant("efficientnet_b7", EFFICIENTNET, 2.0, 3.1, 600, 0.5),
        Variant("efficientnet_lite0", EFFICIENTNET_LITE, 1.0, 1.0, 224, 0.2),
        Variant("efficientnet_lite1", EFFICIENTNET_LITE, 1.0, 1.1, 240, 0.2),
        Variant("efficientnet_lite2", EFFICIENTNET_LITE, 1.1, 1.2, 260, 0.3),
        Variant("efficientnet_lite3", EFFICIENTNET_LITE, 1.2, 1.4, 280, 0.3),
        Variant("efficientnet_lite4", EFFICIENTNET_LITE, 1.4, 1.8, 300, 0.3),
    )
}
DEFAULT_MODEL = "efficientnet_b7"


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, round to a multiple of `divisor`, never losing over 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up as the TF reference does."""
    return int(math.ceil(repeats * depth))


@dataclass(frozen=True)
class BlockSpec:
    """One expanded block with every channel count resolved."""

    kind: BlockKind
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expansion: int
    se_channels: int  # 0: no squeeze-excite

    @property
    def mid_channels(self) -> int:
        return self.in_channels * self.expansion

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class NetworkSpec:
    """A variant fully expanded: what the model builder constructs, block by block."""

    variant: Variant
    stem_channels: int
    stages: tuple[tuple[BlockSpec, ...], ...]
    head_channels: int

    @property
    def activation(self) -> Activation:
        return self.variant.family.activation

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        return tuple(b for stage in self.stages for b in stage)


def variant(name: str) -> Variant:
    """Look a variant up by name, with an error that lists the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}"
        ) from None


def network_spec(name: str) -> NetworkSpec:
    """Expand a variant's scaling row over B0's stage table."""
    v = variant(name)
    fam = v.family
    stem = round_filters(B0_STEM_CHANNELS, v.width) if fam.scale_stem_and_head else B0_STEM_CHANNELS
    head = round_filters(B0_HEAD_CHANNELS, v.width) if fam.scale_stem_and_head else B0_HEAD_CHANNELS
    stages = []
    in_ch = stem
    last = len(B0_STAGES) - 1
    for i, st in enumerate(B0_STAGES):
        fixed_depth = not fam.scale_first_and_last_depth and i in (0, last)
        repeats = st.repeats if fixed_depth else round_repeats(st.repeats, v.depth)
        out_ch = round_filters(st.channels, v.width)
        blocks = []
        for r in range(repeats):
            se = max(1, int(in_ch * SE_RATIO + 0.5)) if fam.squeeze_excite else 0
            blocks.append(BlockSpec(st.block, in_ch, out_ch, st.kernel, st.stride if r == 0 else 1, st.expansion, se))
            in_ch = out_ch
        stages.append(tuple(blocks))
    return NetworkSpec(v, stem, tuple(stages), head)


def list_models() -> list[str]:
    """Every model name effnet builds; B7, the card's model, is the default."""
    return list(VARIANTS)
