"""The protocol codec on its own: exact limits, lying sizes, overflow, deep JSON, gzip bombs (no server)."""
from __future__ import annotations

import base64
import gzip
import struct
import time

import numpy as np
import orjson
import pytest

from effnet.serve.codec import (
    JSON_BYTES_PER_VALUE,
    JSON_FREE_VALUES,
    ProtocolError,
    TooLarge,
    build_outputs,
    check_json_values,
    check_shape,
    decompress,
    http_response,
    pack_bytes,
    parse_http_request,
    unpack_bytes,
)

LIMIT = 1 << 20


def body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    text = orjson.dumps(header)
    return text + b"".join(blobs), str(len(text))


def test_binary_fp32_and_bytes_round_trip():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    raw, n = body({"inputs": [{"name": "data", "datatype": "FP32", "shape": [2, 3, 4, 4],
                               "parameters": {"binary_data_size": x.nbytes}}]}, x.tobytes())
    req = parse_http_request(raw, n, LIMIT, "data")
    np.testing.assert_array_equal(req.inputs[0].data, x)
    items = [b"abc", b"", b"\xff\xd8jpeg"]
    packed = pack_bytes(items)
    assert unpack_bytes(packed, 3, "data") == items
    raw, n = body({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [3],
                               "parameters": {"binary_data_size": len(packed)}}]}, packed)
    assert parse_http_request(raw, n, LIMIT, "data").inputs[0].data == items


def test_json_base64_forms_and_raw_form():
    jpeg = b"\xff\xd8\xff\xe0 not utf-8 \xff"
    for element in (base64.b64encode(jpeg).decode(), {"b64": base64.b64encode(jpeg).decode()}):
        req = parse_http_request(orjson.dumps({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                                                           "data": [element]}]}), None, LIMIT, "data")
        assert req.inputs[0].data == [jpeg]
    req = parse_http_request(jpeg, "0", LIMIT, "data")
    assert req.raw and req.inputs[0].data == [jpeg] and req.inputs[0].shape == [1]


@pytest.mark.parametrize("header, blob, words", [
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 100}}]},
     b"\0" * 12, "runs past"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]},
     b"\0" * 12, "after the last binary input"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}}]},
     b"\0" * 8, "FP32 needs 12"),
    ({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]},
     struct.pack("<I", 1000) + b"abcd", "runs past its data"),
    ({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}]},
     pack_bytes([b"a"]), "1 BYTES elements"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1, -3], "data": [1]}]}, b"", "negative"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [2**62, 2**62], "data": [1]}]}, b"", "more elements"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1] * 40, "data": [1]}]}, b"", "dimensions"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [2], "data": [1, "x"]}]}, b"", "numbers"),
    ({"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, b"", "base64"),
    ({"inputs": [{"name": "data", "datatype": "INT8", "shape": [1], "data": [1]}]}, b"", "not served"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1], "data": [1]}],
      "outputs": [{"name": "prob"}, {"name": "prob"}]}, b"", "more than once"),
    ({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1], "data": [1]}],
      "outputs": [{"name": f"o{i}"} for i in range(5000)]}, b"", "requested outputs"),
    ({"inputs": "nope"}, b"", "non-empty list"),
])
def test_malformed_requests_are_protocol_errors(header, blob, words):
    raw, n = body(header, blob)
    with pytest.raises(ProtocolError, match=words):
        parse_http_request(raw, n if blob else None, LIMIT, "data")


def test_lying_header_length_and_deep_json():
    with pytest.raises(ProtocolError, match="only"):
        parse_http_request(b"{}", "99", LIMIT, "data")
    with pytest.raises(ProtocolError, match="non-negative integer"):
        parse_http_request(b"{}", "-1", LIMIT, "data")
    for depth in (100, 100_000):
        with pytest.raises(ProtocolError, match="JSON"):
            parse_http_request(b"[" * depth + b"]" * depth, None, LIMIT, "data")


def test_json_values_are_counted_before_parsing():
    """Arrays, objects and strings cost 50-60 bytes each once parsed: more than one per JSON_BYTES_PER_VALUE bytes
    (past a floor) is refused from a count of the raw bytes, before orjson builds any; the bound is exact, and
    binary tensor bytes after the JSON header are not counted."""
    bomb = b'{"inputs":[{"name":"data","datatype":"FP32","shape":[1],"data":[' + b"[]," * 3_000_000 + b"[]]}]}"
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError, match="arrays, objects and strings"):
        parse_http_request(bomb, None, 16 << 20, "data")
    assert time.perf_counter() - t0 < 0.5  # parsing it took seconds and about 500 MB
    size = 160_000
    allowed = JSON_FREE_VALUES + size // JSON_BYTES_PER_VALUE
    for opening in (b"[", b"{"):
        check_json_values(opening * allowed + b" " * (size - allowed), size)
        with pytest.raises(ProtocolError, match=f"holds {allowed + 1} arrays"):
            check_json_values(opening * (allowed + 1) + b" " * (size - allowed - 1), size)
    check_json_values(b'""' * allowed + b" " * (size - 2 * allowed), size)
    with pytest.raises(ProtocolError, match="strings"):
        check_json_values(b'""' * (allowed + 1) + b" " * (size - 2 * allowed - 2), size)
    blob = b"[" * (4 * 300_000)  # FP32 data whose bytes happen to be '[' (each float is 0x5B5B5B5B)
    raw, n = body({"inputs": [{"name": "data", "datatype": "FP32", "shape": [300_000],
                               "parameters": {"binary_data_size": len(blob)}}]}, blob)
    assert parse_http_request(raw, n, 16 << 20, "data").inputs[0].data.shape == (300_000,)


def test_shape_arithmetic_cannot_overflow():
    assert check_shape([0, 5], "x", 10) == [0, 5]
    with pytest.raises(TooLarge):
        check_shape([2**63 - 1, 2**63 - 1, 2**63 - 1], "x", 10)
    with pytest.raises(ProtocolError):
        check_shape([True, 2], "x", 10)


def test_gzip_limit_is_exact_and_bombs_are_refused_cheaply():
    exact = gzip.compress(b"a" * LIMIT)
    assert len(decompress(exact, "gzip", LIMIT)) == LIMIT
    with pytest.raises(TooLarge):
        decompress(gzip.compress(b"a" * (LIMIT + 1)), "gzip", LIMIT)
    bomb = gzip.compress(b"\0" * (256 << 20), 9)  # 256 MiB in about 256 KB
    with pytest.raises(TooLarge):
        decompress(bomb, "gzip", LIMIT)
    with pytest.raises(ProtocolError, match="truncated|bad"):
        decompress(exact[:-10], "gzip", LIMIT)
    with pytest.raises(ProtocolError):
        decompress(b"not gzip", "gzip", LIMIT)


def test_classification_strings_and_binary_response():
    probs = np.zeros((2, 1000), np.float32)
    probs[0, 967], probs[0, 968], probs[1, 285] = 0.75, 0.25, 1.0
    labels = [f"c{i}" for i in range(1000)]
    raw, n = body({"inputs": [{"name": "data", "datatype": "FP32", "shape": [1], "data": [0]}],
                   "outputs": [{"name": "prob", "parameters": {"classification": 2, "binary_data": True}}]})
    req = parse_http_request(raw, None, LIMIT, "data")
    outputs = build_outputs(req, probs, labels, "prob")
    assert outputs[0].strings == [b"0.750000:967:c967", b"0.250000:968:c968", b"1.000000:285:c285",
                                  b"0.000000:0:c0"]
    payload, header_length = http_response("m", "1", req, outputs)
    header = orjson.loads(payload[:header_length])
    assert header["outputs"][0]["shape"] == [2, 2]
    assert unpack_bytes(payload[header_length:], 4, "prob") == outputs[0].strings
