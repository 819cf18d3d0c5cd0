"""OpenTelemetry traces: one per request, from the API's decode through the queue, the batch and the model to
the answer (and its webhook), the trace's context carried in the task message.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (settings.TRACING); the SDK
reads the other OTEL_* variables itself (OTEL_EXPORTER_OTLP_PROTOCOL, _HEADERS, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER, OTEL_BSP_*...). Off, nothing of OpenTelemetry is imported and every helper here returns
at once.

The spans of one /predict, all in its trace, each a child of the API's request span:

    POST /predict     the API (Flask instrumentation); its Redis commands are children (Redis instrumentation)
    decode            the API: the upload to pixels
    enqueue           the API: the pixels and the task message into Redis
    queue wait        sent by the API → reached the model worker        } written by the model worker after
    batch wait        reached the worker → its batch's model call        } the batch ran, from the times the
    inference         the model call (model, version, batch_size, ...)   } request carries
    result            the API: the answer done → read by the API
    webhook           a decoder: one delivery attempt, under Celery's run/deliver_webhook span

Each batch is a trace of its own, `batch`, linked to the request span of every request in it. A job's trace is
POST /jobs and its steps on the decoders (Celery instrumentation), then its webhook; a job's images are not
traced one by one (100,000 images would be 300,000 spans in one trace).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from imageclf import settings

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.sdk.trace.export import SpanExporter
    from redis import Redis

_enabled = False
_OFF: AbstractContextManager[None] = nullcontext()
#: Routes a probe or a scraper calls every few seconds: no trace each time (OTEL_PYTHON_FLASK_EXCLUDED_URLS
#: replaces this list).
UNTRACED_ROUTES = "healthz,readyz,metrics"


def enabled() -> bool:
    return _enabled


def start_if_configured(service: str) -> None:
    """start(service) when settings.TRACING says traces are wanted."""
    if settings.TRACING:
        start(service)


def start(service: str, exporter: SpanExporter | None = None) -> None:
    """Set this process's tracer provider (call it after a fork: the exporter's thread does not survive one).

    `exporter` replaces the OTLP exporter (tests pass the SDK's in-memory one) and turns tracing on even
    without OTEL_EXPORTER_OTLP_ENDPOINT. The service name is OTEL_SERVICE_NAME, else `service`.
    """
    global _enabled
    if _enabled:  # one provider per process: the SDK would refuse a second one
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service})
    provider = TracerProvider(resource=resource, sampler=_sampler())
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True


def stop() -> None:
    """Export what is still buffered. A Celery pool process ends with os._exit, past the SDK's atexit hook."""
    if not _enabled:
        return
    from opentelemetry import trace

    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        shutdown()


def _otlp_exporter() -> SpanExporter:
    """OTLP over HTTP (protobuf), or over gRPC when OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL says `grpc`."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _sampler() -> Any:
    """Parent-based: a request continues its caller's decision. A new trace starts for every request (or a
    share of them: OTEL_TRACES_SAMPLER=parentbased_traceidratio with OTEL_TRACES_SAMPLER_ARG), but never for a
    Redis command made outside any request (a health poll, a key file reload). Any other OTEL_TRACES_SAMPLER
    is the SDK's own."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in ("parentbased_always_on", "parentbased_traceidratio"):
        return None  # the SDK reads it
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import SpanKind

    if name == "parentbased_traceidratio":
        try:
            roots: Sampler = TraceIdRatioBased(min(1.0, max(0.0, float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", 1)))))
        except ValueError:
            raise SystemExit("OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1") from None
    else:
        roots = ALWAYS_ON

    class NoLoneCommands(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            if kind == SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return roots.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoLoneCommands({roots.get_description()})"

    return ParentBased(root=NoLoneCommands())


def instrument_api(app: Flask, client: Redis) -> None:
    """Flask's request spans, and the Redis commands `client` makes within them."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    excluded = None if os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS") else UNTRACED_ROUTES
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded)
    RedisInstrumentor().instrument_client(client)


def instrument_celery() -> None:
    """Celery's publish and run spans (decoders: job steps and webhook attempts), context in the headers."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one around a block (a no-op when tracing is off)."""
    if not _enabled:
        return _OFF
    from opentelemetry import trace

    return trace.get_tracer(__name__).start_as_current_span(name, attributes=attributes)


def served(name: str, headers: dict[str, str]) -> AbstractContextManager[Any]:
    """A server span around a call no instrumentation covers (gRPC), in the caller's trace when `headers`
    (its metadata) carry one."""
    if not _enabled:
        return _OFF
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    return trace.get_tracer(__name__).start_as_current_span(name, context=extract(headers),
                                                            kind=trace.SpanKind.SERVER)


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C trace headers for a message, or None (off, or no span)."""
    if not _enabled:
        return None
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


@contextmanager
def _attached(headers: dict[str, str]) -> Iterator[None]:
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def within(headers: dict[str, str] | None) -> AbstractContextManager[None]:
    """Run a block as part of the trace `headers` (a carrier()) came from, e.g. to send its next task."""
    if not _enabled or not headers:
        return _OFF
    return _attached(headers)


def record(name: str, start_s: float, end_s: float, headers: dict[str, str] | None = None,
           **attributes: Any) -> None:
    """A span that already happened (epoch seconds), a child of the trace `headers` came from or else of the
    current span."""
    if not _enabled:
        return
    from opentelemetry.propagate import extract

    _record(name, start_s, end_s, extract(headers) if headers else None, attributes)


def _record(name: str, start_s: float, end_s: float, parent: Any, attributes: dict[str, Any]) -> None:
    """An end before its start (the clocks of two hosts) is moved to the start."""
    from opentelemetry import trace

    start_ns = int(start_s * 1e9)
    span_ = trace.get_tracer(__name__).start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    span_.end(max(start_ns, int(end_s * 1e9)))


def record_batch(requests: list[tuple[dict[str, str] | None, float | None, float | None]], started_s: float,
                 ended_s: float, **attributes: Any) -> None:
    """After a model call: a `batch` span (a trace of its own, linked to every request span in it) and, in each
    request's trace, `queue wait`, `batch wait` and `inference`. `requests` holds each one's (carrier, sent
    at, reached the worker at); those without a carrier (untraced or not sampled) get no spans."""
    if not _enabled:
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    parents = []  # (the request's context, its span's id, sent at, reached the worker at)
    for headers, sent, received in requests:
        ctx = extract(headers) if headers else None
        request_span = trace.get_current_span(ctx).get_span_context() if ctx is not None else None
        if request_span is not None and request_span.is_valid:
            parents.append((ctx, request_span, sent, received))
    links = [trace.Link(request_span) for _, request_span, _, _ in parents]
    trace.get_tracer(__name__).start_span("batch", context=context.Context(), start_time=int(started_s * 1e9),
                                          attributes=attributes, links=links).end(int(ended_s * 1e9))
    for ctx, _, sent, received in parents:
        if sent is not None and received is not None:
            _record("queue wait", sent, received, ctx, {})
        if received is not None:
            _record("batch wait", received, started_s, ctx, {})
        _record("inference", started_s, ended_s, ctx, attributes)
