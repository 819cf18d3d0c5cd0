"""The multipart parser behind every upload (imageclf/api/forms.py) reads what werkzeug's own parser reads."""

from __future__ import annotations

import io

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from imageclf.api.forms import MultipartFormParser

BOUNDARY = "----b0undary7MA4YWxkTrZu0gW"


def body(parts: list[tuple[str, str | None, bytes]], end: bool = True) -> bytes:
    """A multipart/form-data body of (name, filename or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        kind = "Content-Type: image/jpeg\r\n" if filename is not None else ""
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + content + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def parse(parser: FormDataParser, data: bytes):
    _, form, files = parser.parse(io.BytesIO(data), "multipart/form-data", len(data), {"boundary": BOUNDARY})
    return form, files


def test_fields_and_files_match_werkzeug():
    image = bytes(range(256)) * 3000  # past werkzeug's 500 KB in-memory limit: spooled to disk
    data = body([("top", None, b"3"), ("image", "cat.jpg", image), ("note", None, "caf\u00e9".encode()),
                 ("images", "a.png", b"\x89PNG"), ("images", "", b"")])
    ours, theirs = parse(MultipartFormParser(), data), parse(FormDataParser(), data)
    assert ours[0].to_dict(flat=False) == theirs[0].to_dict(flat=False) == {"top": ["3"], "note": ["caf\u00e9"]}
    assert [(k, f.filename, f.content_type, f.read()) for k, f in ours[1].items(multi=True)] == \
           [(k, f.filename, f.content_type, f.read()) for k, f in theirs[1].items(multi=True)]
    assert ours[1]["image"].filename == "cat.jpg"


def test_a_body_cut_before_its_closing_boundary_reads_as_an_empty_form():
    form, files = parse(MultipartFormParser(), body([("image", "cat.jpg", b"\xff\xd8\xff" * 100)], end=False)[:-10])
    assert not form and not files


def test_limits_refuse_with_413():
    with pytest.raises(RequestEntityTooLarge):
        parse(MultipartFormParser(max_form_memory_size=10), body([("top", None, b"x" * 11)]))
    with pytest.raises(RequestEntityTooLarge):
        parse(MultipartFormParser(max_form_parts=3), body([("f", None, b"1")] * 4))
    form, _ = parse(MultipartFormParser(max_form_parts=3, max_form_memory_size=10), body([("f", None, b"1")] * 3))
    assert form.getlist("f") == ["1", "1", "1"]


def test_other_bodies_are_left_to_werkzeug():
    data = b"top=3&model=a%20b"
    _, form, files = MultipartFormParser().parse(io.BytesIO(data), "application/x-www-form-urlencoded", len(data))
    assert form.to_dict() == {"top": "3", "model": "a b"} and not files
