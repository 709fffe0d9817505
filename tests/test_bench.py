"""effnet bench: the --json schema, ordered percentiles, engine-only and end-to-end modes, and the
weights named by their sha256 in both outputs.

Tiny runs only (B0, a second or two); nothing here asserts a speed. OpenVINO is a test dependency
(`pip install -e '.[all,test]'`), so its tests always run.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from effnet import Classifier
from effnet.bench import bench, bench_end_to_end, percentiles
from effnet.cli import main
from effnet.cli.bench import format_report
from effnet.engines import EngineOptions, resolve_engine
from effnet.files import folder_images
from effnet.machine import machine_info
from effnet.resolved import resolve

MODEL = "efficientnet_b0"


def check_schema(out: dict) -> None:
    assert isinstance(out["throughput_ips"], float) and out["throughput_ips"] > 0
    lat = out["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert isinstance(out["backend"], str) and isinstance(out["precision"], str)
    assert "weights_sha256" in out  # None for random weights
    assert out["images"] > 0 and out["seconds"] > 0
    machine = out["machine"]
    assert machine["cores"] >= 1 and machine["cpu"]
    assert "numpy" in machine["versions"]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> tuple:
    """Two real JPEGs and one file that only pretends to be one."""
    import skimage.data as data

    folder = tmp_path_factory.mktemp("bench_photos")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=90)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not even by name: skipped")
    return folder, folder / "broken.jpg"


def test_percentiles_nearest_rank_and_ordered():
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = percentiles(samples)
    assert (p["p50"], p["p90"], p["p99"]) == pytest.approx((50.0, 90.0, 99.0))
    assert p["min"] == pytest.approx(1.0) and p["max"] == pytest.approx(100.0)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 50):
        q = percentiles(list(rng.exponential(size=n)))
        assert q["min"] <= q["p50"] <= q["p90"] <= q["p99"] <= q["max"]
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_machine_info_names_cpu_and_libraries():
    info = machine_info()
    assert info["cores"] >= 1
    assert isinstance(info["isa"], list)
    assert {"effnet", "numpy", "torch"} <= set(info["versions"])


def test_cli_bench_json_engine_only_torch(capsys):
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "torch", "--batch", "2",
                 "--seconds", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    check_schema(out)
    assert (out["backend"], out["precision"], out["mode"], out["batch"]) == ("torch", "fp32", "engine", 2)
    assert out["threads"] >= 1


def test_cli_bench_text_report(capsys):
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "torch", "--batch", "1",
                 "--seconds", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "throughput" in text and "p50" in text and "p99" in text and "machine" in text
    assert "weights random" in text


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A B0 weights file (seeded random values) and its sha256."""
    import torch

    from effnet import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench_weights") / "b0.pth"
    torch.save(create_model(MODEL, None).state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_are_named_by_sha256_in_json_and_report(weights_file, capsys):
    path, digest = weights_file
    assert main(["bench", "--model", MODEL, "--weights", str(path), "--backend", "torch", "--batch", "1",
                 "--seconds", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    check_schema(out)
    assert out["weights_sha256"] == digest
    assert main(["bench", "--model", MODEL, "--weights", str(path), "--backend", "torch", "--batch", "1",
                 "--seconds", "0.3"]) == 0
    assert f"weights {digest[:16]}" in capsys.readouterr().out


def test_bench_openvino_engine_only():
    result = bench(resolve(MODEL, None), resolve_engine("openvino", "fp32"), batch=2, seconds=1)
    out = result.to_dict()
    check_schema(out)
    assert (out["backend"], out["precision"]) == ("openvino", "fp32")
    assert out["engine"]["hint"] == "THROUGHPUT" and out["streams"] >= 1
    json.dumps(out)  # everything in it is plain data


def test_cli_bench_openvino_streams_and_hint(capsys):
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "openvino", "--precision", "fp32",
                 "--streams", "1", "--hint", "LATENCY", "--batch", "1", "--seconds", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    check_schema(out)
    assert out["streams"] == 1 and out["engine"]["hint"] == "LATENCY"


def test_streams_is_refused_where_the_engine_has_none(capsys):
    from effnet import EffnetError

    with pytest.raises(EffnetError, match="streams= is an OpenVINO setting"):
        resolve_engine("torch", options=EngineOptions(streams=2))
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "torch", "--streams", "2"]) == 2
    assert "--streams is an OpenVINO setting" in capsys.readouterr().err


class UniformBackend:
    """A stand-in engine (instant), so the pipeline's own behaviour can be checked quickly."""

    name, precision, device, torch_module = "stub", "fp32", "cpu", None

    def __init__(self):
        self.seen = 0

    def predict(self, crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (224, 224, 3)
        self.seen += len(crops)
        return np.full((len(crops), 1000), 1e-3, np.float32)

    def settings(self) -> dict:
        return {"threads": 0, "streams": 1}


def test_end_to_end_cycles_over_folder_and_reports_unreadable_file(photo_folder):
    folder, broken = photo_folder
    backend = UniformBackend()
    classifier = Classifier(MODEL, None, backend=backend, batch_size=2, decode_workers=2)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    run = bench_end_to_end(classifier, files, seconds=0.5)
    # It went round the folder several times, and the bad file failed each time without stopping it.
    assert run.measurement.images > 2 * 2 and run.failed >= 2
    assert run.measurement.images + run.failed > 2 * len(files)
    assert list(run.errors) == [str(broken)] and "broken.jpg" in run.errors[str(broken)]
    assert backend.seen >= run.measurement.images
    assert classifier.backend is backend  # timed through a wrapper: the classifier is left as it was


def test_cli_bench_images_torch_json(photo_folder, capsys):
    folder, broken = photo_folder
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "torch", "--batch", "2",
                 "--seconds", "1.5", "--images", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    check_schema(out)
    assert out["mode"] == "end-to-end" and out["files"] == 3  # notes.txt is not an image file
    assert out["weights_sha256"] is None  # --weights random
    assert out["failed"] >= 1 and str(broken) in out["errors"]
    inf = out["infer_latency_ms"]
    assert inf["p50"] <= inf["p90"] <= inf["p99"]


def test_bench_report_lists_unreadable_files(photo_folder):
    folder, _ = photo_folder
    result = bench(resolve(MODEL, None), UniformBackend(), batch=2, seconds=0.3, files=folder_images(folder, "images"))
    text = format_report(result)
    assert "unreadable" in text and "broken.jpg" in text


def test_cli_bench_bad_folder_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--model", MODEL, "--weights", "random", "--backend", "torch", "--seconds", "1",
                 "--images", str(tmp_path / "missing")]) == 1
    assert "not a folder" in capsys.readouterr().err
