"""effnet serve against peers wrapping the same effnet engine, measured side by side in one run: KServe's Python
ModelServer and LitServe (each from PyPI). JPEG inputs (base64 JSON for all three, plus effnet's raw binary
post), 1 and N concurrent clients, throughput and p50/p99 latency; `--noop` swaps the engine for a stand-in that
returns at once on every server, which measures each server's own overhead.

The peers are not effnet dependencies: install them apart (they pull dozens of packages), e.g.
    pip install --target /tmp/effnet-peers kserve litserve
    EFFNET_PEERS_PATH=/tmp/effnet-peers python benchmarks/serve_peers.py --model efficientnet_lite0 --noop
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import site
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from serve_bench import NOOP_ENGINE, closed_loop, photos  # noqa: E402

COMMON = NOOP_ENGINE + """
import json, sys, base64, io
from effnet import Classifier
cfg = json.loads(sys.argv[1])

def make():
    if cfg["noop"]:
        return Classifier(cfg["model"], "random", backend=NoopEngine())
    return Classifier(cfg["model"], cfg["weights"], backend=cfg["backend"])
"""

EFFNET = COMMON + """
from effnet.serve import ServeOptions, serve
sys.exit(serve([make()], ServeOptions(http_port=cfg["port"], grpc_port=None, max_batch_size=cfg["batch"],
                                      max_queue_delay_ms=cfg["delay_ms"], max_queue_size=1024)))
"""

KSERVE = COMMON + """
import kserve
from kserve import InferResponse, InferOutput

class EffnetModel(kserve.Model):
    def load(self):
        self.classifier = make()
        self.ready = True
    async def predict(self, payload, headers=None, response_headers=None):
        data = payload.inputs[0].data
        crops = np.stack([self.classifier.crop(base64.b64decode(d)) for d in data])
        probs = self.classifier.backend.predict(crops)
        out = InferOutput("prob", list(probs.shape), "FP32")
        out.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(payload.id or "0", self.name, infer_outputs=[out])

m = EffnetModel(cfg["model"])
m.load()
print("effnet-peer: ready", flush=True)
kserve.ModelServer(http_port=cfg["port"], grpc_port=cfg["grpc_port"], workers=1).start([m])
"""

LITSERVE = COMMON + """
import litserve as ls

class EffnetAPI(ls.LitAPI):
    def setup(self, device):
        self.classifier = make()
    def decode_request(self, request):
        return self.classifier.crop(base64.b64decode(request["image"]))
    def batch(self, inputs):
        return np.stack(inputs)
    def predict(self, crops):
        return self.classifier.backend.predict(crops)
    def unbatch(self, output):
        return list(output)
    def encode_response(self, probs):
        return {"prob": probs.tolist()}

if __name__ == "__main__":
    ls.LitServer(EffnetAPI(max_batch_size=cfg["batch"], batch_timeout=cfg["delay_ms"] / 1000), accelerator="cpu",
                 workers_per_device=1).run(port=cfg["port"], generate_client_file=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, cfg: dict, ready_url: str) -> subprocess.Popen:
    env = dict(os.environ)
    extra = os.environ.get("EFFNET_PEERS_PATH")
    if extra:
        env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), extra])
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"effnet-peer-{cfg['port']}.log"), "w")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"effnet-peer-{cfg['port']}.py")
    with open(path, "w") as f:  # a file, not -c: LitServe's spawned workers re-import __main__ by path
        f.write(script)
    proc = subprocess.Popen([sys.executable, path, json.dumps(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    import httpx

    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            try:  # its workers may outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"server did not become ready; see {log.name}")


def drive(send, clients: int, seconds: float) -> dict:
    import httpx

    return closed_loop(lambda: httpx.Client(timeout=120), send, clients, seconds)


def v2_json(base: str, model: str, b64: list[str]):
    """An Open Inference Protocol request with the JPEG as a base64 BYTES element in JSON."""
    def send(c, i: int) -> bool:
        body = {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": [b64[i % len(b64)]]}]}
        return c.post(f"{base}/v2/models/{model}/infer", json=body).status_code == 200
    return send


def raw_post(base: str, model: str, images: list[bytes]):
    """Triton's raw binary form: the JPEG file as the body."""
    def send(c, i: int) -> bool:
        return c.post(f"{base}/v2/models/{model}/infer", content=images[i % len(images)],
                      headers={"Inference-Header-Content-Length": "0"}).status_code == 200
    return send


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_b7")
    p.add_argument("--weights", default="random")
    p.add_argument("--backend", default="auto")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=2)
    p.add_argument("--servers", default="effnet,kserve,litserve")
    p.add_argument("--noop", action="store_true")
    args = p.parse_args()
    images = photos(64)
    b64 = [base64.b64encode(j).decode() for j in images]
    m = args.model
    rows = []
    for name in args.servers.split(","):
        port = free_port()
        cfg = {"model": m, "weights": args.weights, "backend": args.backend, "noop": args.noop, "port": port,
               "grpc_port": free_port(), "batch": args.max_batch_size, "delay_ms": args.max_queue_delay_ms}
        base = f"http://127.0.0.1:{port}"
        if name == "effnet":
            proc = start(EFFNET, cfg, base + "/v2/health/ready")
            senders = {"effnet raw binary": raw_post(base, m, images), "effnet base64 JSON": v2_json(base, m, b64)}
        elif name == "kserve":
            proc = start(KSERVE, cfg, base + "/v2/health/ready")
            senders = {"KServe ModelServer v2 JSON": v2_json(base, m, b64)}
        else:
            proc = start(LITSERVE, cfg, base + "/health")
            senders = {"LitServe JSON": lambda c, i, base=base: c.post(f"{base}/predict", json={"image": b64[i % 64]}
                                                                        ).status_code == 200}
        try:
            for label, send in senders.items():
                for clients in (int(c) for c in args.clients.split(",")):
                    drive(send, clients, 1.5)  # warm up
                    rows.append((label, clients, drive(send, clients, args.seconds)))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    engine = "no-compute stand-in engine" if args.noop else f"{args.backend} engine, {args.weights} weights"
    print(f"{m}, {engine}, JPEG inputs, {args.seconds:g} s per row, {os.cpu_count()} CPUs, "
          f"max batch {args.max_batch_size}, queue delay {args.max_queue_delay_ms:g} ms")
    print("| server | clients | img/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for label, clients, r in rows:
        print(f"| {label} | {clients} | {r['throughput']:.1f} | {r['p50_ms'] or float('nan'):.1f} | {r['p99_ms'] or float('nan'):.1f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
