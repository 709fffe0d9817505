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


def test_info_b7_states_the_card(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    code, out, _ = run(capsys, "info", "--json")  # B7 is the default
    info = json.loads(out)
    assert code == 0 and info["model"] == "efficientnet_b7"
    assert (info["parameters"], info["parameters_bn_folded"], info["gflops"]) == (66_347_960, 66_192_600, 77.618)
    assert [s["repeats"] for s in info["stages"]] == [4, 7, 7, 10, 10, 13, 4] and info["blocks"] == 55
    assert info["input"]["shape"] == [1, 3, 600, 600] and info["input"]["resize"] == 632
    assert info["input"]["mean"] == [123.675, 116.28, 103.53] and info["input"]["std"] == [58.395, 57.12, 57.375]
    assert info["output"] == {"name": "prob", "shape": [1, 1000], "meaning": "softmax probabilities over ImageNet-1k"}
    assert info["weights"]["file"] == "tf_efficientnet_b7_aa-076e3472.pth" and info["weights"]["cached"] is None
    assert info["weights"]["sha256"] == "076e3472fb198ec7c3091aecc73ff205bcca4a114f5862e2297a4c2720c91826"
    code, out, _ = run(capsys, "info")
    assert code == 0 and "66,347,960 (66,192,600 with BatchNorm folded)" in out and "77.618 at 600x600" in out


def test_download_offline_says_where_to_put_the_file(capsys, monkeypatch, tmp_path):
    from effnet.registry import WeightsEntry, register_weights, weights_entry

    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    original = weights_entry("efficientnet_b0")
    register_weights(WeightsEntry("efficientnet_b0", "http://127.0.0.1:9/b0.pth", "0" * 64, original.preprocess))
    try:
        code, out, err = run(capsys, "download", "--model", "efficientnet_b0")
    finally:
        register_weights(original)
    assert code == 1 and out == ""
    assert "could not download http://127.0.0.1:9/b0.pth" in err and str(tmp_path / "weights") in err
    assert err.count("\n") == 1
