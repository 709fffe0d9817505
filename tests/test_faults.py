"""Environment faults as an operator meets them, each with real conditions and a real `effnet` process:
read-only and misplaced caches, folders without permission (run as `nobody`, for whom permissions apply),
a reader that closes the pipe, signals, a full disk, a terminal shared by progress bar and results.
Each must end in one line on stderr that says what to do, with the documented exit status."""
from __future__ import annotations

import fcntl
import json
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
from collections.abc import Iterator
from contextlib import contextmanager
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


# ---- 11. a cache or an export folder on a full disk ------------------------------------------------------

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="needs root to mount a small tmpfs")


@contextmanager
def full_disk(folder: Path) -> Iterator[Path]:
    """A real file system with no space left: a 2 MiB tmpfs mounted at `folder` and filled up. Empty files and
    folders can still be made (tmpfs counts inodes apart), as on a disk that is full of data."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        with open(folder / "filler", "wb", buffering=0) as filler:
            for _ in range(64):  # 64 x 64 KiB: twice the disk
                try:
                    filler.write(b"\0" * 65536)
                except OSError:
                    break
        assert shutil.disk_usage(folder).free == 0
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@needs_root
def test_full_cache_disk_builds_the_engine_in_a_temporary_folder(tmp_path, photo_files, lite0):
    with full_disk(tmp_path / "disk") as disk:
        home = disk / "cache"
        done = run_effnet("classify", *lite0, "--top", "1", photo_files["coffee"], home=home)  # default: OpenVINO
        kept = [p for p in home.rglob("*") if not p.is_dir()]
    assert done.returncode == 0, done.stderr
    assert "espresso" in done.stdout
    building, cache = done.stderr.splitlines()  # the disk fills up only while the built model is saved
    assert building.startswith("effnet: building the efficientnet_lite0 ")
    assert cache == (f"effnet: cannot write to the cache EFFNET_HOME={home} (no space left on device); engine models "
                     "are built in a temporary folder for this run only (set EFFNET_HOME to a writable folder to keep "
                     "them)")
    assert kept == []  # no partial model, blob or digest memo left behind


@needs_root
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_onto_a_full_disk_leaves_no_partial_file(tmp_path, lite0, fmt):
    with full_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        done = run_effnet("export", *lite0, "--format", fmt, "--output", out, home=tmp_path / "home")
        left = sorted(p.name for p in out.iterdir())
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"effnet: error: cannot write to --output {out}: no space left on device; "
                                            "give a writable folder with room for the files")
    assert left == []  # neither a truncated file under its final name nor a temporary one


# ---- 12. third-party progress bars keep off stdout ---------------------------------------------------------

RESULT_LINE = re.compile(r"openvino int8: .*\.xml|  vs PyTorch fp32 on .*|  \(below the 99\.5 % top-1 target.*")


@pytest.mark.parametrize("command", ["classify", "export"])
def test_int8_prints_nothing_but_results_on_stdout(tmp_path, photo_files, lite0, command):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for path in photo_files.values():
        shutil.copy(path, calibration / path.name)
    int8 = ["--precision", "int8", "--calibration", calibration]
    if command == "classify":
        argv = ["classify", *lite0, *int8, "--json", "--top", "1", photo_files["coffee"]]
    else:
        argv = ["export", *lite0, *int8, "--format", "openvino", "--output", tmp_path / "out"]
    done = run_effnet(*argv, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and "quantizing with NNCF" in done.stderr
    if command == "classify":
        assert [json.loads(line)["top"][0]["label"] for line in lines] == ["espresso"]
    else:
        assert lines[0] == f"openvino int8: {tmp_path / 'out' / 'efficientnet_lite0-int8.xml'}"
        assert all(RESULT_LINE.fullmatch(line) for line in lines), lines


# ---- 13. checks before work ------------------------------------------------------------------------------

def test_export_names_a_missing_onnx_before_the_weights_download(tmp_path):
    hide = "import sys; sys.modules['onnx'] = None; from effnet.cli import main; sys.exit(main(sys.argv[1:]))"
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-c", hide, "export", "--model", "efficientnet_b7", "--format", "onnx",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, env=effnet_env(home),
                          timeout=120)
    assert done.returncode == 1
    assert one_line(done.stderr) == ("effnet: error: onnx is not installed (needed for this engine or export); "
                                     "install it with: pip install 'effnet[onnx]'")
    assert not (home / "weights").exists()  # no download was started


@pytest.mark.parametrize("command", ["classify", "export"])
def test_a_bad_weights_file_is_named_before_any_build_notice(tmp_path, photo_files, command):
    bad = tmp_path / "w.pth"
    bad.write_text("not a checkpoint\n")
    target = [photo_files["coffee"]] if command == "classify" else ["--format", "onnx", "--output", tmp_path / "out"]
    done = run_effnet(command, "--model", "efficientnet_lite0", "--weights", bad, *target, home=tmp_path / "home")
    assert done.returncode == 1
    line = one_line(done.stderr)  # the weights' error alone: no "building ..." notice before it
    assert line.startswith(f"effnet: error: {bad} is a text file") and "--weights PATH" in line


# ---- 14. nothing written outside the cache ----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["info", "--model", "efficientnet_lite0"], ["classify", "--backend", "onnxruntime"],
                                  ["classify"]], ids=["info", "classify-onnxruntime", "classify-default"])
def test_nothing_is_written_outside_the_cache(tmp_path, photo_files, lite0, argv):
    home, xdg, cache = tmp_path / "home", tmp_path / "xdg", tmp_path / "cache"
    home.mkdir()
    xdg.mkdir()
    dirs = {var: str(xdg / var.lower()) for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                                                    "XDG_STATE_HOME")}
    env = effnet_env(cache, HOME=str(home), **dirs)
    if argv == ["classify"]:
        # The default engine imports OpenVINO, whose telemetry keeps ~/intel/openvino_ga_cid and ~/intel/stats
        # unless opted out (the README says so); the suite stays opted out (CI=true, conftest), so that no
        # test sends usage data. Every other library must keep out of HOME all the same.
        assert env["CI"] == "true"
    else:
        env.pop("CI", None)  # as on a user's machine: ONNX Runtime's telemetry, too, stays off under CI=true
    if argv[0] == "classify":
        argv = argv + [*lite0, "--top", "1", str(photo_files["coffee"])]
    done = subprocess.run(effnet_command(*argv), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert list(home.rglob("*")) == [] and list(xdg.rglob("*")) == []
    if argv[0] == "info":  # it only looks
        assert not cache.exists() or list(cache.rglob("*")) == []
