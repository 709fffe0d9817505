"""What one Grad-CAM explanation costs for EfficientNet-B7 at 600x600 on this CPU.

    python benchmarks/explain_cost.py [--repeats 3]

Random weights (speed does not depend on their values, and B7's real weights need the network): one
warm-up, then the median of `--repeats` calls of effnet.explain.explain on a 800x600 photo-sized input,
so decoding aside, everything an explanation does is timed (crop, forward, head gradient, map to photo,
overlay). If Captum is installed, its LayerGradCam on the same crop is timed too, for comparison.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

import effnet
from effnet.explain import explain
from effnet.registry import weights_entry


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (Linux), else 'unknown'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = effnet.create_model("efficientnet_b7", weights=None)
    config = weights_entry("efficientnet_b7").preprocess
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})")
    seconds = median_seconds(lambda: explain(model, config, photo, target=967), args.repeats)
    print(f"effnet explain, B7 at {config.input_size}x{config.input_size}: {seconds:.2f} s per explanation "
          f"(median of {args.repeats} after a warm-up)")
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        return
    from effnet.decode import center_crop
    from effnet.preprocessing import normalize

    batch = torch.from_numpy(normalize(center_crop(photo, config), config)[np.newaxis])
    seconds = median_seconds(lambda: LayerGradCam(model, model.act2).attribute(batch, target=967), args.repeats)
    print(f"Captum LayerGradCam (map at feature resolution only): {seconds:.2f} s")


if __name__ == "__main__":
    main()
