"""A corpus of odd and hostile uploads: each gets the right 2xx/4xx, never a 5xx, and the
worker keeps serving afterwards. Generated here, so nothing depends on the shared photos' quirks."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import SHARED, labelled_photos


def enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo() -> Image.Image:
    return Image.open(SHARED / labelled_photos()[0]["path"]).convert("RGB")


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with a tiny (wrong) body: never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return enc(photo(), "JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [photo().resize((120, 90)).quantize(), Image.new("P", (120, 90), 5)]
    return enc(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0)


def broken_crc_png() -> bytes:
    data = bytearray(enc(photo().resize((64, 64)), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    return bytes(data)


def transparent_palette() -> bytes:
    img = photo().resize((100, 100)).quantize(16)
    return enc(img, "PNG", transparency=0)


JPEG = enc(photo(), "JPEG", quality=85)
OK, BAD, UNSUPPORTED, TOO_LARGE = 200, 400, 415, 413
CORPUS: list[tuple[str, str, bytes, int]] = [
    ("empty file", "empty.jpg", b"", BAD),
    ("plain text", "notes.txt", b"just some words\n" * 50, UNSUPPORTED),
    ("truncated jpeg", "half.jpg", JPEG[: len(JPEG) // 2], BAD),
    ("jpeg header then zeros", "zeros.jpg", JPEG[:600] + b"\0" * 5000, BAD),
    ("all zero bytes named .jpg", "null.jpg", b"\0" * 4096, UNSUPPORTED),
    ("decompression bomb png", "bomb.png", bomb_png(60000, 60000), TOO_LARGE),
    ("png with a broken crc", "crc.png", broken_crc_png(), BAD),
    ("svg", "drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>', UNSUPPORTED),
    ("heic-named junk", "photo.heic", b"\0\0\0\x18ftypheic" + b"\x01" * 300, UNSUPPORTED),
    ("pdf", "doc.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", UNSUPPORTED),
    ("gif header only", "cut.gif", b"GIF89a\x10\x00\x10\x00", BAD),
    ("animated gif", "anim.gif", animated_gif(), OK),
    ("cmyk jpeg", "cmyk.jpg", enc(photo().convert("CMYK"), "JPEG"), OK),
    ("grayscale jpeg", "grey.jpg", enc(photo().convert("L"), "JPEG"), OK),
    ("16-bit png", "deep.png", enc(Image.fromarray(np.asarray(photo().convert("L"), np.uint16) * 257), "PNG"), OK),
    ("32-bit float tiff", "float.tif", enc(photo().convert("F"), "TIFF"), OK),
    ("rgba png", "rgba.png", enc(photo().convert("RGBA"), "PNG"), OK),
    ("la png", "la.png", enc(photo().convert("LA"), "PNG"), OK),
    ("palette png with transparency", "pal.png", transparent_palette(), OK),
    ("exif-rotated jpeg", "rotated.jpg", exif_rotated(), OK),
    ("webp", "photo.webp", enc(photo(), "WEBP"), OK),
    ("bmp", "photo.bmp", enc(photo().resize((200, 150)), "BMP"), OK),
    ("tiff", "photo.tiff", enc(photo().resize((200, 150)), "TIFF"), OK),
    ("ico", "icon.ico", enc(photo().resize((64, 64)), "ICO"), OK),
    ("one pixel", "dot.png", enc(Image.new("RGB", (1, 1), "red"), "PNG"), OK),
    ("10000 x 1 strip", "strip.png", enc(Image.new("RGB", (10000, 1), "blue"), "PNG"), OK),
    ("jpeg with trailing garbage", "tail.jpg", JPEG + b"garbage" * 100, OK),
    ("wrong extension (png named .jpg)", "really-png.jpg", enc(photo(), "PNG"), OK),
    ("odd filename", '../../etc/passwd"; rm -rf / ;\u00e9\u4e2d\U0001f600.jpg', JPEG, OK),
]


@pytest.mark.parametrize("name, filename, data, status", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_upload_gets_the_right_status(service, name, filename, data, status):
    response = httpx.post(service.url + "/predict", files={"image": (filename, data)}, timeout=60)
    assert response.status_code == status, response.text
    body = response.json()
    if status == OK:
        assert body["success"] is True and len(body["predictions"]) == 5
    else:
        assert body["success"] is False and body["error"]


def test_corpus_is_large_enough_and_the_worker_survives_it(service):
    assert len(CORPUS) >= 25
    for _, filename, data, _ in CORPUS:
        httpx.post(service.url + "/predict", files={"image": (filename, data)}, timeout=60)
    assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
    ok = httpx.post(service.url + "/predict", files={"image": ("a.jpg", JPEG)}, timeout=60)
    assert ok.status_code == 200
