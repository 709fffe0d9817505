"""Backends: every engine gives PyTorch's answers on real photos (real Lite0 weights), exports are cached,
and a missing optional engine says which extra installs it."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import effnet.export.build as export_build
import effnet.export.cache as export_cache
from effnet import Classifier
from effnet.backends import create_backend
from effnet.backends.openvino_graph import ENGINE_REVISION
from effnet.cache_layout import cache_dir
from effnet.cli import main
from effnet.decode import center_crop, load_image
from effnet.engines import EngineOptions, available_backends, default_precision, resolve_engine
from effnet.errors import EffnetError, MissingEngineError
from effnet.optional import require
from effnet.resolved import resolve

import openvino as ov  # noqa: E402  (the [all] extra: these tests are meant to run)

LITE0 = "efficientnet_lite0"


def make(kind, resolved, precision="fp32", *, batch="auto", calibration=None, cache_root=None):
    """create_backend for an engine choice resolved here (on the CPU)."""
    engine = resolve_engine(kind, precision, device="cpu", calibration=calibration,
                            options=EngineOptions(model_batch=batch))
    return create_backend(resolved, engine, cache_root=cache_root)


def resolve_kind(kind, precision=None, calibration=None):
    return resolve_engine(kind, precision, device="cpu", calibration=calibration).backend


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("effnet_cache")


@pytest.fixture(scope="module")
def crops(photo_arrays) -> np.ndarray:
    config = resolve(LITE0, None).preprocess
    return np.stack([center_crop(load_image(a), config) for a in photo_arrays.values()])


@pytest.fixture(scope="module")
def reference(lite0_weights, crops) -> np.ndarray:
    return make("torch", resolve(LITE0, lite0_weights)).predict(crops)


@pytest.mark.parametrize("kind, precision, tolerance", [
    ("onnxruntime", "fp32", 1e-4),
    ("openvino", "fp32", 1e-4),
    ("openvino", "bf16", 0.05),
    ("openvino", "fp16", 0.05),
    ("torch", "bf16", 0.05),
])
def test_backends_agree_with_pytorch_on_real_photos(kind, precision, tolerance, lite0_weights, crops, reference,
                                                    cache_root):
    backend = make(kind, resolve(LITE0, lite0_weights), precision, cache_root=cache_root)
    assert (backend.name, backend.precision) == (kind, precision)
    probs = backend.predict(crops)
    assert probs.shape == (len(crops), 1000) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)
    assert np.abs(probs - reference).max() < tolerance
    # Same top-1 on every photo, whose fp32 answer is not a near tie.
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    assert np.array_equal(probs[clear].argmax(1), reference[clear].argmax(1))
    assert list(probs.argmax(1)[:2]) == [967, 872]  # coffee: espresso, camera: tripod
    assert backend.predict(crops[:0]).shape == (0, 1000)  # an empty batch (all of its files unreadable)


@pytest.mark.parametrize("batch", [1, 2, None])
def test_openvino_streams_batches_in_order(batch, lite0_weights, crops, reference, cache_root):
    backend = make("openvino", resolve(LITE0, lite0_weights), batch=batch, cache_root=cache_root)
    picks = [[0, 1, 2], [], [3, 4, 0, 1, 2], [4], [2, 3]]  # sizes that split unevenly over the requests
    out = list(backend.predict_stream(crops[p] for p in picks))
    assert [len(o) for o in out] == [len(p) for p in picks]
    for p, probs in zip(picks, out):
        assert np.abs(probs - reference[p]).max(initial=0.0) < 1e-4
    # A stream abandoned half way waits for its requests; the backend goes on working.
    stream = backend.predict_stream(crops[p] for p in picks)
    next(stream)
    stream.close()
    assert np.abs(backend.predict(crops) - reference).max() < 1e-4


def test_openvino_takes_uint8_rgb_crops_and_any_batch(lite0_weights, crops, reference, cache_root):
    backend = make("openvino", resolve(LITE0, lite0_weights), cache_root=cache_root)
    data = backend.compiled.input(0)
    assert data.get_element_type() == ov.Type.u8 and list(data.get_shape()) == [1, 224, 224, 3]
    assert backend.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # not the CPU's bf16 default
    # Five crops spread over the infer requests come back in order.
    assert np.abs(backend.predict(crops) - reference).max() < 1e-4
    assert np.abs(backend.predict(crops[3:4]) - reference[3:4]).max() < 1e-4
    assert backend.predict(crops[:0]).shape == (0, 1000)


@pytest.mark.parametrize("batch", [2, None])
def test_openvino_fixed_and_dynamic_batch_irs(batch, lite0_weights, crops, reference, cache_root):
    backend = make("openvino", resolve(LITE0, lite0_weights), batch=batch, cache_root=cache_root)
    assert backend.static_batch == batch
    assert np.abs(backend.predict(crops) - reference).max() < 1e-4  # 5 = 2 + 2 + a padded 1, or 3 + 2


def test_second_creation_hits_the_cache(lite0_weights, crops, tmp_path, monkeypatch):
    first = make("openvino", resolve(LITE0, lite0_weights), cache_root=tmp_path)
    (entry,) = [p for p in (tmp_path / "exports").iterdir() if p.is_dir()]
    assert entry.name.startswith(f"{LITE0}-") and f"openvino_engine{ENGINE_REVISION}-fp32-b1-v" in entry.name
    assert any((tmp_path / "openvino").iterdir())  # OpenVINO's compiled blob
    assert str(lite0_weights.resolve()) in (cache_dir() / "digests.json").read_text()  # hashed once
    monkeypatch.setattr(export_build, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    start = time.perf_counter()
    second = make("openvino", resolve(LITE0, lite0_weights), cache_root=tmp_path)
    print(f"warm create_backend(openvino, lite0): {time.perf_counter() - start:.2f} s")
    assert np.array_equal(second.predict(crops[:1]), first.predict(crops[:1]))
    # Other weights, precision or batch are other models: they are exported.
    with pytest.raises(pytest.fail.Exception, match="exported again"):
        make("openvino", resolve(LITE0, lite0_weights), "fp16", cache_root=tmp_path)


def test_cache_key_names_what_changes_the_model(lite0_weights, tmp_path):
    lite0 = resolve(LITE0, lite0_weights)
    key = export_cache.export_key(lite0, "openvino", "fp32", 1)
    other = tmp_path / "other.pth"
    other.write_bytes(lite0_weights.read_bytes() + b"\0")
    assert export_cache.export_key(resolve(LITE0, other), "openvino", "fp32", 1) != key
    assert export_cache.export_key(lite0, "openvino", "fp16", 1) != key
    assert export_cache.export_key(lite0, "openvino", "fp32", None) != key
    assert export_cache.export_key(resolve(LITE0, None), "openvino", "fp32", 1) is None  # random: never cached
    # "imagenet" is keyed by the file that serves it (here the PyPI package's, not timm's 0aa007d2...)
    assert export_cache.export_key(resolve(LITE0, "imagenet"), "openvino", "fp32", 1) == key
    assert key.startswith(f"{LITE0}-579344248a93e230-openvino")
    # The same content under another name is the same model.
    copy = tmp_path / "copy.pth"
    copy.write_bytes(lite0_weights.read_bytes())
    assert export_cache.export_key(resolve(LITE0, copy), "openvino", "fp32", 1) == key


def test_classifier_runs_on_openvino(lite0_weights, photo_files, cache_root):
    backend = make("openvino", resolve(LITE0, lite0_weights), cache_root=cache_root)
    classifier = Classifier(LITE0, lite0_weights, backend=backend, batch_size=3)
    outcomes = list(classifier.classify_iter([photo_files["coffee"], photo_files["camera"], photo_files["chelsea"]]))
    assert [o.predictions[0].label for o in outcomes[:2]] == ["espresso", "tripod"]


def test_cli_classify_with_backend(lite0_weights, photo_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    assert main(["classify", "--model", LITE0, "--weights", str(lite0_weights), "--backend", "onnxruntime",
                 "--top", "1", str(photo_files["coffee"])]) == 0
    assert "espresso" in capsys.readouterr().out
    assert main(["classify", "--model", LITE0, "--weights", str(lite0_weights), "--backend", "onnxruntime",
                 "--precision", "int8", str(photo_files["coffee"])]) == 2  # a usage mistake
    assert "onnxruntime backend runs fp32 on cpu, not --precision int8" in capsys.readouterr().err


# ---- choosing an engine, and missing ones ------------------------------------------------------

def test_auto_picks_the_fastest_installed(monkeypatch, photo_files):
    photos = photo_files["coffee"].parent
    assert available_backends() == ["openvino", "onnxruntime", "torch"]
    assert resolve_kind("auto") == "openvino" and resolve_kind("auto", "int8", photos) == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert resolve_kind("auto") == "onnxruntime" and resolve_kind("auto", "bf16") == "torch"
    with pytest.raises(EffnetError, match=r"effnet\[openvino\]"):
        resolve_kind("auto", "int8", photos)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_kind("auto") == "torch"


@pytest.mark.parametrize("kind, precision, message", [
    ("onnxruntime", "int8", "onnxruntime backend runs fp32 on cpu, not precision=int8"),
    ("torch", "fp16", "torch backend runs fp32, bf16 on cpu, not precision=fp16"),
    ("tensorrt", "fp32", "unknown backend=tensorrt"),
])
def test_unsupported_requests_are_refused(kind, precision, message):
    with pytest.raises(EffnetError, match=message):
        make(kind, resolve(LITE0, None), precision)


@pytest.mark.parametrize("module, kind, extra", [
    ("openvino", "openvino", "openvino"),
    ("onnxruntime", "onnxruntime", "onnx"),
])
def test_missing_engine_names_its_extra(module, kind, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingEngineError, match=rf"pip install 'effnet\[{extra}\]'"):
        make(kind, resolve(LITE0, None), cache_root=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before exporting anything


def test_missing_nncf_names_the_int8_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingEngineError, match=r"pip install 'effnet\[int8\]'"):
        require("nncf")


def test_importing_effnet_needs_no_optional_engine():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'openvino', 'nncf'): sys.modules[m] = None\n"
            "import effnet, effnet.backends, effnet.export, effnet.cli\n"
            "from effnet.backends import create_backend\n"
            "from effnet.engines import resolve_engine\n"
            "from effnet.resolved import resolve\n"
            "engine = resolve_engine(device='cpu')\n"
            "print(engine.backend, type(create_backend(resolve('efficientnet_b0', None), engine)).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch TorchBackend"  # auto: the one engine left


# ---- int8 through the backend ------------------------------------------------------------------

def test_accuracy_control_is_part_of_the_calibration_identity(photo_files, tmp_path):
    import hashlib
    import shutil

    from effnet.calibration import calibration_set
    from effnet.errors import EngineError

    for name, path in photo_files.items():
        shutil.copy(path, tmp_path / f"{name}.jpg")
    plain, controlled = calibration_set(tmp_path), calibration_set(tmp_path, max_drop=0.005)
    assert plain.max_drop is None and controlled.max_drop == 0.005
    assert len({plain.sha256, controlled.sha256, calibration_set(tmp_path, max_drop=0.01).sha256}) == 3
    expected = hashlib.sha256(b"subset 300\n")  # plain sets keep the identity they had: their cached models stay
    for path in sorted(tmp_path.iterdir()):
        expected.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    assert plain.sha256 == expected.hexdigest()
    with pytest.raises(EngineError, match="max_drop=1.5 is not a share"):
        calibration_set(tmp_path, max_drop=1.5)


def test_int8_without_calibration_runs_the_default_and_says_so(caplog):
    """No photos of the user's own: the backend's default precision, named in the choice and in one warning."""
    with caplog.at_level("WARNING", logger="effnet"):
        engine = resolve_engine("openvino", "int8", device="cpu")
    assert engine.precision == default_precision("openvino") and engine.calibration is None
    (record,) = [r for r in caplog.records if "int8" in r.getMessage()]
    assert f"running {engine.precision} (the openvino default) instead" in record.getMessage()
    assert record.params == ("precision", "calibration")  # the CLI names the flags
    with pytest.raises(EffnetError, match="onnxruntime backend runs fp32 on cpu, not precision=int8"):
        resolve_engine("onnxruntime", "int8", device="cpu")  # a backend without int8 is still a mistake


def test_openvino_int8_backend(lite0_weights, photo_arrays, crops, reference, tmp_path, cache_root):
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(40):  # calibration: random crops and mirror images of the photos
        a = list(photo_arrays.values())[i % len(photo_arrays)]
        h, w = a.shape[:2]
        y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
        Image.fromarray(np.ascontiguousarray(a[y:, x:][:, ::-1 if i % 2 else 1])).save(tmp_path / f"{i:02d}.jpg")
    backend = make("openvino", resolve(LITE0, lite0_weights), "int8", calibration=tmp_path, cache_root=cache_root)
    assert backend.precision == "int8"
    probs = backend.predict(crops)
    assert list(probs.argmax(1)[:2]) == [967, 872]
    assert 1e-4 < np.abs(probs - reference).max() < 0.2  # really quantised, still close
