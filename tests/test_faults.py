"""Environment faults as an operator meets them, each with real conditions and a real `effnet` process:
read-only and misplaced caches, folders without permission (run as `nobody`, for whom permissions apply),
a reader that closes the pipe, signals, a full disk, a terminal shared by progress bar and results.
Each must end in one line on stderr that says what to do, with the documented exit status."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from helpers import (NOBODY, can_drop_privileges, effnet_command, effnet_env, one_line, public_folder,
                     run_effnet)

needs_nobody = pytest.mark.skipif(not can_drop_privileges(),
                                  reason="needs root, setpriv, and a Python that nobody can run, to run as nobody")


@pytest.fixture
def lite0(lite0_weights) -> list[str]:
    """The small real model, so that each process starts in seconds."""
    return ["--model", "efficientnet_lite0", "--weights", str(lite0_weights)]


@pytest.fixture
def public(photo_files):
    """A folder `nobody` can read, holding one real photo."""
    with public_folder() as folder:
        shutil.copy(photo_files["coffee"], folder / "coffee.jpg")
        yield folder


def copies(photo: Path, folder: Path, n: int) -> Path:
    """`n` names for one photo (hard links: a big folder without the disk space)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.link(photo, folder / f"img{i:04d}.jpg")
    return folder


# ---- 1. a cache that cannot be written ---------------------------------------------------------------

@needs_nobody
@pytest.mark.parametrize("kind", ["read-only folder", "a file"])
def test_unwritable_cache_still_classifies_with_one_notice(public, lite0_weights, kind):
    home = public / "cache"
    if kind == "a file":
        home.write_text("not a folder")
    else:
        home.mkdir(mode=0o555)
        home.chmod(0o555)  # mkdir's mode is cut by the umask
    done = run_effnet("classify", "--model", "efficientnet_lite0", "--weights", lite0_weights, "--top", "1",
                      public / "coffee.jpg", home=home, as_nobody=True)  # the default engine: OpenVINO
    assert done.returncode == 0, done.stderr
    assert "espresso" in done.stdout and "openvino" in done.stdout.splitlines()[0]
    cache, building = done.stderr.splitlines()  # one line about the cache, one before the long build
    assert cache.startswith(f"effnet: cannot write to the cache EFFNET_HOME={home} (") and "temporary folder" in cache
    assert building.startswith("effnet: building the efficientnet_lite0 ") and "OpenVINO engine model" in building
    if kind != "a file":
        assert list(home.iterdir()) == []


# ---- 2. an export destination that cannot take the files -----------------------------------------------

@needs_nobody
def test_export_into_an_unwritable_folder_fails_at_once(public):
    locked = public / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    began = time.monotonic()
    done = run_effnet("export", "--model", "efficientnet_b0", "--weights", "random", "--format", "onnx,openvino",
                      "--output", locked, home=public / "home", as_nobody=True)
    assert done.returncode == 1 and done.stdout == ""
    line = one_line(done.stderr)
    assert line == f"effnet: error: cannot write to --output {locked}: permission denied; give a writable folder"
    assert time.monotonic() - began < 60  # refused before any export work


# ---- 3. a folder without permission on the way to a file -------------------------------------------------

@needs_nobody
def test_unreadable_folders_say_permission_denied(public, lite0):
    secret = public / "secret"
    secret.mkdir(mode=0o700)
    shutil.copy(public / "coffee.jpg", secret / "x.jpg")
    (secret / "w.pth").write_bytes(b"")
    photos = public / "photos"
    (photos / "locked").mkdir(parents=True, mode=0o700)
    shutil.copy(public / "coffee.jpg", photos / "camera.jpg")
    secret.chmod(0o700)
    (photos / "locked").chmod(0o700)

    done = run_effnet("classify", *lite0, "--backend", "torch", "--top", "1", secret / "x.jpg", photos,
                      home=public / "home", as_nobody=True)
    assert done.returncode == 1
    assert str(photos / "camera.jpg") in done.stdout and "espresso" in done.stdout
    assert done.stderr.splitlines() == [
        f"effnet: skipped {photos / 'locked'}: permission denied",
        f"effnet: cannot read image '{secret / 'x.jpg'}': Permission denied",
        "effnet: 1 of 2 images could not be classified; 1 folder entries skipped",
    ]
    done = run_effnet("classify", "--model", "efficientnet_lite0", "--weights", secret / "w.pth", "--backend", "torch",
                      photos / "camera.jpg", home=public / "home", as_nobody=True)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"{secret / 'w.pth'} cannot be read: permission denied" in line and "--weights PATH" in line


# ---- 4. a reader that stops reading ----------------------------------------------------------------------

def test_closed_pipe_ends_quietly(tmp_path, photo_files, lite0):
    folder = copies(photo_files["coffee"], tmp_path / "many", 40)
    env = effnet_env(tmp_path / "home")
    producer = subprocess.Popen(effnet_command("classify", *lite0, "--backend", "torch", "--batch-size", "1", folder),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # only head holds the pipe now, as in a shell
    first, _ = head.communicate(timeout=300)
    stderr = producer.stderr.read().decode()
    assert producer.wait(timeout=60) == 141  # 128 + SIGPIPE, what a shell reports for coreutils
    assert first.decode().startswith("# efficientnet_lite0")
    assert stderr == ""  # no traceback, no "Exception ignored", no message at all


# ---- 5. signals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, status, line", [(signal.SIGINT, 130, "effnet: interrupted"),
                                                 (signal.SIGTERM, 143, "effnet: stopped by SIGTERM")])
def test_signal_during_classify_is_one_line(tmp_path, photo_files, lite0, signum, status, line):
    folder = copies(photo_files["coffee"], tmp_path / "many", 400)
    process = subprocess.Popen(effnet_command("classify", *lite0, "--backend", "torch", "--batch-size", "1", folder),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=effnet_env(tmp_path / "home"))
    assert process.stdout.readline().startswith("# ")  # the header, then results: it is working
    assert process.stdout.readline().endswith(".jpg\n")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status
    assert one_line(stderr) == line


# ---- 6. a full disk --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["info"], ["classify", "--json", "--backend", "torch"]])
def test_full_disk_under_stdout_is_one_line(tmp_path, photo_files, lite0_weights, argv):
    if argv[0] == "classify":
        argv = argv + ["--model", "efficientnet_lite0", "--weights", str(lite0_weights), str(photo_files["coffee"])]
    with open("/dev/full", "w") as full:
        done = run_effnet(*argv, home=tmp_path / "home", stdout=full, stderr=subprocess.PIPE, capture_output=False)
    assert done.returncode == 1
    assert one_line(done.stderr) == ("effnet: error: cannot write the results to standard output "
                                     "(No space left on device)")


def test_closed_stdout_is_one_line(tmp_path):
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *effnet_command("info")], capture_output=True,
                          text=True, env=effnet_env(tmp_path / "home"), timeout=120)
    assert done.returncode == 1
    assert one_line(done.stderr) == "effnet: error: cannot write the results: standard output is closed"


# ---- 8. a terminal shared by the progress bar and the results -------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rendered(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`: a carriage return moves back to column 0 and overwrites."""
    lines = []
    for physical in _ANSI.sub("", raw.replace("\r\n", "\n")).split("\n"):
        cells: list[str] = []
        column = 0
        for ch in physical:
            if ch == "\r":
                column = 0
                continue
            cells[column:column + 1] = [ch]
            column += 1
        lines.append("".join(cells).rstrip())
    return lines


def test_progress_bar_never_shares_a_line_with_a_result(tmp_path, photo_files, lite0):
    folder = copies(photo_files["coffee"], tmp_path / "many", 12)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen(effnet_command("classify", *lite0, "--backend", "torch", "--batch-size", "1",
                                              "--top", "1", folder),
                               stdout=follower, stderr=follower, env=effnet_env(tmp_path / "home"))
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    raw = b"".join(chunks).decode()
    assert "img/s" in raw or "img]" in raw  # a bar was shown
    lines = [line for line in rendered(raw) if line.strip()]
    results = [line for line in lines if ".jpg" in line or "(class " in line]
    assert len(results) == 2 * 12
    for line in results:
        assert re.fullmatch(rf"{re.escape(str(folder))}/img\d{{4}}\.jpg|\s+1\. espresso\s+\d+\.\d\d%  \(class 967\)",
                            line), repr(line)


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, photo_files, lite0):
    folder = copies(photo_files["coffee"], tmp_path / "many", 12)
    done = run_effnet("classify", *lite0, "--backend", "torch", "--top", "1", folder, home=tmp_path / "home")
    assert done.returncode == 0 and done.stderr == ""


# ---- 9. names that are not UTF-8 ---------------------------------------------------------------------------

def test_file_name_that_is_not_utf8_is_printed_as_its_bytes(tmp_path, photo_files, lite0):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo_files["coffee"], os.fsencode(folder) + b"/caf\xe9.jpg")
    # PYTHONIOENCODING=utf-8 (common in container images) makes stdout strict, as a UTF-8 locale does.
    done = subprocess.run(effnet_command("classify", *lite0, "--backend", "torch", "--top", "1", folder),
                          capture_output=True, env=effnet_env(tmp_path / "home", PYTHONIOENCODING="utf-8"))
    assert done.returncode == 0, done.stderr
    assert os.fsencode(folder) + b"/caf\xe9.jpg\n" in done.stdout and b"espresso" in done.stdout


# ---- 10. a missing engine is named before any download -------------------------------------------------------

def test_missing_engine_is_reported_before_the_weights_download(tmp_path, photo_files):
    hide = ("import sys; sys.modules['openvino'] = None; from effnet.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-c", hide, "classify", "--backend", "openvino", "--model", "efficientnet_b7",
                           str(photo_files["coffee"])], capture_output=True, text=True, env=effnet_env(home),
                          timeout=120)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "openvino is not installed" in line and "pip install 'effnet[openvino]'" in line
    assert not (home / "weights").exists()  # no download was started


def test_nobody_command_prefix_is_real():
    """The permission tests mean something only if the process really runs without root's rights."""
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv")
    assert subprocess.run(NOBODY + ["id", "-u"], capture_output=True, text=True).stdout.strip() == "65534"
