"""The `effnet` command: parses arguments, calls the API, prints. Each subcommand is a module with an
`add(subparsers)` that registers its options and sets `run`.

Every fault ends in one line on stderr, never a traceback, and a documented exit status:
0 all done, 1 some inputs failed or an error (one line saying what to do), 2 usage errors (argparse),
130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP, and 141 (128 + SIGPIPE, as a shell reports coreutils)
when the reader of stdout goes away (`effnet classify DIR | head -1`), which ends quietly.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import EffnetError
from . import batch, bench, cache, classify, evaluation, explain, export, info, serve
from .options import log_to_stderr, render


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-B7 (OMZ efficientnet-b7-pytorch) and family.")
    parser.add_argument("--version", action="version", version=f"effnet {_version()}",
                        help="print effnet's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (classify.add, info.add_info, info.add_download, evaluation.add, bench.add, export.add, explain.add,
                batch.add, serve.add, cache.add):
        add(sub)
    return parser


EXIT_PIPE = 128 + 13  # SIGPIPE
_STOPPING_SIGNALS = ("SIGTERM", "SIGHUP")  # SIGINT already raises KeyboardInterrupt


class Stopped(BaseException):
    """A stopping signal (SIGTERM, SIGHUP) turned into an exception, so that clean-up code runs; a
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the exit status is documented in this module's docstring and the README."""
    args = build_parser().parse_args(argv)
    if sys.stdout is sys.__stdout__ and hasattr(sys.stdout, "reconfigure"):
        # A file name that is not valid UTF-8 is printed back as the bytes it was, as ls does.
        sys.stdout.reconfigure(errors="surrogateescape")
    with _signals_raise():
        restore_logging = log_to_stderr()
        try:
            code = args.run(args)
            if sys.stdout is not None:  # buffered output meets a full disk or a closed pipe here, not at exit
                sys.stdout.flush()
            return code
        except BrokenPipeError:
            _drop_stdout()
            return EXIT_PIPE
        except KeyboardInterrupt:
            _fail("interrupted")
            return 130
        except Stopped as exc:
            _fail(f"stopped by {signal.Signals(exc.signum).name}")
            return 128 + exc.signum
        except EffnetError as exc:
            _fail(f"error: {render(exc)}")
            return 1
        except OSError as exc:  # the environment (disk, permissions) rather than a mistake effnet foresaw
            _fail(f"error: {_describe_os_error(exc)}")
            return 1
        finally:
            restore_logging()


def _fail(message: str) -> None:
    _drop_stdout_if_broken()
    try:
        print(f"effnet: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Stopped for this call only (main also runs inside tests)."""
    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = {}
    try:
        for name in _STOPPING_SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                previous[number] = signal.signal(number, stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit cannot fail again
    (it would print "Exception ignored ... BrokenPipeError")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _drop_stdout_if_broken() -> None:
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        _drop_stdout()


def _describe_os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def _version() -> str:
    from .. import __version__

    return __version__
