"""The HTTP contract as OpenAPI 3.1, served at /openapi.json and rendered at /docs.

Kept in code next to the views; tests validate live responses against these schemas
(OpenAPI 3.1 schemas are JSON Schema 2020-12), so the document cannot drift silently.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template_string
from flask.typing import ResponseReturnValue

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_STATUS = {"type": "string", "enum": ["PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "REVOKED"]}
_PREDICTION = {
    "type": "object", "required": ["label", "class_id", "probability"],
    "properties": {"label": {"type": "string"}, "class_id": {"type": "integer", "minimum": 0},
                   "probability": {"type": "number", "minimum": 0, "maximum": 1}},
}
_ID = {"type": "string", "format": "uuid"}
_VERSION = {"type": ["integer", "null"], "minimum": 1,
            "description": "the model version that answered (repository models: the version folder; built-ins: 1)"}

SCHEMAS: dict[str, Any] = {
    "Feedback": {"type": "object", "required": ["label"], "properties": {
        "id": {"type": "string", "description": "the request's id (POST /predict, v2, gRPC)"},
        "job": {"type": "string"}, "item": {"oneOf": [{"type": "integer"}, {"type": "string"}],
                                           "description": "the image's index in its job, or its file name"},
        "label": {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "a class name or id"}}},
    "Error": {"type": "object", "required": ["success", "error"],
              "properties": {"success": {"const": False}, "error": {"type": "string", "minLength": 1}}},
    "Prediction": _PREDICTION,
    "PredictResult": {
        "type": "object", "required": ["success", "id", "model", "predictions", "batch_id", "batch_size", "timings"],
        "properties": {
            "success": {"const": True}, "id": _ID, "model": {"type": "string"}, "model_version": _VERSION,
            "predictions": {"type": "array", "items": _ref("Prediction"), "minItems": 1},
            "batch_id": {"type": "string"}, "batch_size": {"type": "integer", "minimum": 1},
            "deliveries": {"type": "integer", "minimum": 1},
            "timings": {"type": "object", "additionalProperties": {"type": "number"},
                        "description": "milliseconds per stage: decode, queue, batch_wait, inference, result, total"},
        },
    },
    "CachedResult": {
        "type": "object", "required": ["success", "id", "cached", "model", "predictions"],
        "description": "an answer found in the response cache (CACHE_TTL_S): no task ran for it",
        "properties": {
            "success": {"const": True}, "id": {"type": "null"}, "cached": {"const": True},
            "model": {"type": "string"}, "model_version": _VERSION,
            "predictions": {"type": "array", "items": _ref("Prediction"), "minItems": 1},
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Webhook": {
        "type": "object", "required": ["attempts"],
        "description": "the completion webhook's delivery so far (callback_url)",
        "properties": {"attempts": {"type": "integer", "minimum": 0},
                       "last_status": {"type": ["integer", "null"]}, "delivered_at": {"type": ["number", "null"]},
                       "error": {"type": "string"}},
    },
    "Accepted": {
        "type": "object", "required": ["id", "status", "result_url"],
        "properties": {"success": {"type": "boolean"}, "id": _ID, "status": _STATUS,
                       "result_url": {"type": "string"}, "kind": {"enum": ["images", "video"]},
                       "total": {"type": "integer", "minimum": 0}},
    },
    "RequestState": {
        "type": "object", "required": ["success", "id", "status"],
        "properties": {"success": {"type": "boolean"}, "id": _ID, "status": _STATUS,
                       "result": _ref("PredictResult"), "error": {"type": "string"}, "webhook": _ref("Webhook")},
    },
    "JobState": {
        "type": "object", "required": ["success", "id", "kind", "model", "status", "done", "total"],
        "properties": {
            "success": {"type": "boolean"}, "id": _ID, "kind": {"enum": ["images", "video"]}, "status": _STATUS,
            "model": {"type": "string"}, "done": {"type": "integer", "minimum": 0},
            "total": {"type": "integer", "minimum": 0},
            "error": {"type": "string"}, "webhook": _ref("Webhook"),
            "result": {"oneOf": [_ref("ImagesResult"), _ref("VideoResult")]},
        },
    },
    "ImagesResult": {
        "type": "object", "required": ["items", "succeeded", "failed"],
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object", "required": ["index", "name", "status"],
                "properties": {"index": {"type": "integer"}, "name": {"type": "string"},
                               "status": _STATUS, "error": {"type": "string"}, "model_version": _VERSION,
                               "predictions": {"type": "array", "items": _ref("Prediction")}}}},
            "succeeded": {"type": "integer"}, "failed": {"type": "integer"},
        },
    },
    "VideoResult": {
        "type": "object", "required": ["video", "frames", "failed_frames", "summary"],
        "properties": {
            "video": {"type": "object", "required": ["duration_s", "frame_rate", "width", "height"]},
            "frames": {"type": "array", "items": {
                "type": "object", "required": ["t", "frame", "predictions"],
                "properties": {"t": {"type": "number", "minimum": 0}, "frame": {"type": "integer", "minimum": 0},
                               "model_version": _VERSION,
                               "predictions": {"type": "array", "items": _ref("Prediction")}}}},
            "failed_frames": {"type": "array"},
            "decode_error": {"type": "string"},
            "summary": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["label", "class_id", "share", "frames", "segments"],
                "properties": {"label": {"type": "string"}, "class_id": {"type": "integer"},
                               "share": {"type": "number", "minimum": 0, "maximum": 1},
                               "frames": {"type": "integer"},
                               "segments": {"type": "array", "items": {
                                   "type": "object", "required": ["label", "class_id", "start", "end", "frames"]}}}}]},
        },
    },
    "Cancelled": {
        "type": "object", "required": ["success", "id", "status", "done", "total"],
        "properties": {"success": {"const": True}, "id": _ID, "status": {"const": "REVOKED"},
                       "done": {"type": "integer"}, "total": {"type": "integer"}},
    },
    "Models": {
        "type": "object", "required": ["default", "models"],
        "properties": {"default": {"type": "string"}, "models": {"type": "array", "items": {
            "type": "object", "required": ["name", "served_version", "versions", "workers"],
            "properties": {
                "name": {"type": "string"},
                "served_version": _VERSION,
                "versions": {"type": "object", "description": "per version number on disk (built-ins: 1)",
                             "additionalProperties": {
                                 "type": "object", "required": ["state"],
                                 "properties": {
                                     "state": {"enum": ["loading", "ready", "draining", "failed", "available",
                                                        "unloaded"]},
                                     "error": {"type": "string"},
                                     "share": {"type": "number", "description": "percent of the requests that "
                                               "name no version"},
                                     "rss_mb": {"type": "number", "description": "memory it took to load"},
                                     "requests": {"type": "integer"}, "mean_batch_size": {"type": ["number", "null"]},
                                     "inference_ms_per_image": {"type": ["number", "null"]},
                                     "shadow": {"type": "array", "description": "its comparisons as a shadow"}}}},
                "policy": {"type": "object", "description": "version_policy, traffic and shadow from config.json"},
                "routing": {"type": "object", "description": "the policy applied to the ready versions: default, "
                            "shares, shadow, notes (why a setting does not hold)"},
                "input_size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                               "description": "[height, width] the served version takes"},
                "resize": {"enum": ["squash", "center_crop"]},
                "labels": {"type": "integer", "description": "number of classes"},
                "preprocess": {"type": "string"},
                "error": {"type": "string", "description": "why the model cannot be served"},
                "workers": {"type": "array"}}}}},
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {"type": "object", "required": ["ready"], "properties": {
        "ready": {"type": "boolean"}, "reason": {"type": "string"},
        "failed": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "models that cannot be served, with the reason"}}},
}

_TOP = {"name": "top", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
        "description": "labels to return"}
_MODEL = {"name": "model", "in": "query", "schema": {"type": "string"},
          "description": "name of a served model (GET /models); default: the first"}
_VERSION_PARAM = {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 1},
                  "description": "the model version to use (default: by the model's traffic shares)"}
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": _ID}
_MODEL_PATH = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_ADMIN = {"401": _error("no key sent"),
          "403": _error("ADMIN_API_KEYS is unset, or the key is not an admin key (API_KEYS do not open it)"),
          "404": _error("not a served model")}
_BUSY = _error("Redis is unreachable, the queue is over MAX_QUEUE_DEPTH, no worker can serve the model "
                "(it failed to load, or is not loaded yet), or the decode budget stayed spent for DECODE_WAIT_S; "
                "Retry-After says when to retry")

_CALLBACK = {"name": "callback_url", "in": "query", "schema": {"type": "string", "format": "uri"},
             "description": "POST the final GET /result JSON here when it ends (signed with WEBHOOK_SECRET; also a "
                            "form field)"}

_WINDOW = {"name": "window", "in": "query", "schema": {"type": "string", "default": "24h"},
           "description": "a number and s, m, h or d"}
PATHS: dict[str, Any] = {
    "/predict": {"post": {
        "summary": "Classify one image, answered synchronously",
        "parameters": [_TOP, _MODEL, _VERSION_PARAM,
                       {"name": "timeout", "in": "query", "schema": {"type": "number", "minimum": 0},
                        "description": "seconds to wait before answering 202 (default PREDICT_TIMEOUT_S)"},
                       {"name": "deadline", "in": "query", "schema": {"type": "number", "minimum": 0},
                        "description": "seconds after which the request is skipped instead of computed"},
                       {"name": "cache", "in": "query", "schema": {"type": "boolean"},
                        "description": "false: bypass the response cache (CACHE_TTL_S)"}, _CALLBACK],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"}}}}}},
        "responses": {
            "200": _json({"oneOf": [_ref("PredictResult"), _ref("CachedResult")]}, "the labels"),
            "202": _json(_ref("Accepted"), "not answered within the timeout: poll result_url"),
            "400": _error("missing field, bad parameter, unknown model, or a corrupt image"),
            "401": _error("API_KEYS is set and no valid key was sent"),
            "429": _error("the key is over its rate limit or daily quota (Retry-After, RateLimit-* headers)"),
            "404": _error("the version asked for is not served (the served ones are listed)"),
            "413": _error("body over MAX_UPLOAD_MB or image over MAX_IMAGE_PIXELS"),
            "415": _error("not an image format this service reads"),
            "503": _BUSY,
            "504": _error("the deadline passed before the model ran"),
        },
    }},
    "/jobs": {"post": {
        "summary": "Start a job: many images and zips, one video, or a source folder; answered at once",
        "parameters": [_MODEL, _VERSION_PARAM, _CALLBACK],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "video": {"type": "string", "format": "binary"},
                "source": {"type": "string", "description": "instead of uploading: a folder under "
                           "JOB_SOURCE_ROOTS (relative to a root, or absolute inside one) whose files are the "
                           "job's images, subfolders included, in path order"},
                "top": {"type": "integer", "minimum": 1, "maximum": 1000},
                "fps": {"type": "number", "exclusiveMinimum": 0},
                "every_n_frames": {"type": "integer", "minimum": 1},
                "max_frames": {"type": "integer", "minimum": 1},
                "evaluate": {"type": "boolean", "description": "the images are a labelled dataset (ImageFolder "
                             "zips, or a labels CSV): the result is each version's figures on it"},
                "versions": {"type": "string", "description": "with evaluate: versions to compare, e.g. 1,2"},
                "labels": {"type": "string", "format": "binary", "description": "with evaluate: a file,label CSV"}
            }}}}},
        "responses": {
            "202": _json(_ref("Accepted"), "accepted: poll result_url"),
            "400": _error("no files, unknown field, both images and video, bad parameter, corrupt zip; a source "
                          "outside JOB_SOURCE_ROOTS, with '..', reaching outside through a symbolic link, not a "
                          "folder, or empty; to evaluate: folders, labels or files that match no class"),
            "404": _error("a version asked for is not served"),
            "401": _error("API_KEYS is set and no valid key was sent"),
            "429": _error("the key is over its rate limit or daily quota (Retry-After, RateLimit-* headers)"),
            "413": _error("over MAX_JOB_UPLOAD_MB, MAX_JOB_FILES, MAX_SOURCE_FILES, MAX_UNZIPPED_MB, "
                          "MAX_VIDEO_SECONDS or MAX_VIDEO_FRAMES"),
            "415": _error("the video cannot be decoded"),
            "503": _BUSY,
        },
    }},
    "/jobs/{id}": {"delete": {
        "summary": "Cancel a job: nothing more reaches the model, its files are deleted",
        "parameters": [_ID_PARAM],
        "responses": {"200": _json(_ref("Cancelled"), "cancelled"), "404": _error("unknown job"),
                      "409": _error("the job already ended")},
    }},
    "/result/{id}": {"get": {
        "summary": "State and result of a request or a job",
        "parameters": [_ID_PARAM, {"name": "format", "in": "query", "schema": {"enum": ["json", "csv", "png"]},
                                   "description": "csv: an evaluation job's per-image predictions; png: its "
                                                  "confusion-matrix heatmap"},
                       {"name": "version", "in": "query", "schema": {"type": "string"},
                        "description": "with format=png: the evaluated version (default the first)"}],
        "responses": {"200": _json({"oneOf": [_ref("RequestState"), _ref("JobState")]}, "its state"),
                      "400": _error("format is not json, csv or png, or csv/png for what is not an evaluation job"),
                      "404": _error("never issued to this caller, or expired; with format=png, a version the job "
                                    "did not evaluate"),
                      "409": _error("format=csv or png for an evaluation job that has not finished")},
    }},
    "/usage": {"get": {
        "summary": "The calling key's limits and use today (API_KEYS entries with rate, burst, daily)",
        "responses": {
            "200": _json({"type": "object", "required": ["key_id", "limits", "today"], "properties": {
                "key_id": {"type": "string"}, "limits": {"type": "object"}, "today": {"type": "object"},
                "tokens": {"type": ["number", "null"]}}}, "the key's figures"),
            "401": _error("no valid key was sent"),
            "404": _error("the service has no API keys"),
        },
    }},
    "/models": {"get": {"summary": "Served models: versions and their states, input, preprocessing, workers",
                        "responses": {"200": _json(_ref("Models"), "the models")}}},
    "/healthz": {"get": {"summary": "The API process answers", "responses": {"200": _json(_ref("Health"), "up")}}},
    "/readyz": {"get": {"summary": "Redis answers and every served model has a worker, and a decoder runs",
                        "responses": {"200": _json(_ref("Readiness"), "ready"),
                                      "503": _json(_ref("Readiness"), "not ready, and why")}}},
    "/openapi.json": {"get": {"summary": "This document",
                              "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
    "/docs": {"get": {"summary": "This document as a readable page",
                      "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
    "/": {"get": {"summary": "A web page to classify images and videos",
                  "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
    "/v2/repository/index": {"post": {
        "summary": "Control API: every model's versions and their states (the OIP repository extension)",
        "responses": {"200": _json({"type": "array", "items": {"type": "object", "required": ["name", "version",
                                    "state"]}}, "the index"), **_ADMIN}}},
    "/v2/repository/models/{model}/load": {"post": {
        "summary": "Control API: serve a model again after an unload", "parameters": [_MODEL_PATH],
        "responses": {"200": _json({"type": "object"}, "a version is ready"),
                      "202": _json({"type": "object"}, "still loading"), **_ADMIN}}},
    "/v2/repository/models/{model}/unload": {"post": {
        "summary": "Control API: the model's workers drop every version", "parameters": [_MODEL_PATH],
        "responses": {"200": _json({"type": "object"}, "unloaded"),
                      "202": _json({"type": "object"}, "still unloading"), **_ADMIN}}},
    "/models/{model}/policy": {"put": {
        "summary": "Control API: change version_policy, traffic, shadow, review and promotion (written to "
                   "config.json)",
        "parameters": [_MODEL_PATH],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"version_policy": {"type": "object"}, "traffic": {"type": "object"},
                                             "shadow": {"type": ["object", "null"]},
                                             "review": {"type": ["object", "null"]},
                                             "promotion": {"type": ["object", "null"]}}}}}},
        "responses": {"200": _json({"type": "object"}, "written; workers apply it within MODEL_POLL_S"),
                      "400": _error("a bad policy, or one naming a version not present or not served; the "
                                    "current policy stays"),
                      "409": _error("the model has no folder in MODEL_REPOSITORY here"), **_ADMIN}}},
    "/models/{model}/versions": {"post": {
        "summary": "Control API: upload a new version, checked as imageclf.launch.add_model checks it",
        "parameters": [_MODEL_PATH],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["model"],
            "properties": {"model": {"type": "string", "format": "binary"},
                           "sample": {"type": "string", "format": "binary"}}}}}},
        "responses": {"201": _json({"type": "object"}, "added as the next version"),
                      "400": _error("not a model file, or it does not load or answer"),
                      "409": _error("the model has no folder in MODEL_REPOSITORY here"), **_ADMIN}}},
    "/feedback": {"post": {
        "summary": "Label logged answers (ground truth that arrives later): one entry, a list, or a CSV",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Feedback"}, {
                "type": "array", "items": {"$ref": "#/components/schemas/Feedback"}}]}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "CSV with a header `id,label`, or `file,label` with `job`; or a Label "
                                        "Studio JSON export of tasks this service exported"},
                "job": {"type": "string"}}}}}},
        "responses": {"200": _json({"type": "object"}, "labelled (a repeated label replaces the earlier one)"),
                      "400": _error("a label the model does not have, or an entry naming nothing"),
                      "404": _error("no logged answer with that id for this key"),
                      "409": _error("the prediction log is off"), "429": _error("the key's quota is used up")}}},
    "/models/{model}/quality": {"get": {
        "summary": "Live quality per version over the labelled answers, and drift against each version's reference",
        "parameters": [_MODEL_PATH,
                       _WINDOW,
                       {"name": "last", "in": "query", "schema": {"type": "integer", "minimum": 1},
                        "description": "the last N labelled answers of each version instead of a window"}],
        "responses": {"200": _json({"type": "object"}, "per version: labelled, accuracy, top5_accuracy, per_class, "
                                                       "confusion, expected_calibration_error; drift per version"),
                      "404": _error("unknown model"), "409": _error("the prediction log is off")}}},
    "/models/{model}/reference": {"post": {
        "summary": "Control API: start every version's drift reference again, from now",
        "parameters": [_MODEL_PATH],
        "responses": {"200": _json({"type": "object"}, "reset"), "404": _error("no logged answers of the model"),
                      **_ADMIN}}},
    "/models/{model}/quality/history": {"get": {
        "summary": "Live accuracy per version over time: labelled answers and accuracy per period of the window",
        "parameters": [_MODEL_PATH,
                       _WINDOW,
                       {"name": "buckets", "in": "query", "schema": {"type": "integer", "default": 24},
                        "description": "periods the window is cut into"}],
        "responses": {"200": _json({"type": "object"}, "per version: [{start, labelled, accuracy}]"),
                      "404": _error("unknown model"), "409": _error("the prediction log is off")}}},
    "/models/{model}/promotion": {"get": {
        "summary": "The candidate's promotion by evidence: plan, status, share, next step and the history of "
                   "decisions with their figures",
        "parameters": [_MODEL_PATH, {"name": "history", "in": "query", "schema": {"type": "integer", "default": 200},
                                     "description": "decisions listed, newest first"}],
        "responses": {"200": _json({"type": "object"}, "the rollout"), "404": _error("unknown model")}}},
    "/models/{model}/promotion/{action}": {"post": {
        "summary": "Control API: pause, resume or abort the candidate's rollout (applied by the controller's next "
                   "check)",
        "parameters": [_MODEL_PATH, {"name": "action", "in": "path", "required": True,
                                     "schema": {"type": "string", "enum": ["pause", "resume", "abort"]}}],
        "responses": {"202": _json({"type": "object"}, "requested"), "404": _error("unknown model or action"),
                      **_ADMIN}}},
    "/review": {"get": {
        "summary": "The review queue (admin key): images the model's review rules kept, newest first",
        "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"}},
                       {"name": "reason", "in": "query", "schema": {"type": "string", "enum": [
                           "confidence_below", "shadow_disagrees", "drift", "random_share"]}},
                       {"name": "labelled", "in": "query", "schema": {"type": "string", "default": "false",
                                                                      "enum": ["false", "true", "all"]}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}},
                       {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}}],
        "responses": {"200": _json({"type": "object"}, "items (id, model, version, reasons, predictions, label, "
                                                       "image, thumbnail), counts, classes"),
                      "400": _error("an unknown reason"), **_ADMIN}}},
    "/review/{id}": {"post": {
        "summary": "Label a kept image (feedback for every version's answer to it)",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["label"], "properties": {"label": {"type": ["string", "integer"]}}}}}},
        "responses": {"200": _json({"type": "object"}, "labelled"), "400": _error("not a class of the model"),
                      "404": _error("no such kept image"), **_ADMIN}}},
    "/review/{id}/image": {"get": {
        "summary": "A kept image as the model saw it (PNG)",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                       {"name": "size", "in": "query", "schema": {"type": "integer"},
                        "description": "a thumbnail's longer side in pixels"}],
        "responses": {"200": {"description": "PNG", "content": {"image/png": {}}},
                      "404": _error("no such kept image, or its file is gone"), **_ADMIN}}},
    "/review/export": {"get": {
        "summary": "A zip of kept images: an ImageFolder tree, images with a file,label CSV, or a Label Studio "
                   "import with the model's answer as a pre-annotation",
        "parameters": [{"name": "format", "in": "query", "schema": {"type": "string", "default": "imagefolder",
                                                                    "enum": ["imagefolder", "csv", "labelstudio"]}},
                       {"name": "model", "in": "query", "schema": {"type": "string"}},
                       {"name": "labelled", "in": "query", "schema": {"type": "string", "enum": [
                           "false", "true", "all"]}, "description": "default: true (labelstudio: all)"}],
        "responses": {"200": {"description": "zip", "content": {"application/zip": {}}},
                      "400": _error("an unknown format"), **_ADMIN}}},
    "/review/import": {"post": {
        "summary": "Labels back from a Label Studio JSON export or a CSV id,label, through feedback",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}}}}}},
        "responses": {"200": _json({"type": "object"}, "labelled and skipped (tasks without an annotation)"),
                      "400": _error("not an export of this service, or a label the model does not have"),
                      "404": _error("an id with no logged answer"), **_ADMIN}}},
    "/metrics": {"get": {"summary": "Prometheus metrics",
                         "responses": {"200": {"description": "text exposition format",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "imageclf", "version": "1",
             "description": "Image classification on a Celery task queue: single images answered synchronously, "
                            "large jobs and videos in the background."},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
    },
    "security": [{}, {"bearer": []}, {"apiKey": []}],
    "paths": PATHS,
}

_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ spec.info.title }} API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}h2{border-top:1px solid #ddd;padding-top:1rem}
.m{font-weight:bold;text-transform:uppercase}td,th{text-align:left;padding:.2rem .6rem;vertical-align:top}</style>
</head><body><h1>{{ spec.info.title }} API</h1><p>{{ spec.info.description }}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {{ spec.openapi }}).</p>
{% for path, ops in spec.paths.items() %}{% for method, op in ops.items() %}
<h2><span class="m">{{ method }}</span> <code>{{ path }}</code></h2><p>{{ op.summary }}</p>
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th>meaning</th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code></td><td>{{ p["in"] }}</td>
<td>{{ p.description or "" }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}{% for kind, body in op.requestBody.content.items() %}<p>Body: {{ kind }} with
{% for name in body.schema.properties %}<code>{{ name }}</code>
{% endfor %}</p>{% endfor %}{% endif %}
<table><tr><th>status</th><th>meaning</th></tr>{% for code, r in op.responses.items() %}
<tr><td>{{ code }}</td><td>{{ r.description }}</td></tr>{% endfor %}</table>
{% endfor %}{% endfor %}</body></html>"""


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(SPEC)


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    return render_template_string(_DOCS, spec=SPEC)
