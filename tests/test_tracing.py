"""OpenTelemetry traces: the spans the worker writes after a batch, checked with the SDK's in-memory exporter,
and the whole service exporting over OTLP/HTTP to a receiver on 127.0.0.1: one trace per request, across the
API, the model worker and the decoders, carried through the task message."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from benchmarks.otlp_receiver import OTLPReceiver
from imageclf.core import tracing
from imageclf.launch.redis_server import free_port
from imageclf.launch.service_process import ServiceProcess
from imageclf.launch.supervise import wait_until
from tests.user_models import colour_classifier, coloured_images, write_model

IMAGES = coloured_images(2, seed=33)


# -- the spans themselves, in this process (in-memory exporter) --------------------------------------------------

@pytest.fixture(scope="module")
def memory() -> Iterator[object]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.start("imageclf-test", exporter=exporter)
    yield exporter
    tracing._enabled = False  # the provider stays (the SDK sets one per process); nothing else traces


def request_span(name: str = "POST /predict"):
    """A request span as the API opens one, and the carrier its task message takes."""
    from opentelemetry import trace

    with trace.get_tracer("test").start_as_current_span(name) as span:
        return span.get_span_context(), tracing.carrier()


def test_a_batch_is_its_own_trace_linked_to_each_request_and_each_request_gets_its_stages(memory):
    memory.clear()
    (first, first_headers), (second, second_headers) = request_span(), request_span()
    sent = time.time()
    reached, started, ended = sent + 0.010, sent + 0.025, sent + 0.065
    tracing.record_batch([(first_headers, sent, reached), (second_headers, sent + 0.002, reached),
                          (None, sent, reached)],  # an untraced request: in the batch, no spans of its own
                         started, ended, **{"imageclf.model": "plants", "imageclf.version": 2,
                                            "imageclf.batch_size": 3})
    spans = memory.get_finished_spans()
    (batch,) = [s for s in spans if s.name == "batch"]
    assert batch.parent is None and batch.context.trace_id not in (first.trace_id, second.trace_id)
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == \
        {(first.trace_id, first.span_id), (second.trace_id, second.span_id)}
    assert batch.attributes["imageclf.batch_size"] == 3
    for request in (first, second):
        mine = {s.name: s for s in spans if s.context.trace_id == request.trace_id and s.name != "POST /predict"}
        assert set(mine) == {"queue wait", "batch wait", "inference"}
        assert all(s.parent.span_id == request.span_id for s in mine.values())
        assert mine["queue wait"].end_time <= mine["batch wait"].start_time + 1 and \
            mine["batch wait"].end_time == mine["inference"].start_time == int(started * 1e9)
        assert mine["inference"].end_time == int(ended * 1e9)
        attributes = mine["inference"].attributes
        assert (attributes["imageclf.model"], attributes["imageclf.version"], attributes["imageclf.batch_size"]) \
            == ("plants", 2, 3)


def test_an_end_before_its_start_and_a_lone_redis_command(memory):
    from opentelemetry import trace

    memory.clear()
    _, headers = request_span()
    now = time.time()
    tracing.record("result", now, now - 0.5, headers)  # the worker's clock ahead of the API's
    (result,) = [s for s in memory.get_finished_spans() if s.name == "result"]
    assert result.end_time == result.start_time
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("EVALSHA", kind=trace.SpanKind.CLIENT) as lone:
        assert not lone.is_recording()  # a health poll's command starts no trace
    with tracer.start_as_current_span("GET /result/<id>", kind=trace.SpanKind.SERVER), \
            tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as inside:
        assert inside.is_recording()


def test_off_every_helper_is_a_no_op(monkeypatch):
    monkeypatch.setattr(tracing, "_enabled", False)
    assert tracing.carrier() is None
    with tracing.span("decode") as span, tracing.within({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}):
        assert span is None
    tracing.record_batch([({"traceparent": "x"}, 0.0, 1.0)], 1.0, 2.0)  # nothing to do, nothing raised


# -- the service, exporting over OTLP/HTTP ----------------------------------------------------------------------

class Hook:
    """A webhook receiver on 127.0.0.1 that answers 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                hook.events.append(self.headers["X-Imageclf-Event"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def otlp() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    found = Hook()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module")
def svc(redis_url: str, otlp: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    repo = tmp_path_factory.mktemp("traced_repository")
    write_model(repo, "plants", 1, lambda d: colour_classifier(1).save(d / "model.keras"))
    service = ServiceProcess(env={
        "REDIS_URL": redis_url.rsplit("/", 1)[0] + "/13", "MODEL_REPOSITORY": str(repo), "MODELS": "plants",
        "API_WORKERS": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "WEBHOOK_SECRET": "s", "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "UPLOAD_DIR": str(tmp_path_factory.mktemp("traced-uploads")),
    }, log_path=tmp_path_factory.mktemp("logs") / "tracing.log").start()
    yield service
    assert service.stop() == 0, service.log_tail()


def traceparent() -> tuple[str, str, str]:
    """(header, trace id, span id) of a client's span."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def spans_of(otlp: OTLPReceiver, trace_id: str, names: set[str], timeout_s: float = 30) -> dict[str, list[dict]]:
    def found() -> bool:
        return names <= {s["name"] for s in otlp.trace(trace_id)}

    assert wait_until(found, timeout_s), sorted({s["name"] for s in otlp.trace(trace_id)})
    grouped: dict[str, list[dict]] = {}
    for span in otlp.trace(trace_id):
        grouped.setdefault(span["name"], []).append(span)
    return grouped


def test_a_prediction_is_one_trace_from_the_api_through_the_worker_and_back(svc, otlp):
    header, trace_id, client_span = traceparent()
    response = httpx.post(svc.url + "/predict", files={"image": ("a.png", IMAGES[0])},
                          headers={"traceparent": header}, timeout=60)
    assert response.status_code == 200, response.text
    spans = spans_of(otlp, trace_id, {"POST /predict", "decode", "enqueue", "queue wait", "batch wait",
                                      "inference", "result"})
    (root,) = spans["POST /predict"]
    assert root["kind"] == "SERVER" and root["parent_id"] == client_span and root["service"] == "imageclf-api"
    for name in ("decode", "enqueue", "result"):
        assert [s["parent_id"] for s in spans[name]] == [root["span_id"]] and spans[name][0]["service"] == \
            "imageclf-api"
    for name in ("queue wait", "batch wait", "inference"):
        (span,) = spans[name]
        assert span["parent_id"] == root["span_id"] and span["service"] == "imageclf-worker"
    inference = spans["inference"][0]
    answer = response.json()
    assert inference["attributes"]["imageclf.model"] == "plants"
    assert inference["attributes"]["imageclf.version"] == answer["model_version"] == 1
    assert inference["attributes"]["imageclf.batch_size"] == answer["batch_size"]
    assert inference["attributes"]["imageclf.batch_id"] == answer["batch_id"]
    # Redis commands made for the request are its spans too: the enqueue script under `enqueue`.
    enqueue = spans["enqueue"][0]
    assert any(s["kind"] == "CLIENT" and s["parent_id"] == enqueue["span_id"] for s in otlp.trace(trace_id))
    # The batch: a trace of its own, linked to this request's span.
    assert wait_until(lambda: [b for b in otlp.named("batch") if (trace_id, root["span_id"]) in b["links"]], 10)
    (batch,) = [b for b in otlp.named("batch") if (trace_id, root["span_id"]) in b["links"]]
    assert batch["trace_id"] != trace_id and batch["parent_id"] is None
    assert batch["attributes"]["imageclf.batch_id"] == answer["batch_id"]


def test_a_job_trace_runs_through_the_decoders_to_its_webhook(svc, otlp, hook):
    header, trace_id, _ = traceparent()
    files = [("images", (f"{i}.png", data)) for i, data in enumerate(IMAGES)]
    response = httpx.post(svc.url + "/jobs", files=files, data={"callback_url": f"http://127.0.0.1:{hook.port}/"},
                          headers={"traceparent": header}, timeout=60)
    assert response.status_code == 202, response.text
    spans = spans_of(otlp, trace_id, {"POST /jobs", "run/job_step", "webhook"}, timeout_s=60)
    assert hook.events == ["job.success"]
    (webhook,) = spans["webhook"]
    assert webhook["attributes"]["imageclf.event"] == "job.success"
    assert webhook["attributes"]["http.response.status_code"] == 200 and webhook["service"] == "imageclf-decoder"
    by_id = {s["span_id"]: s for s in otlp.trace(trace_id)}
    chain, span = [], webhook
    while span["parent_id"] in by_id:  # every ancestor is in the trace, up to the API's request span
        span = by_id[span["parent_id"]]
        chain.append(span["name"])
    assert chain[-1] == "POST /jobs" and "run/job_step" in chain and "run/deliver_webhook" in chain


def test_a_grpc_inference_continues_the_callers_trace(svc, otlp):
    header, trace_id, client_span = traceparent()
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([IMAGES[1]], dtype=object))
    result = grpcclient.InferenceServerClient(svc.grpc_url).infer("plants", [image], headers={"traceparent": header})
    assert result.as_numpy("probabilities").shape[0] == 1
    spans = spans_of(otlp, trace_id, {"inference.GRPCInferenceService/ModelInfer", "decode", "inference"})
    (call,) = spans["inference.GRPCInferenceService/ModelInfer"]
    assert call["kind"] == "SERVER" and call["parent_id"] == client_span
    assert spans["inference"][0]["parent_id"] == call["span_id"]


def test_probes_and_scrapes_make_no_traces(svc, otlp):
    header, trace_id, _ = traceparent()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(svc.url + path, headers={"traceparent": header}, timeout=10).status_code == 200
    httpx.post(svc.url + "/predict", files={"image": ("a.png", IMAGES[0])}, timeout=60)  # something to export
    time.sleep(1.0)
    assert otlp.trace(trace_id) == []
