"""The gRPC side: `inference.GRPCInferenceService` (the Open Inference Protocol's service name, which clients
call) implemented with grpc.aio over effnet's own message classes (package effnet.oip, proto/effnet_oip.proto),
so that tritonclient's or kserve's generated `inference` package can be imported in the same process.

Outputs go in raw_output_contents when the request used raw_input_contents (tritonclient reads only those).
"""
from __future__ import annotations

import asyncio
import math
from typing import Any

import grpc
import numpy as np

from ..contract import INPUT_NAME as INPUT
from ..contract import OUTPUT_NAME as OUTPUT
from ..errors import EffnetError
from .codec import InferInput, InferRequest, check_outputs, check_shape, requested_output, unpack_bytes
from .errors import ProtocolError, ServeError
from .model import VERSION, ServedModel
from .proto import effnet_oip_pb2 as pb
from .state import ServerState

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = {"ServerLive", "ServerReady", "ModelReady"}  # health: no token


def _param_value(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _params(m) -> dict[str, Any]:
    if len(m) > 64:
        raise ProtocolError("more than 64 parameters")
    return {k: _param_value(v) for k, v in m.items()}


def parse_grpc_request(req: pb.ModelInferRequest, limit: int) -> InferRequest:
    raw = len(req.raw_input_contents) > 0
    if raw and len(req.raw_input_contents) != len(req.inputs):
        raise ProtocolError(f"{len(req.raw_input_contents)} raw_input_contents for {len(req.inputs)} inputs")
    for t in req.inputs:
        if raw and t.HasField("contents"):  # which of the two is the input? Triton refuses the same way
            raise ProtocolError(f"input {t.name!r}: 'contents' must not be given when the request uses "
                                "raw_input_contents")
    if len(req.inputs) > 16:
        raise ProtocolError(f"{len(req.inputs)} inputs; the model has one")
    inputs = []
    for i, t in enumerate(req.inputs):
        shape = check_shape(list(t.shape), f"input {t.name!r}", limit)
        count = math.prod(shape)
        if t.datatype not in ("FP32", "BYTES"):
            raise ProtocolError(f"input {t.name!r}: datatype {t.datatype} is not served; send FP32 or BYTES")
        if raw:
            chunk = memoryview(req.raw_input_contents[i])
            if t.datatype == "BYTES":
                data: Any = unpack_bytes(chunk, count, t.name)
            else:
                if len(chunk) != 4 * count:
                    raise ProtocolError(f"input {t.name!r}: {len(chunk)} bytes for shape {shape} "
                                        f"(FP32 needs {4 * count})")
                data = np.frombuffer(chunk, "<f4").reshape(shape)
        elif t.datatype == "BYTES":
            data = list(t.contents.bytes_contents)
            if len(data) != count:
                raise ProtocolError(f"input {t.name!r}: {len(data)} bytes_contents for shape {shape}")
        else:
            values = t.contents.fp32_contents
            if len(values) != count:
                raise ProtocolError(f"input {t.name!r}: {len(values)} fp32_contents for shape {shape}")
            data = np.asarray(values, np.float32).reshape(shape)
        inputs.append(InferInput(t.name, t.datatype, shape, data, _params(t.parameters)))
    outputs = None
    if len(req.outputs):
        outputs = [requested_output(o.name, None, _params(o.parameters).get("classification"))
                   for o in list(req.outputs)[:65]]
        check_outputs(outputs, len(req.outputs))
    params = _params(req.parameters)
    return InferRequest(req.id or None, inputs, outputs, params, raw=raw)


def infer_response(m: ServedModel, request: InferRequest, outputs) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=m.name, model_version=VERSION, id=request.id or "")
    for t in outputs:
        out = resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if request.raw:
            resp.raw_output_contents.append(t.raw())
        elif t.array is not None:
            out.contents.fp32_contents.extend(t.array.reshape(-1).tolist())
        else:
            out.contents.bytes_contents.extend(t.strings or [])
    return resp


class InferenceService:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _guard(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if self.state.token is None or method in OPEN_METHODS:
            return
        auth = dict(context.invocation_metadata() or ()).get("authorization")
        if not self.state.authorized(auth):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token: send metadata "
                                                                 "'authorization: Bearer <token>'")

    def _model(self, name: str, version: str) -> ServedModel:
        return self.state.model(name, version)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request, context):
        ready = self.state.ready and request.name in self.state.models and request.version in ("", VERSION)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        await self._guard("ServerMetadata", context)
        md = self.state.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

    async def ModelMetadata(self, request, context):
        await self._guard("ModelMetadata", context)
        m = await self._call(context, self._model, request.name, request.version)
        md = m.metadata()
        resp = pb.ModelMetadataResponse(name=md["name"], versions=md["versions"], platform=md["platform"])
        for t in md["inputs"]:
            resp.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for t in md["outputs"]:
            resp.outputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def ModelConfig(self, request, context):
        await self._guard("ModelConfig", context)
        m = await self._call(context, self._model, request.name, request.version)
        c = m.config()
        db = c["dynamic_batching"]
        qp = db["default_queue_policy"]
        config = pb.ModelConfig(
            name=c["name"], platform=c["platform"], backend=c["backend"], max_batch_size=c["max_batch_size"],
            input=[pb.ModelInput(name=INPUT, data_type=pb.TYPE_FP32, format=pb.ModelInput.FORMAT_NCHW,
                                 dims=c["input"][0]["dims"])],
            output=[pb.ModelOutput(name=OUTPUT, data_type=pb.TYPE_FP32, dims=c["output"][0]["dims"])],
            dynamic_batching=pb.ModelDynamicBatching(
                preferred_batch_size=db["preferred_batch_size"],
                max_queue_delay_microseconds=db["max_queue_delay_microseconds"],
                default_queue_policy=pb.ModelQueuePolicy(
                    default_timeout_microseconds=qp["default_timeout_microseconds"],
                    allow_timeout_override=True, max_queue_size=qp["max_queue_size"])))
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        await self._guard("ModelStatistics", context)
        if request.name:
            models = [await self._call(context, self._model, request.name, request.version)]
        else:
            models = list(self.state.models.values())
        resp = pb.ModelStatisticsResponse()
        for m in models:
            s = m.statistics()
            stats = resp.model_stats.add(name=s["name"], version=s["version"], last_inference=s["last_inference"],
                                         inference_count=s["inference_count"], execution_count=s["execution_count"])
            for key, value in s["inference_stats"].items():
                getattr(stats.inference_stats, key).CopyFrom(pb.StatisticDuration(**value))
            for b in s["batch_stats"]:
                stats.batch_stats.add(batch_size=b["batch_size"],
                                      compute_infer=pb.StatisticDuration(**b["compute_infer"]))
        return resp

    async def ModelInfer(self, request, context):
        await self._guard("ModelInfer", context)
        # A client that cancels (or whose deadline passes) cancels this coroutine: the job is dropped.
        return await self._call(context, self._infer, request, context.time_remaining())

    async def ModelStreamInfer(self, requests, context):
        """Triton's streaming call (tritonclient's start_stream / async_stream_infer): each request of the
        stream is answered as soon as it is done, possibly out of order (the response carries its id); a
        request that fails answers `error_message` and the stream goes on. Requests share the model's queue
        bound and deadlines with every other call."""
        await self._guard("ModelStreamInfer", context)
        answers: asyncio.Queue = asyncio.Queue()

        async def answer(request):
            try:
                response = await self._infer(request, context.time_remaining())
                await answers.put(pb.ModelStreamInferResponse(infer_response=response))
            except ServeError as exc:
                failed = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                               id=request.id)
                await answers.put(pb.ModelStreamInferResponse(error_message=str(exc), infer_response=failed))

        async def read():
            running: set[asyncio.Task] = set()
            try:
                async for request in requests:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(running)
            finally:
                for task in running:
                    task.cancel()  # the client went away: its queued requests are dropped
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            reader.cancel()

    async def _infer(self, request: pb.ModelInferRequest, time_remaining: float | None) -> pb.ModelInferResponse:
        """One request: parsed, decoded, batched, answered; raises what `_call` maps to status codes."""
        m = self._model(request.model_name, request.model_version)
        try:
            parsed = parse_grpc_request(request, self.state.max_request_bytes)
            deadline = m.deadline(parsed.timeout_us(), time_remaining)
        except ProtocolError as exc:
            m.failed(exc)
            raise
        outputs = await m.infer(parsed, deadline)
        return infer_response(m, parsed, outputs)

    async def _call(self, context, fn, *args):
        try:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        except ServeError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc))


_METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
}


def create_server(state: ServerState, host: str, port: int, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the service registered under its standard name; returns (server, bound port).
    A request message over `max_message_bytes` is refused (RESOURCE_EXHAUSTED) as HTTP refuses such a body."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max(max_message_bytes, 4 << 20)),
                                      ("grpc.so_reuseport", 0)])
    service = InferenceService(state)
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(service, name),
                                                          request_deserializer=req.FromString,
                                                          response_serializer=resp.SerializeToString)
                for name, (req, resp) in _METHODS.items()}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        service.ModelStreamInfer, request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelStreamInferResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError:  # "Failed to bind"
        bound = 0
    if bound == 0:
        raise EffnetError(f"cannot listen for gRPC on {where}; check host= and grpc_port= (0: any free port)",
                          params=("host", "grpc_port"))
    return server, bound
