"""The Open Inference Protocol (KServe v2) over HTTP and gRPC, driven by Triton's own Python clients."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from imageclf.launch.supervise import wait_until
from imageclf.models.images import decode_to_pixels
from tests.helpers import SHARED, grpc_health, labelled_photos

MODEL = "mobilenet_v1_0.75"
PHOTOS = labelled_photos()[:8]


@pytest.fixture(scope="module")
def http(service) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(service.url.removeprefix("http://"), concurrency=4)


@pytest.fixture(scope="module")
def grpc(service) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(service.grpc_url)


def files(rows: list[dict]) -> np.ndarray:
    return np.array([(SHARED / r["path"]).read_bytes() for r in rows], dtype=np.object_)


def image_input(module, rows: list[dict]):
    tensor = module.InferInput("image", [len(rows)], "BYTES")
    tensor.set_data_from_numpy(files(rows))
    return tensor


def pixels_input(module, rows: list[dict], binary: bool = True):
    pixels = np.stack([np.frombuffer(decode_to_pixels((SHARED / r["path"]).read_bytes(), 224, 10**8), np.uint8)
                       .reshape(224, 224, 3) for r in rows])
    tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
    if module is httpclient:
        tensor.set_data_from_numpy(pixels, binary_data=binary)
    else:
        tensor.set_data_from_numpy(pixels)
    return tensor


def expected(rows: list[dict]) -> list[int]:
    return [int(r["expected_class_id"]) for r in rows]


def test_health_and_metadata_over_both_transports(http, grpc):
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MODEL)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(MODEL)
    assert http.is_model_ready(MODEL, "1") and not http.is_model_ready(MODEL, "7")
    server = http.get_server_metadata()
    assert server["name"] == "imageclf" and "binary_tensor_data" in server["extensions"]
    assert "classification" in grpc.get_server_metadata(as_json=True)["extensions"]
    meta = http.get_model_metadata(MODEL)
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]} == {
        "image": ("BYTES", [-1]), "pixels": ("UINT8", [-1, 224, 224, 3])}
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    assert grpc.get_model_metadata(MODEL, as_json=True)["outputs"][0]["shape"] == ["-1", "1000"]
    assert grpc.get_model_config(MODEL, as_json=True)["config"]["input"][0]["optional"] is True


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_encoded_photos_agree_with_predict_and_the_manifest(module, http, grpc, service):
    client = http if module is httpclient else grpc
    result = client.infer(MODEL, [image_input(module, PHOTOS)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (8, 1000) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    assert list(probabilities.argmax(axis=1)) == expected(PHOTOS)
    for row, probs in zip(PHOTOS[:2], probabilities):
        body = httpx.post(service.url + "/predict", files={"image": (SHARED / row["path"]).read_bytes()},
                          timeout=60).json()
        assert body["predictions"][0]["class_id"] == int(probs.argmax())
        assert abs(body["predictions"][0]["probability"] - float(probs.max())) < 1e-4


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_resized_pixels_and_the_classification_extension(module, http, grpc):
    client = http if module is httpclient else grpc
    outputs = [module.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(MODEL, [pixels_input(module, PHOTOS[:4])], outputs=outputs)
    entries = result.as_numpy("probabilities")
    assert entries.shape == (4, 3)
    for row, top in zip(PHOTOS[:4], entries):
        score, index, label = top[0].decode().split(":", 2)
        assert int(index) == int(row["expected_class_id"]) and label == row["expected_label"]
        assert float(score) >= float(top[1].decode().split(":")[0])


def test_plain_json_tensors_both_ways(http):
    # Triton's client sends BYTES as JSON only when they are UTF-8 text, which image files are not: pixels.
    result = http.infer(MODEL, [pixels_input(httpclient, PHOTOS[:1], binary=False)],
                        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    assert result.get_response()["outputs"][0]["datatype"] == "FP32"
    assert "data" in result.get_response()["outputs"][0]
    assert int(result.as_numpy("probabilities").argmax()) == expected(PHOTOS[:1])[0]


def test_errors_follow_the_protocol(http, grpc):
    with pytest.raises(InferenceServerException) as err:
        http.infer("no_such_model", [image_input(httpclient, PHOTOS[:1])])
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        grpc.infer("no_such_model", [image_input(grpcclient, PHOTOS[:1])])
    assert err.value.status() == "StatusCode.NOT_FOUND"

    wrong_type = httpclient.InferInput("pixels", [1, 224, 224, 3], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(InferenceServerException) as err:
        http.infer(MODEL, [wrong_type])
    assert err.value.status() == "400" and "UINT8" in err.value.message()
    wrong_shape = grpcclient.InferInput("pixels", [1, 100, 100, 3], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, 100, 100, 3), np.uint8))
    with pytest.raises(InferenceServerException) as err:
        grpc.infer(MODEL, [wrong_shape])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "224" in err.value.message()

    not_an_image = httpclient.InferInput("image", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"plain text, not a picture"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as err:
        http.infer(MODEL, [not_an_image])
    assert err.value.status() == "415" and "image[0]" in err.value.message()


def test_an_oversized_image_is_refused_as_too_large(http, grpc):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (10000, 10000), "white").save(buf, "PNG")  # 1e8 pixels, past MAX_IMAGE_PIXELS; a small file
    huge = np.array([buf.getvalue()], dtype=np.object_)
    for module, client, status in ((httpclient, http, "413"), (grpcclient, grpc, "StatusCode.RESOURCE_EXHAUSTED")):
        tensor = module.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(huge)
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [tensor])
        assert err.value.status() == status and "pixels" in err.value.message()


def test_the_grpc_health_protocol_says_serving_once_ready(service):
    """grpc.health.v1, as Kubernetes' grpc: probes and load balancers ask it (NOT_SERVING before: see
    tests/test_without_workers.py)."""
    import grpc as grpc_lib
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert wait_until(lambda: grpc_health(service.grpc_url, "") == "SERVING", 30)
    assert grpc_health(service.grpc_url, "inference.GRPCInferenceService") == "SERVING"
    assert grpc_health(service.grpc_url, "liveness") == "SERVING"
    with grpc_lib.insecure_channel(service.grpc_url) as channel, pytest.raises(grpc_lib.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nonsense"), timeout=10)
    assert err.value.code() == grpc_lib.StatusCode.NOT_FOUND
