"""Checkpoint files: read them without running pickled code, recognise foreign key layouts, convert
them to ours, and load all-or-nothing."""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from .arch import BlockKind, NetworkSpec
from .errors import WeightsError, WeightsNotFoundError


class Layout(Enum):
    TIMM = "timm/geffnet"  # ours: conv_stem, blocks.<stage>.<block>.conv_pw, ...
    LUKEMELAS = "lukemelas/EfficientNet-PyTorch"  # _conv_stem, _blocks.<flat index>._expand_conv, ...


def detect_layout(state_dict: dict[str, torch.Tensor]) -> Layout:
    if "_conv_stem.weight" in state_dict:
        return Layout.LUKEMELAS
    if "conv_stem.weight" in state_dict:
        return Layout.TIMM
    sample = ", ".join(list(state_dict)[:3]) or "no tensors"
    raise WeightsError(f"unrecognised checkpoint layout (first keys: {sample}); expected timm/geffnet or "
                       "lukemelas/EfficientNet-PyTorch EfficientNet weights")


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
                           + "; ".join(parts))
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
