"""Foreign checkpoint layouts convert exactly, and a checkpoint that does not fit never half-loads."""
from __future__ import annotations

import re

import pytest
import torch

from effnet.api import create_model, preprocess
from effnet.cli.options import render
from effnet.checkpoint import Layout, detect_layout, from_lukemelas, load_strict, to_native
from effnet.errors import WeightsError
from effnet.model import build_model


@pytest.fixture(scope="module")
def lite0(lite0_weights):
    return create_model("efficientnet_lite0", lite0_weights)


@pytest.mark.parametrize("photo, expected", [("coffee", 967), ("camera", 872)])
def test_real_lite0_weights_classify_real_photos(lite0, photo_files, photo, expected):
    x = torch.from_numpy(preprocess(photo_files[photo], "efficientnet_lite0"))
    with torch.no_grad():
        probs = lite0(x).softmax(-1)[0]
    assert int(probs.argmax()) == expected  # 967 espresso, 872 tripod
    assert float(probs.max()) > 0.8


def test_lukemelas_layout_is_recognised_and_fully_converted(lite0_weights):
    raw = torch.load(lite0_weights, map_location="cpu", weights_only=True)
    assert detect_layout(raw) is Layout.LUKEMELAS
    model = build_model("efficientnet_lite0")
    converted = from_lukemelas(raw, model.spec)
    assert set(converted) == set(model.state_dict())
    assert torch.equal(converted["blocks.1.0.conv_pw.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])  # DS block
    assert torch.equal(converted["bn2.running_var"], raw["_bn1.running_var"])  # head BN
    assert torch.equal(converted["classifier.bias"], raw["_fc.bias"])


def test_lukemelas_layout_with_squeeze_excite_converts():
    """B-variants carry SE weights: build a lukemelas-named copy of a B0 state dict and convert it back."""
    model = build_model("efficientnet_b0")
    native = model.state_dict()
    rename = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
              "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
              "bn3": "_bn2"}
    rename_ds = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
                 "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    flat = {(s, i): n for n, (s, i) in enumerate((s, i) for s, st in enumerate(model.spec.stages) for i in range(len(st)))}
    foreign = {}
    for key, value in native.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            s, i, param = int(parts[1]), int(parts[2]), parts[-1]
            module = ".".join(parts[3:-1])
            table = rename_ds if (s, i) == (0, 0) else rename
            foreign[f"_blocks.{flat[(s, i)]}.{table[module]}.{param}"] = value
        else:
            foreign[f"{top[parts[0]]}.{parts[1]}"] = value
    converted = from_lukemelas(foreign, model.spec)
    assert set(converted) == set(native)
    assert all(torch.equal(converted[k], native[k]) for k in native)


def test_wrong_checkpoint_fails_listing_mismatches_and_loads_nothing():
    b0, b1 = build_model("efficientnet_b0"), build_model("efficientnet_b1")
    before = {k: v.clone() for k, v in b1.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_strict(b1, b0.state_dict(), source="b0.pth")
    message = str(err.value)
    assert "b0.pth" in message and "efficientnet_b1" in message and "missing" in message
    assert all(torch.equal(before[k], v) for k, v in b1.state_dict().items())


def test_wrong_shapes_are_listed():
    model = build_model("efficientnet_b0")
    state = dict(model.state_dict())
    state["classifier.weight"] = torch.zeros(10, 1280)
    with pytest.raises(WeightsError, match=r"wrong shape \(1\): classifier.weight \(10, 1280\) != \(1000, 1280\)"):
        load_strict(model, state)


def test_unknown_layout_is_refused():
    with pytest.raises(WeightsError, match="unrecognised checkpoint layout.*weights=PATH"):
        detect_layout({"fc.weight": torch.zeros(2, 2)})
    # A few of our names among many foreign ones are not our layout either.
    with pytest.raises(WeightsError, match="unrecognised checkpoint layout"):
        detect_layout({"conv_stem.weight": torch.zeros(1), **{f"head.{i}": torch.zeros(1) for i in range(3)}})


@pytest.mark.parametrize("key", ["conv_stem.weight", "blocks.3.1.conv_pwl.weight", "classifier.bias"])
def test_timm_checkpoint_missing_one_key_is_timm_and_the_key_is_named(key):
    """The layout is what most keys say, so a dict without `conv_stem.weight` is still timm's and the
    error names the one missing tensor (it used to be called an unrecognised layout)."""
    model = build_model("efficientnet_b0")
    state = dict(model.state_dict())
    del state[key]
    assert detect_layout(state) is Layout.TIMM
    with pytest.raises(WeightsError, match=rf"missing \(1\): {re.escape(key)}(;|$)") as info:
        load_strict(model, to_native(state, model.spec), source="b0.pth")
    assert "unexpected" not in str(info.value) and "--model NAME" in render(info.value)  # as the CLI says it


def test_lukemelas_checkpoint_missing_its_stem_is_still_lukemelas(lite0_weights):
    raw = torch.load(lite0_weights, map_location="cpu", weights_only=True)
    del raw["_conv_stem.weight"]
    assert detect_layout(raw) is Layout.LUKEMELAS
    model = build_model("efficientnet_lite0")
    with pytest.raises(WeightsError, match=r"missing \(1\): conv_stem.weight"):
        load_strict(model, to_native(raw, model.spec))
