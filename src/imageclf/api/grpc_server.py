"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on GRPC_PORT.

    python -m imageclf.api.grpc_server

Uses the service stubs generated in the `tritonclient` wheel, so Triton's gRPC clients and
perf_analyzer work unchanged. Every call runs in the Flask app's context (no HTTP request):
the same model lookup, decoding, limits, backpressure and queue as /predict and the HTTP
v2 endpoints. API keys come from the `authorization: Bearer <key>` or `x-api-key` metadata.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from flask import Flask, g
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from imageclf import settings
from imageclf.api import create_app
from imageclf.api.auth import ANONYMOUS, presented_key
from imageclf.api.errors import APIError
from imageclf.api.grpc_health import Health
from imageclf.api.inference_protocol import (
    IMAGE,
    INPUT_PARAMETERS,
    OUTPUT_PARAMETERS,
    REQUEST_PARAMETERS,
    InferAnswer,
    InferRequest,
    RequestedOutput,
    check_input,
    check_output,
    checked_parameters,
    classes_asked,
    output_tensors,
    pixels_from_bytes,
    pixels_from_values,
    split_bytes,
)
from imageclf.api.keyring import KeyRing, Limits
from imageclf.api.models import Route
from imageclf.api.quotas import charge_request
from imageclf.api.v2 import model_config, model_metadata, model_ready, server_metadata, server_ready
from imageclf.api.v2_inference import run, served_input
from imageclf.core import tracing

logger = logging.getLogger("imageclf.api.grpc")

#: HTTP statuses of APIError as gRPC status codes.
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.FAILED_PRECONDITION,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_TYPES = {"TYPE_STRING": model_config_pb2.TYPE_STRING, "TYPE_UINT8": model_config_pb2.TYPE_UINT8,
          "TYPE_FP32": model_config_pb2.TYPE_FP32}

T = TypeVar("T")


def _parameters(parameters: Any) -> dict[str, Any]:
    """The Python values of a map of InferParameters (bool, int or str)."""
    values = {}
    for name, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        values[name] = getattr(value, kind) if kind else None
    return values


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's calls, each answered in the Flask app's context."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.keyring: KeyRing = app.extensions["keyring"]

    def _call(self, context: grpc.ServicerContext, body: Callable[[], T], open_call: bool = False) -> T:
        with self.app.app_context():
            try:
                g.owner, g.limits = (ANONYMOUS, Limits()) if open_call else self._owner(context)
                return body()
            except APIError as exc:
                if "Retry-After" in exc.headers:
                    context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
                context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
            except Exception:
                logger.exception("unhandled error in a gRPC call")
                context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
        raise AssertionError("abort raises")  # pragma: no cover

    def _owner(self, context: grpc.ServicerContext) -> tuple[str, Limits]:
        if not self.keyring.enabled:
            return ANONYMOUS, Limits()
        metadata = dict(context.invocation_metadata())
        found = self.keyring.lookup(presented_key(metadata.get("authorization", ""), metadata.get("x-api-key")))
        if found is None:
            raise APIError(401, "a valid API key is required (metadata authorization: Bearer <key>, or x-api-key)")
        return found

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (the protocol's names)
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: service_pb2.ServerReadyResponse(ready=server_ready()[0]), open_call=True)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: service_pb2.ServerMetadataResponse(**server_metadata()))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._call(context, lambda: service_pb2.ModelReadyResponse(
            ready=model_ready(request.name, request.version or None)))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body() -> Any:
            meta = model_metadata(request.name, request.version or None)
            tensor = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])
        return self._call(context, body)

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body() -> Any:
            config = model_config(request.name, request.version or None)
            return service_pb2.ModelConfigResponse(config=model_config_pb2.ModelConfig(
                name=config["name"], platform=config["platform"], max_batch_size=config["max_batch_size"],
                input=[model_config_pb2.ModelInput(name=t["name"], data_type=_TYPES[t["data_type"]], dims=t["dims"],
                                                   optional=t["optional"]) for t in config["input"]],
                output=[model_config_pb2.ModelOutput(name=t["name"], data_type=_TYPES[t["data_type"]], dims=t["dims"])
                        for t in config["output"]]))
        return self._call(context, body)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def body() -> Any:
            size = served_input(request.model_name, request.model_version or None)
            parsed = _parse_infer(request, size)
            charge_request(parsed.count)
            return _encode_infer(parsed, run(parsed, size, context.time_remaining(), route="grpc"))
        with tracing.served("inference.GRPCInferenceService/ModelInfer", dict(context.invocation_metadata())):
            return self._call(context, body)


def _parse_infer(request: service_pb2.ModelInferRequest, size: Route) -> InferRequest:
    """An InferRequest from a ModelInferRequest (raw_input_contents or typed contents) for the model's `size`."""
    parsed = InferRequest(request.model_name, request.model_version or None, id=request.id)
    checked_parameters(_parameters(request.parameters), REQUEST_PARAMETERS, "the request")
    if len(request.inputs) != 1:
        raise APIError(400, "send exactly one input: 'image' (encoded files) or 'pixels' (resized RGB)")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise APIError(400, "raw_input_contents must hold one entry per input")
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        check_input(tensor.name, tensor.datatype, shape, (size.height, size.width))
        checked_parameters(_parameters(tensor.parameters), INPUT_PARAMETERS, f"input {tensor.name!r}")
        raw = request.raw_input_contents[index] if request.raw_input_contents else None
        if tensor.name == IMAGE:
            parsed.images = split_bytes(raw, shape[0]) if raw is not None else list(tensor.contents.bytes_contents)
            if len(parsed.images) != shape[0]:
                raise APIError(400, f"input 'image' has {len(parsed.images)} elements; its shape says {shape[0]}")
        else:
            parsed.pixels = pixels_from_bytes(raw, shape) if raw is not None else \
                pixels_from_values(list(tensor.contents.uint_contents), shape)
    for spec in request.outputs:
        where = f"output {spec.name[:40]!r}"
        params = checked_parameters(_parameters(spec.parameters), OUTPUT_PARAMETERS, where)
        output = RequestedOutput(spec.name, True, classes_asked(params, where))
        check_output(output)
        parsed.outputs.append(output)
    return parsed


def _encode_infer(request: InferRequest, answer: InferAnswer) -> service_pb2.ModelInferResponse:
    """Every output as raw_output_contents (what Triton's gRPC clients read)."""
    response = service_pb2.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
    for tensor in output_tensors(request, answer):
        response.outputs.append(service_pb2.ModelInferResponse.InferOutputTensor(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape))
        response.raw_output_contents.append(tensor.raw())
    return response


def serve(app: Flask, address: str) -> tuple[grpc.Server, Health]:
    """Start the gRPC server on `address` (host:port) with API_THREADS threads, and its health service."""
    limit = int(settings.MAX_UPLOAD_MB * 2**20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.API_THREADS, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app), server)
    checks = Health(app)
    checks.add_to(server)
    if not server.add_insecure_port(address):
        raise SystemExit(f"cannot listen on {address} (GRPC_PORT)")
    server.start()
    return server, checks


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app()
    address = f"{settings.HOST}:{settings.GRPC_PORT}"
    server, checks = serve(app, address)
    logger.info("Open Inference Protocol (gRPC) and grpc.health.v1.Health on %s", address)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    checks.stop()
    server.stop(grace=10).wait()


if __name__ == "__main__":
    main()
