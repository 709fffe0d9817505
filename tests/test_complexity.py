"""`effnet info`'s numbers are the Open Model Zoo cards': parameters, BN-folded parameters, GFLOPs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from effnet.arch import list_models
from effnet.complexity import (
    CATEGORIES, Complexity, complexity, count_parameters, flop_breakdown, fold_batchnorm, measure_flops,
)
from effnet.errors import UnknownModelError
from effnet.model import build_model

# open_model_zoo models/public/<card>/README.md, "Specification" table (GFLOPs, MParams). The TF cards
# efficientnet-b0, efficientnet-b5 and efficientnet-b7_auto_aug state the same two numbers.
CARDS = {
    "efficientnet_b0": (0.819, 5.268),  # efficientnet-b0-pytorch
    "efficientnet_b5": (21.252, 30.303),  # efficientnet-b5-pytorch
    "efficientnet_b7": (77.618, 66.193),  # efficientnet-b7-pytorch
}


def test_registry_carries_the_cards_figures_and_they_match_the_network():
    """The card's published figures travel with the weights entry (and so with every resolved model)."""
    from effnet.registry import weights_entry

    for name, (gflops, mparams) in CARDS.items():
        card = weights_entry(name).card
        assert card is not None and card.card == name.replace("_", "-") + "-pytorch"
        assert (card.gflops, card.params_millions) == (gflops, mparams)
        c = complexity(name)
        assert f"{c.gflops:.3f}" == f"{card.gflops:.3f}" and f"{c.params_folded / 1e6:.3f}" == f"{card.params_millions:.3f}"
    assert (weights_entry("efficientnet_b7").card.top1, weights_entry("efficientnet_b7").card.top5) == (84.42, 96.91)
    assert weights_entry("efficientnet_lite0").card is None  # no OMZ card for the Lite weights


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(name)


def test_b7_is_the_card():
    c = complexity("efficientnet_b7")
    assert isinstance(c, Complexity)
    assert c.input_size == 600
    assert c.params == 66_347_960
    assert c.params_folded == 66_192_600
    assert c.macs == 37_745_884_192
    assert c.flops == 77_618_361_312
    assert f"{c.gflops:.3f}" == "77.618"
    assert f"{c.params_folded / 1e6:.3f}" == "66.193"


def test_b0_is_pinned():
    c = complexity("efficientnet_b0")
    assert (c.input_size, c.params, c.params_folded) == (224, 5_288_548, 5_267_540)
    assert (c.macs, c.flops) == (385_814_752, 818_824_104)


@pytest.mark.parametrize("name", CARDS)
def test_every_efficientnet_card_is_reproduced_to_its_printed_decimals(name):
    gflops, mparams = CARDS[name]
    c = complexity(name)
    assert round(c.gflops, 3) == gflops
    assert round(c.params_folded / 1e6, 3) == mparams


def test_folded_b7_really_has_the_card_parameter_count():
    model = meta_model("efficientnet_b7")
    folded = fold_batchnorm(model)
    assert count_parameters(model) == 66_347_960  # the original is left alone
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_parameters(folded) == 66_192_600
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))


def _realistic_batchnorm(model: nn.Module, size: int) -> None:
    """Random affine parameters, then running statistics measured on a batch, so no channel is trivial."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=g))
    model.eval()


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_folding_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = build_model(name)
    _realistic_batchnorm(model, 224)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.running_var.std() > 0 and m.running_mean.abs().max() > 0 for m in bns)
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert expected.std() > 1e-2  # a live network
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4
    assert count_parameters(folded) == count_parameters(model) - sum(m.num_features for m in bns)


def test_folding_an_unknown_batchnorm_is_an_error():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="BatchNorm"):
        fold_batchnorm(model)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [None, 97])
def test_analytic_count_equals_hook_count(name, size):
    analytic = flop_breakdown(name, size)
    model = meta_model(name)
    measured = measure_flops(model, size or model.spec.variant.resolution)
    assert measured == analytic
    flops, macs = analytic
    assert tuple(flops) == CATEGORIES
    assert flops["conv"] + flops["fc"] == 2 * macs


def test_hooks_on_a_real_forward_count_what_the_meta_pass_counts():
    assert measure_flops(build_model("efficientnet_b0"), 224) == flop_breakdown("efficientnet_b0")


def test_b7_breakdown_is_what_the_docstring_says():
    flops, macs = flop_breakdown("efficientnet_b7")
    assert 2 * macs == 75_491_768_384  # plain 2 x MACs: 75.492 G
    assert flops == {
        "input_scale": 2_160_000, "conv": 75_486_648_384, "activation": 1_556_201_952,
        "se_pool": 122_898_720, "se_gate": 368_906_880, "residual": 75_501_216,
        "head_pool": 924_160, "fc": 5_120_000,
    }


def test_other_input_sizes_and_bad_arguments():
    native, larger = complexity("efficientnet_b0"), complexity("efficientnet_b0", 300)
    assert larger.input_size == 300
    assert larger.params_folded == native.params_folded
    assert 1.79 < larger.gflops / native.gflops < 2.0  # (300 / 224) ** 2, a bit more: odd sizes round up
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            complexity("efficientnet_b0", bad)
    with pytest.raises(UnknownModelError):
        complexity("efficientnet_b9")
