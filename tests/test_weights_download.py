"""Download, resume and cache verification against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import platformdirs
import pytest
import torch

from effnet import weights
from effnet.cli.options import render
from effnet.errors import WeightsError, WeightsNotFoundError
from effnet.preprocessing import PreprocessConfig
from effnet.checkpoint import read_state_dict
from effnet.registry import WeightsEntry, register_weights, weights_entry
from effnet.resolved import resolve
from effnet.cache_layout import cache_dir
from effnet.weights import cached_file, download, weights_dir

FILENAME = "tiny_effnet-test.pth"


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "normal"  # "normal" | "truncate" (half the body, then close) | "ignore_range"
    ranges: list[str | None] = field(default_factory=list)
    requests: int = 0


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.requests += 1
            if self.path.startswith("/redirect/"):  # like GitHub release URLs -> object storage
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect"):])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            asked = self.headers.get("Range")
            state.ranges.append(asked)
            start = 0
            if asked and state.mode != "ignore_range":
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.mode == "truncate":
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            self.wfile.write(payload)

    return Handler


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A real state dict of about 3 MB, so a resumed download is more than one chunk."""
    generator = torch.Generator().manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"conv_stem.weight": torch.randn(1024, 768, generator=generator),
                "bn1.running_mean": torch.randn(64, generator=generator)}, buffer)
    return buffer.getvalue()


@pytest.fixture
def server(checkpoint_bytes: bytes):
    state = ServerState(files={f"/{FILENAME}": checkpoint_bytes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "effnet-home"
    monkeypatch.setenv("EFFNET_HOME", str(root))
    return root


def _entry(base: str, sha256: str, **extra: object) -> WeightsEntry:
    return WeightsEntry("efficientnet_b0", f"{base}/{FILENAME}", sha256, PreprocessConfig(224, 0.875), **extra)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here any more: connection refused


def test_cache_dir_reads_effnet_home_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "b"))
    assert weights_dir() == tmp_path / "b" / "weights"
    monkeypatch.delenv("EFFNET_HOME")
    assert cache_dir() == Path(platformdirs.user_cache_dir("effnet"))


def test_download_lands_verified_in_effnet_home(server, home, checkpoint_bytes, capsys):
    entry = _entry(server.base, _sha(checkpoint_bytes), size=len(checkpoint_bytes))
    path = download(entry, progress=True)
    assert path == home / "weights" / FILENAME
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".part")) == []
    assert server.ranges == [None]
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no progress bar
    tensors = read_state_dict(path)
    assert tensors["conv_stem.weight"].shape == (1024, 768)


def test_cached_file_only_reports_verified_files(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    assert cached_file(entry) is None
    (home / "weights").mkdir(parents=True)
    (home / "weights" / FILENAME).write_bytes(b"junk")
    assert cached_file(entry) is None
    assert server.requests == 0  # never downloads
    path = download(entry, progress=False)
    assert cached_file(entry) == path


def test_prefix_hash_accepts_the_right_file(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes)[:8])
    assert entry.sha256_is_prefix
    assert _sha(download(entry, progress=False).read_bytes()) == _sha(checkpoint_bytes)


def test_resume_after_interrupted_download(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    server.mode = "truncate"
    with pytest.raises(WeightsNotFoundError, match="connection closed after"):
        download(entry, progress=False)
    part = home / "weights" / (FILENAME + ".part")
    kept = part.stat().st_size
    assert 0 < kept < len(checkpoint_bytes)
    assert not (home / "weights" / FILENAME).exists()

    server.mode = "normal"
    path = download(entry, progress=False)
    assert server.ranges == [None, f"bytes={kept}-"]
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)
    assert not part.exists()


def test_resume_twice_in_a_row(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    server.mode = "truncate"
    for _ in range(2):
        with pytest.raises(WeightsNotFoundError):
            download(entry, progress=False)
    server.mode = "normal"
    path = download(entry, progress=False)
    first = len(checkpoint_bytes) // 2
    second = first + (len(checkpoint_bytes) - first) // 2
    assert server.ranges == [None, f"bytes={first}-", f"bytes={second}-"]
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)


def test_resume_through_a_redirect(server, home, checkpoint_bytes):
    entry = WeightsEntry("efficientnet_b0", f"{server.base}/redirect/{FILENAME}", _sha(checkpoint_bytes),
                         PreprocessConfig(224, 0.875))
    server.mode = "truncate"
    with pytest.raises(WeightsNotFoundError):
        download(entry, progress=False)
    server.mode = "normal"
    path = download(entry, progress=False)
    assert server.ranges == [None, f"bytes={len(checkpoint_bytes) // 2}-"]  # Range survived the 302
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)


def test_server_ignoring_range_restarts_from_zero(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    server.mode = "truncate"
    with pytest.raises(WeightsNotFoundError):
        download(entry, progress=False)
    server.mode = "ignore_range"
    path = download(entry, progress=False)
    assert server.ranges[1].startswith("bytes=")  # asked to resume, got the whole file (200)
    assert server.requests == 2  # the 200 body replaced the partial file: no second try needed
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)


def test_stale_part_larger_than_file_is_replaced(server, home, checkpoint_bytes):
    directory = home / "weights"
    directory.mkdir(parents=True)
    (directory / (FILENAME + ".part")).write_bytes(b"x" * (len(checkpoint_bytes) + 10))
    path = download(_entry(server.base, _sha(checkpoint_bytes)), progress=False)
    assert server.ranges == [f"bytes={len(checkpoint_bytes) + 10}-", None]  # 416, then from scratch
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)


def test_hash_mismatch_is_refused_and_nothing_is_kept(server, home, checkpoint_bytes):
    wrong = "ab" * 32
    with pytest.raises(WeightsError) as info:
        download(_entry(server.base, wrong), progress=False)
    message = str(info.value)
    assert wrong in message and _sha(checkpoint_bytes) in message
    assert list((home / "weights").iterdir()) == []


def test_prefix_mismatch_is_refused(server, home):
    with pytest.raises(WeightsError, match="starting with deadbeef"):
        download(_entry(server.base, "deadbeef"), progress=False)
    assert list((home / "weights").iterdir()) == []


def test_offline_names_the_file_and_where_to_put_it(home):
    entry = _entry(_closed_port_url(), "ab" * 32)
    with pytest.raises(WeightsNotFoundError) as info:
        download(entry, progress=False, timeout=5)
    message = str(info.value)
    assert entry.url in message
    assert FILENAME in message and "ab" * 32 in message
    assert str(home / "weights") in message
    assert "weights=PATH" in message and "--weights PATH" in render(info.value)


def test_unwritable_cache_says_what_to_do(server, tmp_path, monkeypatch, checkpoint_bytes):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EFFNET_HOME", str(blocker / "home"))
    with pytest.raises(WeightsNotFoundError, match="EFFNET_HOME"):
        download(_entry(server.base, _sha(checkpoint_bytes)), progress=False)


def test_http_error_is_weights_not_found(server, home):
    entry = WeightsEntry("efficientnet_b0", f"{server.base}/missing.pth", "ab" * 32, PreprocessConfig(224, 0.875))
    with pytest.raises(WeightsNotFoundError, match="HTTP 404"):
        download(entry, progress=False)


def test_wrong_file_under_the_official_name_is_kept_aside_and_fetched_again(server, home, checkpoint_bytes):
    directory = home / "weights"
    directory.mkdir(parents=True)
    (directory / FILENAME).write_bytes(b"not the weights")
    path = download(_entry(server.base, _sha(checkpoint_bytes)), progress=False)
    assert server.requests == 1  # fetched again
    assert _sha(path.read_bytes()) == _sha(checkpoint_bytes)
    assert (directory / (FILENAME + ".rejected")).read_bytes() == b"not the weights"  # never deleted


def test_wrong_file_offline_is_named_with_both_hashes_and_kept(home):
    directory = home / "weights"
    directory.mkdir(parents=True)
    (directory / FILENAME).write_bytes(b"not the weights")
    (directory / (FILENAME + ".rejected")).write_bytes(b"an earlier one")
    with pytest.raises(WeightsNotFoundError) as info:
        download(_entry(_closed_port_url(), "ab" * 32), progress=False, timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert f"found {directory / FILENAME}" in message and _sha(b"not the weights") in message and "ab" * 32 in message
    assert f"moved to {FILENAME}.rejected2" in message
    assert (directory / (FILENAME + ".rejected2")).read_bytes() == b"not the weights"
    assert (directory / (FILENAME + ".rejected")).read_bytes() == b"an earlier one"


def test_verified_file_is_not_hashed_again(server, home, checkpoint_bytes, monkeypatch):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    path = download(entry, progress=False)

    def no_hashing(_: Path) -> str:
        raise AssertionError("a verified, unchanged file was hashed again")

    monkeypatch.setattr(weights, "sha256_file", no_hashing)
    assert download(entry, progress=False) == path
    assert server.requests == 1


def test_file_changed_after_verification_is_checked_again(server, home, checkpoint_bytes):
    entry = _entry(server.base, _sha(checkpoint_bytes))
    path = download(entry, progress=False)
    before = path.stat()
    with open(path, "r+b") as fh:  # same size, same mtime: only the content (and ctime) differ
        fh.seek(1000)
        fh.write(b"\0" * 64)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns

    again = download(entry, progress=False)
    assert server.requests == 2
    assert _sha(again.read_bytes()) == _sha(checkpoint_bytes)


def test_resolve_finds_the_weights_file_and_its_sha256(server, home, checkpoint_bytes, tmp_path):
    for random in (None, "random"):
        resolved = resolve("efficientnet_b0", random)
        assert resolved.weights_file is None and resolved.weights_sha256 is None and resolved.weights_id == "random"

    local = tmp_path / "mine.pth"
    local.write_bytes(checkpoint_bytes)
    for given in (local, str(local)):
        resolved = resolve("efficientnet_b0", given)
        assert resolved.weights_file == local and resolved.weights_sha256 == _sha(checkpoint_bytes)
    assert resolved.preprocess == weights_entry("efficientnet_b0").preprocess and resolved.spec.variant.name

    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        resolve("efficientnet_b0", tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError, match="not a file"):
        resolve("efficientnet_b0", tmp_path)

    previous = register_weights(_entry(server.base, _sha(checkpoint_bytes)))
    try:
        resolved = resolve("efficientnet_b0", "imagenet", progress=False)
    finally:
        register_weights(previous)
    assert resolved.weights_file == home / "weights" / FILENAME
    assert resolved.weights_sha256 == _sha(checkpoint_bytes) and resolved.official_weights
    assert weights_entry("efficientnet_b0") == previous
