"""EfficientNet-B7 at 600x600 on this CPU, every engine on the same weights, in one run -> RESULTS.md.

    python benchmarks/run_benchmarks.py [--seconds 20] [--rounds 2] [--images DIR] [--weights PATH]
                                        [--model NAME] [--out PATH] [--json PATH] [--skip KEYS]

Measures the rows of speed/configurations.py in interleaved rounds (so that load from other processes
spreads over all of them): PyTorch eager fp32 (geffnet, in fresh processes, with glibc's malloc as it
comes and keeping memory), ONNX Runtime fp32, OpenVINO fp32, OpenVINO's two anchors on the card's IR
(LATENCY: compile_model(ir, "CPU") run sync; THROUGHPUT: benchmark_app's default, an AsyncInferQueue
with every request busy), effnet end to end from JPEGs and engine only (bf16), and effnet's int8 engine.
Then the rows the targets compare again beside one busy process (the usual state of a shared 2-core
machine), a per-layer profile (OpenVINO PERF_COUNT, grouped by layer type), the bf16 GEMM rate of one
core (the compute limit), and top-1 agreement with fp32. Without --weights, the model gets seeded
random weights whose BatchNorm statistics are calibrated on real photos (speed does not depend on the
values; no network is needed), saved as a file so that its sha256 names them. Everything cached lives
under effnet's cache dir ("bench" and "exports"). About 6 minutes with the defaults once the exports
are cached (the first run builds them, B7's int8 model included).

A quick check of every code path (B0 is about 20x cheaper than B7; keep RESULTS.md out of it):

    python benchmarks/run_benchmarks.py --model efficientnet_b0 --seconds 0.5 --rounds 1 \
        --contended-seconds 0.5 --wait-quiet 0 --out /tmp/results-smoke.md --json /tmp/results-smoke.json

RESULTS.md is rewritten above the line `<!-- notes -->`; what is below it (hand-written notes) is kept.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from speed.agreement import (
    measure_agreement,  # speed/ beside this script: run it as a script
)
from speed.configurations import CONTENDED_KEYS, build_suite
from speed.inputs import (
    calibrated_random_weights,
    calibrated_weights_file,
    prepare_inputs,
)
from speed.layer_profile import conv_macs, gemm_rate, layer_profile
from speed.report import write_results
from speed.runner import log, run_beside_busy_process, run_rounds
from speed.torch_reference import geffnet_model

import effnet
from effnet.backends.openvino_graph import engine_ir
from effnet.engines import resolve_engine
from effnet.machine import load_average, machine_info
from effnet.weights import cache_dir

HERE = Path(__file__).resolve().parent
SKIPPABLE = ("torch", "ort", "ov_fp32", "int8", "contended", "profile", "agreement")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_b7",
                    help="the family member to measure (default efficientnet_b7, the card's; efficientnet_b0 "
                         "for a quick check)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration (all rounds)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--images", help="folder of JPEGs for the end-to-end row (default: scikit-image photos)")
    ap.add_argument("--weights", help="weights file (default: seeded random, BN calibrated on photos)")
    ap.add_argument("--batch", type=int, default=8, help="effnet's images per backend call (default 8)")
    ap.add_argument("--contended-seconds", type=float, default=10.0,
                    help="measured seconds per configuration beside one busy process (all rounds)")
    ap.add_argument("--skip", default="", help=f"comma-separated keys to skip: {','.join(SKIPPABLE)}")
    ap.add_argument("--wait-quiet", type=float, default=15.0, metavar="S",
                    help="before each measurement, wait up to S s for other processes to leave the CPU (0: never)")
    ap.add_argument("--out", "--output", dest="out", default=str(HERE / "RESULTS.md"),
                    help="the Markdown report (default benchmarks/RESULTS.md)")
    ap.add_argument("--json", help="also write all figures as JSON here")
    args = ap.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(SKIPPABLE)
    if unknown:
        ap.error(f"--skip: unknown key(s) {', '.join(sorted(unknown))}; choose from {', '.join(SKIPPABLE)}")
    if args.seconds <= 0 or args.rounds < 1 or args.contended_seconds <= 0:
        ap.error("--seconds and --contended-seconds must be > 0 and --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.time()

    load_before = load_average()
    work = cache_dir() / "bench"
    # The model looked up once; without --weights its random init is calibrated and saved first, so
    # that every engine below runs one weights file with one sha256.
    random_init = effnet.resolve(args.model, None)
    inputs = prepare_inputs(random_init.preprocess, args.images, work)
    weights = Path(args.weights) if args.weights else calibrated_random_weights(
        random_init, inputs.crops, calibrated_weights_file(work, args.model))
    resolved = effnet.resolve(args.model, weights)
    log(f"{resolved.name} at {resolved.input_size}, weights {weights} (sha256 {resolved.weights_id})")

    suite = build_suite(resolved, inputs, batch=args.batch, skip=skip, work=work)
    run_rounds(suite.configurations, args.seconds, args.rounds, wait=args.wait_quiet)
    results: dict = {
        "model": resolved.name, "input_size": resolved.input_size, "batch": args.batch,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "seconds": args.seconds, "rounds": args.rounds,
        "wait_quiet": args.wait_quiet, "weights_sha256": resolved.weights_sha256,
        "random_weights": not args.weights,
        "weights": "given file" if args.weights else "seeded random, BatchNorm calibrated on photos",
        "configs": [c.summary() for c in suite.configurations]}

    if "contended" not in skip:
        shared = [c.fresh() for c in suite.configurations if c.key in CONTENDED_KEYS]
        run_beside_busy_process(shared, args.contended_seconds, args.rounds)
        results["contended"] = [c.summary() for c in shared]
        results["contended_seconds"] = args.contended_seconds
    if "profile" not in skip:
        log("profile and GEMM rate")
        bf16 = resolve_engine("openvino", "bf16", device="cpu")  # the fp32 engine IR, computed in bf16
        results["profile"] = layer_profile(engine_ir(resolved, bf16, batch=1), inputs.crops[:1])
        results["gemm_gflops"] = gemm_rate()
        results["macs"] = conv_macs(resolved)
    if "agreement" not in skip:
        log("agreement")
        reference = geffnet_model(resolved.name, weights) if "torch" not in skip else None
        results["agreement"] = measure_agreement(resolved, inputs, suite.effnet_bf16, suite.effnet_int8, reference)
    results["load_before"], results["load_after"] = load_before, load_average()
    results["machine"] = machine_info()
    results["wall_minutes"] = (time.time() - t_start) / 60

    write_results(Path(args.out), results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    for c in results["configs"]:
        print(f"{c['label']:68s} {c['throughput_ips']:6.2f} img/s  p50 {c['latency_ms']['p50']:7.0f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
