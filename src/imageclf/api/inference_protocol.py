"""The Open Inference Protocol's (KServe v2) tensors for this service's models, without HTTP or gRPC.

Both transports turn a request into an `InferRequest` here and an `InferAnswer` back into
their own wire form. A classifier takes one of two inputs and gives one output:

- `image`, BYTES [N]: encoded image files, decoded and resized as /predict does;
- `pixels`, UINT8 [N, H, W, 3]: images already at the model's input size;
- `probabilities`, FP32 [N, classes], or with the classification extension (output parameter
  `classification: k`) BYTES [N, k] entries "score:index:label", as Triton writes them.

HTTP's binary tensor data extension is handled here too: a tensor whose parameters carry
`binary_data_size` is read from the bytes after the JSON header (`Inference-Header-Content-Length`),
and outputs asked for with `binary_data: true` are written after the JSON answer. Errors are
APIErrors with the HTTP status; the gRPC server maps them to its status codes.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imageclf.api.errors import APIError
from imageclf.api.json_bodies import parse_json

IMAGE, PIXELS, PROBABILITIES = "image", "pixels", "probabilities"
#: The extensions this server implements (GET /v2 and ServerMetadata say so).
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
#: Most classes one output may name (`classification`), as for /predict's `top`.
MAX_CLASSES_ASKED = 1000


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    """One v2 inference request, transport-free: N encoded images or an [N, H, W, 3] uint8 array."""

    model: str
    version: str | None
    id: str = ""
    images: list[bytes] | None = None
    pixels: np.ndarray | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_output: bool = False  # the request-level `binary_data_output` parameter

    @property
    def count(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.pixels) if self.pixels is not None else 0

    def wanted(self) -> list[RequestedOutput]:
        """The outputs to return: those asked for, or `probabilities` (the only output) when none were."""
        return self.outputs or [RequestedOutput(PROBABILITIES, self.binary_output)]

    def top_k(self) -> int:
        """How many classes each answer must name (at least 1)."""
        return max([1, *(o.classification for o in self.wanted())])

    def needs_probabilities(self) -> bool:
        return any(not o.classification for o in self.wanted())


@dataclass
class InferAnswer:
    """Per image: the full probability row (when asked for) and the top classes the worker named."""

    model: str
    version: str
    id: str
    probabilities: np.ndarray | None  # float32 [N, classes]
    predictions: list[list[dict[str, Any]]]


def check_input(name: str, datatype: str, shape: list[int], size: tuple[int, int]) -> None:
    """400 unless (`name`, `datatype`, `shape`) is one of the model's inputs for an input of (H, W) = `size`."""
    if name == IMAGE:
        if datatype != "BYTES":
            raise APIError(400, f"input 'image' must be BYTES (encoded image files), got {datatype}")
        if len(shape) != 1 or shape[0] < 1:
            raise APIError(400, f"input 'image' must have shape [N] with N >= 1, got {shape}")
    elif name == PIXELS:
        if datatype != "UINT8":
            raise APIError(400, f"input 'pixels' must be UINT8, got {datatype}")
        expected = [size[0], size[1], 3]
        if len(shape) != 4 or shape[0] < 1 or list(shape[1:]) != expected:
            raise APIError(400, f"input 'pixels' must have shape [N, {', '.join(map(str, expected))}] "
                                     f"(the model's input, RGB), got {shape}")
    else:
        raise APIError(400, f"unknown input {name!r}; the model takes 'image' (BYTES [N]) or "
                                 f"'pixels' (UINT8 [N, {size[0]}, {size[1]}, 3])")


def check_output(output: RequestedOutput) -> None:
    if output.name != PROBABILITIES:
        raise APIError(400, f"unknown output {output.name[:40]!r}; the model gives 'probabilities'")


def split_bytes(data: bytes, count: int) -> list[bytes]:
    """BYTES elements from the binary form: each a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise APIError(400, "BYTES tensor data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise APIError(400, f"BYTES tensor element {len(items)} claims {length} bytes; fewer remain")
        items.append(data[offset:offset + length])
        offset += length
    if len(items) != count:
        raise APIError(400, f"BYTES tensor holds {len(items)} elements; its shape says {count}")
    return items


def join_bytes(items: list[bytes]) -> bytes:
    """The binary form of a BYTES tensor (see split_bytes)."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def classification_entries(predictions: list[dict[str, Any]], k: int) -> list[bytes]:
    """Triton's classification extension: "score:index:label" for the `k` most likely classes."""
    return [f"{p['probability']:f}:{p['class_id']}:{p['label']}".encode() for p in predictions[:k]]


#: The parameters this service reads, where the protocol (and Triton's extensions) puts them. `class_count`
#: is what Triton's clients call `classification`; either may be sent.
REQUEST_PARAMETERS = ("binary_data_output",)
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data", "classification", "class_count")


def checked_parameters(params: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    """A `parameters` object (None or absent: empty); 400 when it is not an object or names a parameter this
    service does not read, so a misspelt or unsupported one is never ignored silently."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise APIError(400, f"the 'parameters' of {where} must be an object")
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise APIError(400, f"unknown parameter(s) {', '.join(map(repr, unknown))} of {where}; this service "
                            f"reads {', '.join(map(repr, known))} there")
    return params


def bool_parameter(params: dict[str, Any], name: str, default: bool, where: str) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise APIError(400, f"parameter {name!r} of {where} must be true or false, got {_shown(value)}")
    return value


def count_parameter(params: dict[str, Any], name: str, where: str, high: int) -> int:
    """A whole number from 0 to `high` (0 when absent)."""
    value = params.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise APIError(400, f"parameter {name!r} of {where} must be a whole number from 0 to {high}, "
                            f"got {_shown(value)}")
    return value


def classes_asked(params: dict[str, Any], where: str) -> int:
    """How many classes an output's `classification` (or `class_count`) asks for; 0: the probabilities."""
    if "classification" in params and "class_count" in params:
        raise APIError(400, f"give 'classification' or 'class_count' for {where}, not both")
    name = "class_count" if "class_count" in params else "classification"
    return count_parameter(params, name, where, MAX_CLASSES_ASKED)


def _shown(value: Any) -> str:
    return repr(value)[:40]


def parse_http(body: bytes, header_length: int | None, model: str, version: str | None,
               size: tuple[int, int]) -> InferRequest:
    """An InferRequest from a POST .../infer body: JSON, or JSON + binary tensors after `header_length` bytes."""
    header, tail = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    doc = parse_json(header, "the inference request")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise APIError(400, "the inference request needs an 'inputs' list with one input")
    if not isinstance(doc.get("id", ""), (str, int)) or isinstance(doc.get("id"), bool):
        raise APIError(400, f"the request's 'id' must be a string, got {_shown(doc['id'])}")
    params = checked_parameters(doc.get("parameters"), REQUEST_PARAMETERS, "the request")
    request = InferRequest(model, version, id=str(doc.get("id", "")),
                           binary_output=bool_parameter(params, "binary_data_output", False, "the request"))
    if len(doc["inputs"]) != 1:
        raise APIError(400, "send exactly one input: 'image' (encoded files) or 'pixels' (resized RGB)")
    offset = 0
    for spec in doc["inputs"]:
        if not isinstance(spec, dict):
            raise APIError(400, "each input must be an object with name, datatype, shape and data")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise APIError(400, "each input's 'name' and 'datatype' must be strings")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise APIError(400, f"input {name!r}: 'shape' must be a list of integers")
        check_input(name, datatype, shape, size)
        where = f"input {name!r}"
        binary_size = count_parameter(checked_parameters(spec.get("parameters"), INPUT_PARAMETERS, where),
                                      "binary_data_size", where, len(tail))
        if binary_size:
            if offset + binary_size > len(tail):
                raise APIError(400, f"input {name!r} claims {binary_size} bytes of binary data; "
                                         f"{len(tail) - offset} follow the JSON header")
            raw = tail[offset:offset + binary_size]
            offset += binary_size
            if name == IMAGE:
                request.images = split_bytes(raw, shape[0])
            else:
                request.pixels = pixels_from_bytes(raw, shape)
        elif "data" in spec:
            if name == IMAGE:
                request.images = _images_from_json(spec["data"], shape[0])
            else:
                request.pixels = pixels_from_values(spec["data"], shape)
        else:
            raise APIError(400, f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
    if offset != len(tail):
        raise APIError(400, f"{len(tail) - offset} bytes after the JSON header belong to no input")
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise APIError(400, "'outputs' must be a list")
    for spec in outputs:
        if not isinstance(spec, dict):
            raise APIError(400, "each requested output must be an object with a name")
        where = f"output {str(spec.get('name'))[:40]!r}"
        params = checked_parameters(spec.get("parameters"), OUTPUT_PARAMETERS, where)
        output = RequestedOutput(str(spec.get("name")), bool_parameter(params, "binary_data", request.binary_output,
                                                                       where), classes_asked(params, where))
        check_output(output)
        request.outputs.append(output)
    return request


def pixels_from_bytes(raw: bytes, shape: list[int]) -> np.ndarray:
    """The `pixels` input from its binary form (HTTP's binary data, gRPC's raw_input_contents)."""
    expected = int(np.prod(shape))
    if len(raw) != expected:
        raise APIError(400, f"input 'pixels' has {len(raw)} bytes of data; shape {shape} needs {expected}")
    return np.frombuffer(raw, np.uint8).reshape(shape)


def pixels_from_values(data: Any, shape: list[int]) -> np.ndarray:
    """The `pixels` input from numbers (HTTP's JSON `data`, gRPC's uint_contents), each checked to be 0-255."""
    try:
        array = np.asarray(data, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError):
        raise APIError(400, "input 'pixels': 'data' must be numbers from 0 to 255") from None
    if array.size != int(np.prod(shape)):
        raise APIError(400, f"input 'pixels' has {array.size} values; shape {shape} needs {int(np.prod(shape))}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise APIError(400, "input 'pixels': UINT8 values must be from 0 to 255")
    return array.astype(np.uint8).reshape(shape)


def _images_from_json(data: Any, count: int) -> list[bytes]:
    """JSON BYTES elements are strings (Latin-1 code points carry the bytes) or {"b64": "..."} objects."""
    items = data if isinstance(data, list) else [data]
    if len(items) != count:
        raise APIError(400, f"input 'image' has {len(items)} elements; its shape says {count}")
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("b64"), str):
            try:
                out.append(base64.b64decode(item["b64"], validate=True))
            except ValueError:
                raise APIError(400, "input 'image': an element's 'b64' is not valid base64") from None
        elif isinstance(item, str):
            try:
                out.append(item.encode("latin-1"))
            except UnicodeEncodeError:
                raise APIError(400, "input 'image': a JSON string element must hold bytes (code points "
                                         "below 256); send binary data or {\"b64\": ...} instead") from None
        else:
            raise APIError(400, "input 'image': each element must be a string or {\"b64\": \"...\"}")
    return out


@dataclass
class OutputTensor:
    """One output of an answer, for either transport: Triton's classification entries or the probabilities."""

    name: str
    datatype: str
    shape: list[int]
    entries: list[bytes] | None = None  # BYTES, row-major
    array: np.ndarray | None = None  # FP32

    def raw(self) -> bytes:
        """The binary form (HTTP's binary data extension, gRPC's raw_output_contents)."""
        if self.entries is not None:
            return join_bytes(self.entries)
        return self._array().astype("<f4").tobytes()

    def json_data(self) -> list:
        if self.entries is not None:
            return [e.decode() for e in self.entries]
        return self._array().reshape(-1).tolist()

    def _array(self) -> np.ndarray:
        if self.array is None:
            raise ValueError(f"output {self.name!r} holds neither entries nor an array")
        return self.array


def output_tensors(request: InferRequest, answer: InferAnswer) -> list[OutputTensor]:
    """The outputs the request wants, in its order."""
    tensors = []
    for wanted in request.wanted():
        if wanted.classification:
            rows = [classification_entries(p, wanted.classification) for p in answer.predictions]
            tensors.append(OutputTensor(wanted.name, "BYTES", [len(rows), len(rows[0]) if rows else 0],
                                        entries=[e for row in rows for e in row]))
        else:
            assert answer.probabilities is not None
            tensors.append(OutputTensor(wanted.name, "FP32", list(answer.probabilities.shape),
                                        array=answer.probabilities))
    return tensors


def encode_http(request: InferRequest, answer: InferAnswer) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (else None)."""
    outputs, tail = [], []
    for wanted, tensor in zip(request.wanted(), output_tensors(request, answer)):
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if wanted.binary:
            raw = tensor.raw()
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out["data"] = tensor.json_data()
        outputs.append(out)
    doc = {"model_name": answer.model, "model_version": answer.version, "outputs": outputs}
    if answer.id:
        doc["id"] = answer.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    return (header + b"".join(tail), len(header)) if tail else (header, None)
