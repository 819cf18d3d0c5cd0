"""The Grafana dashboard (deploy/grafana/imageclf.json): well formed, every query valid PromQL over metrics the
service really exposes, every panel the issue asks for present, and laid out on Grafana's 24-column grid.

Grafana itself does not install from the registries here, so the dashboard is not rendered; its queries are
parsed with promql-parser and checked against a live /metrics scrape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import promql_parser
import pytest

from imageclf.api.metrics import CPU, KEY_REQUESTS, LATENCY, REQUESTS
from tests.helpers import SHARED, labelled_photos

DASHBOARD = json.loads((Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "imageclf.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$route": "/predict"}


def queries() -> list[str]:
    return [target["expr"] for panel in PANELS for target in panel["targets"]]


def concrete(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_query_parses_as_promql():
    assert len(queries()) >= 15
    for expr in queries():
        promql_parser.parse(concrete(expr))  # raises on a syntax error
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (model (rate(x[5m]))")  # the parser does refuse bad PromQL


def test_every_metric_queried_is_one_the_service_exposes(service):
    """Names from a live scrape, plus the API's own labelled metrics (a counter without samples yet, such as
    per-key requests on a service without keys, is left out of a multiprocess scrape)."""
    photo = (SHARED / labelled_photos()[0]["path"]).read_bytes()
    assert httpx.post(service.url + "/predict", files={"image": ("a.jpg", photo)}, timeout=60).status_code == 200
    scraped = httpx.get(service.url + "/metrics", timeout=30).text
    families = set(re.findall(r"^# TYPE (imageclf_\w+) ", scraped, re.M))
    families |= {family.name for metric in (REQUESTS, LATENCY, CPU, KEY_REQUESTS) for family in metric.describe()}
    exposed = {name + suffix for name in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    worker_memory = r'^imageclf_worker_memory_bytes\{[^}]*role="model"[^}]*\} (\S+)'
    memory = [float(v) for v in re.findall(worker_memory, scraped, re.M)]
    assert memory and all(100 * 2**20 < m < 64 * 2**30 for m in memory), memory  # a model worker's resident memory
    used = {name for expr in queries() for name in re.findall(r"\bimageclf_\w+", expr)}
    assert used and used <= exposed, sorted(used - exposed)


def test_the_panels_cover_what_operators_watch():
    text = json.dumps(DASHBOARD)
    for metric in ("imageclf_images_classified_total", "imageclf_http_request_seconds_bucket",
                   "imageclf_batch_size_sum", "imageclf_model_busy_seconds_total", "imageclf_queue_depth",
                   "imageclf_key_requests_total", "imageclf_worker_memory_bytes"):
        assert metric in text, metric
    assert any("503|429" in expr for expr in queries())
    latency = next(p for p in PANELS if "Latency" in p["title"])
    assert {t["expr"].split(",")[0] for t in latency["targets"]} == {
        "histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"}
    assert all("model, version" in t["expr"] for t in latency["targets"])


def test_panels_sit_on_the_grid_without_overlapping_and_variables_are_defined():
    assert DASHBOARD["schemaVersion"] >= 36 and DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, panel["title"]
        cells |= area
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(DASHBOARD))) - {"__rate_interval", "__all"}
    assert used <= defined, used - defined
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["title"] and panel["targets"]
