"""The Open Inference Protocol (KServe v2) on the wire, with Triton's binary-data, classification and
schedule-policy extensions: request bodies -> InferRequest, results -> response bodies.

Everything here is pure and bounded: JSON's arrays, objects and strings are counted before it is parsed (at
most in proportion to the body's size), its nesting is bounded by orjson (and by a depth check of our own),
shapes are multiplied in Python integers (no overflow) and checked against the body's size before any array is
allocated, binary sizes must add up to the body exactly. Mistakes raise errors.ProtocolError (or TooLarge),
which carry their HTTP status and gRPC code.
"""
from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..contract import ranked
from .errors import ProtocolError, TooLarge, UnsupportedEncoding

MAX_DIMS = 8
MAX_JSON_DEPTH = 64  # an inference request is 5 levels deep; nested FP32 data adds 4
# Once parsed, each array, object or string costs 50-60 bytes (an empty array from 3 bytes of "[],"), a number up to
# 32. A valid request holds few of the former: its numbers sit in long arrays (FP32 [N,3,S,S] nested: one array per
# S numbers) and its images are long base64 strings. Allowing one per 16 bytes of JSON keeps any body's parse within
# a few times its size, as a valid one's is (8-10x for FP32 numbers).
JSON_BYTES_PER_VALUE = 16
JSON_FREE_VALUES = 16384  # what any request may hold however short (names, parameters, outputs): 1-2 MB parsed
HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # FP32: float32 array of `shape`; BYTES: one bytes object per element
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default
    class_count: int = 0        # Triton's classification extension


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None  # None: every output, in the model's order
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_output: bool = False  # binary_data_output, or the raw form of the binary extension
    raw: bool = False            # gRPC raw_input_contents / HTTP raw body: answer in raw form too

    def timeout_us(self) -> int | None:
        """The schedule-policy extension's `timeout` parameter (microseconds), if given."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProtocolError("parameter 'timeout' must be a non-negative integer (microseconds)")
        return value


# ---- bodies ---------------------------------------------------------------------------------------

def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Content-Encoding gzip/deflate, refusing output over `limit` bytes without producing it (gzip bombs)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    enc = encoding.strip().lower()
    if enc not in ("gzip", "deflate", "x-gzip"):
        raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    wbits = 16 + zlib.MAX_WBITS if enc != "deflate" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise TooLarge(f"request body is over the server's {limit}-byte limit once decompressed")
        out += d.flush()
    except zlib.error as exc:
        raise ProtocolError(f"bad {enc} body: {exc}") from None
    if len(out) > limit:
        raise TooLarge(f"request body is over the server's {limit}-byte limit once decompressed")
    if not d.eof:
        raise ProtocolError(f"bad {enc} body: truncated")
    return out


def load_json(data: bytes, end: int | None = None) -> Any:
    """`data[:end]` as JSON, counted (check_json_values) before orjson builds anything, and depth-checked."""
    end = len(data) if end is None else end
    check_json_values(data, end)
    try:
        value = orjson.loads(memoryview(data)[:end] if end < len(data) else data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {str(exc).splitlines()[0]}") from None
    _check_depth(value)
    return value


def check_json_values(data: bytes, end: int) -> None:
    """Refuse JSON holding more arrays, objects and strings than JSON_BYTES_PER_VALUE allows, from a count of
    their opening bytes (a C-speed scan; quotes inside strings only make the count larger): a small gzip body of
    empty arrays would otherwise claim gigabytes while it is parsed."""
    allowed = JSON_FREE_VALUES + end // JSON_BYTES_PER_VALUE
    if end <= allowed:
        return  # too short to hold more, whatever it says
    values = data.count(b"[", 0, end) + data.count(b"{", 0, end) + data.count(b'"', 0, end) // 2
    if values > allowed:
        raise ProtocolError(f"JSON of {end} bytes holds {values} arrays, objects and strings; a request that size "
                            f"holds at most {allowed} (put tensor data in flat arrays or binary)")


def _check_depth(value: Any) -> None:
    """Level by level (no recursion, and a level is a list of references, not of tuples): containers deeper
    than MAX_JSON_DEPTH are refused."""
    level, depth = [value], 1
    while level:
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        inner: list = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list) and item and isinstance(item[0], (dict, list)):
                # Numeric data arrays are wide, not deep: only look inside lists that hold containers.
                inner.extend(v for v in item if isinstance(v, (dict, list)))
        level, depth = inner, depth + 1


def split_http_body(body: bytes, header_length: str | None) -> tuple[Any, memoryview | None, bool]:
    """-> (JSON header or None for the raw form, binary part, raw?). `header_length` is
    Inference-Header-Content-Length: absent: all JSON; 0: the body is the one input as it is."""
    if header_length is None:
        return load_json(body), None, False
    text = header_length.strip()
    if not text.isdigit() or len(text) > 20:
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:40]!r}")
    n = int(text)
    if n > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
    view = memoryview(body)
    if n == 0:
        return None, view, True
    return load_json(body, n), view[n:], False


# ---- requests -------------------------------------------------------------------------------------

def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _str(value: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string")
    if len(value) > max_len:
        raise ProtocolError(f"{what} is longer than {max_len} characters")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    params = _obj(value, what)
    if len(params) > 64:
        raise ProtocolError(f"{what} has more than 64 entries")
    for k, v in params.items():
        if not isinstance(v, (bool, int, float, str)):
            raise ProtocolError(f"{what}[{k!r}] must be a bool, number or string")
    return params


def check_shape(shape: Any, what: str, limit_elements: int) -> list[int]:
    """A list of at most MAX_DIMS non-negative integers whose product (computed exactly) is at most
    `limit_elements`."""
    if not isinstance(shape, (list, tuple)):
        raise ProtocolError(f"{what}: shape must be a list of integers")
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"{what}: shape has {len(shape)} dimensions (at most {MAX_DIMS})")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise ProtocolError(f"{what}: shape must be a list of integers, got {str(d)[:20]!r}")
        if d < 0:
            raise ProtocolError(f"{what}: negative dimension {d} in shape {list(shape)}")
        dims.append(d)
    if math.prod(dims) > limit_elements:
        raise TooLarge(f"{what}: shape {dims} holds more elements than the request size limit allows")
    return dims


def parse_http_request(body: bytes, header_length: str | None, limit: int, input_name: str) -> InferRequest:
    """An HTTP infer body (JSON, JSON + binary tensors, or the raw form) -> InferRequest."""
    header, binary, raw = split_http_body(body, header_length)
    if raw:
        assert binary is not None
        data = bytes(binary)
        return InferRequest(None, [InferInput(input_name, "BYTES", [1], [data])], None, raw=True)
    header = _obj(header, "request")
    rid = header.get("id")
    if rid is not None:
        rid = _str(rid, "id")
    params = _parameters(header.get("parameters"), "parameters")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameter 'binary_data_output' must be a bool")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    if len(raw_inputs) > 16:
        raise ProtocolError(f"{len(raw_inputs)} inputs; the model has one")
    offset = 0
    binary_len = len(binary) if binary is not None else 0
    inputs = []
    for i, item in enumerate(raw_inputs):
        item = _obj(item, f"inputs[{i}]")
        name = _str(item.get("name"), f"inputs[{i}].name")
        datatype = _str(item.get("datatype"), f"input {name!r}: datatype", 16)
        shape = check_shape(item.get("shape"), f"input {name!r}", limit)
        iparams = _parameters(item.get("parameters"), f"input {name!r}: parameters")
        size = iparams.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise ProtocolError(f"input {name!r} has both 'data' and binary_data_size")
            if offset + size > binary_len:
                raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                                    f"({binary_len - offset} binary bytes left)")
            assert binary is not None
            chunk = binary[offset:offset + size]
            offset += size
            inputs.append(InferInput(name, datatype, shape, from_binary(chunk, datatype, shape, name), iparams))
        else:
            if "data" not in item:
                raise ProtocolError(f"input {name!r} has neither 'data' nor binary_data_size")
            inputs.append(InferInput(name, datatype, shape, from_json(item["data"], datatype, shape, name), iparams))
    if offset != binary_len:
        raise ProtocolError(f"{binary_len - offset} bytes after the last binary input; "
                            f"{HEADER_LENGTH} or binary_data_size is wrong")
    outputs = None
    if "outputs" in header:
        raw_outputs = header["outputs"]
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for i, item in enumerate(raw_outputs[:65]):
            item = _obj(item, f"outputs[{i}]")
            name = _str(item.get("name"), f"outputs[{i}].name")
            oparams = _parameters(item.get("parameters"), f"output {name!r}: parameters")
            outputs.append(requested_output(name, oparams.get("binary_data"), oparams.get("classification")))
        check_outputs(outputs, len(raw_outputs))
        outputs = outputs or None  # none named is every output, as in Triton (and as gRPC cannot tell apart)
    return InferRequest(rid, inputs, outputs, params, binary_output)


def requested_output(name: str, binary: Any, classification: Any) -> RequestedOutput:
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"output {name!r}: binary_data must be a bool")
    count = 0
    if classification is not None:
        if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
            raise ProtocolError(f"output {name!r}: classification must be a non-negative integer")
        count = classification
    return RequestedOutput(name, binary, count)


def check_outputs(outputs: list[RequestedOutput], total: int) -> None:
    if total > 64:
        raise ProtocolError(f"{total} requested outputs; the model has one ('prob')")
    names = [o.name for o in outputs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ProtocolError(f"output {sorted(dup)[0]!r} requested more than once")


def from_binary(chunk: memoryview, datatype: str, shape: list[int], name: str) -> np.ndarray | list[bytes]:
    count = math.prod(shape)
    if datatype == "BYTES":
        return unpack_bytes(chunk, count, name)
    if datatype != "FP32":
        raise ProtocolError(f"input {name!r}: datatype {datatype} is not served; send FP32 or BYTES")
    if len(chunk) != 4 * count:
        raise ProtocolError(f"input {name!r}: {len(chunk)} bytes of data for shape {shape} "
                            f"(FP32 needs {4 * count})")
    return np.frombuffer(chunk, dtype="<f4").reshape(shape)


def unpack_bytes(chunk: memoryview | bytes, count: int, name: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length and its bytes."""
    out, pos, n = [], 0, len(chunk)
    while pos < n:
        if len(out) >= count:
            raise ProtocolError(f"input {name!r}: more BYTES elements than its shape holds ({count})")
        if pos + 4 > n:
            raise ProtocolError(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + length > n:
            raise ProtocolError(f"input {name!r}: BYTES element of {length} bytes runs past its data")
        out.append(bytes(chunk[pos:pos + length]))
        pos += length
    if len(out) != count:
        raise ProtocolError(f"input {name!r}: {len(out)} BYTES elements for a shape holding {count}")
    return out


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flatten(data: Any, name: str, limit: int) -> list:
    """Nested JSON lists -> one flat list (row-major), iteratively."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_DIMS:
                    raise ProtocolError(f"input {name!r}: data nested deeper than {MAX_DIMS} levels")
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > limit:
                raise ProtocolError(f"input {name!r}: more data elements than its shape holds")
        else:
            stack.pop()
    return out


def from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray | list[bytes]:
    count = math.prod(shape)
    flat = _flatten(data, name, count)
    if len(flat) != count:
        raise ProtocolError(f"input {name!r}: {len(flat)} data elements for shape {shape} ({count} expected)")
    if datatype == "BYTES":
        return [_image_bytes(v, name, i) for i, v in enumerate(flat)]
    if datatype != "FP32":
        raise ProtocolError(f"input {name!r}: datatype {datatype} is not served; send FP32 or BYTES")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in flat):
        raise ProtocolError(f"input {name!r}: FP32 data must be numbers")
    return np.asarray(flat, dtype=np.float32).reshape(shape)


def _image_bytes(value: Any, name: str, i: int) -> bytes:
    """A BYTES element in JSON: {"b64": "..."} (OVMS, KServe) or a base64 string (an encoded image is
    never valid UTF-8 text, so a string element is read as base64)."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if not isinstance(value, str):
        raise ProtocolError(f"input {name!r}[{i}]: a BYTES element in JSON must be a base64 string or "
                            '{"b64": "..."}')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"input {name!r}[{i}]: not valid base64") from None


# ---- responses ------------------------------------------------------------------------------------

@dataclass
class OutputTensor:
    name: str
    datatype: str            # FP32 or BYTES
    shape: list[int]
    array: np.ndarray | None = None       # FP32
    strings: list[bytes] | None = None    # BYTES (classification)
    binary: bool = False

    def raw(self) -> bytes:
        if self.array is not None:
            return np.ascontiguousarray(self.array, dtype="<f4").tobytes()
        return pack_bytes(self.strings or [])


def classification(probs: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    """Triton's classification extension: per row, the k best as "score:index:label", best first."""
    return [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, idx in zip(probs, ranked(probs, k)) for i in idx]


def build_outputs(request: InferRequest, probs: np.ndarray, labels: list[str], output_name: str) -> list[OutputTensor]:
    wanted = request.outputs if request.outputs is not None else [RequestedOutput(output_name)]
    out = []
    for o in wanted:
        binary = request.binary_output if o.binary is None else o.binary
        if o.class_count:
            k = min(o.class_count, probs.shape[1])
            out.append(OutputTensor(o.name, "BYTES", [probs.shape[0], k], strings=classification(probs, k, labels),
                                    binary=binary))
        else:
            out.append(OutputTensor(o.name, "FP32", list(probs.shape), array=probs, binary=binary))
    return out


def http_response(model: str, version: str, request: InferRequest, outputs: list[OutputTensor]
                  ) -> tuple[bytes, int | None]:
    """-> (body, Inference-Header-Content-Length or None when the body is all JSON)."""
    items, blobs = [], []
    for t in outputs:
        item: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.binary:
            blob = t.raw()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t.array is not None:
            item["data"] = t.array.reshape(-1)  # orjson serialises numpy arrays natively
        else:
            item["data"] = [s.decode() for s in t.strings or []]
        items.append(item)
    header: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        header["id"] = request.id
    header["outputs"] = items
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
