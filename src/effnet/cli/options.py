"""Options and helpers every `effnet` subcommand shares: the common flags and the one place they become an
engine choice, one-line notices on stderr (the library's log lines among them), result lines on stdout (kept
apart from progress bars), and checks that fail before minutes of work."""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..arch import DEFAULT_MODEL, list_models
from ..errors import EffnetError, EngineError, OutputError

if TYPE_CHECKING:
    from ..calibration import CalibrationSet
    from ..engines import EngineChoice

T = TypeVar("T")


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(), metavar="NAME",
                        help=f"one of {', '.join(list_models())} (default: {DEFAULT_MODEL})")


def weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="imagenet", metavar="imagenet|random|PATH",
                        help="'imagenet' (the official file, downloaded and verified once), 'random' (untrained, "
                             "for speed tests) or a .pth/.safetensors file (default: imagenet)")


def engine_options(parser: argparse.ArgumentParser, *, precision: bool = True) -> None:
    """--backend, --device, and (unless the command takes lists of them) --precision and --calibration."""
    from ..engines import ALL_PRECISIONS, KINDS

    parser.add_argument("--backend", choices=KINDS, default="auto",
                        help="inference engine (default auto: the fastest installed for the device: OpenVINO "
                             "on CPUs with effnet[openvino], PyTorch on NVIDIA GPUs)")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where the network runs (default auto: the first NVIDIA GPU when PyTorch sees one, "
                             "else the CPU)")
    if precision:
        parser.add_argument("--precision", choices=ALL_PRECISIONS, default=None,
                            help="fp32; bf16 (torch, openvino); fp16 (openvino, torch on GPUs); int8 (openvino, "
                                 "needs --calibration); default: the engine's own: bf16 on OpenVINO where the CPU "
                                 "has it, bf16 on GPUs, else fp32")
        parser.add_argument("--calibration", metavar="DIR", help="images to quantise an int8 model with")
        int8_max_drop_option(parser)


def int8_max_drop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--int8-max-drop", type=share, metavar="SHARE",
                        help="int8 with accuracy control: layers go back to float until top-1 agrees with fp32 on "
                             "at least 1 - SHARE of the held-out calibration photos (e.g. 0.005); many validation "
                             "runs (Lite0: minutes; B7 on a few cores: hours); default: plain quantization")


def max_drop_needs_calibration(args: argparse.Namespace) -> None:
    """--int8-max-drop is measured on the held-out --calibration photos: without them, a usage mistake."""
    if getattr(args, "int8_max_drop", None) is not None and getattr(args, "calibration", None) is None:
        raise UsageError("--int8-max-drop needs --calibration DIR: the held-out photos it is measured on")


def calibration_choice(args: argparse.Namespace, subset_size: int | None = None) -> str | CalibrationSet | None:
    """--calibration as resolve_engine takes it: the folder, or its CalibrationSet where --int8-max-drop or a
    subset size asks for more than the defaults; None without --calibration."""
    from ..calibration import DEFAULT_SUBSET, calibration_set

    max_drop_needs_calibration(args)
    folder, max_drop = getattr(args, "calibration", None), getattr(args, "int8_max_drop", None)
    if folder is None:
        return None
    if max_drop is None and subset_size in (None, DEFAULT_SUBSET):
        return folder
    return calibration_set(folder, subset_size or DEFAULT_SUBSET, max_drop=max_drop)


def decode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decode", choices=("exact", "gpu"), default="exact",
                        help="exact (default): the accuracy checker's Pillow pipeline, pixel for pixel; gpu: "
                             "nvJPEG and resizing on the GPU (faster, not pixel-exact; needs a CUDA device)")


class UsageError(EffnetError):
    """A mistake in the command line that argparse cannot see: options that cannot go together or name
    nothing (`--precision int8` without `--calibration`, `--class 99999`). `main` exits 2 for it, as for
    argparse's own usage errors, with one line, before any output folder or download."""


@contextmanager
def usage_mistakes(*kinds: type[EffnetError]) -> Iterator[None]:
    """Errors of `kinds` raised while a command turns its options into what they mean, at its top, are
    usage mistakes (the same errors raised later, an engine failing mid-run, are not)."""
    try:
        yield
    except kinds as exc:
        raise UsageError(str(exc), params=exc.params) from exc


def engine_choice(args: argparse.Namespace, *, batch_size: int | None = None, local: bool = True,
                  **options: object) -> EngineChoice:
    """The command's engine, resolved once, here at the top: everything below receives it. A missing engine,
    an absent GPU or int8 without photos fails now, before any download; an EngineError here is a usage
    mistake (exit 2). `options`: EngineOptions fields."""
    from ..engines import EngineOptions, graph_batch_sizes, resolve_engine

    sizes = graph_batch_sizes(batch_size)
    with usage_mistakes(EngineError):
        return resolve_engine(args.backend, getattr(args, "precision", None), device=args.device,
                              calibration=calibration_choice(args), local=local,
                              options=EngineOptions(batch_sizes=sizes, **options))  # type: ignore[arg-type]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1), e.g. 0.005; got {text}")
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
    if _BARS:  # a progress bar is on screen: clear it for the line, redraw it after
        with _BARS[-1].external_write_mode(file=sys.stderr):
            _to_stderr(f"effnet: {line}")
    else:
        _to_stderr(f"effnet: {line}")


class NoticeHandler(logging.Handler):
    """The library's log lines (logging.getLogger("effnet")) as notices: `effnet: <message>` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:  # a line naming API parameters (log.warning(..., extra={"params": (...)})) names the flags
            notice(render_params(" ".join(self.format(record).split()), getattr(record, "params", ())))
        except Exception:  # noqa: BLE001 - logging must never stop the command
            self.handleError(record)


def log_to_stderr() -> Callable[[], None]:
    """Send effnet's log lines (INFO and up) to stderr as notices for this command; returns the undo."""
    logger = logging.getLogger("effnet")
    handler = NoticeHandler()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the application's root handlers (none in the CLI) would print them twice

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        logger.propagate = True
    return undo


def render(exc: BaseException) -> str:
    """An effnet error's message in the command line's words: each API parameter it names (`weights=PATH`,
    `restart=True`) becomes the flag (`--weights PATH`, `--restart`)."""
    return render_params(str(exc), getattr(exc, "params", ()))


def render_params(text: str, params: tuple[str, ...]) -> str:
    """`text` with each of `params` (`name=VALUE`, `name=True`) written as its flag."""
    for param in params:
        flag = FLAGS.get(param, "--" + param.replace("_", "-"))
        name = rf"(?<![\w-]){re.escape(param)}="
        text = re.sub(name + r"(True\b)?(?=[\s,;)]|$)", flag, text)  # a switch, or the option named alone
        text = re.sub(name, flag + " ", text)  # the option with its value
    return text


FLAGS = {"formats": "--format"}  # API parameters whose flag is spelled otherwise


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


_BARS: list = []  # the tqdm bar on screen, if any: notices clear it for their line


class TerminalProgress:
    """effnet.progress.Progress as a bar on stderr when it is a terminal and there is enough work to watch;
    silent otherwise. Result lines go through `line` (stdout): with a bar shown, tqdm clears it before each
    line and redraws it after, so no line ever has a bar inside it (notices do the same)."""

    def __init__(self, unit: str = "img", *, leave: bool = False) -> None:
        self.unit = unit
        self.leave = leave
        self.bar = None

    def start(self, total: int, done: int = 0) -> None:
        if total - done >= 10 and stderr_is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=self.unit, file=sys.stderr, leave=self.leave,
                            dynamic_ncols=True, smoothing=0.1)
            _BARS.append(self.bar)

    def advance(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            _BARS.remove(self.bar)
            self.bar.close()
            self.bar = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def line(self, text: str) -> None:
        if self.bar is None:
            emit(text)
            return
        with self.bar.external_write_mode(file=sys.stdout):
            emit(text)


def writable_folder(path: str, param: str) -> Path:
    """`path` as an existing, writable folder (created if missing), checked before long work starts;
    an OutputError naming the option (`param`, as the API calls it) otherwise."""
    folder = Path(path).expanduser()
    reason = _unwritable(folder)
    if reason is not None:
        raise OutputError(f"cannot write to {param}={path}: {reason}; give a writable folder", params=(param,))
    return folder


def cache_notice() -> None:
    """One line when effnet's cache cannot be written: engine models are then built in a temporary
    folder and thrown away at exit, so each run pays the build again."""
    from ..cache_layout import cache_dir
    from ..export.cache import unwritable_cache_notice

    root = cache_dir()
    reason = _unwritable(root)
    if reason is not None:  # a disk that fills up while an engine model is saved is said then, the same way
        notice(unwritable_cache_notice(root, reason))


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


def before_engine(model: str, weights: object, engine: EngineChoice) -> None:
    """What to say before an engine is built (the engine itself is resolved already): a coming download,
    then a cache that cannot keep the engine model (not when a download into that cache comes first: its
    error already names the folder; nor for random weights, whose engine models are never kept)."""
    from ..resolved import RANDOM

    random = weights is None or weights == RANDOM
    if not download_notice(model, weights) and not random and (engine.backend != "torch" or engine.compiled):
        cache_notice()
