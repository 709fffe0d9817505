"""The network is the card's: same structure, keys and numbers as the reference geffnet implementation."""
from __future__ import annotations

import geffnet
import numpy as np
import pytest
import torch
from PIL import Image

from effnet.arch import BlockKind, list_models, network_spec
from effnet.layers import Conv2dSame, same_padding
from effnet.model import build_model


def realistic_batchnorm(model: torch.nn.Module, photos: list[np.ndarray], size: int) -> None:
    """Random weights, but BatchNorm statistics measured on real photos, so activations look real."""
    x = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(p).resize((size, size)), np.float32))
                     .permute(2, 0, 1) for p in photos])
    x = (x - 127.5) / 64.0
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.mark.parametrize("name, size", [("b0", 224), ("b7", 600)])
def test_logits_match_geffnet_on_identical_weights(name, size, photo_arrays):
    torch.manual_seed(0)
    reference = getattr(geffnet, f"tf_efficientnet_{name}")()
    realistic_batchnorm(reference, list(photo_arrays.values())[:3], 256 if name == "b7" else size)
    ours = build_model(f"efficientnet_{name}")
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.from_numpy(np.stack([
        (np.asarray(Image.fromarray(photo_arrays["coffee"]).resize((size, size)), np.float32) - 127.5) / 64.0
    ]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 0.05  # a live network, not one whose activations died out
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4


@pytest.mark.parametrize("name", list_models())
def test_state_dict_keys_and_shapes_equal_geffnet(name):
    reference = getattr(geffnet, "tf_" + name)()
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in build_model(name).state_dict().items()}
    assert got == expected


def test_b7_structure_is_pinned():
    spec = network_spec("efficientnet_b7")
    assert [len(s) for s in spec.stages] == [4, 7, 7, 10, 10, 13, 4]
    assert len(spec.blocks) == 55
    assert [s[-1].out_channels for s in spec.stages] == [32, 48, 80, 160, 224, 384, 640]
    assert (spec.stem_channels, spec.head_channels) == (64, 2560)
    assert spec.blocks[0].kind is BlockKind.DEPTHWISE_SEPARABLE
    assert spec.blocks[0].se_channels == 16  # 0.25 x the block's 64 input channels
    assert spec.blocks[4].se_channels == 8 and spec.blocks[4].mid_channels == 192  # 0.25 x 32 in, acts on 6 x 32
    assert sum(p.numel() for p in build_model("efficientnet_b7").parameters()) == 66_347_960


def test_lite_switches():
    spec = network_spec("efficientnet_lite4")
    assert (spec.stem_channels, spec.head_channels) == (32, 1280)  # not scaled
    assert len(spec.stages[0]) == 1 and len(spec.stages[-1]) == 1  # first/last stage not repeated
    assert all(b.se_channels == 0 for b in spec.blocks)
    model = build_model("efficientnet_lite0")
    assert isinstance(model.act1, torch.nn.ReLU6)
    assert not any("se." in k for k in model.state_dict())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_same_padding_rule():
    assert same_padding(600, 3, 2) == (0, 1)  # B7's stem: the extra pixel goes right/bottom
    assert same_padding(599, 3, 2) == (1, 1)
    assert same_padding(300, 5, 2) == (1, 2)
    assert same_padding(19, 5, 1) == (2, 2)
    assert same_padding(1, 3, 2) == (1, 1)


@pytest.mark.parametrize("size", [(600, 600), (237, 311)])
def test_static_and_dynamic_padding_give_identical_outputs(size):
    torch.manual_seed(1)
    model = build_model("efficientnet_b7" if size == (600, 600) else "efficientnet_b0")
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        dynamic = model(x)
        model.set_input_size(size)
        static = model(x)
    assert torch.equal(dynamic, static)
    stem = model.conv_stem
    assert isinstance(stem, Conv2dSame) and not stem.dynamic
    if size == (600, 600):
        assert stem.fixed_pad == (0, 1, 0, 1)
