"""The command line's own faults, each met for real: inputs that are not files (a FIFO, /dev/zero), a read
that never returns while SIGTERM arrives, Ctrl-C while torch imports and while the process exits, usage
mistakes found after argparse, damaged weights, raw OS errors, file names that would break a line or are
not UTF-8, and the start-up of commands that need no model."""
from __future__ import annotations

import codecs
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from effnet.cli import main

from helpers import effnet_command, effnet_env, one_line


@pytest.fixture
def lite0(lite0_weights) -> list[str]:
    """The small real model on PyTorch, so that each process starts in seconds."""
    return ["--model", "efficientnet_lite0", "--weights", str(lite0_weights), "--backend", "torch"]


@contextmanager
def started(command: list[str], **kwargs):
    """A real process in its own process group, stopped by that group when the test is done with it."""
    process = subprocess.Popen(command, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)


# ---- 10. inputs that are not regular files, and reads that never return -----------------------------------

def test_fifo_and_device_inputs_are_refused_without_waiting(tmp_path, photo_files, lite0):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # no writer will ever come: opening it for reading would wait forever
    with started(effnet_command("classify", *lite0, "--top", "1", fifo, "/dev/zero", photo_files["coffee"]),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env=effnet_env(tmp_path / "home")) as process:
        out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "espresso" in out
    assert err.splitlines() == [
        f"effnet: cannot read image '{fifo}': it is a FIFO (named pipe), not an image file",
        "effnet: cannot read image '/dev/zero': it is a character device, not an image file",
        "effnet: 2 of 3 images could not be classified",
    ]


def test_a_fifo_named_like_an_image_in_a_folder_is_reported_as_skipped(tmp_path, photo_files):
    from effnet.files import expand_inputs

    shutil.copy(photo_files["coffee"], tmp_path / "coffee.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "pipe.png")
    listing = expand_inputs([tmp_path])
    assert listing.files == [tmp_path / "coffee.jpg"]
    assert {(s.path.name, s.reason) for s in listing.skipped} == {
        ("pipe.png", "it is a FIFO (named pipe), not a regular file"),
        ("link.jpg", "it is a FIFO (named pipe), not a regular file")}


_LEASE_HOLDER = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
signal.signal(signal.SIGUSR1, lambda *_: print("opened by another process", flush=True))
fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGUSR1)  # told when an open() starts waiting for the lease
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("holding", flush=True)
time.sleep(120)
"""


def test_sigterm_ends_effnet_while_a_decode_thread_is_stuck_in_open(tmp_path, photo_files, lite0):
    # A write lease held by another process makes the kernel hold every open() of the file until the holder
    # lets go or /proc/sys/fs/lease-break-time (45 s) passes: a read stuck in the kernel, as on a hung mount.
    leased = tmp_path / "leased.jpg"
    shutil.copy(photo_files["coffee"], leased)
    with started([sys.executable, "-c", _LEASE_HOLDER, str(leased)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline() == "holding\n"
        with started(effnet_command("classify", *lite0, leased), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True, env=effnet_env(tmp_path / "home")) as process:
            assert holder.stdout.readline() == "opened by another process\n"  # effnet's reader is waiting
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=20)  # far less than the 45 s the kernel would hold it
    assert process.returncode == 143
    assert one_line(err) == "effnet: stopped by SIGTERM"


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path, photo_files, lite0):
    with started(effnet_command("classify", *lite0, photo_files["coffee"]), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=effnet_env(tmp_path / "home")) as process:
        deadline = time.monotonic() + 60
        while "libtorch" not in _maps(process.pid):  # torch's libraries are loading: its import has begun
            assert process.poll() is None and time.monotonic() < deadline, "torch was never imported"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert out == "" and one_line(err) == "effnet: interrupted"


def test_ctrl_c_after_the_work_is_done_is_quiet(tmp_path, photo_files, lite0):
    """A Ctrl-C after batch's summary meets the interpreter's exit (torch's atexit callbacks): no traceback."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "camera"):
        shutil.copy(photo_files[name], photos / f"{name}.jpg")
    with started(effnet_command("batch", photos, "--output", tmp_path / "out", *lite0), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=effnet_env(tmp_path / "home")) as process:
        summary = process.stderr.readline()
        assert summary.startswith(f"effnet: {tmp_path / 'out'}: classified 2, failed 0"), summary
        for _ in range(500):  # a Ctrl-C every 10 ms until the process is gone, as an impatient user does
            if process.poll() is not None:
                break
            process.send_signal(signal.SIGINT)
            time.sleep(0.01)
        _, rest = process.communicate(timeout=60)
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    assert rest in ("", "effnet: interrupted\n")
    assert process.returncode in (0, 130, -signal.SIGINT)  # done; interrupted in main; ended during the exit


# ---- 15. messages: usage mistakes, damaged weights, OS errors, a cache that is a file ------------------------

@pytest.mark.parametrize("argv, message", [
    (["classify", "--backend", "onnxruntime", "--precision", "fp16", "x.jpg"],
     "the onnxruntime backend runs fp32 on cpu, not --precision fp16"),
    (["eval", "DATA", "--backend", "openvino", "--precision", "fp32,int8"],
     "--precision int8 needs --calibration DIR: a folder of a few hundred representative photos"),
    (["classify", "--backend", "openvino", "--precision", "int8", "--int8-max-drop", "0.01", "x.jpg"],
     "--int8-max-drop needs --calibration DIR: the held-out photos it is measured on"),
    (["export", "--format", "openvino", "--precision", "int8", "--int8-max-drop", "0.01", "--output", "OUT"],
     "--int8-max-drop needs --calibration DIR: the held-out photos it is measured on"),
    (["eval", "DATA", "--backend", "onnxruntime", "--precision", "fp16"],
     "the onnxruntime backend runs fp32 on cpu, not --precision fp16"),
    (["explain", "--class", "99999", "--output", "OUT", "x.jpg"],
     "class index 99999 is out of range: give 0..999 or a label"),
    (["explain", "--class", "notalabel", "--output", "OUT", "x.jpg"],
     "unknown label 'notalabel': give an ImageNet label such as 'espresso', or an index"),
])
def test_usage_mistakes_exit_2_before_any_work(capsys, tmp_path, argv, message):
    argv = [str(tmp_path / "out") if a == "OUT" else str(tmp_path) if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and one_line(err) == f"effnet: error: {message}"
    assert not (tmp_path / "out").exists()  # explain made no output folder for a mistake


def test_truncated_weights_are_called_incomplete(capsys, tmp_path, lite0_weights, photo_files):
    cut = tmp_path / "lite0.pth"
    cut.write_bytes(lite0_weights.read_bytes()[: lite0_weights.stat().st_size // 2])  # an interrupted copy
    code = main(["classify", "--model", "efficientnet_lite0", "--weights", str(cut), "--backend", "torch",
                 str(photo_files["coffee"])])
    line = one_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith(f"effnet: error: {cut} is an incomplete torch.save file: cut short or corrupted, as an "
                           "interrupted download or copy leaves it (")
    assert "copy or download it again" in line and "pickle" not in line


@contextmanager
def tmpfs(folder: Path, *options: str):
    """A real small or read-only file system (tests run as root), unmounted afterwards."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=4k", *options)), "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("where", ["a file", "read-only", "full"])
def test_os_errors_say_what_to_do_without_errno(tmp_path, photo_files, lite0, where):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "camera", "chelsea"):
        shutil.copy(photo_files[name], photos / f"{name}.jpg")
    disk = tmp_path / "disk"
    output = disk / "out"
    expected = {
        "a file": f"cannot use {output} as the output folder: a file (or a broken symbolic link) is in the way; "
                  "give a writable folder as --output DIR",
        "read-only": f"cannot use {output} as the output folder: Read-only file system; give a writable folder as "
                     "--output DIR",
        # the job's identity file fits in the 4 KiB, its first shard does not
        "full": f"cannot write {output / 'part-000000-of-000003.parquet'}: No space left on device; free some "
                "space, then run the same command again: it resumes where it stopped",
    }[where]
    with tmpfs(disk, *(["ro"] if where == "read-only" else [])):
        if where == "a file":
            output.write_text("x")
        done = subprocess.run(effnet_command("batch", photos, "--output", output, "--shard-size", "1", *lite0),
                              capture_output=True, text=True, env=effnet_env(tmp_path / "home"), timeout=300)
    assert done.returncode == 1
    assert one_line(done.stderr) == f"effnet: error: {expected}"


def test_cache_command_with_effnet_home_a_file(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("EFFNET_HOME", str(home))
    for argv in (["cache"], ["cache", "prune", "--max-size", "0"]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert one_line(err) == (f"effnet: error: the cache EFFNET_HOME={home} is a file, not a folder; point "
                                 "EFFNET_HOME at a folder (effnet creates it where none is)")


# ---- 16. file names that would split a line, or are not UTF-8 -------------------------------------------------

def _names(folder: Path, photo: Path) -> dict[bytes, bool]:
    """Files with awkward names (their bytes -> whether the file is a real photo)."""
    names = {b"line\nbreak.jpg": True, b"caf\xe9.jpg": True, b"back\\slash.jpg": True, b"tab\there.jpg": True,
             b"bad\nfile.jpg": False}
    for name, good in names.items():
        path = os.fsencode(folder) + b"/" + name
        if good:
            shutil.copy(photo, path)
        else:
            Path(os.fsdecode(path)).write_text("not an image\n")
    return names


def test_file_names_stay_on_one_line_and_map_back_to_the_file(tmp_path, photo_files, lite0):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = _names(folder, photo_files["coffee"])
    env = effnet_env(tmp_path / "home", PYTHONIOENCODING="utf-8")
    done = subprocess.run(effnet_command("classify", *lite0, "--top", "1", folder), capture_output=True, env=env,
                          timeout=300)
    assert done.returncode == 1
    lines = done.stdout.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1 + 2 * 4 + 1  # the header, then a name and a prediction each
    shown = sorted(lines[1:-1:2])
    # Escaped, one line each; bytes that are not UTF-8 come out as the bytes they were (as ls writes them).
    base = os.fsencode(folder) + b"/"
    assert shown == sorted(base + n for n in (b"back\\\\slash.jpg", b"caf\xe9.jpg", b"line\\nbreak.jpg",
                                              b"tab\\there.jpg"))
    assert [codecs.escape_decode(s)[0] for s in shown] == sorted(base + n for n, good in names.items() if good)
    assert done.stderr.decode().splitlines() == [
        f"effnet: cannot read image '{folder}/bad\\nfile.jpg': not an image file, or a format Pillow cannot read",
        "effnet: 1 of 5 images could not be classified"]

    done = subprocess.run(effnet_command("classify", *lite0, "--top", "1", "--json", folder), capture_output=True,
                          env=env, timeout=300)
    records = [json.loads(line) for line in done.stdout.decode("utf-8").splitlines()]  # strict UTF-8: jq, node
    assert len(records) == 5
    for record in records:
        name = codecs.escape_decode(record["image"].encode("utf-8"))[0]
        assert name in {base + n for n in names}
        assert ("error" in record) == (not names[name.removeprefix(base)])
        if "error" in record:
            assert record["error"] == (f"cannot read image '{folder}/bad\\nfile.jpg': not an image file, or a format "
                                       "Pillow cannot read")
    assert {r["image"] for r in records if "top" in r} >= {f"{folder}/caf\\xe9.jpg", f"{folder}/line\\nbreak.jpg"}


def test_escaping_is_lossless_for_every_byte():
    from effnet.filenames import escape_name, json_name

    every = bytes(b for b in range(1, 256) if b != ord("/"))
    for name in (every, b"plain.jpg", "caf\u00e9 \u65e5\u672c\u2028.jpg".encode(), b"\\x41\\n"):
        assert "\n" not in escape_name(name) and "\u2028" not in escape_name(name)
        assert codecs.escape_decode(escape_name(name).encode("utf-8", "surrogateescape"))[0] == name
        assert codecs.escape_decode(json_name(name).encode("utf-8"))[0] == name
    assert escape_name(b"plain name.jpg") == "plain name.jpg"  # ordinary names are printed as they are


# ---- 18. start-up: commands that need no model do not import torch ---------------------------------------------

@pytest.mark.parametrize("argv", [["--version"], ["cache"], ["cache", "--json"]])
def test_commands_that_need_no_model_do_not_import_torch(tmp_path, argv):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "effnet.cli", *argv], capture_output=True,
                          text=True, env=effnet_env(tmp_path / "home"), timeout=120)
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "effnet.cli" in imported
    assert not {"torch", "torchvision", "onnx", "openvino", "pyarrow"} & imported
