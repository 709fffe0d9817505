"""The `effnet` command as users run it: output formats, exit codes, one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from effnet.cli import main

from badfiles import make_bad_files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path, photo_files):
    for name in ("coffee", "camera"):
        shutil.copy(photo_files[name], tmp_path / f"{name}.jpg")
    return tmp_path


def test_classify_json_lines_with_broken_files(capsys, folder, photo_files, lite0_weights):
    bad = make_bad_files(folder / "junk", photo_files["coffee"])
    code, out, err = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                         "--json", "--top", "3", "--batch-size", "2", str(folder))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # some files failed
    by_image = {d["image"]: d for d in lines}
    assert set(by_image) == {str(folder / "camera.jpg"), str(folder / "coffee.jpg")} | {str(p) for p in bad.values()}
    coffee = by_image[str(folder / "coffee.jpg")]["top"]
    assert len(coffee) == 3 and coffee[0]["index"] == 967 and coffee[0]["label"] == "espresso"
    assert 0.5 < coffee[0]["prob"] <= 1.0
    assert by_image[str(folder / "camera.jpg")]["top"][0]["index"] == 872
    for path in bad.values():
        assert str(path) in by_image[str(path)]["error"]
    assert "4 of 6 images could not be classified" in err
    assert "Traceback" not in err


def test_classify_human_output(capsys, folder, lite0_weights):
    code, out, _ = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                       str(folder / "coffee.jpg"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(folder / "coffee.jpg")
    assert "espresso" in lines[1] and "(class 967)" in lines[1] and len(lines) == 6


def test_missing_weights_file_is_one_line_error(capsys, folder, tmp_path):
    code, out, err = run(capsys, "classify", "--model", "efficientnet_b0", "--weights", str(tmp_path / "nope.pth"),
                         str(folder))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "nope.pth" in err and err.startswith("effnet: error:")


@pytest.mark.parametrize("argv", [["classify", "--top", "0", "x.jpg"], ["classify", "--model", "resnet50", "x.jpg"],
                                  ["classify"], ["frobnicate"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_console_script_is_installed(folder, lite0_weights):
    exe = shutil.which("effnet", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the effnet console script is not installed beside this Python"
    done = subprocess.run([exe, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                           "--json", "--top", "1", str(folder / "coffee.jpg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["top"][0]["label"] == "espresso"
