"""Shared test helpers: broken inputs as they turn up in real folders, and the `effnet` command run as
a real process (as root, or as the unprivileged user `nobody`, for whom file permissions really apply)."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels: far over Pillow's decompression-bomb limit."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def make_bad_files(folder: Path, good_jpeg: Path) -> dict[str, Path]:
    """Empty, truncated, not-an-image and decompression-bomb files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"empty": folder / "empty.jpg", "truncated": folder / "truncated.jpg",
             "text": folder / "notes.png", "bomb": folder / "bomb.png"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good_jpeg.read_bytes()[:2000])
    files["text"].write_text("this is not an image\n")
    png_bomb(files["bomb"])
    return files


def effnet_command(*args: str) -> list[str]:
    """The command line of a real `effnet` process (this interpreter, so the same installation)."""
    return [sys.executable, "-m", "effnet.cli", *map(str, args)]


def effnet_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of such a process: its own effnet cache, and nothing that would colour output."""
    env = {**os.environ, "EFFNET_HOME": str(home), "HOME": str(home.parent), **extra}
    env.pop("PYTHONWARNINGS", None)
    return env


@functools.cache
def can_drop_privileges() -> bool:
    """Whether tests can run effnet as `nobody`: they run as root, setpriv is installed, and `nobody` can run
    this Python with its packages (a virtual environment inside a private home folder is out of its reach;
    effnet itself is copied where `nobody` reads it, see nobody_pythonpath)."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv") is not None):
        return False
    probe = subprocess.run([*NOBODY, sys.executable, "-c", "import numpy, PIL"], capture_output=True, timeout=120)
    return probe.returncode == 0


@functools.cache
def nobody_pythonpath() -> Path:
    """A copy of the effnet package under test in a folder `nobody` can read, removed when the tests end.

    The clone may lie under a private home folder (mode 700 or 750, the default on many systems): `nobody`
    cannot enter it, and its Python would skip that PYTHONPATH entry and fail to find effnet, or import
    another installation of it."""
    import effnet

    root = Path(tempfile.mkdtemp(prefix="effnet-code-"))
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(Path(effnet.__file__).parent, root / "effnet", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@contextmanager
def public_folder() -> Iterator[Path]:
    """A folder `nobody` can read (pytest's tmp_path is private to root), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="effnet-public-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:  # give back what a test locked, so it can be removed
            if path.is_dir() and not path.is_symlink():
                path.chmod(stat.S_IRWXU | path.stat().st_mode)
        shutil.rmtree(folder, ignore_errors=True)


def run_effnet(*args: str, home: Path, as_nobody: bool = False, timeout: float = 300,
               **kwargs) -> subprocess.CompletedProcess:
    """Run `effnet args...` to the end and capture its output (text)."""
    command = (NOBODY if as_nobody else []) + effnet_command(*args)
    env = effnet_env(home)
    if as_nobody:  # the code under test where `nobody` reads it, and a user's own writable home (OpenVINO
        # keeps its telemetry id there)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(nobody_pythonpath()), env.get("PYTHONPATH")]))
        user_home = Path(tempfile.mkdtemp(prefix="home-", dir=home.parent))
        os.chown(user_home, 65534, 65534)
        env["HOME"] = str(user_home)
        for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
            env[var] = str(user_home / var.lower())  # the session's own are root's
    kwargs.setdefault("capture_output", True)
    return subprocess.run(command, env=env, text=True, timeout=timeout, **kwargs)


def one_line(stderr: str) -> str:
    """The single line a fault must produce; fails on tracebacks and on anything more."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# ---- batch jobs (effnet batch): inputs, the dataset as a reader sees it, classify's own answers ----------

MODEL = dict(model="efficientnet_lite0", weights="imagenet", backend="torch")
TOP = 3


def make_images(folder: Path, photo_arrays: dict[str, np.ndarray], per_photo: int = 4) -> list[Path]:
    """Distinct JPEGs: each photo, and crops of it from several corners, as users' photos differ."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, arr in photo_arrays.items():
        h, w = arr.shape[:2]
        for i in range(per_photo):
            top, left = (i * h) // (4 * per_photo), (i * w) // (3 * per_photo)
            path = folder / f"{name}-{i}.jpg"
            Image.fromarray(np.ascontiguousarray(arr[top:, left:])).save(path, quality=90)
            out.append(path)
    return sorted(out)


def read_dataset(output: Path):
    """The dataset as a reader sees it (hidden and `_` files ignored), in input order."""
    import pyarrow.dataset as pads

    return pads.dataset(output, format="parquet").to_table()


def reference(paths: list[str]) -> dict[str, tuple]:
    """classify's own answers: uri -> (indices, labels, probabilities) or the error text."""
    import effnet

    clf = effnet.Classifier(MODEL["model"], MODEL["weights"], backend=MODEL["backend"], batch_size=4)
    out = {}
    for outcome in clf.classify_iter(paths, top=TOP):
        if outcome.error is not None:
            out[outcome.source] = outcome.error
        else:
            p = outcome.predictions
            out[outcome.source] = ([x.index for x in p], [x.label for x in p], [x.probability for x in p])
    return out


def assert_rows_equal_reference(table, expected: dict[str, tuple], tol: float = 1e-5) -> None:
    rows = table.to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(expected), "every input exactly once"
    for r in rows:
        want = expected[r["uri"]]
        if isinstance(want, str):
            assert r["error"] and r["indices"] is None and r["labels"] is None and r["probabilities"] is None
            assert r["error"] == want
        else:
            assert r["error"] is None
            assert r["indices"] == want[0] and r["labels"] == want[1]
            np.testing.assert_allclose(r["probabilities"], np.float32(want[2]), atol=tol)
