"""Where the time goes: OpenVINO's per-layer profile of effnet's engine model, one core's GEMM rate
(the compute ceiling) and the network's multiply-accumulates by kind of convolution."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from effnet import ResolvedModel
from effnet.arch import BlockKind
from effnet.bench import measure


def layer_profile(xml: Path, crops: np.ndarray, iterations: int = 3) -> dict:
    """Per layer type: ms per image with the THROUGHPUT hint (every stream busy, as in real use)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "PERF_COUNT": True})
    n = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    requests = [compiled.create_infer_request() for _ in range(n)]

    def all_requests_once() -> None:
        for r in requests:
            r.start_async({0: crops})
        for r in requests:
            r.wait()

    for _ in range(2):  # warm up
        all_requests_once()
    totals, kinds, counts = Counter(), {}, Counter()
    start = time.perf_counter()
    for _ in range(iterations):
        all_requests_once()
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


def gemm_rate(seconds: float = 3.0) -> dict[str, float]:
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


def conv_macs(resolved: ResolvedModel) -> dict[str, int]:
    """MACs at the model's input size of pointwise (1x1) convolutions, depthwise ones, the stem, the
    squeeze-excitation layers and the classifier, from the architecture table."""
    spec = resolved.spec
    h = -(-resolved.input_size // 2)  # after the stride-2 stem
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
