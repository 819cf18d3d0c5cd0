"""MkDocs hook: the reference pages, generated at every build from where each thing is declared once.

- reference/configuration.md from imageclf/settings.py (each variable's default and `#:` comment;
  imageclf/settings_reference.py reads them);
- reference/metrics.md from the metrics the API registers and those it reads from Redis (imageclf/api/metrics.py);
- reference/http.md from the OpenAPI document the API serves at /openapi.json (imageclf/api/openapi.py).
"""

from __future__ import annotations

from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

#: Variables read by the libraries or the launchers rather than imageclf/settings.py.
_OTHER_VARIABLES = [
    ("OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, "
     "OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_*, OTEL_PYTHON_FLASK_EXCLUDED_URLS",
     "OpenTelemetry's own (the SDK reads them) once OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on"),
    ("CUDA_VISIBLE_DEVICES", "the GPUs `imageclf worker` starts one model worker each for; empty: CPU only"),
    ("PROMETHEUS_MULTIPROC_DIR", "prometheus_client's folder for adding up the metrics of gunicorn's processes "
                                 "(set by `imageclf run` and the compose file; empty it before starting the API)"),
    ("IMAGECLF_URL, IMAGECLF_API_KEY", "the client's and CLI's service (default http://127.0.0.1:5000) and key"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration() -> str:
    from imageclf.settings_reference import settings_reference

    lines = ["# Configuration", "",
             "Every setting is an environment variable, read once at start by `imageclf/settings.py`. This page is "
             "generated from it (each variable's default and its comment there), as is `imageclf run --help`.", "",
             "| variable | default | meaning |", "|---|---|---|"]
    for setting in settings_reference():
        default = f"`{setting.default}`" if setting.default else "*(empty)*"
        lines.append(f"| `{setting.name}` | {_cell(default)} | {_cell(setting.description)} |")
    lines += ["", "## Read elsewhere", "", "| variable | meaning |", "|---|---|"]
    lines += [f"| `{names}` | {_cell(meaning)} |" for names, meaning in _OTHER_VARIABLES]
    return "\n".join(lines) + "\n"


def metrics() -> str:
    from imageclf.api.metrics import PROCESS_METRICS, SERVICE_METRICS

    lines = ["# Metrics", "", "`GET /metrics` (Prometheus' text format, no API key needed). Generated from "
             "`imageclf/api/metrics.py`: the API's own metrics (added up over its processes), then those read from "
             "Redis at each scrape, where the workers keep their figures, so any API process shows every worker's.", "",
             "| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in PROCESS_METRICS:
        (family,) = metric.describe()
        labels = ", ".join(getattr(metric, "_labelnames", ()))
        lines.append(f"| `{_exposed(family.name, family.type)}` | {family.type} | {labels} | "
                     f"{_cell(family.documentation)} |")
    for name, (kind, documentation, labels) in SERVICE_METRICS.items():
        type_ = kind.__name__.removesuffix("MetricFamily").lower()
        lines.append(f"| `{_exposed(name, type_)}` | {type_} | {', '.join(labels)} | {_cell(documentation)} |")
    return "\n".join(lines) + "\n"


def _exposed(name: str, type_: str) -> str:
    """The name as scraped: counters end in _total, histograms come as _bucket, _sum and _count."""
    if type_ == "counter":
        return f"{name}_total"
    if type_ == "histogram":
        return f"{name}_bucket, _sum, _count"
    return name


def http() -> str:
    from imageclf.api.openapi import SPEC

    lines = ["# HTTP reference", "", "Rendered from the OpenAPI document the API serves (`GET /openapi.json`; "
             "`GET /docs` shows the same on the running service). The Open Inference Protocol's `/v2` routes "
             "follow that protocol's own document: see [the Open Inference Protocol](../open-inference.md).", ""]
    for path, operations in SPEC["paths"].items():
        for method, operation in operations.items():
            lines += [f"## `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            parameters = operation.get("parameters") or []
            if parameters:
                lines += ["| parameter | in | type | meaning |", "|---|---|---|---|"]
                for parameter in parameters:
                    lines.append(f"| `{parameter['name']}` | {parameter['in']} | {_type(parameter.get('schema'))} | "
                                 f"{_cell(parameter.get('description', ''))} |")
                lines.append("")
            for kind, body in (operation.get("requestBody") or {}).get("content", {}).items():
                fields = ", ".join(f"`{name}`" for name in (body.get("schema") or {}).get("properties", {}))
                lines += [f"Body: `{kind}`" + (f" with {fields}" if fields else ""), ""]
            lines += ["| status | meaning |", "|---|---|"]
            lines += [f"| {code} | {_cell(answer.get('description', ''))} |"
                      for code, answer in operation.get("responses", {}).items()]
            lines.append("")
    return "\n".join(lines) + "\n"


def _type(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    text = schema.get("type", "")
    if "minimum" in schema or "maximum" in schema:
        text += f" {schema.get('minimum', '')}–{schema.get('maximum', '')}"
    if "enum" in schema:
        text += " " + "/".join(map(str, schema["enum"]))
    return text.strip()


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path, build in (("reference/configuration.md", configuration), ("reference/metrics.md", metrics),
                        ("reference/http.md", http)):
        files.append(File.generated(config, path, content=build()))
    return files
