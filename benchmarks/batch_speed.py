"""`effnet batch` speed against `effnet bench` end to end, on the same JPEGs and engine settings.

    python benchmarks/batch_speed.py [--model efficientnet_b7] [--weights random] [--images 96] [--seconds 30]
                                     [--engines local,ray] [--shard-size 16] [--batch-size 8] [--rounds 1]
                                     [--workers N] [--cpus-per-worker N]

Method: each engine runs `effnet batch` as a fresh process (as a user runs it) on two jobs, the first N
images and all 2N (`--images N`, a fresh output folder each time), after one untimed warm-up job (engine
files built and cached, the OS file cache warm). Each process pays the same fixed cost (Python and engine
imports, Ray start-up and actor creation, model loading and compiling; with --weights random, building
the engine model too, as random weights are never cached), so the difference of the two wall
times is the time of N more images:

    img/s     = N / (T_2N - T_N)      the marginal (steady-state) throughput, fixed costs cancelled
    startup_s = T_N - N / img/s       the fixed cost of one run (= 2 T_N - T_2N)

With `--rounds R` each round runs `effnet bench`, then each engine's pair, the engines taking turns and
every order flipping from round to round (N first, then 2N first), so that a drift in what the host gives
this VM falls on every engine and size alike; img/s is R N / sum(T_2N - T_N), and the ratios are the
medians of the ratios within each round. Timing from the first written shard
to the last (what this script did before) does not work for Ray: its actors answer many images before the
driver writes the first shard, so that work counted as start-up. `bench` is `effnet bench --images`
on all 2N files (steady state, its own warm-up excluded).

Prints one JSON object: `bench_img_s`, per engine `img_s`, `startup_s`, the wall times and per-round rates
(and a `note` when N more images took under 10 s: start-up varies by a second or two, so raise --images),
and the ratios the issue asks for: `local_over_bench` (>= 0.95) and `ray_over_local` (>= 0.9).
B7 at about 5 img/s: the default N = 96 gives about 19 s per pair; more `--rounds` average the noise down.
`--engines ray` starts a local Ray for each job (`--workers`, `--cpus-per-worker` as for `effnet batch`);
on a shared machine run it inside a private network and PID namespace:
    unshare -n -p -f --mount-proc bash -c 'ip link set lo up; python benchmarks/batch_speed.py'
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_folder(folder: Path, count: int) -> list[Path]:
    """`count` distinct JPEGs cut from scikit-image's photos (as in the tests), a few hundred KB each."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), np.stack([data.camera()] * 3, -1)]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        arr = photos[i % len(photos)][..., :3]
        h, w = arr.shape[:2]
        top, left = (i * 7) % (h // 4), (i * 11) % (w // 4)
        out.append(folder / f"img{i:05d}.jpg")
        Image.fromarray(np.ascontiguousarray(arr[top:, left:])).save(out[-1], quality=92)
    return out


def bench(args: argparse.Namespace, folder: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "effnet.cli", "bench", "--model", args.model, "--weights", args.weights,
                          "--backend", args.backend, "--images", str(folder), "--seconds", str(args.seconds),
                          "--json"], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["throughput_ips"])


def run_job(args: argparse.Namespace, listing: Path, count: int, engine: str, scratch: Path) -> float:
    """Wall time of one `effnet batch` process over `listing` into a fresh folder; checks every image got
    its answer (a job that failed fast must not pass for a fast one)."""
    import pyarrow.dataset as pads

    out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    cmd = [sys.executable, "-m", "effnet.cli", "batch", str(listing), "--output", str(out), "--model", args.model,
           "--weights", args.weights, "--backend", args.backend, "--engine", engine,
           "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size)]
    if engine == "ray":
        cmd += [f"--{k}={v}" for k, v in (("workers", args.workers), ("cpus-per-worker", args.cpus_per_worker)) if v]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"effnet batch failed ({proc.returncode}): {proc.stderr[-3000:]}")
    table = pads.dataset(out, format="parquet").to_table(columns=["error"])
    if table.num_rows != count or table.column("error").null_count != count:
        raise SystemExit(f"{out}: {table.num_rows} rows, expected {count} answers")
    return elapsed


def summarize(n: int, pairs: list[tuple[float, float]]) -> dict:
    """One engine's figures from its (T_N, T_2N) pairs."""
    extra = sum(t2 - t1 for t1, t2 in pairs)
    t_n = sum(t1 for t1, _ in pairs) / len(pairs)
    rate = len(pairs) * n / extra if extra > 0 else None  # None: N is too small for this engine (raise --images)
    out = {}
    if extra / len(pairs) < 10:  # start-up varies by a second or two from run to run
        out["note"] = "N more images took under 10 s: start-up jitter is a large part of it; raise --images"
    return {**out, "img_s": round(rate, 3) if rate else None, "startup_s": round(t_n - n / rate, 2) if rate else None,
            "t_n_s": [round(t1, 2) for t1, _ in pairs], "t_2n_s": [round(t2, 2) for _, t2 in pairs],
            "per_round_img_s": [round(n / (t2 - t1), 3) if t2 > t1 else None for t1, t2 in pairs],
            "whole_job_img_s": round(2 * n * len(pairs) / sum(t2 for _, t2 in pairs), 3)}


def measure(args: argparse.Namespace, lists: dict[str, Path], engines: list[str], scratch: Path,
            images: Path) -> dict:
    """Rounds of: `effnet bench`, then each engine's pair of jobs. The engines take turns within a round (and
    the order flips every round), so a change in what the host gives this VM falls on all of them alike;
    the ratios are taken within each round."""
    n = args.images
    for engine in engines:
        run_job(args, lists["warm"], min(n, 2 * args.batch_size), engine, scratch)  # untimed: caches, files
    pairs: dict[str, list[tuple[float, float]]] = {e: [] for e in engines}
    benches = []
    for r in range(args.rounds):
        benches.append(bench(args, images))
        for engine in (engines if r % 2 == 0 else engines[::-1]):
            order = ("n", "2n") if r % 2 == 0 else ("2n", "n")
            times = {size: run_job(args, lists[size], n if size == "n" else 2 * n, engine, scratch) for size in order}
            pairs[engine].append((times["n"], times["2n"]))
    result = {"bench_img_s": round(sum(benches) / len(benches), 3), "bench_per_round_img_s": [round(b, 3) for b in benches]}
    for engine in engines:
        result[engine] = summarize(n, pairs[engine])
    rate = {e: [n / (t2 - t1) if t2 > t1 else None for t1, t2 in pairs[e]] for e in engines}
    for key, top, bottom in (("local_over_bench", rate.get("local"), benches),
                             ("ray_over_local", rate.get("ray"), rate.get("local"))):
        if top and bottom:
            per_round = [a / b for a, b in zip(top, bottom) if a and b]
            result[key + "_per_round"] = [round(x, 3) for x in per_round]
            result[key] = round(statistics.median(per_round), 3) if per_round else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b7")
    parser.add_argument("--weights", default="random", help="random: no download; speed does not depend on them")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--images", type=int, default=96, help="N: the jobs have N and 2N images")
    parser.add_argument("--seconds", type=float, default=30, help="effnet bench's measuring time")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of jobs per engine (order alternates)")
    parser.add_argument("--workers", type=int, default=None, help="ray: actors (default: effnet's)")
    parser.add_argument("--cpus-per-worker", type=int, default=None, help="ray: CPUs per actor (default 1)")
    parser.add_argument("--engines", default="local,ray")
    args = parser.parse_args()
    if args.images < 1 or args.rounds < 1:
        parser.error("--images and --rounds must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        files = make_folder(scratch / "images", 2 * args.images)
        lists = {}
        for name, part in (("warm", files[-min(args.images, 2 * args.batch_size):]), ("n", files[:args.images]),
                           ("2n", files)):
            lists[name] = scratch / f"{name}.txt"
            lists[name].write_text("".join(f"{f}\n" for f in part))
        result = {"model": args.model, "images": [args.images, 2 * args.images], "rounds": args.rounds,
                  "method": "marginal: N / (T_2N - T_N) over fresh effnet batch processes, engines in turns",
                  **measure(args, lists, args.engines.split(","), scratch, scratch / "images")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
