"""Running the configurations: interleaved rounds (so that load from other processes spreads over all
of them), each after waiting for a quiet CPU, and again beside one busy process."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from effnet.machine import load_average

if TYPE_CHECKING:
    from .configurations import Configuration

QUIET_IDLE_SHARE = 0.9  # "quiet": at least this share of the machine's CPU time idle


def log(*args: object) -> None:
    """Progress on stderr, timestamped, so that a 13-minute run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def idle_share(seconds: float = 1.0) -> float:
    """Fraction of the machine's CPU time that was idle over `seconds` (Linux /proc/stat)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, all

    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except OSError:
        return 1.0
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` s for other processes to leave the CPU; returns the last idle share seen."""
    deadline = time.time() + limit
    idle = idle_share()
    while idle < QUIET_IDLE_SHARE and time.time() < deadline:
        idle = idle_share()
    return idle


def run_rounds(configs: Sequence[Configuration], seconds: float, rounds: int, *, wait: float = 0.0,
               tag: str = "round") -> None:
    """`rounds` rounds of every configuration in turn, `seconds` in all per configuration; before
    each measurement, wait up to `wait` s for a quiet CPU (0: never)."""
    for rnd in range(rounds):
        for c in configs:
            idle = wait_quiet(wait) if wait > 0 else None
            m = c.run(seconds / rounds, first=rnd == 0)
            log(f"{tag} {rnd + 1}: {c.key:14s} {m.throughput:6.3f} img/s  cpu {m.cpu_share:.2f}  "
                f"idle before {idle if idle is None else round(idle, 2)}  load {load_average()}")


def run_beside_busy_process(configs: Sequence[Configuration], seconds: float, rounds: int) -> None:
    """`run_rounds` while one single-threaded busy loop runs beside (another engineer's test run on a
    shared 2-core machine): how the engines share the CPU, not what they do alone."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        run_rounds(configs, seconds, rounds, tag="shared round")
    finally:
        busy.kill()
        busy.wait()
