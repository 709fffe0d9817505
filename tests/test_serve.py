"""`effnet serve` against a live server on 127.0.0.1 with the real clients: tritonclient HTTP and gRPC, curl-like
raw posts, base64 JSON; limits, malformed input, memory, metrics, token and CORS.

Every server is a subprocess in its own process group, stopped by that group; every loop is bounded.
"""
from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http  # noqa: F401  (the [test] extra: these tests are meant to run)
from PIL import Image  # noqa: E402

MODEL = "efficientnet_lite0"
LIMIT = 8 << 20


class ServerProcess:
    """`effnet serve` (or a Python script that embeds it) as a child process in its own session: `lines` is what
    it says on stderr (status lines, notices), `out` what it prints on stdout (results only: nothing)."""

    def __init__(self, args: list[str], *, script: str | None = None, env: dict | None = None,
                 timeout: float = 120) -> None:
        cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "effnet.cli", "serve", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.out: list[str] = []
        deadline = time.monotonic() + timeout
        ready = threading.Event()

        def pump(stream, lines):
            for line in stream:
                lines.append(line.rstrip("\n"))
                if lines is self.lines and line.startswith("effnet serve: ready"):
                    ready.set()
        self._readers = [threading.Thread(target=pump, args=args, daemon=True)
                         for args in ((self.proc.stderr, self.lines), (self.proc.stdout, self.out))]
        for reader in self._readers:
            reader.start()
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        text = "\n".join(self.lines)
        self.http = "http://" + re.search(r"HTTP on http://([0-9.:]+)", text).group(1)
        grpc = re.search(r"gRPC on ([0-9.:]+)", text)
        self.grpc = grpc.group(1) if grpc else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def server():
    s = ServerProcess(["--model", MODEL, "--weights", "imagenet", "--backend", "torch", "--http-port", "0",
                       "--grpc-port", "0", "--max-batch-size", "8", "--max-queue-delay-ms", "20",
                       "--max-request-bytes", str(LIMIT)])
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="session")
def classifier():
    from effnet import Classifier

    return Classifier(MODEL, "imagenet", backend="torch")


@pytest.fixture(scope="module")
def jpegs(photo_arrays) -> dict[str, bytes]:
    return {name: jpeg(arr) for name, arr in photo_arrays.items()}


@pytest.fixture(scope="module")
def expected(classifier, jpegs) -> dict[str, np.ndarray]:
    return {name: classifier.probabilities([data])[0] for name, data in jpegs.items()}


def same(a: np.ndarray, b: np.ndarray) -> None:
    """Served = Classifier's: float32 rounding apart (torch's kernels differ by batch size) and the same order."""
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
    assert (np.argsort(-a)[:5] == np.argsort(-b)[:5]).all()


# ---- protocol surface ------------------------------------------------------------------------------

def test_status_lines_go_to_stderr_and_stdout_stays_empty(server):
    """stdout carries results only: `effnet serve`'s status lines are notices, on stderr (they were on stdout)."""
    assert server.out == []
    assert "effnet serve: ready" in server.lines
    assert any(line.startswith("effnet serve: HTTP on http://127.0.0.1:") for line in server.lines)


def test_health_metadata_and_errors_are_json(server):
    with httpx.Client(base_url=server.http, timeout=30) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        md = c.get("/v2").json()
        assert md["name"] == "effnet" and md["extensions"] == ["classification", "binary_tensor_data",
                                                                "schedule_policy", "model_configuration",
                                                                "statistics"]
        for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"):
            m = c.get(path).json()
            assert m["inputs"] == [{"name": "data", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
            assert m["outputs"] == [{"name": "prob", "datatype": "FP32", "shape": [-1, 1000]}]
            assert "weights_file" not in m["parameters"]
            assert c.get(path + "/ready").json() == {"name": MODEL, "ready": True}
        for method, path, status in (("GET", "/nope", 404), ("GET", "/v2/models/nope", 404),
                                     ("GET", f"/v2/models/{MODEL}/versions/7", 404),
                                     ("DELETE", "/v2", 405), ("GET", f"/v2/models/{MODEL}/infer", 405)):
            r = c.request(method, path)
            assert r.status_code == status and r.headers["content-type"] == "application/json"
            assert set(r.json()) == {"error"}


def test_tritonclient_http(server, classifier, jpegs, expected):
    import tritonclient.http as th

    url = server.http.removeprefix("http://")
    client = th.InferenceServerClient(url, concurrency=16, network_timeout=120)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["name"] == MODEL
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [3, 224, 224]
    # A tensor: the card's normalised floats, as the original model takes them.
    from effnet.preprocessing import normalize

    x = normalize(classifier.decoder.crop(jpegs["coffee"]), classifier.resolved.preprocess)[None]
    i = th.InferInput("data", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=True)
    r = client.infer(MODEL, [i], outputs=[th.InferRequestedOutput("prob", binary_data=True)])
    same(r.as_numpy("prob")[0], expected["coffee"])
    # A JPEG as BYTES with class_count, gzip both ways, and a generous timeout.
    i = th.InferInput("data", [1], "BYTES")
    i.set_data_from_numpy(np.array([jpegs["chelsea"]], dtype=object), binary_data=True)
    r = client.infer(MODEL, [i], outputs=[th.InferRequestedOutput("prob", binary_data=True, class_count=3)],
                     request_compression_algorithm="gzip", response_compression_algorithm="gzip",
                     timeout=60_000_000)
    top = [s.decode().split(":") for s in r.as_numpy("prob")[0]]
    best = int(np.argmax(expected["chelsea"]))
    assert int(top[0][1]) == best and top[0][2] == classifier.labels[best]
    assert abs(float(top[0][0]) - expected["chelsea"][best]) < 1e-5
    # 16 requests at once: batched by the server, each answer its own image's.
    names = list(jpegs) * 4
    pending = []
    for name in names[:16]:
        i = th.InferInput("data", [1], "BYTES")
        i.set_data_from_numpy(np.array([jpegs[name]], dtype=object), binary_data=True)
        pending.append(client.async_infer(MODEL, [i], outputs=[th.InferRequestedOutput("prob", binary_data=True)]))
    for name, p in zip(names, pending):
        same(p.get_result(timeout=120).as_numpy("prob")[0], expected[name])
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"]), "no batch formed under 16 concurrent requests"
    client.close()


def test_openvino_engine_served_concurrently_equals_classifier(jpegs):
    """OpenVINO takes a batch whenever one of its infer requests frees up (batches overlap): under 12 concurrent
    clients every answer is its own image's, bit for bit what `Classifier` computes on the same engine."""
    from effnet import Classifier

    classifier = Classifier(MODEL, "imagenet", backend="openvino")
    names = (list(jpegs) * 3)[:12]
    expected = {name: classifier.probabilities([jpegs[name]])[0] for name in set(names)}
    s = ServerProcess(["--model", MODEL, "--weights", "imagenet", "--backend", "openvino", "--http-port", "0",
                       "--grpc-port", "0", "--max-batch-size", "4"])
    try:
        got: dict[int, np.ndarray] = {}

        def send(k):
            c = RawClient(s.http)
            try:
                status, _, body = c.post(f"/v2/models/{MODEL}/infer", jpegs[names[k]],
                                         {"Inference-Header-Content-Length": "0"})
                assert status == 200, body
                got[k] = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32)
            finally:
                c.close()

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(names))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(got) == list(range(len(names)))
        for k, name in enumerate(names):
            np.testing.assert_array_equal(got[k], expected[name])
        stats = httpx.get(s.http + f"/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"][0]
        assert stats["inference_count"] == len(names)
    finally:
        assert s.stop() == 0


def test_raw_jpeg_post_and_base64_json(server, jpegs, expected):
    with httpx.Client(base_url=server.http, timeout=60) as c:
        r = c.post(f"/v2/models/{MODEL}/infer", content=jpegs["rocket"],
                   headers={"Inference-Header-Content-Length": "0"})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "prob" and out["shape"] == [1, 1000]
        same(np.asarray(out["data"], np.float32), expected["rocket"])
        body = {"id": "b64", "inputs": [{"name": "data", "datatype": "BYTES", "shape": [2],
                                         "data": [base64.b64encode(jpegs["coffee"]).decode(),
                                                  {"b64": base64.b64encode(jpegs["astronaut"]).decode()}]}],
                "outputs": [{"name": "prob", "parameters": {"classification": 1}}]}
        r = c.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["id"] == "b64" and answer["model_version"] == "1"
        got = [int(s.split(":")[1]) for s in answer["outputs"][0]["data"]]
        assert got == [int(np.argmax(expected["coffee"])), int(np.argmax(expected["astronaut"]))]


def test_tritonclient_grpc(server, classifier, jpegs, expected):
    import tritonclient.grpc as tg

    from effnet.serve.proto import effnet_oip_pb2  # noqa: F401 - imports beside tritonclient's `inference`

    client = tg.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_server_metadata().extensions[0] == "classification"
    assert client.get_model_metadata(MODEL).inputs[0].shape == [-1, 3, 224, 224]
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [3, 224, 224]
    from effnet.preprocessing import normalize

    x = normalize(classifier.decoder.crop(jpegs["coffee"]), classifier.resolved.preprocess)[None]
    i = tg.InferInput("data", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    same(client.infer(MODEL, [i]).as_numpy("prob")[0], expected["coffee"])
    i = tg.InferInput("data", [1], "BYTES")
    i.set_data_from_numpy(np.array([jpegs["chelsea"]], dtype=object))
    r = client.infer(MODEL, [i], outputs=[tg.InferRequestedOutput("prob", class_count=2)], timeout=60_000_000,
                     client_timeout=60)
    assert int(r.as_numpy("prob")[0][0].decode().split(":")[1]) == int(np.argmax(expected["chelsea"]))
    results, done = {}, threading.Semaphore(0)
    names = (list(jpegs) * 4)[:16]
    for k, name in enumerate(names):
        i = tg.InferInput("data", [1], "BYTES")
        i.set_data_from_numpy(np.array([jpegs[name]], dtype=object))
        client.async_infer(MODEL, [i], lambda result, error, k=k: (results.__setitem__(k, (result, error)),
                                                                     done.release()))
    for _ in names:
        assert done.acquire(timeout=120)
    for k, name in enumerate(names):
        result, error = results[k]
        assert error is None, error
        same(result.as_numpy("prob")[0], expected[name])
    with pytest.raises(tg.InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    client.close()


def test_grpc_stream_infer_answers_each_request_and_survives_a_bad_one(server, jpegs, expected):
    """tritonclient's streaming API (ModelStreamInfer): every request answered under its own id; a broken image
    is an error for that request only, and the stream goes on."""
    import queue

    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.grpc)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    names = list(jpegs) + ["broken"] + list(jpegs)
    for k, name in enumerate(names):
        i = tg.InferInput("data", [1], "BYTES")
        i.set_data_from_numpy(np.array([jpegs.get(name, b"not an image")], dtype=object))
        client.async_stream_infer(MODEL, [i], request_id=str(k))
    got, errors = {}, []
    for _ in names:
        result, error = answers.get(timeout=120)
        if error is not None:
            errors.append(str(error))
        else:
            got[int(result.get_response().id)] = result.as_numpy("prob")[0]
    client.stop_stream()
    client.close()
    assert len(errors) == 1 and "input 'data'[0]" in errors[0], errors
    assert sorted(got) == [k for k, name in enumerate(names) if name != "broken"]
    for k, probs in got.items():
        same(probs, expected[names[k]])


def test_grpc_typed_contents_as_kserve_clients_send_them(server, classifier, jpegs, expected):
    """kserve's gRPC client fills `contents` (typed fields), not raw_input_contents; answers come back typed."""
    import grpc

    from effnet.preprocessing import normalize
    from effnet.serve.proto import effnet_oip_pb2 as pb

    with grpc.insecure_channel(server.grpc, options=[("grpc.max_receive_message_length", 64 << 20),
                                                     ("grpc.max_send_message_length", 64 << 20)]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        x = normalize(classifier.decoder.crop(jpegs["rocket"]), classifier.resolved.preprocess)
        req = pb.ModelInferRequest(model_name=MODEL, id="typed")
        t = req.inputs.add(name="data", datatype="FP32", shape=[1, 3, 224, 224])
        t.contents.fp32_contents.extend(x.reshape(-1).tolist())
        resp = infer(req, timeout=60)
        assert resp.id == "typed" and not resp.raw_output_contents
        same(np.asarray(resp.outputs[0].contents.fp32_contents, np.float32), expected["rocket"])
        req = pb.ModelInferRequest(model_name=MODEL)
        t = req.inputs.add(name="data", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(jpegs["coffee"])
        out = req.outputs.add(name="prob")
        out.parameters["classification"].int64_param = 1
        resp = infer(req, timeout=60)
        assert resp.outputs[0].contents.bytes_contents[0].decode().endswith(":967:espresso")
        bad = pb.ModelInferRequest(model_name=MODEL)
        bad.inputs.add(name="data", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"not an image")
        with pytest.raises(grpc.RpcError) as info:
            infer(bad, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot read image" in info.value.details()


def test_proto_field_numbers_match_the_published_service():
    """effnet's .proto (package effnet.oip) keeps the specification's field numbers and names."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    from effnet.serve.proto import effnet_oip_pb2 as ours

    def fields(d):
        return {f.name: (f.number, f.type) for f in d.fields}

    def walk(mine, theirs, where):
        for name, value in fields(mine).items():
            assert fields(theirs)[name] == value, f"{where}.{name}"
        for nested in mine.nested_types:
            if not nested.GetOptions().map_entry:
                walk(nested, theirs.nested_types_by_name[nested.name], f"{where}.{nested.name}")

    for name, d in ours.DESCRIPTOR.message_types_by_name.items():
        reference = (service_pb2.DESCRIPTOR.message_types_by_name.get(name)
                     or model_config_pb2.DESCRIPTOR.message_types_by_name[name])
        walk(d, reference, name)
    assert ours.DESCRIPTOR.package == "effnet.oip"


# ---- limits and malformed input --------------------------------------------------------------------

def test_body_limit_is_exact(server, jpegs):
    exact = jpegs["coffee"] + b"\0" * (LIMIT - len(jpegs["coffee"]))  # trailing bytes after a JPEG's end
    with httpx.Client(base_url=server.http, timeout=60) as c:
        headers = {"Inference-Header-Content-Length": "0"}
        assert c.post(f"/v2/models/{MODEL}/infer", content=exact, headers=headers).status_code == 200
        r = c.post(f"/v2/models/{MODEL}/infer", content=exact + b"\0", headers=headers)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        bomb = gzip.compress(b"\0" * (LIMIT + 1), 9)
        r = c.post(f"/v2/models/{MODEL}/infer", content=bomb, headers={**headers, "Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["error"]


def bad_requests(jpeg_bytes: bytes, tmp: Path) -> list[tuple[dict, bytes]]:
    from helpers import png_bomb

    h = {"Content-Type": "application/json"}
    big = json.dumps({"inputs": [{"name": "data", "datatype": "FP32", "shape": [2**40, 2**40, 2**40],
                                  "data": [0]}]}).encode()
    bomb = png_bomb(tmp / "bomb.png").read_bytes()  # a header claiming 100,000 x 100,000 pixels
    raw = {"Inference-Header-Content-Length": "0"}
    return [
        (h, b"[" * 200_000 + b"]" * 200_000),
        (h, b'{"inputs": [' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"]}"),
        (h, b'{"inputs": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]'
            b']]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}'),
        (h, b"{not json"),
        (h, b""),
        ({"Inference-Header-Content-Length": "999999"}, b"{}"),
        ({"Inference-Header-Content-Length": "-5"}, b"{}"),
        ({"Inference-Header-Content-Length": "12abc"}, b"{}"),
        (h, big),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, -3, 224, 224],
                                    "data": [0]}]}).encode()),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                    "data": [0]}]}).encode()),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                        "outputs": [{"name": "prob"}] * 3}).encode()),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": ["YQ=="]}],
                        "outputs": [{"name": f"x{i}"} for i in range(3000)]}).encode()),
        (h, json.dumps({"inputs": [{"name": "other", "datatype": "BYTES", "shape": [1], "data": ["YQ=="]}]}).encode()),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [9],
                                    "data": ["YQ=="] * 9}]}).encode()),
        (h, json.dumps({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                    "parameters": {"binary_data_size": 10**15}}]}).encode()),
        (raw, jpeg_bytes[: len(jpeg_bytes) // 3]),   # truncated JPEG
        (raw, b"GIF89a this is not an image"),
        (raw, b""),
        (raw, bomb),
        ({**h, "Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00 broken gzip"),
        ({**h, "Content-Encoding": "gzip"}, gzip.compress(b"\0" * (64 << 20), 9)),  # a gzip bomb
        ({**h, "Content-Encoding": "br"}, b"{}"),
        ({"Content-Length": "abc"}, b"{}"),
        ({"Content-Length": "99999999999999999999999"}, b"{}"),
    ]


class RawClient:
    """HTTP/1.1 over one keep-alive socket, each request in one write (no Nagle stalls), headers as given
    (including lying ones that a real client library refuses to send)."""

    def __init__(self, url: str) -> None:
        import socket

        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buf = b""

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        lines = [f"POST {path} HTTP/1.1", "Host: x"] + [f"{k}: {v}" for k, v in headers.items()]
        if not any(k.lower() == "content-length" for k in headers):
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        got = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        n = int(got.get("content-length", 0))
        while len(self.buf) < n:
            self._more()
        payload, self.buf = self.buf[:n], self.buf[n:]
        return int(status_line.split()[1]), got, payload

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def test_malformed_input_is_json_4xx_and_memory_stays_flat(server, jpegs, tmp_path):
    cases = bad_requests(jpegs["coffee"], tmp_path)
    url = f"/v2/models/{MODEL}/infer"
    client = RawClient(server.http)
    with httpx.Client(base_url=server.http, timeout=30) as c:
        def send(headers, body):
            nonlocal client
            try:
                return client.post(url, body, headers)
            except (ConnectionError, OSError):  # the server may close a connection whose framing it refused
                client.close()
                client = RawClient(server.http)
                return client.post(url, body, headers)

        for headers, body in cases:
            status, got, payload = send(headers, body)
            assert 400 <= status < 500, (headers, body[:60], status, payload[:200])
            assert got["content-type"] == "application/json" and set(json.loads(payload)) == {"error"}, payload
            assert c.get("/v2/health/live").status_code == 200
        for k in range(len(cases) * 8):  # warm up allocators before measuring
            send(*cases[k % len(cases)])
        before = server.rss_mib()
        sent, started = 0, time.monotonic()
        while sent < 1000 and time.monotonic() - started < 90:
            status, _, _ = send(*cases[sent % len(cases)])
            assert 400 <= status < 500
            sent += 1
        after = server.rss_mib()
        assert sent == 1000
        assert after - before < 32, f"RSS grew {after - before:.1f} MiB over 1,000 malformed requests"
        assert c.get("/v2/health/live").status_code == 200
    client.close()


def test_metrics_count_what_clients_saw(server, jpegs):
    with httpx.Client(base_url=server.http, timeout=60) as c:
        def read():
            text = c.get("/metrics").text
            return (metric(text, "nv_inference_request_success", model=MODEL),
                    metric(text, "nv_inference_request_failure", model=MODEL),
                    metric(text, "nv_inference_count", model=MODEL), text)
        ok0, fail0, count0, text = read()
        for name in ("# TYPE nv_inference_request_success counter", "nv_inference_exec_count{",
                     "nv_inference_queue_duration_us{", "nv_inference_compute_infer_duration_us{",
                     "nv_inference_pending_request_count{", 'reason="REJECTED"'):
            assert name in text
        url = f"/v2/models/{MODEL}/infer"
        raw = {"Inference-Header-Content-Length": "0"}
        for _ in range(3):
            assert c.post(url, content=jpegs["coffee"], headers=raw).status_code == 200
        for _ in range(2):
            assert c.post(url, content=b"not an image", headers=raw).status_code == 400
        assert c.post(url, content=b"{bad", headers={"Content-Type": "application/json"}).status_code == 400
        ok1, fail1, count1, _ = read()
        assert (ok1 - ok0, fail1 - fail0, count1 - count0) == (3, 3, 3)


def test_explain_route_has_the_limits_and_errors_of_inference(server, jpegs, expected):
    with httpx.Client(base_url=server.http, timeout=120) as c:
        url = f"/v2/models/{MODEL}/explain"
        r = c.post(url, content=jpegs["coffee"])
        assert r.status_code == 200, r.text
        e = r.json()
        assert e["index"] == int(np.argmax(expected["coffee"])) and e["label"] == "espresso"
        assert e["overlay"].startswith("data:image/jpeg;base64,")
        overlay = Image.open(io.BytesIO(base64.b64decode(e["overlay"].split(",", 1)[1])))
        assert overlay.size == (600, 400)  # the photo's own size (up to 1024 px a side)
        assert c.post(url + "?target=cup", content=jpegs["coffee"]).json()["label"] == "cup"
        for body, query, status in ((b"not an image", "", 400), (b"", "", 400), (jpegs["coffee"], "?target=nope", 400),
                                    (jpegs["coffee"] + b"\0" * LIMIT, "", 413)):
            r = c.post(url + query, content=body)
            assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_docs_and_openapi(server):
    with httpx.Client(base_url=server.http, timeout=30) as c:
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.") and "/v2/models/{model}/infer" in doc["paths"]
        page = c.get("/docs")
        assert page.status_code == 200 and "/v2/models/{model}/infer" in page.text
        assert not re.search(r'(src|href)="?https?:', page.text)  # nothing fetched from the internet
        home = c.get("/")
        assert home.status_code == 200 and "<script>" in home.text
        assert not re.search(r'(src|href)="?https?:', home.text)


# ---- token and CORS --------------------------------------------------------------------------------

def test_token_and_cors(tmp_path, jpegs):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    s = ServerProcess(["--model", MODEL, "efficientnet_b0", "--weights", "random", "--backend", "torch",
                       "--http-port", "0", "--grpc-port", "0", "--token-file", str(token_file),
                       "--cors-origin", "http://ok.example"])
    try:
        with httpx.Client(base_url=s.http, timeout=60) as c:
            stats = c.get("/v2/models/stats", headers={"Authorization": "Bearer s3cret-token"}).json()
            assert [m["name"] for m in stats["model_stats"]] == [MODEL, "efficientnet_b0"]  # one scheduler each
            md = c.get("/v2/models/efficientnet_b0", headers={"Authorization": "Bearer s3cret-token"}).json()
            assert md["inputs"][0]["shape"] == [-1, 3, 224, 224] and md["parameters"]["weights_sha256"] == "random"
            assert c.get("/v2/health/ready").status_code == 200
            assert c.get("/metrics").status_code == 200
            assert c.get("/").status_code == 200  # the page holds no data; it asks for the token
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
                r = c.get(f"/v2/models/{MODEL}", headers=headers)
                assert r.status_code == 401 and "token" in r.json()["error"]
            good = {"Authorization": "Bearer s3cret-token"}
            assert c.get(f"/v2/models/{MODEL}", headers=good).status_code == 200
            r = c.post(f"/v2/models/{MODEL}/infer", content=jpegs["coffee"],
                       headers={**good, "Inference-Header-Content-Length": "0", "Origin": "http://ok.example"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
            assert "inference-header-content-length" in r.headers["access-control-expose-headers"].lower()
            pre = c.options(f"/v2/models/{MODEL}/infer", headers={
                "Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,inference-header-content-length"})
            assert pre.status_code == 200
            r = c.get(f"/v2/models/{MODEL}", headers={**good, "Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in r.headers
        import tritonclient.grpc as tg

        client = tg.InferenceServerClient(s.grpc)
        assert client.is_server_live()
        with pytest.raises(tg.InferenceServerException, match="token"):
            client.get_model_metadata(MODEL)
        assert client.get_model_metadata(MODEL, headers={"authorization": "Bearer s3cret-token"}).name == MODEL
        client.close()
    finally:
        assert s.stop() == 0


def test_cli_mistakes_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty-token"
    empty.write_text("")
    for args, words in ((["--token-file", str(tmp_path / "missing")], "cannot read a token"),
                        (["--token-file", str(empty)], "cannot read a token"),
                        (["--http-port", "70000"], "0..65535")):
        r = subprocess.run([sys.executable, "-m", "effnet.cli", "serve", "--model", MODEL, *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode in (1, 2) and words in r.stderr and "Traceback" not in r.stderr, r.stderr


KSERVE_SCRIPT = """
import asyncio, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from effnet.serve.proto import effnet_oip_pb2  # beside kserve's generated `inference` package: no clash

http, grpc_url, model, x_path, jpeg_path = sys.argv[1:6]
x = np.load(x_path)
jpeg = open(jpeg_path, "rb").read()

async def main():
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    assert await rest.is_server_live("http://" + http) and await rest.is_server_ready("http://" + http)
    assert await rest.is_model_ready("http://" + http, model)
    inp = InferInput("data", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    res = await rest.infer("http://" + http, InferRequest(model, infer_inputs=[inp]), model_name=model)
    np.save(sys.argv[6], res.outputs[0].as_numpy())
    await rest.close()
    grpc = InferenceGRPCClient(grpc_url, timeout=60)
    inp = InferInput("data", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = await grpc.infer(InferRequest(model, infer_inputs=[inp]))
    np.save(sys.argv[7], res.outputs[0].as_numpy())
    inp = InferInput("data", [1], "BYTES")
    inp.set_data_from_numpy(np.array([jpeg], dtype=object))
    res = await grpc.infer(InferRequest(model, infer_inputs=[inp]))
    np.save(sys.argv[8], res.outputs[0].as_numpy())
    await grpc.close()

asyncio.run(main())
"""


def test_kserve_clients_in_their_own_process(server, classifier, jpegs, expected, tmp_path):
    """kserve's REST (v2) and gRPC clients, in a subprocess (kserve's generated `inference` package clashes
    with tritonclient's in one process). kserve is not a test dependency (dozens of packages): the test runs
    where it is importable, or where EFFNET_PEERS_PATH names a folder holding it (pip install --target)."""
    from effnet.preprocessing import normalize

    env = dict(os.environ)
    extra = os.environ.get("EFFNET_PEERS_PATH")
    if extra:  # after this environment's own packages, so that its numpy, grpc and effnet win
        import site

        env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), extra])
    probe = subprocess.run([sys.executable, "-c", "import kserve"], env=env, capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("kserve is not installed (pip install kserve, or EFFNET_PEERS_PATH)")
    x = normalize(classifier.decoder.crop(jpegs["coffee"]), classifier.resolved.preprocess)[None]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "chelsea.jpg").write_bytes(jpegs["chelsea"])
    outs = [tmp_path / f"out{i}.npy" for i in range(3)]
    r = subprocess.run([sys.executable, "-c", KSERVE_SCRIPT, server.http.removeprefix("http://"), server.grpc, MODEL,
                        str(tmp_path / "x.npy"), str(tmp_path / "chelsea.jpg"), *map(str, outs)],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    same(np.load(outs[0]).reshape(-1), expected["coffee"])
    same(np.load(outs[1]).reshape(-1), expected["coffee"])
    same(np.load(outs[2]).reshape(-1), expected["chelsea"])
