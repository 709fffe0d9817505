"""Grad-CAM: class-discriminative, aligned with the photo, sensitive to the weights, exact about targets."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.errors import EffnetError
from effnet.explain import explain, gradcam, resolve_target
from effnet.labels import imagenet_labels
from effnet.decode import center_crop, load_image
from effnet.preprocessing import normalize

ESPRESSO = 967
CATS = (281, 282, 285)  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def config():
    """Lite0's preprocessing (the one place that knows where it is looked up)."""
    from effnet.registry import weights_entry

    return weights_entry("efficientnet_lite0").preprocess


@pytest.fixture(scope="module")
def model(lite0_weights):
    return effnet.create_model("efficientnet_lite0", weights=lite0_weights)


def composite(photo_arrays, cup_left: bool) -> Image.Image:
    """Coffee cup and cat, square-cropped, side by side on grey, both inside the central square seen."""
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))  # Lite0 sees the middle 392x392 (224 of 256)
    squares = []
    for name in ("coffee", "chelsea"):
        photo = photo_arrays[name]
        side = min(photo.shape[:2])
        top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
        square = Image.fromarray(photo[top:top + side, left:left + side])
        squares.append(square.resize((190, 190), Image.Resampling.BICUBIC))
    for square, x in zip(squares if cup_left else squares[::-1], (32, 226)):
        canvas.paste(square, (x, 129))
    return canvas


def left_share(heatmap: np.ndarray) -> float:
    half = heatmap.shape[1] // 2
    return float(heatmap[:, :half].sum() / heatmap.sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties), with numpy only."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.empty(x.size)
        order[x.argsort(kind="stable")] = np.arange(x.size)
        _, inverse = np.unique(x, return_inverse=True)
        return (np.bincount(inverse, order) / np.bincount(inverse))[inverse]
    return float(np.corrcoef(ranks(a.ravel()), ranks(b.ravel()))[0, 1])


@pytest.mark.parametrize("cup_left", [True, False])
def test_maps_are_class_discriminative_and_aligned(model, config, photo_arrays, cup_left):
    image = composite(photo_arrays, cup_left)
    cup = explain(model, config, image, "espresso")
    cat_class = max(CATS, key=lambda i: explain(model, config, image, i).probability)
    cat = explain(model, config, image, cat_class)
    assert cup.index == ESPRESSO and cup.label == "espresso"
    cup_side, cat_side = (left_share(cup.heatmap), 1 - left_share(cat.heatmap))
    if not cup_left:
        cup_side, cat_side = 1 - cup_side, 1 - cat_side
    assert cup_side > 0.7, f"espresso map: only {cup_side:.2f} of its mass on the cup's half"
    assert cat_side > 0.7, f"{cat.label} map: only {cat_side:.2f} of its mass on the cat's half"
    for result in (cup, cat):
        assert result.heatmap.shape == (448, 448) and result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0 and result.heatmap.max() == pytest.approx(1.0)


def test_heatmap_is_on_the_photo_grid_and_zero_outside_the_crop(model, config, photo_files):
    image = load_image(photo_files["coffee"])  # 600x400: the crop cuts the sides
    result = explain(model, config, image)
    assert result.index == ESPRESSO and 0 < result.probability <= 1
    assert result.heatmap.shape == (image.height, image.width)
    # The crop's left edge in the photo: resized width int(256 * 600 / 400) = 384, offset round(160 / 2) = 80.
    resized_w = int(config.resize_size * image.width / image.height)
    left = round((resized_w - config.input_size) / 2) * image.width / resized_w
    right = left + config.input_size * image.width / resized_w
    assert not result.heatmap[:, : int(np.floor(left))].any()
    assert not result.heatmap[:, int(np.ceil(right)):].any()
    assert result.heatmap[:, int(np.ceil(left)): int(right)].max() == pytest.approx(1.0)


@pytest.mark.parametrize("randomise", [("classifier",), ("classifier", "conv_head", "bn2")])
def test_randomised_top_layers_change_the_map(model, config, photo_arrays, randomise):
    """Adebayo et al. 2018: a map that survives randomising the weights explains nothing about them.

    Compared at feature resolution (the map's own 7x7 cells: upsampling only adds smoothness). One
    random draw correlates anywhere in about -0.6..0.8 with 49 cells, so the mean over six draws is
    tested: measured -0.03 (classifier) and 0.22 (head too) here; a map that ignored the weights scores 1.
    """
    image = composite(photo_arrays, cup_left=True)
    batch = torch.from_numpy(normalize(center_crop(image, config), config)[np.newaxis])
    trained, _ = gradcam(model, batch, ESPRESSO)
    correlations = []
    for seed in range(6):
        torch.manual_seed(seed)
        randomised = copy.deepcopy(model)
        for name in randomise:
            layer = getattr(randomised, name)
            layer.reset_parameters()
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.reset_running_stats()
        cam, _ = gradcam(randomised, batch, ESPRESSO)
        correlations.append(spearman(trained, cam) if cam.std() > 0 else 0.0)  # all-zero map: nothing kept
    assert np.mean(correlations) < 0.4, correlations
    again, _ = gradcam(model, batch, ESPRESSO)
    assert spearman(trained, again) == pytest.approx(1.0)


def test_target_by_label_or_index_and_clear_errors(model, config, photo_arrays):
    image = Image.fromarray(photo_arrays["coffee"])
    by_index = explain(model, config, image, ESPRESSO)
    for target in ("Espresso", " espresso ", "967"):
        same = explain(model, config, image, target)
        assert same.index == ESPRESSO and np.array_equal(same.heatmap, by_index.heatmap)
    assert resolve_target("TIGER CAT") == 282 and resolve_target(None) is None
    for bad, words in (("flux capacitor", "unknown label"), (1000, "out of range"), (-1, "out of range"),
                       ("crane", "134, 517")):
        with pytest.raises(EffnetError, match=words) as info:
            resolve_target(bad, imagenet_labels())
        assert "\n" not in str(info.value)


def test_overlay_is_the_photo_size_in_rgb(model, config, photo_arrays):
    image = Image.fromarray(photo_arrays["chelsea"])
    result = explain(model, config, image)
    assert result.overlay.mode == "RGB" and result.overlay.size == image.size
    assert result.label == imagenet_labels()[result.index]


def test_leaves_the_model_as_it_was(config, lite0_weights, photo_arrays):
    model = effnet.create_model("efficientnet_lite0", weights=lite0_weights)
    model.train()
    model.classifier.requires_grad_(False)
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    running_mean = model.bn2.running_mean.clone()
    image = Image.fromarray(photo_arrays["coffee"])
    with torch.inference_mode():
        result = explain(model, config, image, ESPRESSO)
    assert result.heatmap.max() == pytest.approx(1.0)
    assert flags == {name: m.training for name, m in model.named_modules()}
    assert grads == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(running_mean, model.bn2.running_mean)  # evaluated in eval mode: BN stats untouched
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
    # The train flag did not leak into the computation: an eval-mode model gives the same map.
    assert np.array_equal(result.heatmap, explain(model.eval(), config, image, ESPRESSO).heatmap)


# ---- through the Classifier and the CLI ---------------------------------------------------------

def test_classifier_explains_with_the_torch_model_whatever_engine_classifies(lite0_weights, photo_files):
    classifier = effnet.Classifier("efficientnet_lite0", lite0_weights, backend="openvino")
    explanation = classifier.explain(photo_files["coffee"])
    assert (explanation.index, explanation.label) == (ESPRESSO, "espresso")
    assert explanation.probability == pytest.approx(classifier.classify(photo_files["coffee"])[0][0].probability,
                                                    abs=0.02)  # torch fp32 vs OpenVINO's own precision
    top = classifier.explain_top(photo_files["coffee"], 3)
    assert [e.index for e in top] == [p.index for p in classifier.classify(photo_files["coffee"], top=3)[0]]
    assert np.array_equal(top[0].heatmap, explanation.heatmap)
    assert classifier.explain(photo_files["coffee"], "cup").index == 968


def test_cli_explain_writes_overlays_of_the_photos_size(lite0_weights, photo_files, tmp_path, capsys):
    from effnet.cli import main

    out = tmp_path / "maps"
    args = ["explain", "--model", "efficientnet_lite0", "--weights", str(lite0_weights), "--output", str(out)]
    assert main([*args, "--top", "2", "--json", str(photo_files["coffee"]), str(photo_files["camera"])]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in lines] == [str(photo_files["coffee"])] * 2 + [str(photo_files["camera"])] * 2
    assert lines[0]["index"] == ESPRESSO and lines[0]["prob"] > lines[1]["prob"]
    assert len(lines) == 4 and all(Path(r["file"]).parent == out for r in lines)
    for record in lines:
        with Image.open(record["file"]) as png, Image.open(record["image"]) as photo:
            assert png.format == "PNG" and png.size == photo.size
    # A bad file is one line and the others go on; a bad --class is refused before any work.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo_files["coffee"].read_bytes()[:1500])
    assert main([*args, str(broken), str(photo_files["camera"])]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "tripod" in captured.out and "Traceback" not in captured.err
    assert main([*args, "--class", "no such thing", str(photo_files["camera"])]) == 2  # a usage mistake
    assert "unknown label 'no such thing'" in capsys.readouterr().err
    file_as_output = tmp_path / "file"
    file_as_output.write_text("x")
    assert main([*args[:-1], str(file_as_output), str(photo_files["camera"])]) == 1
    assert "is a file" in capsys.readouterr().err


# ---- bounded cost: large photos, stopping, targets that are not indices --------------------------

def test_a_large_photo_is_drawn_scaled_down_and_costs_memory_of_the_overlay_not_the_photo(model, config,
                                                                                         photo_arrays):
    """A 15 MP photo: heatmap and overlay on a grid of at most OVERLAY_MAX_PIXELS (aspect kept), and the
    arrays the explanation allocates past decoding stay a small multiple of that grid (the full-size float
    maps of a 15 MP photo took about 1 GB)."""
    import tracemalloc

    from effnet.explain import OVERLAY_MAX_PIXELS

    small = Image.fromarray(photo_arrays["coffee"])  # 600x400
    large = small.resize((4800, 3200), Image.Resampling.BICUBIC)
    explain(model, config, small, ESPRESSO)  # anything built on first use is built outside the measurement
    tracemalloc.start()
    try:
        result = explain(model, config, large, ESPRESSO)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    height, width = result.heatmap.shape
    assert result.overlay.size == (width, height) and width * height <= OVERLAY_MAX_PIXELS
    assert width * height > 0.99 * OVERLAY_MAX_PIXELS and abs(width / height - 1.5) < 0.01
    assert peak < 10 * 4 * OVERLAY_MAX_PIXELS, f"{peak / 2**20:.0f} MiB allocated for a {large.size} photo"
    # The same evidence in the same place as on the photo at its own size.
    reference = explain(model, config, small, ESPRESSO).heatmap
    shrunk = np.asarray(Image.fromarray(result.heatmap).resize(small.size, Image.Resampling.BILINEAR))
    assert np.corrcoef(reference.ravel(), shrunk.ravel())[0, 1] > 0.95


def test_check_stop_ends_an_explanation_between_its_steps(lite0_weights, photo_files):
    """Called after decoding, after the forward pass, before each class map and each overlay: what it
    raises ends the explanation there, and nothing is computed after it."""
    explainer = effnet.Classifier("efficientnet_lite0", lite0_weights, backend="torch").explainer
    calls: list[int] = []
    top = explainer.explain_top(photo_files["coffee"], 3, check_stop=lambda: calls.append(1))
    assert len(top) == 3 and len(calls) >= 1 + 2 * 3

    class Stop(Exception):
        pass

    def stop_at_third() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop
    calls.clear()
    with pytest.raises(Stop):
        explainer.explain_top(photo_files["coffee"], 3, check_stop=stop_at_third)
    assert len(calls) == 3  # not called again: the explanation ended where it raised


def test_only_ascii_digits_are_an_index_and_huge_ones_are_refused_by_their_length():
    labels = imagenet_labels()
    assert resolve_target("0967", labels) == ESPRESSO and resolve_target("0" * 5000 + "7", labels) == 7
    for bad, words in (("²", "unknown label '²'"), ("٣", "unknown label '٣'"), ("¹²", "unknown label"),
                       ("9" * 5000, r"class index 999999\.\.\.999 \(5000 digits\) is out of range: give 0\.\.999"),
                       ("1" + "0" * 4000, "out of range"), ("1000", "class index 1000 is out of range")):
        with pytest.raises(EffnetError, match=words) as info:
            resolve_target(bad, labels)
        assert len(str(info.value)) < 120


def test_cli_explain_draws_a_large_photo_scaled_down_and_refuses_a_non_ascii_class(lite0_weights, photo_arrays,
                                                                                    tmp_path, capsys):
    from effnet.cli import main
    from effnet.explain import OVERLAY_MAX_PIXELS

    photo = tmp_path / "large.jpg"
    Image.fromarray(photo_arrays["coffee"]).resize((3000, 2000), Image.Resampling.BICUBIC).save(photo, quality=90)
    args = ["explain", "--model", "efficientnet_lite0", "--weights", str(lite0_weights),
            "--output", str(tmp_path / "maps"), "--json"]
    assert main([*args, str(photo)]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with Image.open(record["file"]) as png:
        assert png.size[0] * png.size[1] <= OVERLAY_MAX_PIXELS and abs(png.size[0] / png.size[1] - 1.5) < 0.01
    assert main([*args, "--class", "²", str(photo)]) == 2  # a usage mistake
    assert "unknown label '²'" in capsys.readouterr().err
