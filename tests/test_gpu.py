"""effnet on NVIDIA GPUs: the device as part of the engine choice, the compiled engine (fixed batch sizes,
padding, cached compiled code, the eager fallback), normalisation on the engine's own device, the GPU decoder.

Everything but the `gpu`-marked tests runs on a CPU (CI has no GPU): the engine's device code with
device="cpu", torch.compile's CPU backend for the compiled path, Pillow + the device resize for the GPU
decoder. The `gpu`-marked tests run on the GPU machine (tests skip them, saying why, where PyTorch sees no GPU).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet import Classifier
from effnet.backends import create_backend
from effnet.backends.torch_backend import TorchBackend
from effnet.backends.torch_compile import cache_key
from effnet.cli import main
from effnet.decode import PillowDecoder
from effnet.decode_gpu import DeviceDecoder
from effnet.engines import CPU, Device, EngineOptions, on_this_machine, resolve_engine
from effnet.errors import EffnetError, EngineError
from effnet.preprocessing import normalize
from effnet.resolved import resolve

LITE0 = "efficientnet_lite0"
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU that PyTorch sees (run on the GPU machine)")


@pytest.fixture(scope="module")
def lite0(lite0_weights):
    return resolve(LITE0, lite0_weights)


@pytest.fixture(scope="module")
def crops(lite0, photo_files) -> np.ndarray:
    decoder = PillowDecoder(lite0.preprocess)
    return np.stack([decoder.crop(p) for p in photo_files.values()])


@pytest.fixture(scope="module")
def reference(lite0, crops) -> np.ndarray:
    """The card's original model on the CPU: torch fp32, eager."""
    return create_backend(lite0, resolve_engine("torch", "fp32", device="cpu")).predict(crops)


# ---- the device is part of the engine choice, resolved once ---------------------------------------

@pytest.mark.skipif(CUDA, reason="checks a machine without a GPU")
def test_a_machine_without_a_gpu_says_what_is_missing(capsys, photo_files):
    assert resolve_engine(device="auto").device == CPU  # auto: the CPU, and its fastest engine
    with pytest.raises(EngineError, match=r"device=cuda: this PyTorch \(.*\) is a CPU-only build"):
        resolve_engine("torch", device="cuda")
    with pytest.raises(EngineError, match="the openvino backend runs on CPUs; use backend=torch"):
        resolve_engine("openvino", device="cuda")
    with pytest.raises(EngineError, match="unknown device=gpu"):
        resolve_engine("torch", device="gpu")
    # The command line: one line, before any download, no traceback.
    code = main(["classify", "--model", LITE0, "--device", "cuda:1", str(photo_files["coffee"])])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "--device cuda:1: this PyTorch" in err and "--device cpu" in err


@pytest.mark.skipif(CUDA, reason="checks a machine without a GPU")
def test_an_engine_for_other_machines_is_checked_where_it_runs():
    """Ray's driver may have no GPU: it names the device, each actor checks it on its own machine."""
    engine = resolve_engine("torch", device="cuda", local=False)
    assert engine.device == Device("cuda", 0) and engine.precision == "bf16" and engine.compiled
    with pytest.raises(EngineError, match="CPU-only build"):
        on_this_machine(engine)
    assert on_this_machine(resolve_engine("torch", device="cpu", local=False)).device == CPU


def test_the_gpu_decoder_needs_a_gpu_engine(lite0):
    with pytest.raises(EffnetError, match="decode=gpu decodes on the engine's GPU; this engine runs on cpu"):
        Classifier(lite0, backend="torch", device="cpu", decode="gpu")


def test_engine_choice_names_the_device_in_every_output(lite0, photo_files, capsys):
    engine = resolve_engine("torch", "fp32", device="cpu")
    assert engine.describe() == {"backend": "torch", "precision": "fp32", "device": "cpu"}
    assert Classifier(lite0, backend=engine).describe()["device"] == "cpu"
    assert main(["classify", "--model", LITE0, "--backend", "torch", "--device", "cpu", "--json",
                 str(photo_files["coffee"])]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cpu"


# ---- the engine's own code on its device ---------------------------------------------------------

def test_the_engine_normalises_on_its_device_exactly_as_the_checker(lite0, crops):
    """The GPU engine gets uint8 crops and normalises them where it runs, through the checker's table: the
    same float32 values as `normalize` (float64 arithmetic rounded once), bit for bit."""
    backend = TorchBackend(lite0.create_model(), lite0.preprocess, device=CPU, precision="fp32")
    with torch.inference_mode():
        x = backend.network.normalize(torch.from_numpy(crops))
    expected = np.stack([normalize(c, lite0.preprocess) for c in crops])
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(x.numpy(), expected)


def test_compile_cache_key_names_everything_that_changes_the_code(lite0, lite0_weights, tmp_path):
    engine = resolve_engine("torch", "bf16", device="cpu")
    gpu = type(engine)("torch", Device("cuda", 0, "NVIDIA H200"), "bf16")
    key = cache_key(lite0, gpu, (8, 64))
    assert key.startswith(f"{LITE0}-{lite0.weights_id}-bf16-NVIDIA_H200-b8_64-torch{torch.__version__}-")
    other = tmp_path / "other.pth"
    other.write_bytes(lite0_weights.read_bytes() + b"\0")
    assert len({key, cache_key(lite0, gpu, (8,)), cache_key(lite0, type(gpu)("torch", gpu.device, "fp16"), (8, 64)),
                cache_key(lite0, type(gpu)("torch", Device("cuda", 0, "NVIDIA A100"), "bf16"), (8, 64)),
                cache_key(lite0, engine, (8, 64)), cache_key(resolve(LITE0, other), gpu, (8, 64))}) == 6
    assert cache_key(resolve(LITE0, None), gpu, (8, 64)) is None  # random weights: never kept


COMPILED = """
import json, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO)  # effnet's notices, as the command line shows them
from effnet.backends import create_backend
from effnet.engines import EngineOptions, resolve_engine
from effnet.resolved import resolve
resolved = resolve("efficientnet_lite0", sys.argv[1])
engine = resolve_engine("torch", "fp32", device="cpu", options=EngineOptions(compile=True, batch_sizes=(2, 4)))
backend = create_backend(resolved, engine)
crops = np.load(sys.argv[2])
out = [backend.predict(crops[:n]) for n in (5, 1, 3)]  # 4 + 1 padded to 2; 1 padded to 2; 2 + 1 padded to 2
np.save(sys.argv[3], np.concatenate(out))
from torch._dynamo.utils import counters
print(json.dumps({"compiled": backend.compiled, "sizes": sorted(backend._compiled.ready_sizes),
                  "misses": counters["inductor"]["fxgraph_cache_miss"], "counters": {k: dict(v) for k, v in counters.items()}}))
"""


def _compiled_run(tmp_path: Path, home: Path, lite0_weights, crops, env: dict | None = None) -> tuple[dict, np.ndarray, str]:
    np.save(tmp_path / "crops.npy", crops)
    out = tmp_path / f"probs-{len(list(tmp_path.glob('probs-*')))}.npy"
    run = subprocess.run([sys.executable, "-c", COMPILED, str(lite0_weights), str(tmp_path / "crops.npy"), str(out)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "EFFNET_HOME": str(home), **(env or {})})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), np.load(out), run.stderr


def test_compiled_engine_pads_to_its_batch_sizes_and_a_second_process_reuses_the_code(lite0_weights, crops,
                                                                                        reference, tmp_path):
    """torch.compile (Inductor, frozen weights) at fixed batch sizes, as on a GPU, but on the CPU: calls of any
    size are split and padded to 2 or 4 and give the eager answers; the compiled code is kept in effnet's cache
    and a second process compiles nothing (FX graph cache hits)."""
    home = tmp_path / "home"
    expected = np.concatenate([reference[:5], reference[:1], reference[:3]])
    # Each process gets an empty Inductor cache of its own: what the second reuses comes from effnet's cache.
    first, probs, _ = _compiled_run(tmp_path, home, lite0_weights, crops,
                                    env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-1")})
    assert (first["compiled"], first["sizes"], first["misses"]) == (True, [2, 4], 2)  # two graphs generated
    assert np.abs(probs - expected).max() < 1e-5
    (cached,) = (home / "torch-compiled").iterdir()
    assert cached.name.startswith(f"{LITE0}-") and "-fp32-cpu-b2_4-torch" in cached.name
    second, again, stderr = _compiled_run(tmp_path, home, lite0_weights, crops,
                                          env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-2")})
    # Reused code: fewer graphs generated (on this torch the first size compiled in a process is not found
    # again; measured in benchmarks/gpu_bench.py where it matters, a GPU process's first answer).
    assert second["compiled"] and second["misses"] < first["misses"] and "reusing compiled code from the cache" in stderr
    assert np.abs(again - expected).max() < 1e-5


def test_a_machine_where_compiling_fails_runs_eager_with_one_notice(lite0_weights, crops, reference, tmp_path):
    """No C++ compiler for Inductor's CPU code (on a GPU machine: no Triton, an unsupported GPU): the same
    answers, eager, and one line saying so."""
    result, probs, stderr = _compiled_run(tmp_path, tmp_path / "home", lite0_weights, crops,
                                          env={"CXX": str(tmp_path / "no-compiler")})
    assert result["compiled"] is False and result["sizes"] == []
    assert stderr.count("torch.compile does not work here") == 1 and "running the network eager" in stderr
    assert "Traceback" not in stderr
    assert np.abs(probs - np.concatenate([reference[:5], reference[:1], reference[:3]])).max() < 1e-5


# ---- the GPU decoder's resizing, checked on the CPU against the exact pipeline ---------------------

def test_device_resize_is_close_to_the_checkers_and_keeps_the_answers(lite0, crops, reference, photo_files, tmp_path):
    """decode="gpu" resizes on the device with antialiasing (nvJPEG decodes there too on a GPU); here the
    photos are decoded by Pillow and resized by torch on the CPU: within a level or so of Pillow's
    fixed-point bicubic on average, and the same top-1 class on real photos with real weights."""
    decoder = DeviceDecoder(lite0.preprocess, "cpu")
    device_crops = np.stack([decoder.crop(p).numpy() for p in photo_files.values()])
    diff = np.abs(device_crops.astype(np.int16) - crops.astype(np.int16))
    assert device_crops.dtype == np.uint8 and device_crops.shape == crops.shape
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    probs = create_backend(lite0, resolve_engine("torch", "fp32", device="cpu")).predict(device_crops)
    assert np.array_equal(probs.argmax(1), reference.argmax(1))
    # A stream: bad files keep their place with the exact path's message, the rest decode.
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a JPEG")
    items = [photo_files["coffee"], bad, tmp_path / "missing.jpg", photo_files["camera"]]
    (batch,) = list(decoder.batches(items, 4))
    assert [d.failure is None for d in batch] == [True, False, False, True]
    assert "bad.jpg" in batch[1].error and "no such file" in batch[2].error
    assert np.array_equal(batch[0].crop.numpy(), device_crops[0])
    assert decoder.stack([d.crop for d in batch if d.failure is None]).shape == (2, 224, 224, 3)


def test_device_decoder_applies_the_pixel_limit_before_decoding(lite0, tmp_path):
    from helpers import png_bomb

    bomb = png_bomb(tmp_path / "bomb.png", side=5_000)  # 25 MP: under Pillow's own refusal, over this limit
    (batch,) = list(DeviceDecoder(lite0.preprocess, "cpu", max_pixels=1_000_000).batches([bomb], 1))
    assert batch[0].failure is not None and "max_pixels=" in batch[0].error and "before decoding" in batch[0].error


# ---- on the GPU machine ---------------------------------------------------------------------------

@gpu
@pytest.mark.gpu
def test_gpu_engine_gives_the_cards_answers(lite0, crops, reference):
    """fp32 on the GPU (TF32 off) is the card's model; bf16 keeps every clear top-1 (real weights, real photos)."""
    fp32 = create_backend(lite0, resolve_engine("torch", "fp32", device="cuda",
                                                options=EngineOptions(batch_sizes=(1, 4))))
    assert fp32.compiled and fp32.device == "cuda:0"
    assert np.abs(fp32.predict(crops) - reference).max() < 1e-4
    bf16 = create_backend(lite0, resolve_engine("torch", device="cuda", options=EngineOptions(batch_sizes=(1, 4))))
    probs = bf16.predict(crops)
    assert bf16.precision == "bf16" and np.array_equal(probs.argmax(1), reference.argmax(1))
    # Pipelined batches come back in order, of every size, the tail padded.
    out = list(bf16.predict_stream([crops[:3], crops[:0], crops, crops[4:]]))
    assert [len(o) for o in out] == [3, 0, 5, 1]
    assert np.abs(out[2] - probs).max() < 1e-6


@gpu
@pytest.mark.gpu
def test_gpu_decoder_agrees_with_the_exact_pipeline(lite0, photo_files, reference):
    classifier = Classifier(lite0, backend="torch", device="cuda", decode="gpu")
    assert classifier.describe()["decode"] == "gpu"  # nvJPEG through torchvision
    top = [r[0].index for r in classifier.classify(list(photo_files.values()), top=1)]
    assert top == list(reference.argmax(1))


@gpu
@pytest.mark.gpu
def test_out_of_memory_splits_the_batch(lite0, crops, reference):
    backend = create_backend(lite0, resolve_engine("torch", "fp32", device="cuda", options=EngineOptions(compile=False)))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 0.6 * 2**30 / total))  # room for a few Lite0 images
    try:
        many = np.concatenate([crops] * 64)  # 320 images at once do not fit
        probs = backend.predict(many)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert np.abs(probs[:5] - reference).max() < 1e-4


@gpu
@pytest.mark.gpu
def test_cli_classifies_on_the_gpu(photo_files, capsys, lite0_weights):
    assert main(["classify", "--model", LITE0, "--weights", str(lite0_weights), "--device", "cuda",
                 str(photo_files["coffee"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"# {LITE0}, weights ") and " on cuda:0 (" in out[0]
    assert "espresso" in out[2]

