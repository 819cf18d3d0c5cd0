"""A request answered without its body being read (refused: 400, 401, 429) keeps its connection: the API
receives the rest of the body itself, in large reads, instead of closing the connection on it
(imageclf.api.unread_bodies).
Spoken over a raw socket, to see what happens to the connection."""

from __future__ import annotations

import json
import os
import socket
import time
from urllib.parse import urlsplit

from tests.helpers import SHARED, labelled_photos

BOUNDARY = "imageclf-test"


def upload(path: str, content: bytes, declared: int | None = None) -> bytes:
    """A multipart /predict request; `declared` overrides its Content-Length (a client that sends less)."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {declared or len(body)}\r\n\r\n")
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(fields.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    return int(lines[0].split()[1]), fields, body


def connect(service) -> socket.socket:
    parts = urlsplit(service.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def test_a_refused_upload_leaves_its_connection_open_for_the_next_request(service):
    photo = labelled_photos()[0]
    with connect(service) as sock:
        for _ in range(3):  # 300 KB refused before its body is read: far past what gunicorn drains by itself
            sock.sendall(upload("/predict?top=abc", os.urandom(300_000)))
            status, fields, body = read_response(sock)
            assert status == 400 and "top" in json.loads(body)["error"], body
            assert fields.get("connection", "").lower() != "close"
        sock.sendall(upload("/predict", (SHARED / photo["path"]).read_bytes()))
        status, _, body = read_response(sock)
    assert status == 200, body
    assert json.loads(body)["predictions"][0]["class_id"] == int(photo["expected_class_id"])


def test_a_refused_client_that_stops_sending_is_answered_then_cut_off(service):
    """It declares 300 KB, sends 10 KB and stops: it gets its 400, and the connection is closed once the read
    of the rest has waited its timeout, not held for ever; other clients are served meanwhile."""
    with connect(service) as sock:
        sock.sendall(upload("/predict?top=0", b"x" * 10_000, declared=300_000))
        status, _, body = read_response(sock)
        assert status == 400 and "top" in json.loads(body)["error"], body
        waited = time.monotonic()
        with connect(service) as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(other)[0] == 200
        sock.settimeout(30)
        try:
            rest = sock.recv(65536)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest
        assert time.monotonic() - waited < 20


def test_the_drain_reads_exactly_the_rest_of_the_body_and_never_into_the_next_request():
    """On a server whose input stream runs on past the body (the next request's bytes behind it), the drain stops
    at Content-Length, whatever the app read; a body over the limit is not read at all."""
    import io

    from imageclf.api.unread_bodies import DrainUnreadBodies

    body, after = os.urandom(3_000_000), b"GET /next HTTP/1.1\r\n\r\n"

    def serve(limit: int, reads: list[int]) -> io.BytesIO:
        def app(environ, start_response):
            for size in reads:
                environ["wsgi.input"].read(size)
            start_response("429 Too Many Requests", [("Content-Length", "0")])
            return [b""]

        stream = io.BytesIO(body + after)
        environ = {"CONTENT_LENGTH": str(len(body)), "wsgi.input": stream}
        response = DrainUnreadBodies(app, limit)(environ, lambda status, headers: None)
        assert b"".join(response) == b""
        if hasattr(response, "close"):  # as a WSGI server does, once the response is sent
            response.close()
        return stream

    for reads in ([], [10], [1_500_000, 7], [len(body)]):
        stream = serve(limit=len(body), reads=reads)
        assert stream.tell() == len(body) and stream.read() == after, reads
    assert serve(limit=len(body) - 1, reads=[]).tell() == 0
