"""Kill tests, local engine: SIGKILL the `effnet batch` process at random moments, several times, then let it
finish. A reader never sees a partial shard or a duplicate row, and in the end every input is there
exactly once with classify's answers."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from helpers import (
    MODEL,
    TOP,
    assert_rows_equal_reference,
    make_bad_files,
    make_images,
    read_dataset,
    reference,
)

SHARD = 3


def batch_command(folder: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "effnet.cli", "batch", str(folder), "--output", str(output),
            "--model", MODEL["model"], "--weights", MODEL["weights"], "--backend", MODEL["backend"],
            "--top", str(TOP), "--batch-size", "2", "--shard-size", str(SHARD)]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # its own process group: killed as a whole, by its id
        return subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def check_visible(output: Path, files: list[str]) -> int:
    """What a reader sees after a crash: whole shards only, each with exactly its slice of the inputs."""
    parts = sorted(output.glob("part-*.parquet"))
    for part in parts:
        k = int(part.name.split("-")[1])
        uris = pq.read_table(part).column("uri").to_pylist()
        assert uris == files[k * SHARD:(k + 1) * SHARD], part.name
    seen = read_dataset(output).column("uri").to_pylist() if parts else []
    assert len(seen) == len(set(seen)), "a duplicate row"
    return len(seen)


def test_sigkill_at_random_moments_then_finish_exactly_once(tmp_path, photo_arrays, photo_files):
    folder = tmp_path / "photos"
    for photo in make_images(folder, photo_arrays, per_photo=5):  # 50 distinct paths: work to interrupt
        for copy in ("b",):
            os.link(photo, photo.with_name(f"{photo.stem}-{copy}.jpg"))
    make_bad_files(folder / "junk", photo_files["coffee"])
    from effnet.files import image_files

    files = [os.path.abspath(p) for p in image_files(folder)]
    output, log = tmp_path / "out", tmp_path / "log.txt"
    cmd = batch_command(folder, output)
    seed = int(os.environ.get("EFFNET_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    killed_running, progress = 0, [0]
    for attempt in range(3):  # bounded: three kills; the first mid-work, the others at any moment
        proc = start(cmd, log)
        if attempt == 0:  # a random moment after the first shard is written
            limit = time.monotonic() + 120
            while proc.poll() is None and not list(output.glob("part-*")) and time.monotonic() < limit:
                time.sleep(0.02)
            deadline = time.monotonic() + rng.uniform(0.0, 1.0)
        else:
            deadline = time.monotonic() + rng.uniform(1.0, 6.0)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        killed_running += proc.poll() is None
        stop(proc)
        progress.append(check_visible(output, files))
        if progress[-1] == len(files):
            break
    assert killed_running >= 1, f"seed {seed}: no kill landed while the job ran: {log.read_text()}"
    assert 0 < progress[1] < len(files), f"seed {seed}: the first kill was not mid-work: {progress}"
    assert progress == sorted(progress), f"seed {seed}: finished shards were lost: {progress}"

    proc = start(cmd, log)
    try:
        assert proc.wait(timeout=240) == 1, log.read_text()  # 1: the corrupt files are error rows
    finally:
        stop(proc)
    assert not list(output.glob(".*.tmp"))
    table = read_dataset(output)
    assert table.column("uri").to_pylist() == files, f"seed {seed}"
    assert_rows_equal_reference(table, reference(files))
    assert sum(r["error"] is not None for r in table.to_pylist()) == 4 and len(files) == 54

