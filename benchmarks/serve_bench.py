"""effnet serve under load, side by side with calling Classifier directly, in one run.

For each protocol (HTTP binary, gRPC) and client count: JPEG inputs (BYTES, decoded server-side with the card's
pipeline) sent by tritonclient for a fixed time; throughput, p50/p99 latency, errors, and the mean batch the
server formed. The baseline is Classifier on the same JPEG bytes in this process: end-to-end throughput
(classify_iter, decode threads + engine) and one-at-a-time latency. `--noop` swaps the engine for a stand-in
that returns at once, which measures the server's own overhead.

    python benchmarks/serve_bench.py --model efficientnet_b7 --weights random --backend openvino --clients 1,8 --rounds 3
    python benchmarks/serve_bench.py --model efficientnet_lite0 --backend torch --noop --seconds 5

Issue 10's targets: at 8 clients >= 0.95x Classifier's end-to-end throughput with zero errors; at 1 client a
median within 15 ms of calling Classifier; batches > 1 under concurrency.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

# A stand-in engine that answers at once (what is left is the server's own cost); the child scripts here
# and in serve_peers.py paste this source, as they run in fresh interpreters.
NOOP_ENGINE = """
import numpy as np

class NoopEngine:
    name, precision, device, torch_module = "noop", "fp32", "cpu", None
    def settings(self):
        return {}
    def predict(self, crops):
        return np.full((len(crops), 1000), 1e-3, np.float32)
"""

SCRIPT = NOOP_ENGINE + """
import json, sys
from effnet import Classifier
from effnet.serve import ServeOptions, serve

args = json.loads(sys.argv[1])
classifier = Classifier(args.pop("model"), "random", backend=NoopEngine())
sys.exit(serve([classifier], ServeOptions(**args)))
"""


def photos(n: int) -> list[bytes]:
    """Real photos (scikit-image's), as JPEG bytes, repeated to n."""
    import skimage.data as data

    arrays = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a[..., :3]).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


def start_server(args) -> tuple[subprocess.Popen, str, str]:
    common = {"max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms,
              "max_queue_size": 1024}
    if args.noop:
        cmd = [sys.executable, "-c", SCRIPT, json.dumps({"model": args.model, "http_port": 0, "grpc_port": 0,
                                                         **common})]
    else:
        cmd = [sys.executable, "-m", "effnet.cli", "serve", "--model", args.model, "--weights", args.weights,
               "--backend", args.backend, "--http-port", "0", "--grpc-port", "0",
               "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
               "--max-queue-size", "1024"]
        if args.precision:
            cmd += ["--precision", args.precision]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("effnet serve: ready") or time.monotonic() > deadline:
            break
    text = "".join(lines)
    if "ready" not in text:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit("server did not start:\n" + text)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    http = re.search(r"HTTP on http://([0-9.:]+)", text).group(1)
    grpc = re.search(r"gRPC on ([0-9.:]+)", text).group(1)
    return proc, http, grpc


def triton_client(protocol: str, url: str):
    if protocol == "http":
        import tritonclient.http as th

        return th.InferenceServerClient(url, network_timeout=300)
    import tritonclient.grpc as tg

    return tg.InferenceServerClient(url)


def infer_jpeg(client, protocol: str, model: str, data: bytes) -> None:
    """One JPEG as a BYTES input, `prob` back (binary over HTTP, raw over gRPC)."""
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    inp = tc.InferInput("data", [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=object), **({"binary_data": True} if protocol == "http" else {}))
    out = [tc.InferRequestedOutput("prob", **({"binary_data": True} if protocol == "http" else {}))]
    client.infer(model, [inp], outputs=out).as_numpy("prob")


def closed_loop(connect, send, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own connection (`connect()`, closed after), sending one request after
    another (`send(connection, k)`, k counting across clients; True: answered) for `seconds`. Throughput,
    p50/p99 latency (ms) of the answered ones, and the count of the rest, errors included."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(first: int) -> None:
        connection = connect()
        try:
            i = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    ok = send(connection, first + i * clients)
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1
                i += 1
        finally:
            connection.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 600)
    elapsed = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors[0],
            "throughput": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


def drive(protocol: str, url: str, model: str, images: list[bytes], clients: int, seconds: float) -> dict:
    def send(client, k: int) -> bool:
        infer_jpeg(client, protocol, model, images[k % len(images)])
        return True

    return {"protocol": protocol, **closed_loop(lambda: triton_client(protocol, url), send, clients, seconds)}


def load_baseline(args):
    from effnet import Classifier

    c = Classifier(args.model, args.weights, backend=args.backend, precision=args.precision,
                   batch_size=args.max_batch_size)
    list(c.classify_iter(photos(args.max_batch_size)))  # warm up
    return c


def baseline(c, args, images: list[bytes]) -> dict:
    """Classifier in this process on the same JPEG bytes: end-to-end throughput and one-at-a-time latency."""
    t0 = time.perf_counter()
    n = 0
    stop = time.monotonic() + args.seconds
    while time.monotonic() < stop:
        n += sum(1 for _ in c.classify_iter(images))
    throughput = n / (time.perf_counter() - t0)
    lat = []
    stop = time.monotonic() + min(args.seconds, 10)
    while time.monotonic() < stop or len(lat) < 3:
        t = time.perf_counter()
        c.probabilities([images[len(lat) % len(images)]])
        lat.append((time.perf_counter() - t) * 1000)
    return {"throughput": throughput, "p50_ms": float(np.median(lat)), "describe": c.describe()}


def paired_latency(c, urls: dict[str, str], model: str, images: list[bytes], count: int) -> dict:
    """One client at a time, the paths taking turns image by image (Classifier directly, then each protocol),
    so that the host's drift falls on all of them alike; the median of the per-image differences."""
    clients = {protocol: triton_client(protocol, url) for protocol, url in urls.items()}
    times: dict[str, list[float]] = {"direct": [], **{k: [] for k in urls}}
    for i in range(count):
        data = images[i % len(images)]
        t = time.perf_counter()
        c.probabilities([data])
        times["direct"].append((time.perf_counter() - t) * 1000)
        for protocol, client in clients.items():
            t = time.perf_counter()
            infer_jpeg(client, protocol, model, data)
            times[protocol].append((time.perf_counter() - t) * 1000)
    for client in clients.values():
        client.close()
    direct = np.asarray(times["direct"])
    return {"count": count, "direct_p50_ms": float(np.median(direct)),
            **{f"{k}_p50_ms": float(np.median(times[k])) for k in urls},
            **{f"{k}_minus_direct_ms": float(np.median(np.asarray(times[k]) - direct)) for k in urls}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_b7")
    p.add_argument("--weights", default="random")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default=None)
    p.add_argument("--clients", default="1,8")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=2)
    p.add_argument("--noop", action="store_true", help="a stand-in engine that returns at once: server overhead only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--paired", type=int, default=0,
                   help="then N images one at a time, Classifier and each protocol taking turns (latency)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of (Classifier, then every row); ratios are taken within each round")
    args = p.parse_args()
    images = photos(64)
    direct = None if args.noop else load_baseline(args)
    proc, http, grpc = start_server(args)
    rounds: list[dict] = []
    try:
        for _ in range(max(1, args.rounds)):
            # The host's speed drifts by 10 % within minutes: each round measures Classifier directly next to
            # the server's rows, and each row is compared with its own round's Classifier.
            base = None if args.noop else baseline(direct, args, images)
            rows = []
            for protocol in args.protocols.split(","):
                for clients in (int(c) for c in args.clients.split(",")):
                    url = http if protocol == "http" else grpc
                    drive(protocol, url, args.model, images, clients, 2)  # warm up
                    row = drive(protocol, url, args.model, images, clients, args.seconds)
                    if base:
                        row["vs_classifier"] = row["throughput"] / base["throughput"]
                        row["p50_minus_direct_ms"] = row["p50_ms"] - base["p50_ms"]
                    rows.append(row)
            rounds.append({"baseline": base, "rows": rows})
        paired = None
        if args.paired and direct is not None:
            urls = {k: v for k, v in (("http", http), ("grpc", grpc)) if k in args.protocols.split(",")}
            paired = paired_latency(direct, urls, args.model, images, args.paired)
        import urllib.request

        stats = json.load(urllib.request.urlopen(f"http://{http}/v2/models/{args.model}/stats"))["model_stats"][0]
        mean_batch = stats["inference_count"] / max(1, stats["execution_count"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    if args.json:
        print(json.dumps({"rounds": rounds, "paired": paired, "mean_batch": mean_batch, "exit": proc.returncode}))
        return 0
    engine = "noop stand-in" if args.noop else f"{direct.describe()['backend']} {direct.describe()['precision']}"
    print(f"{args.model}, {engine}, JPEG inputs, {args.seconds:g} s per row, {len(rounds)} round(s), "
          f"{os.cpu_count()} CPUs")
    for k, r in enumerate(rounds, 1):
        if r["baseline"]:
            print(f"round {k}: Classifier directly {r['baseline']['throughput']:.2f} img/s end to end, "
                  f"one image {r['baseline']['p50_ms']:.1f} ms (p50)")
    print("| protocol | clients | img/s (median) | vs Classifier, per round | median | p50 ms | p50 - direct, "
          "per round | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, first in enumerate(rounds[0]["rows"]):
        same = [r["rows"][i] for r in rounds]
        med = lambda key: float(np.median([x[key] for x in same]))  # noqa: E731
        ratios = " / ".join(f"{x['vs_classifier']:.2f}" for x in same) if not args.noop else "-"
        deltas = " / ".join(f"{x['p50_minus_direct_ms']:+.0f}" for x in same) if not args.noop else "-"
        ratio = f"{med('vs_classifier'):.2f}x" if not args.noop else "-"
        print(f"| {first['protocol']} | {first['clients']} | {med('throughput'):.2f} | {ratios} | {ratio} | "
              f"{med('p50_ms'):.1f} | {deltas} | {med('p99_ms'):.1f} | {sum(x['errors'] for x in same)} |")
    if paired:
        print(f"one client, {paired['count']} images with Classifier and the protocols taking turns: direct p50 "
              f"{paired['direct_p50_ms']:.1f} ms; " + "; ".join(
                  f"{k} p50 {paired[k + '_p50_ms']:.1f} ms, median per-image difference "
                  f"{paired[k + '_minus_direct_ms']:+.1f} ms" for k in ("http", "grpc") if k + "_p50_ms" in paired))
    print(f"mean batch formed by the server: {mean_batch:.2f}; server exit status after SIGTERM: {proc.returncode}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
