"""`effnet batch` speed against `effnet bench` end to end, on the same JPEG folder and engine settings.

    python benchmarks/batch_speed.py [--model efficientnet_b7] [--weights random] [--images 160] [--seconds 30]
                                     [--engines local,ray] [--shard-size 16]

Prints one JSON object: `bench` (img/s, `effnet bench --images`, steady state), and per engine the steady-state
img/s of the batch job (from its first written shard to its last, so model loading and Ray start-up are
reported apart as `startup_s`) and the ratios the issue asks for: local / bench >= 0.95, ray / local >= 0.9.
Ray runs a local Ray for the job; on a shared machine run it inside a private network namespace:
    unshare -n -p -f --mount-proc bash -c 'ip link set lo up; python benchmarks/batch_speed.py'
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_folder(folder: Path, count: int) -> None:
    """`count` distinct JPEGs cut from scikit-image's photos (as in the tests), a few hundred KB each."""
    import numpy as np
    import skimage.data as data
    from PIL import Image

    photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), np.stack([data.camera()] * 3, -1)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        arr = photos[i % len(photos)][..., :3]
        h, w = arr.shape[:2]
        top, left = (i * 7) % (h // 4), (i * 11) % (w // 4)
        Image.fromarray(np.ascontiguousarray(arr[top:, left:])).save(folder / f"img{i:05d}.jpg", quality=92)


def bench(args: argparse.Namespace, folder: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "effnet.cli", "bench", "--model", args.model, "--weights", args.weights,
                          "--backend", args.backend, "--images", str(folder), "--seconds", str(args.seconds),
                          "--json"], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["throughput_ips"])


def batch(args: argparse.Namespace, folder: Path, engine: str) -> dict:
    from effnet.batch import run_batch

    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = run_batch([folder], out, model=args.model, weights=args.weights, backend=args.backend,
                            engine=engine, shard_size=args.shard_size, batch_size=args.batch_size,
                            on_rows=lambda n: stamps.append((time.perf_counter(), n)))
    total = time.perf_counter() - start
    steady = (sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])) if len(stamps) > 2 else float("nan")
    return {"img_s": round(steady, 3), "startup_s": round(stamps[0][0] - start, 2) if stamps else None,
            "total_s": round(total, 2), "classified": summary.classified, "failed": summary.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b7")
    parser.add_argument("--weights", default="random", help="random: no download; speed does not depend on them")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--engines", default="local,ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_folder(folder, args.images)
        result = {"model": args.model, "images": args.images, "bench_img_s": round(bench(args, folder), 3)}
        for engine in args.engines.split(","):
            result[engine] = batch(args, folder, engine)
        if "local" in result:
            result["local_over_bench"] = round(result["local"]["img_s"] / result["bench_img_s"], 3)
        if "local" in result and "ray" in result:
            result["ray_over_local"] = round(result["ray"]["img_s"] / result["local"]["img_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
