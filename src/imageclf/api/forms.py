"""Multipart uploads parsed by the `multipart` library (Bottle's parser) behind werkzeug's form API.

werkzeug compiles two regular expressions for every request's random boundary and runs the
body through them in Python; `multipart` finds boundaries with bytes.find. For the 250 KB
JPEG of the benchmark that is most of the form's cost per /predict (see api_form_ms in
docs/benchmarks/pipeline.md). werkzeug's limits still hold: `max_content_length` is enforced by the
limited input stream, text fields by `max_form_memory_size`, the count by `max_form_parts`,
and file parts go to `stream_factory` (spooled to disk past 500 KB), as werkzeug would do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any

from flask import Request, request
from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

_CHUNK = 1024 * 1024  # gunicorn keeps what it read ahead (up to 1 MiB) and copies it again on every smaller read


class MultipartFormParser(FormDataParser):
    """werkzeug's FormDataParser with `multipart` for multipart/form-data bodies (others unchanged)."""

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> tuple[IO[bytes], MultiDict, MultiDict]:
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        try:
            form, files = self._parse_parts(stream, (options or {}).get("boundary", ""), content_length)
        except ParserLimitReached as exc:
            raise RequestEntityTooLarge(f"multipart body: {exc}") from None
        except MultipartError:
            if not self.silent:
                raise
            return stream, self.cls(), self.cls()  # a malformed body reads as an empty form, as in werkzeug
        return stream, self.cls(form), self.cls(files)

    def _parse_parts(self, stream: IO[bytes], boundary: str, content_length: int | None
                     ) -> tuple[list[tuple[str, str]], list[tuple[str, FileStorage]]]:
        form: list[tuple[str, str]] = []
        files: list[tuple[str, FileStorage]] = []
        parser = PushMultipartParser(boundary, content_length if content_length is not None else -1,
                                     max_segment_count=self.max_form_parts or float("inf"))
        segment: MultipartSegment | None = None
        sink: Any = None
        with parser:  # leaving it raises when the body stopped before its closing boundary
            while chunk := stream.read(_CHUNK):
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment = event
                        sink = bytearray() if event.filename is None else self.stream_factory(
                            total_content_length=content_length, content_type=event.content_type,
                            filename=event.filename, content_length=None)
                    elif segment is None:  # the parser yields a segment before its data and its end
                        raise AssertionError("multipart data before its headers")
                    elif event and isinstance(sink, bytearray):
                        if self.max_form_memory_size is not None and len(sink) + len(event) > self.max_form_memory_size:
                            raise RequestEntityTooLarge(f"form field {segment.name!r} is too large")
                        sink.extend(event)
                    elif event:
                        sink.write(event)
                    else:
                        name = segment.name or ""
                        if isinstance(sink, bytearray):
                            form.append((name, sink.decode(segment.charset or "utf-8", "replace")))
                        else:
                            sink.seek(0)
                            files.append((name, FileStorage(sink, segment.filename, name, segment.content_type,
                                                            headers=Headers(segment.headerlist))))
        return form, files


class UploadRequest(Request):
    """Flask's request with multipart bodies parsed by MultipartFormParser."""

    form_data_parser_class = MultipartFormParser
    #: Where file parts are written as they arrive, when a view says so before it reads the form (write_parts_to).
    parts_folder: Path | None = None

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        if self.parts_folder is None:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        self.parts_folder.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=self.parts_folder, prefix=".part-", delete=False)


def write_parts_to(folder: Path) -> None:
    """Have this request's file parts written straight into `folder` (created when the first part arrives), on
    the volume where they are to stay: keeping one (keep_part) is then a rename, where werkzeug's spooled
    temporary file cost a second write of every byte. The caller deletes the folder if the request fails."""
    current = request._get_current_object()  # type: ignore[attr-defined]  # werkzeug's LocalProxy
    if isinstance(current, UploadRequest):
        current.parts_folder = folder


def keep_part(upload: FileStorage, path: Path) -> None:
    """Store an uploaded file at `path`: renamed when write_parts_to put it in that folder, else copied."""
    written = getattr(upload.stream, "name", None)
    if isinstance(written, str) and Path(written).parent == path.parent:
        upload.stream.flush()
        os.replace(written, path)
    else:
        upload.save(path)
