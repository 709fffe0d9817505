"""Options and helpers every `effnet` subcommand shares: the common flags, one-line notices on stderr,
result lines on stdout (kept apart from progress bars), and checks that fail before minutes of work."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..arch import DEFAULT_MODEL, list_models
from ..errors import OutputError

T = TypeVar("T")


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(), metavar="NAME",
                        help=f"one of {', '.join(list_models())} (default: {DEFAULT_MODEL})")


def weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="imagenet", metavar="imagenet|random|PATH",
                        help="'imagenet' (the official file, downloaded and verified once), 'random' (untrained, "
                             "for speed tests) or a .pth/.safetensors file (default: imagenet)")


def engine_options(parser: argparse.ArgumentParser) -> None:
    from ..engines import ALL_PRECISIONS, KINDS

    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference engine (default auto: the fastest installed, OpenVINO with effnet[openvino])")
    parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                        help="fp32; bf16 (torch, openvino); fp16, int8 (openvino; int8 needs --calibration); "
                             "default: the engine's own, bf16 on OpenVINO where the CPU has it, else fp32")
    parser.add_argument("--calibration", metavar="DIR", help="images to quantise an int8 model with")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def comma_list(choices: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(item not in choices for item in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def notice(line: str) -> None:
    """One line to stderr before long work, so a person knows why nothing else is happening yet."""
    _to_stderr(f"effnet: {line}")


def emit(text: str = "") -> None:
    """One result line on stdout, flushed (results stream as they come). A full disk becomes an
    OutputError; a closed pipe stays BrokenPipeError, which `main` turns into a quiet exit."""
    _write(sys.stdout, text)


def _write(stream, text: str) -> None:
    if stream is None:  # Python's stdout when the process started with descriptor 1 closed (`>&-`)
        raise OutputError("cannot write the results: standard output is closed")
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write the results to standard output ({exc.strerror or exc})") from exc


def _to_stderr(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # nowhere left to say it; the exit status still tells
        pass


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar on stderr when it is a terminal and there is enough work to watch; silent otherwise.

    Result lines go through `line` (stdout) and problems through `problem` (stderr): with a bar shown,
    tqdm clears it before each line and redraws it after, so no line ever has a bar inside it.
    """

    def __init__(self, total: int, unit: str) -> None:
        self.bar = None
        if total >= 10 and stderr_is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def line(self, text: str) -> None:
        if self.bar is None:
            emit(text)
            return
        with self.bar.external_write_mode(file=sys.stdout):
            emit(text)

    def problem(self, text: str) -> None:
        if self.bar is None:
            notice(text)
            return
        with self.bar.external_write_mode(file=sys.stderr):
            notice(text)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def progress(items: Iterator[T], total: int, unit: str) -> Iterator[T]:
    """`items` with a progress bar on a terminal (for loops that print nothing else while it runs)."""
    with Progress(total, unit) as bar:
        for item in items:
            yield item
            bar.advance()


def writable_folder(path: str, flag: str) -> Path:
    """`path` as an existing, writable folder (created if missing), checked before long work starts;
    an OutputError naming `flag` otherwise."""
    folder = Path(path).expanduser()
    reason = _unwritable(folder)
    if reason is not None:
        raise OutputError(f"cannot write to {flag} {path}: {reason}; give a writable folder")
    return folder


def cache_notice() -> None:
    """One line when effnet's cache cannot be written: engine models are then built in a temporary
    folder and thrown away at exit, so each run pays the build again."""
    from ..weights import cache_dir

    root = cache_dir()
    reason = _unwritable(root)
    if reason is None:
        return
    where = f"EFFNET_HOME={root}" if os.environ.get("EFFNET_HOME") else str(root)
    notice(f"cannot write to the cache {where} ({reason}); engine models are built in a temporary folder for "
           f"this run only (set EFFNET_HOME to a writable folder to keep them)")


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (created if missing), in words; None when they can.
    Probed by writing, since permission bits do not tell (root, read-only mounts, ACLs)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return None
    except FileExistsError:
        return "it is a file, not a folder"
    except NotADirectoryError:
        return "a part of the path above it is a file, not a folder"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def download_notice(model: str, weights: object) -> bool:
    """One line before the official weights are downloaded (B7: 266 MB), which may take minutes;
    whether a download is coming."""
    if weights != "imagenet":
        return False
    from ..registry import weights_entry
    from ..weights import cached_file, weights_dir

    entry = weights_entry(model)
    if cached_file(entry) is not None:
        return False
    size = f" ({entry.size / 1e6:.0f} MB)" if entry.size else ""
    notice(f"downloading the official {model} weights{size} once into {weights_dir()}")
    return True


def before_engine(model: str, weights: object, backend: str, precision: str | None) -> None:
    """What to check and say before an engine is built: the engine itself first (a missing one is named
    before any download), then a coming download, then a cache that cannot keep the engine model (not
    when a download into that cache comes first: its error already names the folder)."""
    from ..backends import resolve_kind

    kind = resolve_kind(backend, precision)
    if not download_notice(model, weights) and kind != "torch":
        cache_notice()


def weights_label(sha256: str | None) -> str:
    """The weights as a header shows them: ResolvedModel.weights_id's 16 hex digits, or 'random'."""
    return sha256[:16] if sha256 else "random"
