"""effnet's cache, described once: what lives where under the root ($EFFNET_HOME). The modules that write
each part and `effnet cache`, which lists and prunes them, all take the folder names from here.

    weights/<file>        official weights (weights.py), with <file>.verified (its checked sha256), <file>.part
                          (a download to resume) and <file>.rejected[N] (a wrong file set aside)
    exports/<key>/        ONNX and IR files, one folder per model/weights/format/precision/batch (export/cache.py),
                          with `complete` written last; `.<key>.*` folders are builds in progress or killed
    openvino/<blob>       OpenVINO's compiled-model cache (backends/openvino_backend.py)
    torch-compiled/<key>  torch.compile's products for a GPU (or CPU) engine (backends/torch_compile.py)
    eval/<run>/           resumable `effnet eval` results, a folder per column: run.json (its identity),
                          results.jsonl and probs.f32 (evaluate/store.py)
    digests.json          sha256 of weights files by their identity (weights.file_sha256)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

WEIGHTS, EXPORTS, OPENVINO, COMPILED, EVAL, DIGESTS = (
    "weights", "exports", "openvino", "torch-compiled", "eval", "digests.json")
RUN_FILE, RESULTS_FILE = "run.json", "results.jsonl"  # in each eval/<run>/ folder
EXPORT_DONE = "complete"  # in each exports/<key>/ folder, written last: the build finished


def cache_dir() -> Path:
    """effnet's cache root: $EFFNET_HOME when set (read on every call), else the user cache dir."""
    home = os.environ.get("EFFNET_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("effnet"))


@dataclass(frozen=True)
class CacheLayout:
    """The cache's parts under one root (effnet's cache, or a folder a caller names instead)."""

    root: Path

    @classmethod
    def default(cls) -> CacheLayout:
        return cls(cache_dir())

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS

    @property
    def exports(self) -> Path:
        return self.root / EXPORTS

    @property
    def openvino(self) -> Path:
        return self.root / OPENVINO

    @property
    def compiled(self) -> Path:
        return self.root / COMPILED

    @property
    def eval(self) -> Path:
        return self.root / EVAL

    @property
    def digests(self) -> Path:
        return self.root / DIGESTS
