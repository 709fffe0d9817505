"""Export: the card's ONNX and OpenVINO IR contracts, parity with PyTorch, static pads, INT8 agreement.

Parity runs on random weights given realistic BatchNorm statistics and a confident classifier (see
`realistic`), so probabilities are peaked and any graph mistake shows; INT8 runs on the real Lite0
weights and real photos. One B7 export (the card's model) goes through the whole pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from effnet.calibration import calibration_set
from effnet.cli import main
from effnet.errors import EffnetError
from effnet.export import ParityError, export_model, export_onnx
from effnet.export.metadata import describe
from effnet.export.onnx import computed_pads, run_onnx
from effnet.backends.openvino_graph import gates_into_projections, spatial_means_as_avg_pools
from effnet.export.openvino import bgr_nchw, convert_onnx, rt_info, run_ir, save_ir
from effnet.export.pipeline import check_parity, verification_crops
from effnet.export.verify import FP32_TOLERANCE, compare, example_crops, normalized_nchw, torch_probabilities
from effnet.model import EfficientNet, build_model
from effnet.decode import center_crop, load_image
from effnet.resolved import resolve

import onnx  # noqa: E402  (the [all] extra: these tests are meant to run)
import openvino as ov  # noqa: E402

B0 = "efficientnet_b0"
LITE0 = "efficientnet_lite0"


def _config(name: str):
    return resolve(name, None).preprocess


def crops_for(name: str, photos: dict[str, np.ndarray]) -> np.ndarray:
    config = _config(name)
    return np.stack([center_crop(load_image(a), config) for a in photos.values()])


def realistic(model: EfficientNet, crops: np.ndarray, name: str, seed: int = 0) -> EfficientNet:
    """Random weights that behave like trained ones: BatchNorm statistics measured on real photos (one
    train-mode pass, cumulative averages) and classifier logits scaled to a spread of ~6, so softmax
    is peaked and a wrong channel order or normalisation moves probabilities by far more than 1e-4."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    x = torch.from_numpy(normalized_nchw(np.concatenate([crops, crops[:, :, ::-1]]), _config(name)))
    with torch.no_grad():
        model.train()
        model.forward_features(x)
        model.eval()
        model.classifier.weight *= 6.0 / model(x).std().item()
    return model


@pytest.fixture(scope="module")
def b0_crops(photo_arrays) -> np.ndarray:
    return crops_for(B0, photo_arrays)


@pytest.fixture(scope="module")
def b0(b0_crops) -> EfficientNet:
    return realistic(build_model(B0, 224), b0_crops, B0)


@pytest.fixture(scope="module")
def b0_onnx(b0, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "b0.onnx"
    return export_onnx(b0, path, batch=None, metadata=describe(resolve(B0, None), color="RGB", folded=False))


@pytest.fixture(scope="module")
def b0_ir(b0_onnx, tmp_path_factory):
    config = _config(B0)
    model = convert_onnx(b0_onnx, config, describe(resolve(B0, None), color="BGR", folded=True))
    return save_ir(model, tmp_path_factory.mktemp("ir") / "b0.xml")


def test_realistic_weights_make_confident_predictions(b0, b0_crops):
    # The parity tests below are only meaningful if probabilities are far from uniform.
    probs = torch_probabilities(b0, b0_crops, _config(B0))
    assert probs.max(1).min() > 0.05


# ---- ONNX ---------------------------------------------------------------------------------------

def test_onnx_contract(b0_onnx):
    proto = onnx.load(str(b0_onnx))
    onnx.checker.check_model(proto, full_check=True)
    (data,), (prob,) = proto.graph.input, proto.graph.output
    assert data.name == "data" and prob.name == "prob"
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(data) == ["batch", 3, 224, 224] and dims(prob) == ["batch", 1000]
    assert proto.graph.node[-1].op_type == "Softmax"  # `prob` are probabilities, not logits
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == B0 and meta["color_order"] == "RGB"
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13


def test_onnx_pads_are_constants(b0, b0_onnx, tmp_path):
    proto = onnx.load(str(b0_onnx))
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    # B0 at 224: the stem and four stride-2 depthwise convs pad asymmetrically; everything else is
    # symmetric and lives inside Conv's own `pads` attribute.
    assert len(pads) == 5
    assert computed_pads(proto) == []
    assert not any(n.op_type in ("Shape", "ConstantOfShape", "Slice", "Concat") for n in proto.graph.node)
    # The check itself can fail: the exporter's raw output computes its pads through a subgraph.
    raw = tmp_path / "raw.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(b0, (torch.zeros(1, 3, 224, 224),), str(raw), dynamo=False, opset_version=17)
    assert len(computed_pads(onnx.load(str(raw)))) == 5


def test_onnx_matches_pytorch(b0, b0_onnx, b0_crops):
    assert not b0.training  # exporting must not leave the model in training mode
    config = _config(B0)
    reference = torch_probabilities(b0, b0_crops, config)
    agreement = compare(reference, run_onnx(b0_onnx, normalized_nchw(b0_crops, config)))
    assert agreement.max_abs_diff < 1e-4 and agreement.top1 == 1.0


def test_export_needs_static_pads(tmp_path):
    with pytest.raises(ValueError, match="set_input_size"):
        export_onnx(build_model(B0), tmp_path / "x.onnx")


# ---- OpenVINO IR --------------------------------------------------------------------------------

def test_ir_contract(b0_ir):
    model = ov.Core().read_model(b0_ir)
    (data,), (prob,) = model.inputs, model.outputs
    assert data.get_names() == {"data"} and prob.get_names() == {"prob"}
    assert str(data.get_partial_shape()) == "[?,3,224,224]" and data.get_element_type() == ov.Type.f32
    assert str(prob.get_partial_shape()) == "[?,1000]"
    assert rt_info(model, "model_name") == B0
    assert rt_info(model, "color_order") == "BGR"
    assert rt_info(model, "precision") == "fp32"
    import json
    assert len(json.loads(rt_info(model, "labels"))) == 1000
    assert json.loads(rt_info(model, "mean_values")) == [123.675, 116.28, 103.53]
    weights = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant" and op.get_byte_size() > 4096]
    assert weights and all(op.get_element_type() == ov.Type.f32 for op in weights)  # fp32 by default


def test_ir_takes_raw_bgr_with_mean_and_scale_folded(b0, b0_ir, b0_crops):
    reference = torch_probabilities(b0, b0_crops, _config(B0))
    agreement = compare(reference, run_ir(b0_ir, bgr_nchw(b0_crops)))
    assert agreement.max_abs_diff < 1e-4 and agreement.top1 == 1.0
    # Fed RGB, or normalised, it is wrong: the order and the folding are real.
    rgb = np.ascontiguousarray(b0_crops.transpose(0, 3, 1, 2), dtype=np.float32)
    assert np.abs(run_ir(b0_ir, rgb) - reference).max() > 1e-2
    normalised = normalized_nchw(b0_crops[..., ::-1], _config(B0))
    assert np.abs(run_ir(b0_ir, normalised) - reference).max() > 1e-2


def test_engine_pools_compute_the_same_means(b0_ir, b0_crops):
    model = ov.Core().read_model(b0_ir)
    means = [op for op in model.get_ordered_ops() if op.get_type_name() == "ReduceMean"]
    assert len(means) == 17  # B0's 16 squeeze-excitation pools (kept dims) and the head's (dropped)
    assert spatial_means_as_avg_pools(model) == 17
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "ReduceMean" not in kinds and kinds.count("AvgPool") == 17
    assert str(model.output(0).get_partial_shape()) == "[?,1000]"
    data = bgr_nchw(b0_crops)
    pooled, reduced = run_ir(model, data), run_ir(b0_ir, data)
    assert np.abs(pooled - reduced).max() < 1e-4  # the parity bound; f32 sums in another order give ~1e-5
    assert np.array_equal(pooled.argmax(1), reduced.argmax(1))


def test_engine_gates_fold_into_projections(b0_ir, b0_crops):
    model = ov.Core().read_model(b0_ir)
    assert gates_into_projections(model) == 0  # a batch axis of any size: one gate per image, no folding
    model.reshape({0: [1, 3, 224, 224]})
    gated = [op for op in model.get_ordered_ops() if op.get_type_name() == "Multiply"
             and any(i.get_node().get_type_name() == "Convolution" for i in op.output(0).get_target_inputs())]
    assert len(gated) == 16  # B0's squeeze-excitation gates, each read by a 1x1 projection
    assert gates_into_projections(model) == 5  # the maps with >= 8 pixels per output channel: 112, 56 and 28 px
    assert gates_into_projections(model, min_pixels_per_output=0) == 11  # the rest
    runtime_weights = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"
                       and op.input_value(1).get_node().get_type_name() == "Multiply"]
    assert len(runtime_weights) == 16
    data = bgr_nchw(b0_crops)
    folded = np.concatenate([run_ir(model, data[i:i + 1]) for i in range(len(data))])
    reference = run_ir(b0_ir, data)
    assert np.abs(folded - reference).max() < 1e-4 and np.array_equal(folded.argmax(1), reference.argmax(1))


def test_fp16_ir_stores_half_weights(b0_onnx, b0_ir, b0, b0_crops, tmp_path):
    xml = save_ir(convert_onnx(b0_onnx, _config(B0)), tmp_path / "b0-fp16.xml", "fp16")
    assert xml.with_suffix(".bin").stat().st_size < 0.6 * b0_ir.with_suffix(".bin").stat().st_size
    model = ov.Core().read_model(xml)
    assert any(op.get_element_type() == ov.Type.f16 for op in model.get_ordered_ops() if op.get_type_name() == "Constant")
    reference = torch_probabilities(b0, b0_crops, _config(B0))
    assert compare(reference, run_ir(xml, bgr_nchw(b0_crops))).top1 == 1.0


# ---- the pipeline (`effnet export`) ------------------------------------------------------------

@pytest.fixture(scope="module")
def b0_weights(b0, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "b0-realistic.pth"
    torch.save(b0.state_dict(), path)
    return path


def test_export_model_writes_and_verifies_both(b0_weights, tmp_path):
    results = export_model(resolve(B0, b0_weights), output=tmp_path, formats=("onnx", "openvino"), batch=1)
    assert [(r.format, r.precision, r.path.name) for r in results] == [
        ("onnx", "fp32", f"{B0}.onnx"), ("openvino", "fp32", f"{B0}.xml")]
    for r in results:
        assert r.path.exists() and r.parity is not None and r.parity.max_abs_diff < 1e-4
    assert str(ov.Core().read_model(results[1].path).inputs[0].get_partial_shape()) == "[1,3,224,224]"


def test_export_fails_when_parity_breaks(b0_weights, tmp_path, monkeypatch):
    import effnet.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_onnx", lambda path, x: np.roll(run_onnx(path, x), 1, axis=1))
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_model(resolve(B0, b0_weights), output=tmp_path, formats=("onnx",))


@pytest.mark.parametrize("formats, precision, calibration, message", [
    (("onnx",), "int8", None, "needs formats=openvino"),
    (("openvino",), "int8", None, "needs calibration=DIR"),
    (("tflite",), "fp32", None, "unknown formats=tflite"),
])
def test_export_refuses_impossible_requests(formats, precision, calibration, message, tmp_path):
    with pytest.raises(EffnetError, match=message):
        export_model(resolve(B0, None), output=tmp_path, formats=formats, precision=precision, calibration=calibration)


def test_cli_export(lite0_weights, photo_files, tmp_path, capsys):
    photos = next(iter(photo_files.values())).parent
    assert main(["export", "--model", LITE0, "--weights", str(lite0_weights), "--format", "onnx,openvino",
                 "--batch", "dynamic", "--output", str(tmp_path), "--images", str(photos)]) == 0
    out = capsys.readouterr().out
    assert f"onnx fp32: {tmp_path / (LITE0 + '.onnx')}" in out and "max |dp|" in out
    assert f"{4 + len(photo_files)} images" in out  # the bundled photo's views and the folder's photos
    assert str(ov.Core().read_model(tmp_path / f"{LITE0}.xml").inputs[0].get_partial_shape()) == "[?,3,224,224]"
    assert main(["export", "--model", LITE0, "--weights", str(lite0_weights), "--format", "openvino",
                 "--precision", "int8", "--output", str(tmp_path)]) == 2  # a usage mistake
    assert "--calibration" in capsys.readouterr().err


def test_b7_export_matches_pytorch(photo_arrays, tmp_path):
    """The card's model, once: static pads at 600, ONNX and IR both within 1e-4 of PyTorch."""
    name = "efficientnet_b7"
    crops = crops_for(name, {k: photo_arrays[k] for k in ("coffee", "chelsea")})
    model = realistic(build_model(name, 600), crops, name)
    weights = tmp_path / "b7-realistic.pth"
    torch.save(model.state_dict(), weights)
    del model
    results = export_model(resolve(name, weights), output=tmp_path / "out", formats=("onnx", "openvino"))
    for r in results:
        print(f"B7 {r.format}: {r.parity}")
        assert r.parity.max_abs_diff < 1e-4 and r.parity.top1 == 1.0
    proto = onnx.load(str(results[0].path), load_external_data=False)
    assert computed_pads(proto) == [] and sum(n.op_type == "Pad" for n in proto.graph.node) >= 1
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 600, 600]


# ---- INT8 -----------------------------------------------------------------------------------------

def augmented_views(photos: dict[str, np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """Random crops (45-100 % of each side) and mirror images of real photos."""
    rng = np.random.default_rng(seed)
    base = list(photos.values())
    views = []
    for i in range(count):
        a = base[i % len(base)]
        h, w = a.shape[:2]
        s = rng.uniform(0.45, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        view = a[y:y + ch, x:x + cw]
        views.append(np.ascontiguousarray(view[:, ::-1] if rng.random() < 0.5 else view))
    return views


@pytest.fixture(scope="module")
def calibration_dir(photo_arrays, tmp_path_factory):
    import skimage.data as data

    more = dict(photo_arrays, motorcycle=data.stereo_motorcycle()[0], hubble=data.hubble_deep_field(),
                ihc=data.immunohistochemistry(), coins=np.stack([data.coins()] * 3, -1))
    folder = tmp_path_factory.mktemp("calibration")
    for i, view in enumerate(augmented_views(more, 100, seed=0)):
        Image.fromarray(view).save(folder / f"{i:03d}.jpg", quality=92)
    return folder


def test_int8_lite0_agrees_with_fp32(lite0_weights, calibration_dir, photo_arrays, tmp_path):
    (result,) = export_model(resolve(LITE0, lite0_weights), output=tmp_path, formats=("openvino",), precision="int8",
                             calibration=calibration_set(calibration_dir))
    print(f"Lite0 int8 vs fp32, held-out views: {result.parity}")
    assert result.path.name == f"{LITE0}-int8.xml" and result.parity.count == 4 + 20  # example views + held out
    assert result.parity.top1 >= 0.6 and result.parity.top5 >= 0.9
    model = ov.Core().read_model(result.path)
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) > 20
    # What the quantizer measured on the 20 held-out photos travels in the file.
    assert rt_info(model, "int8_held_out") == "20" and 0.6 <= float(rt_info(model, "int8_top1_agreement")) <= 1
    assert rt_info(model, "int8_float_layers") == "1"  # the stem, kept in float by the recipe
    # The whole photos, which it never saw whole: fp32's answer wherever fp32 is not torn between two
    # classes (chelsea is tiger cat 0.39 vs Egyptian cat 0.36: a coin flip at any precision).
    config = _config(LITE0)
    crops = crops_for(LITE0, photo_arrays)
    from effnet.api import create_model
    reference = torch_probabilities(create_model(LITE0, lite0_weights), crops, config)
    probs = run_ir(result.path, bgr_nchw(crops))
    print(f"Lite0 int8 vs fp32, whole photos: {compare(reference, probs)}")
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    assert clear.sum() >= 3 and np.array_equal(probs[clear].argmax(1), reference[clear].argmax(1))
    assert list(probs.argmax(1)[:2]) == [967, 872]  # coffee: espresso, camera: tripod


# ---- verification on real photos --------------------------------------------------------------------

def test_the_example_photo_ships_inside_the_package():
    """An installed effnet verifies exports on it: it is package data, the same file as examples/."""
    import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    from effnet.data import example_photo

    root = Path(__file__).resolve().parents[1]
    photo = example_photo()
    assert photo.read_bytes() == (root / "examples" / "espresso.jpg").read_bytes()
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["effnet"]
    assert any(fnmatch.fnmatch(f"data/{photo.name}", pattern) for pattern in patterns)


def old_synthetic_crops(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """What export used to verify on without calibration images: blurred colour fields plus grain."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32)
        out.append(np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def exploding_lite0(lite0_weights, photo_arrays, tmp_path_factory):
    """The real Lite0 ImageNet weights, changed into a valid checkpoint that is exact on photos and
    explodes on synthetic patterns: two head channels that ReLU6 keeps at exactly 0 on every photo
    but that light up on colour fields and grain feed two classes with weights ~1e8, tied on the
    first pattern. There the logits are ~1e8 and which class wins depends on fp32 rounding."""
    from effnet.api import create_model

    config = _config(LITE0)
    model = create_model(LITE0, lite0_weights)
    photos = np.concatenate([example_crops(config), crops_for(LITE0, photo_arrays)])
    photos = np.concatenate([photos, photos[:, :, ::-1]])
    synthetic = old_synthetic_crops(config.input_size)

    def head(crops):  # pre-activation of the head, per channel, at every pixel
        with torch.no_grad():
            x = torch.from_numpy(normalized_nchw(crops, config))
            return model.bn2(model.conv_head(model.blocks(model.act1(model.bn1(model.conv_stem(x))))))

    on_photos, on_synthetic = head(photos).amax((0, 2, 3)), head(synthetic).amax((0, 2, 3))
    channels = [int(c) for c in (on_synthetic - on_photos).argsort(descending=True)[:2]]
    with torch.no_grad():
        for c in channels:
            model.bn2.bias[c] -= float(on_photos[c]) + 0.5  # every photo pixel <= -0.5: ReLU6 gives 0
        features = model.forward_features(torch.from_numpy(normalized_nchw(synthetic, config))).mean((2, 3))
        model.classifier.weight[:, channels] = 0
        for cls, c in zip((1, 2), channels):
            model.classifier.weight[cls, c] = 1e8 / float(features[0, c])
    path = tmp_path_factory.mktemp("exploding") / "lite0-exploding.pth"
    torch.save(model.state_dict(), path)
    return path, features[:, channels].min().item()


def test_export_of_a_model_exploding_on_synthetic_inputs_is_verified_on_photos(exploding_lite0, lite0_weights,
                                                                                tmp_path):
    path, lit = exploding_lite0
    assert lit > 0  # both channels are on for every synthetic pattern...
    resolved = resolve(LITE0, path)
    config = resolved.preprocess
    model = resolved.create_model(input_size=config.input_size)
    synthetic = old_synthetic_crops(config.input_size)
    with torch.no_grad():
        logits = model(torch.from_numpy(normalized_nchw(synthetic, config)))
    assert logits.abs().max() > 1e7  # ...where the logits explode

    (result,) = export_model(resolved, output=tmp_path, formats=("onnx",))  # the new check accepts it
    assert result.parity.count == 4 and result.parity.max_abs_diff <= FP32_TOLERANCE
    assert result.parity.top1 == 1.0

    # The old check, same file, its synthetic patterns: fp32 rounding at 1e8 decides the tie, refused.
    old = compare(torch_probabilities(model, synthetic, config),
                  run_onnx(result.path, normalized_nchw(synthetic, config)))
    print(f"exploding Lite0 on the old synthetic patterns: {old}")
    assert old.max_abs_diff > 1e-4

    # On photos it is still the trained network: the espresso photo's views are espresso, as with the
    # real weights (the two channels it lost carried little there).
    from effnet.api import create_model

    photos = verification_crops(config)
    real = torch_probabilities(create_model(LITE0, lite0_weights), photos, config)
    exported = run_onnx(result.path, normalized_nchw(photos, config))
    assert list(exported.argmax(1)) == list(real.argmax(1)) == [967] * 4


def test_a_broken_export_is_still_refused_on_photos(lite0_weights, tmp_path):
    """An export that reads BGR where PyTorch reads RGB (stem weights' colour channels swapped)."""
    resolved = resolve(LITE0, lite0_weights)
    config = resolved.preprocess
    model = resolved.create_model(input_size=config.input_size)
    photos = verification_crops(config)
    reference = torch_probabilities(model, photos, config)
    with torch.no_grad():
        model.conv_stem.weight.copy_(model.conv_stem.weight.flip(1))
    broken = export_onnx(model, tmp_path / "bgr.onnx", batch=None,
                         metadata=describe(resolved, color="RGB", folded=False))
    with pytest.raises(ParityError, match=r"differs from PyTorch by .* on 4 real photos; the export is wrong"):
        check_parity(reference, run_onnx(broken, normalized_nchw(photos, config)), "fp32", "onnx")


def test_relative_difference_is_reported_and_nan_is_a_difference():
    reference = np.array([[0.9, 0.1, 0.0], [0.4, 0.3, 0.3]], np.float32)
    candidate = reference + np.array([[-2e-5, 2e-5, 0], [3e-5, -3e-5, 0]], np.float32)
    agreement = compare(reference, candidate)
    assert agreement.max_abs_diff == pytest.approx(3e-5, rel=1e-3)
    assert agreement.max_rel_diff == pytest.approx(3e-5 / 0.4, rel=1e-3)
    assert agreement.max_rel_diff >= agreement.max_abs_diff
    nan = compare(reference, np.full_like(reference, np.nan))
    assert nan.max_abs_diff == nan.max_rel_diff == float("inf")  # a NaN output never passes (NaN > tol is False)
    with pytest.raises(ParityError):
        check_parity(reference, np.full_like(reference, np.nan), "fp32", "onnx")


def test_export_images_folder_must_exist(tmp_path):
    with pytest.raises(EffnetError, match="images=.*not a folder"):
        export_model(resolve(B0, None), output=tmp_path, images=tmp_path / "nowhere")


def test_int8_accuracy_control_puts_layers_back_in_float_until_held_out_photos_agree(lite0_weights, calibration_dir):
    """NNCF's accuracy control with top-1 agreement with fp32 as its metric: where plain quantization changes
    a held-out photo's answer, max_drop=0 puts layers back in float until none changes."""
    from effnet.export.build import build_ir
    from effnet.export.quantize import float_layers_kept, load_crops, quantize_int8

    resolved = resolve(LITE0, lite0_weights)
    files = sorted(calibration_dir.iterdir())
    crops = load_crops(files[:60], resolved.preprocess, progress=False)
    held_out = load_crops(files[60:76], resolved.preprocess, progress=False)
    ir = build_ir(resolved, "fp32")
    plain, plain_quality = quantize_int8(ir, crops, held_out=held_out, asymmetric_activations=False)
    assert plain_quality.count == 16 and plain_quality.top1 < 1  # plain int8 moves some answers here
    controlled, quality = quantize_int8(ir, crops, held_out=held_out, max_drop=0.0, asymmetric_activations=False)
    print(f"Lite0 int8 on 16 held-out views: plain {plain_quality.top1:.1%} ({float_layers_kept(plain)} float "
          f"layers), accuracy control {quality.top1:.1%} ({float_layers_kept(controlled)} float layers)")
    assert quality.top1 == 1.0 and float_layers_kept(controlled) > float_layers_kept(plain) == 1
    reference = run_ir(ir, bgr_nchw(held_out))
    assert compare(reference, run_ir(controlled, bgr_nchw(held_out))) == quality  # the figure is the model's
    with pytest.raises(EffnetError, match="needs held-out photos"):
        quantize_int8(ir, crops, max_drop=0.01)
