"""Scheduling under faults, against a live server whose engine is a stand-in that sleeps a known time per batch
(so the timings are exact and cost no CPU): overload -> only 200 and 503, deadlines that fire on time while a
batch runs, clients that leave are not computed, SIGTERM drains and exits 0. Hostile clients: bodies that inflate
to millions of JSON values, ambiguous HTTP framing, connections that never finish a request. Bounded in count
and time."""
from __future__ import annotations

import gzip
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image  # noqa: E402
from test_serve import MODEL, RawClient, ServerProcess, metric  # noqa: E402

SCRIPT = """
import json, sys, time
import numpy as np
from effnet import Classifier
from effnet.serve import ServeOptions, serve

class SleepingEngine:
    '''A stand-in engine: `delay` seconds per batch, a probability row that encodes the crop's mean.'''
    name, precision, device, torch_module = "sleeping", "fp32", "cpu", None
    def __init__(self, delay, log):
        self.delay, self.log = delay, log
    def settings(self):
        return {}
    def predict(self, crops):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{len(crops)}\\n")
        time.sleep(self.delay)
        probs = np.full((len(crops), 1000), 1e-4, np.float32)
        probs[np.arange(len(crops)), crops.reshape(len(crops), -1).mean(1).astype(int) % 1000] = 0.9
        return probs

class StreamingSleepingEngine(SleepingEngine):
    '''The same, shaped like OpenVINO: `capacity` batches in flight at once, each answered from its own
    thread; logs "start end" times per batch. A crop of mean 13 fails, as a broken infer request would.'''
    def __init__(self, delay, log, capacity):
        super().__init__(delay, None)
        self.capacity, self.times = capacity, log
    def predict_stream(self, batches):
        return map(self.predict, batches)
    def submit(self, crops, done):
        import threading
        def finish(started=time.monotonic()):
            probs = self.predict(crops)
            if self.times:
                with open(self.times, "a") as f:
                    f.write(f"{started} {time.monotonic()}\\n")
            if int(crops.mean()) == 13:
                done(None, RuntimeError("infer request failed"))
            else:
                done(probs, None)
        threading.Timer(0, finish).start()

options = json.loads(sys.argv[1])
delay, log, capacity = options.pop("delay"), options.pop("log", None), options.pop("capacity", None)
if options.get("nofile"):  # a lowered file limit, as a crowded host or container would give
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (options["nofile"], options["nofile"]))
options.pop("nofile", None)
engine = StreamingSleepingEngine(delay, log, capacity) if capacity else SleepingEngine(delay, log)
sys.exit(serve([Classifier("efficientnet_lite0", "random", backend=engine)], ServeOptions(**options)))
"""


def tiny_jpeg(value: int = 100) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def start(**options) -> ServerProcess:
    options = {"http_port": 0, "grpc_port": 0, **options}
    return ServerProcess([json.dumps(options)], script=SCRIPT)


def batches_started(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def busy_engine(server, log) -> tuple[threading.Thread, list]:
    """Send one request and return once the engine has started on it (so the next request cannot join its batch)."""
    n = batches_started(log)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(
        httpx.post(server.http + INFER, content=tiny_jpeg(), headers=RAW, timeout=30).status_code))
    thread.start()
    end = time.monotonic() + 10
    while batches_started(log) == n:
        assert time.monotonic() < end, "the engine never started"
        time.sleep(0.005)
    return thread, first


RAW = {"Inference-Header-Content-Length": "0"}
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def engine_log(tmp_path_factory):
    return tmp_path_factory.mktemp("engine") / "batches.log"


@pytest.fixture(scope="module")
def slow(engine_log):
    s = start(delay=0.5, max_batch_size=2, max_queue_size=4, max_queue_delay_ms=5, log=str(engine_log))
    yield s
    assert s.stop() == 0, s.lines[-20:]


def stats(server) -> dict:
    return httpx.get(server.http + f"/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"][0]


def wait_idle(server, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if metric(httpx.get(server.http + "/metrics", timeout=10).text, "nv_inference_pending_request_count") == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the queue did not drain")


def test_overload_answers_only_200_and_503_and_health_stays_fast(slow):
    results: list = []
    jpeg = tiny_jpeg()
    clients = [RawClient(slow.http) for _ in range(24)]  # connected up front: the burst is the requests

    def send(c):
        try:
            status, headers, body = c.post(INFER, jpeg, RAW)
            results.append((status, headers.get("retry-after"), json.loads(body)))
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            results.append((type(exc).__name__, None, None))

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    health = []
    with httpx.Client(base_url=slow.http, timeout=5) as h:
        h.get("/v2/health/ready")
        for t in threads:
            t.start()
        for _ in range(10):
            t0 = time.perf_counter()
            assert h.get("/v2/health/ready").status_code == 200
            health.append(time.perf_counter() - t0)
            time.sleep(0.05)
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    codes = [r[0] for r in results]
    assert len(results) == 24 and set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 4
    for code, retry_after, body in results:
        if code == 503:
            assert retry_after and "queue is full" in body["error"]
    assert max(health) < 0.5, f"health took {max(health):.3f} s under overload"
    wait_idle(slow)
    text = httpx.get(slow.http + "/metrics", timeout=10).text
    assert metric(text, "nv_inference_request_failure", reason="REJECTED") >= codes.count(503)
    assert httpx.post(slow.http + INFER, content=jpeg, headers=RAW, timeout=30).status_code == 200
    # gRPC: the same queue; a full one answers UNAVAILABLE.
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(slow.grpc)
    outcomes, done = [], threading.Semaphore(0)
    for _ in range(12):
        i = tg.InferInput("data", [1], "BYTES")
        i.set_data_from_numpy(np.array([jpeg], dtype=object))
        client.async_infer(MODEL, [i], lambda result, error: (outcomes.append(error), done.release()),
                           client_timeout=30)
    for _ in range(12):
        assert done.acquire(timeout=30)
    errors = [e for e in outcomes if e is not None]
    assert errors and len(errors) < 12
    assert all("UNAVAILABLE" in str(e.status()) and "queue is full" in str(e) for e in errors), errors[:2]
    client.close()
    wait_idle(slow)


def test_deadline_fires_on_time_while_a_batch_runs(slow, engine_log):
    wait_idle(slow)
    before, started = stats(slow)["inference_count"], batches_started(engine_log)
    busy, first = busy_engine(slow, engine_log)  # the engine is now busy for about 0.5 s
    body = {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                        "data": [{"b64": __import__("base64").b64encode(tiny_jpeg(7)).decode()}]}],
            "parameters": {"timeout": 150_000}}  # microseconds, Triton's schedule-policy extension
    t0 = time.perf_counter()
    r = httpx.post(slow.http + INFER, json=body, timeout=30)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 504 and "deadline" in r.json()["error"]
    assert 0.14 <= elapsed < 0.35, f"a 150 ms deadline fired after {elapsed * 1000:.0f} ms"
    busy.join(30)
    assert first == [200]
    wait_idle(slow)
    time.sleep(0.6)  # any batch that (wrongly) still held the expired request has finished by now
    assert stats(slow)["inference_count"] - before == 1, "an expired request was computed"
    assert batches_started(engine_log) - started == 1, "an expired request was computed"
    # gRPC: the client's deadline is the request's deadline.
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(slow.grpc)
    i = tg.InferInput("data", [1], "BYTES")
    i.set_data_from_numpy(np.array([tiny_jpeg()], dtype=object))
    t0 = time.perf_counter()
    with pytest.raises(tg.InferenceServerException) as info:
        client.infer(MODEL, [i], client_timeout=0.2)
    assert "DEADLINE_EXCEEDED" in str(info.value.status()) or "Deadline" in str(info.value), str(info.value)
    assert time.perf_counter() - t0 < 0.45
    client.close()


def test_a_client_that_leaves_is_not_computed(slow, engine_log):
    wait_idle(slow)
    time.sleep(0.6)
    before, started = stats(slow), batches_started(engine_log)
    busy, first = busy_engine(slow, engine_log)
    host, port = slow.http.removeprefix("http://").split(":")
    gone = socket.create_connection((host, int(port)), timeout=10)
    data = tiny_jpeg(9)
    gone.sendall((f"POST {INFER} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    time.sleep(0.1)
    gone.close()  # leaves while the engine is busy with the first request
    busy.join(30)
    assert first == [200]
    wait_idle(slow)
    time.sleep(0.6)
    after = stats(slow)
    assert after["inference_count"] - before["inference_count"] == 1, "a request whose client left was computed"
    assert batches_started(engine_log) - started == 1, "a request whose client left was computed"
    text = httpx.get(slow.http + "/metrics", timeout=10).text
    assert metric(text, "nv_inference_request_failure", reason="CANCELED") >= 1


def test_sigterm_drains_accepted_requests_and_exits_0():
    s = start(delay=0.4, max_batch_size=1, max_queue_size=8, drain_timeout=10)
    try:
        results: list = []
        clients = [RawClient(s.http) for _ in range(3)]

        def send(c):
            results.append(c.post(INFER, tiny_jpeg(), RAW)[0])

        threads = [threading.Thread(target=send, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(0.15)  # all three accepted; one in the engine, two queued (about 1.2 s of work)
        t0 = time.perf_counter()
        s.signal(signal.SIGTERM)
        time.sleep(0.05)
        ready = httpx.get(s.http + "/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and "error" in ready.json()
        late = httpx.post(s.http + INFER, content=tiny_jpeg(), headers=RAW, timeout=5)
        assert late.status_code == 503 and late.json()["error"]
        for t in threads:
            t.join(15)
        assert results == [200, 200, 200]
        assert s.proc.wait(15) == 0
        assert time.perf_counter() - t0 < 5
        assert any("stopped" in line for line in s.lines)
    finally:
        for c in clients:
            c.close()
        s.stop()


def test_a_streaming_engine_takes_the_next_batch_while_one_runs(tmp_path):
    """OpenVINO-like engines get a batch whenever one of their requests is free: a request that arrives while
    another computes starts at once instead of waiting for it; a failed infer request is a JSON 500 and the
    server goes on."""
    times = tmp_path / "times.log"
    s = start(delay=0.8, capacity=2, max_batch_size=2, max_queue_delay_ms=1, log=str(times))
    try:
        answers: dict[int, int] = {}

        def send(value):
            r = httpx.post(s.http + INFER, content=tiny_jpeg(value), headers=RAW, timeout=30)
            answers[value] = r.json()["outputs"][0]["data"] if r.status_code == 200 else r.status_code

        first = threading.Thread(target=send, args=(50,))
        first.start()
        time.sleep(0.3)  # the first is in the engine for another 0.5 s
        second = threading.Thread(target=send, args=(150,))
        second.start()
        first.join(30)
        second.join(30)
        (a_start, a_end), (b_start, b_end) = sorted(tuple(map(float, line.split())) for line in
                                                    times.read_text().splitlines())
        assert b_start < a_end - 0.2, "the second batch waited for the first"
        for value, probs in answers.items():  # each request got its own image's row
            assert int(np.argmax(probs)) == value
        r = httpx.post(s.http + INFER, content=tiny_jpeg(13), headers=RAW, timeout=30)
        assert r.status_code == 500 and "infer request failed" in r.json()["error"]
        assert httpx.post(s.http + INFER, content=tiny_jpeg(60), headers=RAW, timeout=30).status_code == 200
        wait_idle(s)
    finally:
        assert s.stop() == 0


# ---- hostile clients ------------------------------------------------------------------------------

def address(server) -> tuple[str, int]:
    host, port = server.http.removeprefix("http://").split(":")
    return host, int(port)


def exchange(server, data: bytes, timeout: float = 5) -> tuple[bytes, str]:
    """`data` on a fresh connection, then what comes back until the server closes it or `timeout` passes:
    -> (bytes, "closed" | "reset" | "open")."""
    sock = socket.create_connection(address(server), timeout=timeout)
    got, end = b"", time.monotonic() + timeout
    try:
        sock.sendall(data)
        while time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                return got, "reset"
            if not chunk:
                return got, "closed"
            got += chunk
        return got, "open"
    finally:
        sock.close()


def responses(raw: bytes) -> list[tuple[int, dict]]:
    """The JSON responses in `raw`, in order: [(status, body)]."""
    out = []
    while raw:
        assert raw.startswith(b"HTTP/1.1 "), raw[:200]
        head, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        n = int(headers["content-length"])
        assert headers["content-type"] == "application/json", head
        out.append((int(status_line.split()[1]), json.loads(rest[:n])))
        raw = rest[n:]
    return out


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def test_bodies_that_inflate_to_millions_of_json_values_are_refused_before_parsing():
    """16 KB of gzip inflating to 16 MB of empty JSON arrays parsed into 5.6 million lists: +800 MB and 9 s of CPU
    per body (about 3 GB at the default 64 MB limit), before any shape check or queue bound. Counted in the raw bytes
    and refused first, the server's peak memory moves by about the bodies' own size while three arrive at once;
    valid FP32 JSON, nested as the card's tensor or flat, gzip or not, is still answered."""
    limit = 16 << 20
    s = start(delay=0.05, max_request_bytes=limit)
    try:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        for data in (x.tolist(), x.reshape(-1).tolist()):
            body = json.dumps({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                           "data": data}]}).encode()
            for headers, content in (({}, body), ({"Content-Encoding": "gzip"}, gzip.compress(body, 1))):
                r = httpx.post(s.http + INFER, content=content, timeout=60,
                               headers={"Content-Type": "application/json", **headers})
                assert r.status_code == 200, r.text[:300]
        before = peak_rss_mib(s.pid)
        filler = b"[]," * ((limit - 100) // 3)
        bomb = gzip.compress(b'{"inputs":[{"name":"data","datatype":"FP32","shape":[1],"data":[' + filler
                             + b'[]]}]}', 9)
        assert len(bomb) < 64 << 10
        results: list = []

        def send():
            r = httpx.post(s.http + INFER, content=bomb, timeout=120,
                           headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
            results.append((r.status_code, r.json()))

        threads = [threading.Thread(target=send) for _ in range(3)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.perf_counter() - t0
        grown = peak_rss_mib(s.pid) - before
        assert grown < 8 * (limit >> 20), f"peak memory grew by {grown:.0f} MiB for three {limit >> 20} MiB bodies"
        assert [code for code, _ in results] == [400] * 3, results
        assert all("arrays, objects and strings" in body["error"] for _, body in results), results
        assert elapsed < 5, f"three refusals took {elapsed:.1f} s"
        assert httpx.get(s.http + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0


def test_a_large_body_waits_for_a_queue_place_before_it_is_parsed(slow):
    """Inflating and parsing a large body costs several times its size, so it takes a queue place first: with the
    queue full it is answered 503 unparsed (once it was parsed, whatever the queue held)."""
    wait_idle(slow)
    time.sleep(0.6)
    big = b'{"inputs": [' + b" " * (1 << 20) + b"}"  # 1 MB, malformed: parsing it would answer 400
    clients = [RawClient(slow.http) for _ in range(4)]  # the queue's size
    codes: list = []
    threads = [threading.Thread(target=lambda c=c: codes.append(c.post(INFER, tiny_jpeg(), RAW)[0])) for c in clients]
    try:
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while metric(httpx.get(slow.http + "/metrics", timeout=5).text, "nv_inference_pending_request_count") < 4:
            assert time.monotonic() < end, "the queue never filled"
            time.sleep(0.005)
        r = httpx.post(slow.http + INFER, content=big, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 503 and "queue is full" in r.json()["error"] and r.headers["retry-after"], r.text
        for t in threads:
            t.join(30)
        assert codes == [200] * 4
    finally:
        for c in clients:
            c.close()
    wait_idle(slow)
    r = httpx.post(slow.http + INFER, content=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_ambiguous_or_oversized_framing_is_refused_and_the_connection_closed(slow):
    """RFC 9112 section 6.1: with both Content-Length and Transfer-Encoding, the bytes after the chunked body ran as a
    second request on the same connection (request smuggling); and a chunk claiming 2^80 bytes was waited for."""
    smuggled = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\nContent-Length: 5\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    raw, end = exchange(slow, smuggled)
    got = responses(raw)
    assert len(got) == 1 and end in ("closed", "reset"), (raw[:400], end)
    assert got[0][0] == 400 and "Content-Length and Transfer-Encoding" in got[0][1]["error"], got
    limit = 64 << 20  # the server's --max-request-bytes
    for size in ("F" * 20, f"{limit + 1:x}", f"{2**80:x}"):
        t0 = time.perf_counter()
        raw, end = exchange(slow, (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n"
                                   "abc").encode(), timeout=3)
        elapsed = time.perf_counter() - t0
        got = responses(raw)
        assert len(got) == 1 and got[0][0] in (400, 413) and end == "closed", (size, raw[:300], end)
        assert elapsed < 1, f"a chunk of 0x{size} bytes was answered after {elapsed:.1f} s"
    jpeg = tiny_jpeg()  # chunks within the limit are served as before
    raw, end = exchange(slow, (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 0\r\n"
                               f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{len(jpeg):x}\r\n").encode()
                        + jpeg + b"\r\n0\r\n\r\n", timeout=30)
    assert [status for status, _ in responses(raw)] == [200] and end == "closed"


def test_slow_connections_are_closed_on_time_and_never_lock_out_clients():
    """Connections whose request head never ended were held forever: about 1,000 of them against a 1,024-file
    limit stopped all service, and asyncio logged a traceback per failed accept (300 MB a minute). Here 300 against
    256 files: the server keeps files free, answers other clients at once, closes every slow connection within
    its header timeout (or sooner, for a newcomer), and logs a line or two."""
    timeout = 2.0
    s = start(delay=0.05, nofile=256, header_timeout=timeout, keep_alive_timeout=1)
    slow_socks: dict[socket.socket, float] = {}
    try:
        logged = len(s.lines)
        for _ in range(300):
            c = socket.create_connection(address(s), timeout=10)
            c.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never ends
            slow_socks[c] = time.monotonic()
        assert len(os.listdir(f"/proc/{s.pid}/fd")) < 256
        t0 = time.perf_counter()
        assert httpx.get(s.http + "/v2/health/ready", timeout=3).status_code == 200
        assert httpx.post(s.http + INFER, content=tiny_jpeg(), headers=RAW, timeout=10).status_code == 200
        assert time.perf_counter() - t0 < 2
        # Every slow connection is closed within the timeout and a little (408 when part of a head came).
        closed: dict[socket.socket, float] = {}
        got: dict[socket.socket, bytes] = {}
        with selectors.DefaultSelector() as sel:
            for c in slow_socks:
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
            end = time.monotonic() + timeout + 3
            while len(closed) < len(slow_socks) and time.monotonic() < end:
                for key, _ in sel.select(0.1):
                    c = key.fileobj
                    try:
                        chunk = c.recv(1 << 16)
                    except (ConnectionResetError, BlockingIOError):
                        chunk = b""
                    got[c] = got.get(c, b"") + chunk
                    if not chunk:
                        closed[c] = time.monotonic()
                        sel.unregister(c)
        late = [closed.get(c, float("inf")) - opened for c, opened in slow_socks.items()
                if closed.get(c, float("inf")) - opened > timeout + 1]
        assert not late, f"{len(late)} slow connections were still open {timeout + 1} s after they opened"
        for data in got.values():
            assert all(status == 408 for status, _ in responses(data)), data[:300]
        assert httpx.get(s.http + "/v2/health/live", timeout=3).status_code == 200
        # An idle keep-alive connection closes after --keep-alive-timeout; a body that stalls, after the timeout.
        client = RawClient(s.http)
        assert client.post(INFER, tiny_jpeg(), RAW)[0] == 200
        t0 = time.perf_counter()
        assert client.sock.recv(1) == b""
        assert 0.8 < time.perf_counter() - t0 < 2.5
        client.close()
        t0 = time.perf_counter()
        raw, end = exchange(s, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{'x' * 10}".encode(),
                            timeout=timeout + 3)
        assert [status for status, _ in responses(raw)] == [408] and end == "closed", raw[:300]
        assert timeout - 0.2 < time.perf_counter() - t0 < timeout + 1
        lines = s.lines[logged:]
        assert len(lines) <= 3 and sum(map(len, lines)) < 1000, lines[:5]
    finally:
        for c in slow_socks:
            c.close()
        assert s.stop() == 0, s.lines[-20:]


def test_at_the_connection_cap_with_every_connection_busy_new_ones_get_503():
    """When every connection the cap allows has a request in progress (none to make room), a newcomer is answered
    a JSON 503 with Retry-After at once and closed; once they finish, newcomers are served."""
    s = start(delay=0.6, max_connections=2)
    clients = [RawClient(s.http) for _ in range(2)]
    try:
        codes: list = []
        threads = [threading.Thread(target=lambda c=c: codes.append(c.post(INFER, tiny_jpeg(), RAW)[0]))
                   for c in clients]
        for t in threads:
            t.start()
        time.sleep(0.15)  # both requests are in the engine or the queue for another ~0.4 s
        t0 = time.perf_counter()
        raw, end = exchange(s, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
        assert time.perf_counter() - t0 < 0.3 and end in ("closed", "reset")
        got = responses(raw)
        assert [status for status, _ in got] == [503] and "connections" in got[0][1]["error"], raw[:300]
        assert b"retry-after: 1" in raw.lower()
        for t in threads:
            t.join(30)
        assert codes == [200, 200]
        for c in clients:
            c.close()
        time.sleep(0.2)
        assert httpx.get(s.http + "/v2/health/live", timeout=5).status_code == 200
    finally:
        for c in clients:
            c.close()
        assert s.stop() == 0


# ---- shutdown --------------------------------------------------------------------------------------

def pending(server) -> float:
    return metric(httpx.get(server.http + "/metrics", timeout=5).text, "nv_inference_pending_request_count")


def wait_for(condition, what: str, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def post_in_thread(client: RawClient, answers: list, since: list) -> threading.Thread:
    """POST a small JPEG on `client` in a thread; appends (seconds after since[0], status, headers, body) or the
    error's name when the connection ends without an answer."""
    def send():
        try:
            status, headers, body = client.post(INFER, tiny_jpeg(), RAW)
            answers.append((time.perf_counter() - since[0], status, headers, body))
        except OSError as exc:
            answers.append(type(exc).__name__)
    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_when_the_drain_timeout_passes_the_unanswered_get_json_503_and_the_process_exits_0(tmp_path):
    """--drain-timeout passing with work in flight: every request still unanswered is answered a JSON 503 (Draining)
    at that moment, the batch in the engine ends, queued ones never start, and the process exits 0 soon after (they
    were answered a text/plain 500 one more timeout later, and the process exited about 4x past the timeout)."""
    log = tmp_path / "batches.log"
    drain, delay = 1.0, 1.6
    s = start(delay=delay, max_batch_size=1, max_queue_size=8, drain_timeout=drain, log=str(log))
    clients = [RawClient(s.http) for _ in range(3)]
    answers: list = []
    since = [time.perf_counter()]
    try:
        threads = [post_in_thread(c, answers, since) for c in clients]
        wait_for(lambda: batches_started(log) == 1 and pending(s) == 3, "the requests were never admitted")
        since[0] = time.perf_counter()  # one request in the engine (about 1.5 s to go), two queued
        s.signal(signal.SIGTERM)
        for t in threads:
            t.join(15)
        code = s.proc.wait(15)
        exited = time.perf_counter() - since[0]
        assert code == 0, s.lines[-10:]
        assert len(answers) == 3, answers
        for answer in answers:
            elapsed, status, headers, body = answer
            assert (status, headers["content-type"]) == (503, "application/json"), answer
            assert headers["retry-after"] and "drain timeout (1 s) passed" in json.loads(body)["error"], answer
            assert drain - 0.05 < elapsed < drain + 0.5, f"answered {elapsed:.2f} s after SIGTERM"
        assert exited < drain + delay + 2.5, f"exited {exited:.1f} s after SIGTERM (drain timeout {drain:g} s)"
        assert batches_started(log) == 1, "a queued request was computed after the drain gave up on it"
        assert "effnet serve: the drain timeout (1 s) passed with 3 requests unanswered: answered 503" in s.lines
        assert not any("Traceback" in line for line in s.lines), s.lines
    finally:
        for c in clients:
            c.close()
        s.stop()


def test_readiness_after_sigterm_says_shutting_down(tmp_path):
    """From the first SIGTERM until exit, readiness answers 503 {"error": "shutting down"} (Triton and KServe's
    word for a server that drains), the model's readiness says so too, and gRPC's ServerReady is false (it said
    "not ready", as before startup)."""
    import tritonclient.grpc as tg

    log = tmp_path / "batches.log"
    s = start(delay=1.5, max_batch_size=1, drain_timeout=10, log=str(log))
    client = RawClient(s.http)
    answers: list = []
    try:
        thread = post_in_thread(client, answers, [time.perf_counter()])
        wait_for(lambda: batches_started(log) == 1, "the engine never started")
        s.signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(s.http + "/v2/health/ready", timeout=5).status_code == 503, "still ready")
        r = httpx.get(s.http + "/v2/health/ready", timeout=5)
        assert r.json() == {"error": "shutting down"} and r.headers["content-type"] == "application/json"
        r = httpx.get(s.http + f"/v2/models/{MODEL}/ready", timeout=5)
        assert r.status_code == 503 and r.json() == {"error": f"model {MODEL!r} is not ready: shutting down"}
        grpc_client = tg.InferenceServerClient(s.grpc)
        assert grpc_client.is_server_live() and not grpc_client.is_server_ready()
        grpc_client.close()
        thread.join(15)
        assert [a[1] for a in answers] == [200]  # what was accepted is still answered
        assert s.proc.wait(15) == 0
    finally:
        client.close()
        s.stop()


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    """A second SIGTERM or SIGINT during the drain exits at once, 128 + the signal's number, with one line and no
    traceback, even while the engine holds the main thread (it did nothing: the server waited for the engine)."""
    for first, second, code in ((signal.SIGTERM, signal.SIGINT, 130), (signal.SIGTERM, signal.SIGTERM, 143)):
        log = tmp_path / f"batches-{second.name}.log"
        s = start(delay=10, max_batch_size=1, drain_timeout=60, log=str(log))
        client = RawClient(s.http)
        answers: list = []
        try:
            thread = post_in_thread(client, answers, [time.perf_counter()])
            wait_for(lambda: batches_started(log) == 1, "the engine never started")  # busy for 10 s
            s.signal(first)
            wait_for(lambda: httpx.get(s.http + "/v2/health/ready", timeout=5).status_code == 503, "no drain")
            t0 = time.perf_counter()
            s.signal(second)
            assert s.proc.wait(5) == code
            assert time.perf_counter() - t0 < 2
            thread.join(5)
            assert answers in (["ConnectionError"], ["ConnectionResetError"])  # closed with the process
            said = [line for line in s.lines if line.startswith(f"effnet serve: a second {second.name}")]
            assert said == [f"effnet serve: a second {second.name}: exiting now with 1 request unanswered"], s.lines
            assert not any("Traceback" in line for line in s.lines), s.lines
        finally:
            client.close()
            s.stop()


def test_the_engine_executor_returns_when_its_loop_thread_ends_however_it_ends():
    """`serve` runs the engines on the main thread (MainThreadExecutor) while the event loop runs in a thread: when
    that thread ends, by a clean return or an error, without shutting the executor down, the main thread returns
    too (a server once logged "stopped" and never exited)."""
    from effnet.serve.scheduler import MainThreadExecutor

    assert threading.current_thread() is threading.main_thread()
    for fail in (False, True):
        executor = MainThreadExecutor()
        ran: list = []

        def loop_thread():
            try:
                ran.append(executor.submit(lambda: threading.current_thread() is threading.main_thread()).result(5))
                if fail:
                    raise RuntimeError("the event loop failed")
            except RuntimeError:
                pass  # what `serve`'s loop thread does with an error: keep it for the main thread, end

        thread = threading.Thread(target=loop_thread)
        thread.start()
        t0 = time.perf_counter()
        executor.run(while_alive=thread)
        assert time.perf_counter() - t0 < 2
        thread.join(5)
        assert ran == [True]
        late = executor.submit(time.sleep, 30)  # nobody runs calls any more: refused, not left waiting
        assert late.cancelled() or late.exception(1) is not None


OPENVINO_SCRIPT = """
import json, sys
from effnet import Classifier
from effnet.engines import EngineOptions, resolve_engine
from effnet.serve import ServeOptions, serve

options = json.loads(sys.argv[1])
# Each infer request computes a fixed batch of 32 images (the tail padded): most of a second per request here, so
# requests are in OpenVINO's threads when the drain timeout passes.
engine = resolve_engine("openvino", "fp32", options=EngineOptions(model_batch=32))
sys.exit(serve([Classifier("efficientnet_lite0", options.pop("weights"), backend=engine)], ServeOptions(**options)))
"""


def test_openvino_requests_in_flight_when_the_drain_times_out_end_before_the_process(lite0_weights):
    """A real OpenVINO server whose drain timeout passes while infer requests run: it aborted (SIGABRT, "FATAL:
    exception not rethrown": OpenVINO's threads still running at exit) after answering text/plain 500s. Now the
    requests get JSON 503 at the timeout, the engine ends what it runs, and the process exits 0."""
    drain = 0.3
    s = ServerProcess([json.dumps({"http_port": 0, "grpc_port": None, "drain_timeout": drain, "max_batch_size": 1,
                                   "weights": str(lite0_weights)})], script=OPENVINO_SCRIPT, timeout=300)
    clients = [RawClient(s.http) for _ in range(6)]
    answers: list = []
    since = [time.perf_counter()]
    try:
        threads = [post_in_thread(c, answers, since) for c in clients]
        wait_for(lambda: pending(s) == 6, "the requests were never admitted")
        time.sleep(0.2)  # in OpenVINO's infer requests
        since[0] = time.perf_counter()
        s.signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        code = s.proc.wait(60)
        assert code == 0 and not any("FATAL" in line for line in s.lines), s.lines[-10:]
        assert len(answers) == 6, answers
        for answer in answers:
            elapsed, status, headers, body = answer
            assert headers["content-type"] == "application/json", answer
            assert status == 200 or (status == 503 and "drain timeout" in json.loads(body)["error"]), answer
            assert elapsed < drain + 0.5 or status == 200, f"answered {elapsed:.2f} s after SIGTERM"
        assert not any("Traceback" in line for line in s.lines), s.lines
    finally:
        for c in clients:
            c.close()
        s.stop()


# ---- the smaller faults: limits, CORS, the token, readiness, gRPC contents, outputs, statistics, ports -------

TOKEN = "s3cret-token"
STRICT_LIMIT = 64 << 10


@pytest.fixture(scope="module")
def strict():
    """A server with a small request limit, a token and one CORS origin."""
    s = start(delay=0.05, max_request_bytes=STRICT_LIMIT, token=TOKEN, cors_origins=["http://ok.example"])
    yield s
    assert s.stop() == 0, s.lines[-20:]


def grpc_infer(server, request, metadata=(("authorization", f"Bearer {TOKEN}"),)):
    """One ModelInfer call with effnet's own messages on a plain channel (no client library in between)."""
    import grpc

    from effnet.serve.proto import effnet_oip_pb2 as pb

    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        return call(request, timeout=30, metadata=metadata)


def raw_request(size: int):
    """A ModelInferRequest of exactly `size` bytes: one JPEG (padded with trailing zeros) in raw_input_contents."""
    from effnet.serve.codec import pack_bytes
    from effnet.serve.proto import effnet_oip_pb2 as pb

    jpeg, pad = tiny_jpeg(), 0
    for _ in range(5):
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="data", datatype="BYTES", shape=[1])
        req.raw_input_contents.append(pack_bytes([jpeg + b"\0" * pad]))
        if req.ByteSize() == size:
            return req
        pad += size - req.ByteSize()
    raise AssertionError(f"no request of {size} bytes")


def test_grpc_messages_are_held_to_max_request_bytes_as_http_bodies_are(strict):
    """--max-request-bytes below 4 MiB applied to HTTP only (gRPC's floor was 4 MiB): a message of the limit is
    served, one byte more is RESOURCE_EXHAUSTED, as the body one byte over is 413."""
    import grpc

    assert grpc_infer(strict, raw_request(STRICT_LIMIT)).outputs[0].name == "prob"
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(strict, raw_request(STRICT_LIMIT + 1))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    body = tiny_jpeg() + b"\0" * (STRICT_LIMIT - len(tiny_jpeg()))
    auth = {"Authorization": f"Bearer {TOKEN}", **RAW}
    assert httpx.post(strict.http + INFER, content=body, headers=auth, timeout=30).status_code == 200
    assert httpx.post(strict.http + INFER, content=body + b"\0", headers=auth, timeout=30).status_code == 413


def test_cors_refusals_are_json_like_every_non_200(strict):
    """A preflight from an origin, or for a method, that is not allowed is a JSON 400 (it was text/plain)."""
    for origin, method, refused in (("http://evil.example", "POST", "origin"), ("http://ok.example", "PUT", "method")):
        r = httpx.options(strict.http + INFER, timeout=10, headers={"Origin": origin,
                                                                      "Access-Control-Request-Method": method})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
        assert r.json() == {"error": f"CORS preflight refused: {refused} not allowed"}
    r = httpx.options(strict.http + INFER, timeout=10, headers={"Origin": "http://ok.example",
                                                                  "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"


def test_the_bearer_scheme_is_case_insensitive(strict):
    """RFC 7235 section 2.1: the auth scheme is case-insensitive (`bearer TOKEN` was refused)."""
    from effnet.serve.proto import effnet_oip_pb2 as pb

    with httpx.Client(base_url=strict.http, timeout=10) as c:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert c.get(f"/v2/models/{MODEL}", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
        for header in ("Bearer wrong", f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"):
            assert c.get(f"/v2/models/{MODEL}", headers={"Authorization": header}).status_code == 401, header
    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="data", datatype="BYTES", shape=[1]).contents.bytes_contents.append(tiny_jpeg())
    assert grpc_infer(strict, req, metadata=(("authorization", f"bearer {TOKEN}"),)).outputs[0].name == "prob"


def test_model_readiness_needs_no_token_over_http_as_over_grpc(strict):
    """Model readiness is health, open over gRPC (ModelReady); over HTTP it asked for the token."""
    import tritonclient.grpc as tg

    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        r = httpx.get(strict.http + path, timeout=10)
        assert r.status_code == 200 and r.json() == {"name": MODEL, "ready": True}, r.text
    assert httpx.get(strict.http + f"/v2/models/{MODEL}", timeout=10).status_code == 401  # the rest still asks
    client = tg.InferenceServerClient(strict.grpc)
    assert client.is_model_ready(MODEL)
    client.close()


def test_grpc_contents_beside_raw_input_contents_is_refused(strict):
    """An input given twice, typed `contents` and raw_input_contents, is INVALID_ARGUMENT, as Triton answers (one of
    the two was silently used)."""
    import grpc

    req = raw_request(4096)
    req.inputs[0].contents.bytes_contents.append(tiny_jpeg(200))
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(strict, req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input 'data': 'contents' must not be given when the request uses raw_input_contents"


def test_an_empty_outputs_list_returns_every_output(slow):
    """`"outputs": []` names no output: every output is returned, as Triton does (it computed the request and
    answered none)."""
    import base64

    body = {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(tiny_jpeg(77)).decode()]}], "outputs": []}
    r = httpx.post(slow.http + INFER, json=body, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "prob" and out["shape"] == [1, 1000] and int(np.argmax(out["data"])) == 77


def test_images_of_failed_requests_are_not_counted_as_inferences(slow, engine_log):
    """Triton's inference_count counts the images of successful requests: a request whose deadline passes while its
    batch runs fails (504) and is not one, though the execution counts."""
    wait_idle(slow)
    time.sleep(0.6)  # no batch from an earlier test still running
    before, started = stats(slow), batches_started(engine_log)
    body = {"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                        "data": [{"b64": __import__("base64").b64encode(tiny_jpeg(5)).decode()}]}],
            "parameters": {"timeout": 150_000}}
    r = httpx.post(slow.http + INFER, json=body, timeout=30)
    assert r.status_code == 504 and batches_started(engine_log) == started + 1  # it was in the engine
    wait_for(lambda: stats(slow)["execution_count"] > before["execution_count"], "the batch never ended")
    after = stats(slow)
    assert after["inference_count"] == before["inference_count"], "the failed request's image counted"
    assert after["execution_count"] == before["execution_count"] + 1
    fails = lambda st: st["inference_stats"]["fail"]["count"]  # noqa: E731
    assert fails(after) == fails(before) + 1
    text = httpx.get(slow.http + "/metrics", timeout=10).text
    assert metric(text, "nv_inference_count") == after["inference_count"]


def test_a_busy_port_is_named_in_one_line():
    """`effnet serve` on a port in use: one line naming the port and the flag (it said `[Errno 98] Address already in
    use`)."""
    from helpers import effnet_command, one_line

    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        for protocol, flags, flag in (("HTTP", ["--http-port", str(port), "--no-grpc"], "--http-port"),
                                      ("gRPC", ["--http-port", "0", "--grpc-port", str(port)], "--grpc-port")):
            r = subprocess.run(effnet_command("serve", "--model", MODEL, "--weights", "random", "--backend", "torch",
                                              *flags), capture_output=True, text=True, timeout=120)
            assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
            assert one_line(r.stderr) == (f"effnet: error: cannot listen for {protocol} on 127.0.0.1:{port}: port "
                                          f"{port} is in use (another server?); stop what uses it or choose another "
                                          f"{flag} (0: any free port)")
    finally:
        holder.close()


def test_the_serving_pixel_limit_is_documented_beside_classifys():
    """serve refuses images over 50 MP by default while classify accepts about 179 MP (Pillow's limit): the README's
    Serving section says so, with the default the command line really has."""
    from effnet.cli import build_parser

    default = build_parser().parse_args(["serve"]).max_pixels
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    serving = readme.split("\n## Serving\n", 1)[1].split("\n## ", 1)[0]
    sentence = next(s for s in serving.replace("\n", " ").split(". ") if "--max-pixels" in s)
    assert f"{default:,}" in sentence and "179 MP" in sentence and "classify" in sentence, sentence
