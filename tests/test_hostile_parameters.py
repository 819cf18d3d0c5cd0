"""What a hostile client sends to the v2 endpoints (HTTP and gRPC) and the control API: every parameter the
service reads is type- and range-checked with a 400 that names it, unknown parameters are refused rather than
ignored, JSON nesting is bounded before parsing, and nothing gives a 5xx. The service answers normally after.
"""

from __future__ import annotations

import json

import grpc as grpc_lib
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from imageclf.api.json_bodies import nesting_depth
from tests.helpers import SHARED, labelled_photos

MODEL = "mobilenet_v1_0.75"


def _image_request(output_parameters: dict | None = None, **top: object) -> dict:
    """A JSON v2 request of one shared photo as a BYTES input sent in binary is awkward by hand; pixels of zeros
    in JSON are enough: the request is refused before they matter, or classified."""
    body: dict = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                              "data": [0] * (224 * 224 * 3)}], **top}
    if output_parameters is not None:
        body["outputs"] = [{"name": "probabilities", "parameters": output_parameters}]
    return body


HOSTILE_HTTP = {
    "class_count text": (_image_request({"class_count": "abc"}), "'class_count'"),
    "class_count negative": (_image_request({"class_count": -3}), "'class_count'"),
    "classification float": (_image_request({"classification": 2.5}), "'classification'"),
    "classification huge": (_image_request({"classification": 10**12}), "from 0 to 1000"),
    "classification true": (_image_request({"classification": True}), "'classification'"),
    "both names": (_image_request({"classification": 2, "class_count": 2}), "not both"),
    "binary_data text": (_image_request({"binary_data": "yes"}), "'binary_data'"),
    "unknown output parameter": (_image_request({"top_k": 3}), "unknown parameter(s) 'top_k'"),
    "output parameters a list": (_image_request([1, 2]), "must be an object"),
    "binary_data_output number": (_image_request(parameters={"binary_data_output": 1}), "'binary_data_output'"),
    "unknown request parameter": (_image_request(parameters={"priority": "high"}), "'priority'"),
    "id an object": (_image_request(id={"a": 1}), "'id'"),
    "binary_data_size text": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                                           "parameters": {"binary_data_size": "12"}}]}, "'binary_data_size'"),
    "binary_data_size negative": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3],
                                               "parameters": {"binary_data_size": -1}}]}, "'binary_data_size'"),
    "shape of text": ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": ["1"], "data": [0]}]}, "'shape'"),
    "shape negative": ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "data": []}]}, "shape [N]"),
    "outputs an object": ({**_image_request(), "outputs": {"name": "probabilities"}}, "'outputs' must be a list"),
    "inputs empty": ({"inputs": []}, "'inputs' list"),
}


@pytest.mark.parametrize("body,message", HOSTILE_HTTP.values(), ids=list(HOSTILE_HTTP))
def test_every_v2_parameter_is_checked_over_http(service, body, message):
    response = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_json_nested_20000_levels_deep_is_refused_before_parsing(service):
    """(The control API's JSON bodies are checked in tests/test_versions.py, whose service has an admin key.)"""
    deep = b"[" * 20000 + b"]" * 20000
    response = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", content=deep, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "the inference request nests 20000 levels deep" in response.json()["error"]
    inside_a_string = json.dumps({"id": "[" * 20000, **_image_request()}).encode()
    assert nesting_depth(inside_a_string) == 4  # {"inputs": [{"data": [...]}]}: brackets in strings do not count
    response = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", content=inside_a_string, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_class_count_is_read_as_triton_clients_name_it(service):
    response = httpx.post(f"{service.url}/v2/models/{MODEL}/infer", json=_image_request({"class_count": 2}),
                          timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]


@pytest.fixture(scope="module")
def stub(service):
    with grpc_lib.insecure_channel(service.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _grpc_request(**parameters: object) -> service_pb2.ModelInferRequest:
    photo = (SHARED / labelled_photos()[0]["path"]).read_bytes()
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(photo)
    output = request.outputs.add(name="probabilities")
    for name, value in parameters.items():
        if isinstance(value, bool):
            output.parameters[name].bool_param = value
        elif isinstance(value, int):
            output.parameters[name].int64_param = value
        else:
            output.parameters[name].string_param = value
    return request


@pytest.mark.parametrize("parameters,message", [
    ({"classification": "abc"}, "'classification'"),
    ({"class_count": -3}, "'class_count'"),
    ({"classification": 5000}, "from 0 to 1000"),
    ({"shoe_size": 3}, "unknown parameter(s) 'shoe_size'"),
], ids=["text", "negative", "huge", "unknown"])
def test_every_v2_parameter_is_checked_over_grpc(stub, parameters, message):
    with pytest.raises(grpc_lib.RpcError) as err:
        stub.ModelInfer(_grpc_request(**parameters), timeout=60)
    assert err.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    answer = stub.ModelInfer(_grpc_request(class_count=3), timeout=60)  # still serving
    assert list(answer.outputs[0].shape) == [1, 3]


PHOTO = (SHARED / labelled_photos()[0]["path"]).read_bytes()
HOSTILE_FORMS = {
    "predict version text": ("/predict", {"version": "newest"}, "image", 400, "'version'"),
    "predict version huge": ("/predict", {"version": "9" * 40}, "image", 404, "version"),
    "predict top huge": ("/predict", {"top": "1e9"}, "image", 400, "'top'"),
    "predict model path": ("/predict", {"model": "../../etc/passwd"}, "image", 400, "unknown model"),
    "jobs top text": ("/jobs", {"top": "many"}, "images", 400, "'top'"),
    "jobs fps text": ("/jobs", {"fps": "fast"}, "video", 400, "'fps'"),
    "jobs every_n_frames negative": ("/jobs", {"every_n_frames": "-2"}, "video", 400, "'every_n_frames'"),
    "jobs max_frames zero": ("/jobs", {"max_frames": "0"}, "video", 400, "'max_frames'"),
    "jobs versions repeated": ("/jobs", {"evaluate": "true", "versions": "1,1"}, "images", 400, "'versions'"),
    "result format": ("/result/x", {"format": "xml"}, None, 404, "no task"),
}


@pytest.mark.parametrize("path,params,field,status,message", HOSTILE_FORMS.values(), ids=list(HOSTILE_FORMS))
def test_every_form_field_and_query_parameter_is_checked(service, path, params, field, status, message):
    if field is None:
        response = httpx.get(service.url + path, params=params, timeout=60)
    else:
        data = (SHARED / "video" / "realshort.mp4").read_bytes() if field == "video" else PHOTO
        response = httpx.post(service.url + path, params=params, files={field: ("x", data)}, timeout=120)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
