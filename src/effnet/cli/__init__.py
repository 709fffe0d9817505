"""The `effnet` command: parses arguments, calls the API, prints. Each subcommand is a module with an
`add(subparsers)` that registers its options and sets `run`; a command's module (and what it imports, such
as torch) is loaded only when that command runs, so that `effnet --version` and `effnet cache` start at once.

Every fault ends in one line on stderr, never a traceback, and a documented exit status:
0 all done, 1 some inputs failed or an error (one line saying what to do), 2 usage errors (argparse's, and
options that cannot go together, found when the command resolves them: `effnet: error: ...`),
130 SIGINT (Ctrl-C: `effnet: interrupted`), 143 SIGTERM and 129 SIGHUP (`effnet: stopped by SIGTERM`),
and 141 (128 + SIGPIPE, as a shell reports coreutils) when the reader of stdout goes away
(`effnet classify DIR | head -1`), which ends quietly. A second signal while effnet stops, or one that
arrives while the process exits after its work, ends it at once, without a word.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import EffnetError
from ..filenames import escape_name
from ..oserrors import os_reason, os_remedy
from .options import UsageError, log_to_stderr, render

# Each command: the module under effnet.cli that defines it, and the function there that registers it.
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("classify", "add"), "info": ("info", "add_info"), "download": ("info", "add_download"),
    "eval": ("evaluation", "add"), "bench": ("bench", "add"), "export": ("export", "add"),
    "explain": ("explain", "add"), "batch": ("batch", "add"), "serve": ("serve", "add"), "cache": ("cache", "add"),
}
# Commands that continue where they stopped when run again with the same options.
RESUMABLE = frozenset({"batch", "eval"})


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `effnet` parser: with every command, or, given the `argv` it will parse, with just the command
    that argv names (and none for `effnet --version`)."""
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-B7 (OMZ efficientnet-b7-pytorch) and family.")
    parser.add_argument("--version", action="version", version=f"effnet {_version()}",
                        help="print effnet's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (list(COMMANDS) if argv is None else _reachable(argv)):
        module, add = COMMANDS[name]
        getattr(importlib.import_module(f".{module}", __name__), add)(sub)
    return parser


def _reachable(argv: list[str]) -> list[str]:
    """The commands parsing `argv` can reach: the one it names; all of them for the top-level help or a
    name that is no command (argparse lists them); none when it names no command (`--version`)."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return list(COMMANDS)
        if not arg.startswith("-"):
            return [arg] if arg in COMMANDS else list(COMMANDS)
    return []


EXIT_PIPE = 128 + 13  # SIGPIPE
EXIT_USAGE = 2  # argparse's status for a usage error
_STOPPING_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class Stopped(BaseException):
    """A stopping signal (SIGTERM, SIGHUP) turned into an exception, so that clean-up code runs; a
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the exit status is documented in this module's docstring and the README.
    Without `argv` this is the program (the console script, `python -m effnet.cli`): it reads sys.argv and
    leaves the signals' default actions for the interpreter's exit."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    # Signals first: the command's modules (torch among them) import inside this, so a Ctrl-C during
    # the first second is one line too.
    with _signals_raise(restore=not program):
        restore_logging = log_to_stderr()
        args = None
        try:
            args = build_parser(argv).parse_args(argv)
            _write_names_as_bytes()
            code = args.run(args)
            if sys.stdout is not None:  # buffered output meets a full disk or a closed pipe here, not at exit
                sys.stdout.flush()
            return code
        except BrokenPipeError:
            _drop_stdout()
            return EXIT_PIPE
        except KeyboardInterrupt:
            _fail("interrupted")
            return 128 + signal.SIGINT
        except Stopped as exc:
            _fail(f"stopped by {signal.Signals(exc.signum).name}")
            return 128 + exc.signum
        except UsageError as exc:
            _fail(f"error: {render(exc)}")
            return EXIT_USAGE
        except EffnetError as exc:
            _fail(f"error: {render(exc)}")
            return 1
        except OSError as exc:  # the environment (disk, permissions) rather than a mistake effnet foresaw
            _fail(f"error: {describe_os_error(exc, resumable=getattr(args, 'command', None) in RESUMABLE)}")
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
def _signals_raise(*, restore: bool = True) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP raise Stopped, for this call. The first signal
    gives the rest back their default action, so a second one ends a slow clean-up at once. On the way
    out the previous handlers come back (main also runs inside tests), or with `restore=False` the
    defaults: a signal during the interpreter's exit (its atexit callbacks, after the work is done) then
    ends the process quietly instead of printing "Exception ignored in atexit callback"."""
    numbers = [getattr(signal, name) for name in _STOPPING_SIGNALS if hasattr(signal, name)]

    def stop(signum: int, _frame: object) -> None:
        for number in numbers:
            signal.signal(number, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    previous: dict[int, Callable | int | None] = {}
    try:
        for number in numbers:
            previous[number] = signal.signal(number, stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if restore else signal.SIG_DFL)


def _write_names_as_bytes() -> None:
    """A file name that is not valid UTF-8 is written back as the bytes it was, as ls does (escaped
    otherwise: see effnet.filenames), on stdout and in messages on stderr alike."""
    for stream, original in ((sys.stdout, sys.__stdout__), (sys.stderr, sys.__stderr__)):
        if stream is not None and stream is original and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


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


def describe_os_error(exc: OSError, *, resumable: bool = False) -> str:
    """An OS error that reached the top, in one line: what happened, to which file, what to do."""
    what = os_reason(exc) + (f": {escape_name(os.fsdecode(exc.filename))}" if exc.filename else "")
    remedy = os_remedy(exc, resumable=resumable)
    return f"{what}; {remedy}" if remedy else what


def _version() -> str:
    from .. import __version__

    return __version__
