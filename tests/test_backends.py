"""The ONNX Runtime backend answers like TensorFlow: same top-1, probabilities within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

from imageclf.models.images import decode_to_pixels
from imageclf.models.registry import get_spec
from tests.helpers import CLASS_INDEX, MOBILENET_FILE, SHARED, labelled_photos


@pytest.fixture(scope="module")
def photos() -> tuple[list[dict], np.ndarray]:
    rows = labelled_photos()
    pixels = [decode_to_pixels((SHARED / r["path"]).read_bytes(), 224, 10**9) for r in rows]
    return rows, np.stack([np.frombuffer(p, np.uint8).reshape(224, 224, 3) for p in pixels])


def test_onnxruntime_matches_tensorflow_on_every_labelled_photo(photos, tmp_path):
    from imageclf.models.keras_model import load_classifier

    rows, batch = photos
    spec = get_spec("mobilenet_v1_0.75")
    tf_model = load_classifier(spec, str(MOBILENET_FILE), str(CLASS_INDEX), 32, "tensorflow")
    onnx_model = load_classifier(spec, str(MOBILENET_FILE), str(CLASS_INDEX), 32, "onnxruntime", str(tmp_path))
    expected, got = tf_model.predict(batch), onnx_model.predict(batch)
    assert got.shape == expected.shape == (len(rows), 1000)
    assert np.abs(got - expected).max() <= 1e-4
    for row, probs in zip(rows, got):
        assert int(probs.argmax()) == int(row["expected_class_id"]), row["path"]
    # The export was cached and is reused: a second load reads the file and answers the same.
    [cached] = list(tmp_path.glob("mobilenet_v1_0.75-*.onnx"))
    again = load_classifier(spec, str(MOBILENET_FILE), str(CLASS_INDEX), 32, "onnxruntime", str(tmp_path))
    assert np.abs(again.predict(batch[:3]) - got[:3]).max() <= 1e-6
    assert cached.stat().st_size > 1_000_000


def test_unknown_backend_is_refused():
    from imageclf.models.keras_model import load_classifier

    with pytest.raises(ValueError, match="unknown BACKEND"):
        load_classifier(get_spec("mobilenet_v1_0.75"), str(MOBILENET_FILE), str(CLASS_INDEX), 4, "tensorrt")
