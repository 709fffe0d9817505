"""The model resolved once: name, network, registry entry (with the card's figures), preprocessing, and
the weights file actually used with its sha256. Everything below the API receives this, never a name.

`resolve` is the only place a model name and a `weights` value are looked up; like CLIP's `load()`,
what it returns carries the preprocessing together with the network it belongs to.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .arch import DEFAULT_MODEL, NetworkSpec, network_spec
from .checkpoint import load_strict, read_state_dict, to_native
from .contract import RANDOM_WEIGHTS_ID, weights_id
from .errors import EffnetError, WeightsNotFoundError
from .model import EfficientNet
from .preprocessing import PreprocessConfig
from .registry import CardFigures, WeightsEntry, weights_entry
from .weights import download, file_sha256

# None or "random": random init; "imagenet": the registry's official file; anything else: a file path.
Weights = Union[str, os.PathLike, None]
RANDOM = RANDOM_WEIGHTS_ID
IMAGENET = "imagenet"
RANDOM_SEED = 0  # random weights are the same network in every process (a resumed job, a Ray actor)


class _Unset:
    def __repr__(self) -> str:
        return "'imagenet'"


UNSET = _Unset()  # `weights` not given: "imagenet" for a name, nothing for an already resolved model


@dataclass(frozen=True)
class ResolvedModel:
    """One model with one set of weights, looked up once. `weights_sha256` is the weights' identity
    everywhere (export and engine caches, eval resume, bench reports); None for random weights."""

    name: str
    spec: NetworkSpec
    entry: WeightsEntry
    preprocess: PreprocessConfig
    weights_file: Path | None
    weights_sha256: str | None
    weights_source: str | Path = IMAGENET  # what was asked for: "imagenet", "random", or the file's path

    @property
    def card(self) -> CardFigures | None:
        """What the OMZ card publishes for the official file (None where there is no card)."""
        return self.entry.card

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    @property
    def random_weights(self) -> bool:
        return self.weights_file is None

    @property
    def weights_id(self) -> str:
        """A short identity for keys and file names: the first 16 hex digits of the sha256, or 'random'."""
        return weights_id(self.weights_sha256)

    @property
    def official_weights(self) -> bool:
        """Whether the weights are the registry's official ones (its file or the packaged copy, by content,
        wherever the file came from)."""
        return self.weights_sha256 is not None and self.entry.official(self.weights_sha256)

    def create_model(self, input_size: int | tuple[int, int] | None = None) -> EfficientNet:
        """An eval-mode EfficientNet (logits) with these weights; `input_size` fixes its SAME pads."""
        if self.weights_file is None:  # seeded without touching the caller's random state
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = EfficientNet(self.spec)
        else:
            model = EfficientNet(self.spec)
        model.set_input_size(input_size)
        if self.weights_file is not None:
            state = to_native(read_state_dict(self.weights_file), self.spec)
            load_strict(model, state, source=str(self.weights_file))
        return model.eval()

    def describe(self) -> dict[str, str | int | None]:
        """Plain data for reports, metadata and output files (random weights: their seed)."""
        out: dict[str, str | int | None] = {"model": self.name, "weights_sha256": self.weights_sha256,
                                            "weights_file": os.fspath(self.weights_file) if self.weights_file else None}
        if self.random_weights:
            out["weights_seed"] = RANDOM_SEED
        return out


def resolve(model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights | _Unset = UNSET, *,
            progress: bool = True) -> ResolvedModel:
    """Look `model` up and find its weights file: "imagenet" (the default: downloaded once and verified), a
    path, or None/"random" (a seeded random init). A ResolvedModel is returned as it is; giving `weights` with
    one is an error (it would be ignored)."""
    if isinstance(model, ResolvedModel):
        if weights is not UNSET:
            raise EffnetError(f"weights={weights} was given with an already resolved {model.name} (whose weights "
                              f"are {model.weights_source}); resolve the name with those weights instead",
                              params=("weights",))
        return model
    weights = IMAGENET if weights is UNSET else weights
    entry = weights_entry(model)  # UnknownModelError lists the valid names
    spec = network_spec(model)
    path = weights_file(entry, weights, progress=progress)
    digest = file_sha256(path) if path is not None else None
    source = RANDOM if path is None else IMAGENET if weights == IMAGENET else path
    return ResolvedModel(model, spec, entry, entry.preprocess, path, digest, source)


def weights_file(entry: WeightsEntry, weights: Weights, *, progress: bool = True) -> Path | None:
    """The file behind a `weights` value: None for random init, the verified official file, or a path."""
    if weights is None or (isinstance(weights, str) and weights == RANDOM):
        return None
    if isinstance(weights, str) and weights == IMAGENET:
        return download(entry, progress=progress)
    path = Path(weights).expanduser()
    try:  # open, not only stat: a file behind a folder without permission must say so, not "missing"
        with open(path, "rb"):
            pass
        problem = None
    except FileNotFoundError:
        problem = "does not exist"
    except IsADirectoryError:
        problem = "is a folder, not a file"
    except PermissionError:
        problem = "cannot be read: permission denied (on the file or a folder above it)"
    except OSError as exc:
        problem = f"cannot be read: {exc.strerror or exc}"
    if problem is not None:
        raise WeightsNotFoundError(
            f"weights file {path} {problem}; give a readable file as weights=PATH, or weights=imagenet "
            f"for the official {entry.model} weights", params=("weights",))
    return path
