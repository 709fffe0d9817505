"""Checkpoint files: read them without running pickled code, recognise foreign key layouts, convert
them to ours, and load all-or-nothing."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .arch import BlockKind, NetworkSpec
from .errors import WeightsError, WeightsNotFoundError
from .filenames import escape_name


class Layout(Enum):
    TIMM = "timm/geffnet"  # ours: conv_stem, blocks.<stage>.<block>.conv_pw, ...
    LUKEMELAS = "lukemelas/EfficientNet-PyTorch"  # _conv_stem, _blocks.<flat index>._expand_conv, ...


# The top-level module names of each layout. A layout is recognised by what most keys look like, so a
# checkpoint that lacks a key or two is still named correctly and load_strict can list what it lacks.
_LAYOUT_MODULES = {
    Layout.TIMM: frozenset({"conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier"}),
    Layout.LUKEMELAS: frozenset({"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc"}),
}


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> Layout:
    """The layout that more than half of the keys follow (by their first name component)."""
    counts = {layout: sum(key.split(".", 1)[0] in modules for key in state_dict)
              for layout, modules in _LAYOUT_MODULES.items()}
    best = max(counts, key=counts.__getitem__)
    if state_dict and 2 * counts[best] > len(state_dict):
        return best
    sample = ", ".join(list(state_dict)[:3]) or "no tensors"
    raise WeightsError(f"unrecognised checkpoint layout (first keys: {sample}); expected the weights of an "
                       "EfficientNet in timm/geffnet or lukemelas/EfficientNet-PyTorch layout: give such a file "
                       "as weights=PATH, or weights=imagenet for the official ones", params=("weights",))


# lukemelas names per block kind; the flat block index becomes (stage, index in stage).
_LUKEMELAS_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                 "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)$")


def from_lukemelas(state_dict: dict[str, torch.Tensor], spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm's for the network `spec` (unknown keys are kept, to be reported)."""
    positions = [(s, i) for s, stage in enumerate(spec.stages) for i in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = key
        if m := _BLOCK_KEY.match(key):
            flat, module, param = int(m[1]), m[2], m[3]
            if flat < len(positions):
                stage, idx = positions[flat]
                names = _LUKEMELAS_DS if spec.stages[stage][idx].kind is BlockKind.DEPTHWISE_SEPARABLE else _LUKEMELAS_IR
                if module in names:
                    new = f"blocks.{stage}.{idx}.{names[module]}.{param}"
        elif (m := _TOP_KEY.match(key)) and m[1] in _LUKEMELAS_TOP:
            new = f"{_LUKEMELAS_TOP[m[1]]}.{m[2]}"
        out[new] = tensor
    return out


def to_native(state_dict: dict[str, torch.Tensor], spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """Any supported layout -> timm/geffnet keys."""
    if detect_layout(state_dict) is Layout.LUKEMELAS:
        return from_lukemelas(state_dict, spec)
    return state_dict


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load every tensor or none: missing/unexpected keys or wrong shapes fail, listing the first few."""
    expected = model.state_dict()
    # BatchNorm's step counter is training bookkeeping; many ported checkpoints omit it.
    state_dict = dict(state_dict)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state_dict.setdefault(key, value)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if items]
        raise WeightsError(f"{source} does not fit {getattr(model, 'spec', None) and model.spec.variant.name or 'the model'}: "
                           + "; ".join(parts) + "; choose the variant these weights belong to with model=NAME, "
                           "or give weights for this one as weights=PATH", params=("model", "weights"))
    model.load_state_dict(state_dict, strict=True)


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
    shown = escape_name(path)  # one line, whatever the file is called
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {shown} does not exist; give an existing file as weights=PATH",
                                   params=("weights",))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{shown} is not a valid safetensors file ({exc}); {_USE_INSTEAD}",
                               params=("weights",)) from exc
    elif suffix in _PICKLE_SUFFIXES:
        raw = _torch_load(path)
    else:
        raise WeightsError(
            f"{shown}: unsupported weights format {suffix or '(no extension)'}; pass a .safetensors or "
            f"{', '.join(sorted(_PICKLE_SUFFIXES))} file as weights=PATH", params=("weights",)
        )
    return _tensors(_unwrap(raw), path)


def _torch_load(path: Path) -> object:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    context = allow(_PLAIN_DATA_GLOBALS) if allow else contextlib.nullcontext()
    try:
        with context:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports garbage as UnpicklingError, KeyError, EOFError, RuntimeError, ...
        raise WeightsError(_why_unreadable(path, exc), params=("weights",)) from exc


_USE_INSTEAD = ("give a file written by torch.save(model.state_dict(), ...) or safetensors as weights=PATH, "
                "or weights=imagenet for the official weights")
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's MAGIC_NUMBER, the legacy format's first pickle
_PICKLE_PROTO = 0x80  # the first byte of every pickle of protocol 2 or later (torch.save writes 2)
_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+)")
# What torch's weights-only reader accepts by itself: the tensor-rebuilding functions and containers.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.set", "_codecs.encode", "argparse.Namespace")


def _why_unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a .pth that torch refused, in words. 'Contains code' is said only of a
    well-formed pickle that references objects other than tensors: torch's weights-only reader
    also fails on text and garbage (as an 'unsupported operand' or a KeyError), which is no code."""
    shown = escape_name(path)
    with open(path, "rb") as file:
        head = file.read(256)
    if not head:
        return f"{shown} is empty (0 bytes), not a PyTorch checkpoint; {_USE_INSTEAD}"
    references = _pickled_globals(path, head)
    if references is None:
        if not head.startswith(_ZIP_MAGIC) and head[0] != _PICKLE_PROTO and _looks_like_text(head):
            first = _one_line(head.decode("utf-8", "replace"))[:40]
            return f"{shown} is a text file (it begins {first!r}), not a PyTorch checkpoint; {_USE_INSTEAD}"
        kind = ("a zip archive but not a complete torch.save file (truncated or corrupt?)"
                if head.startswith(_ZIP_MAGIC) else "neither a torch.save file nor a pickle, or it is corrupt")
        return f"{shown} is not a PyTorch checkpoint: it is {kind} ({_short(exc)}); {_USE_INSTEAD}"
    refused = list(dict.fromkeys(_GLOBAL_IN_ERROR.findall(str(exc)) or
                                 [g for g in references if not g.startswith(_TENSOR_GLOBALS)]))
    if isinstance(exc, pickle.UnpicklingError) and refused:
        return (f"{shown} contains code (pickled Python objects other than tensors: {', '.join(refused[:3])}) and "
                "was not loaded. Convert it where you trust it with torch.save(model.state_dict(), ...) or "
                "safetensors, then give the new file as weights=PATH")
    if _legacy_torch_save(head):  # torch.save's first pickle is there: the rest is cut short or damaged
        return (f"{shown} is an incomplete torch.save file: cut short or corrupted, as an interrupted "
                f"download or copy leaves it ({_short(exc)}); copy or download it again, or {_USE_INSTEAD}")
    return (f"{shown} is a Python pickle but not a PyTorch checkpoint (saved with pickle rather than torch.save?) "
            f"({_short(exc)}); {_USE_INSTEAD}")


def _legacy_torch_save(head: bytes) -> bool:
    """Whether `head` begins with the pickle torch.save's legacy (non-zip) format writes first: its magic
    number. A file that has it and still fails to load is a damaged torch.save file, not some other pickle."""
    try:
        return any(arg == _LEGACY_MAGIC for _, arg, _ in pickletools.genops(io.BytesIO(head)))
    except (ValueError, EOFError, UnicodeDecodeError):
        return False


def _pickled_globals(path: Path, head: bytes) -> list[str] | None:
    """The module.name references of the file's pickle (torch.save's data.pkl, or the legacy format's
    leading pickles), or None if the file holds no well-formed pickle."""
    try:
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                return _scan_pickles(io.BytesIO(archive.read(name)), limit=1)
        if head[0] != _PICKLE_PROTO:
            return None
        with open(path, "rb") as stream:
            return _scan_pickles(stream, limit=4)  # legacy: magic, protocol, sys info, the object
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _scan_pickles(stream: BinaryIO, limit: int) -> list[str] | None:
    """Globals referenced by up to `limit` consecutive pickles; None unless the first parses to its STOP."""
    references: list[str] = []
    for index in range(limit):
        strings: list[str] = []
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    references.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    references.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except (ValueError, EOFError, UnicodeDecodeError):
            if index == 0:
                return None
            break
    return references


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # perhaps cut inside a character at 256 bytes
        text = data[:-4].decode("utf-8", "replace")
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(exc: Exception) -> str:
    """The gist of torch's error: its first meaningful line, without the weights-only boilerplate."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                               "Check the documentation"))]
    text = (useful or lines or [""])[0].split(". ")[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    shown = escape_name(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{shown} holds a {type(obj).__name__}, not a state dict of tensors; {_USE_INSTEAD}")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            while key.startswith("module."):  # nn.DataParallel / DistributedDataParallel
                key = key[len("module."):]
            tensors[key] = value
    if not tensors:
        raise WeightsError(f"{shown} contains no tensors; {_USE_INSTEAD}")
    return tensors
