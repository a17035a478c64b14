"""Receiving an upload and keeping it.

Received: streamed to a temporary file while hashing, never held whole in memory, cut off with 413 the moment it
passes the limit; a raw body (application/octet-stream) or a multipart form whose file field is `file` (what
`curl -F file=@teacher.pt` sends). Kept: inspected in the sandbox (unless these bytes were before), stored once per
sha256 under the artifact directory, recorded as the owner's artifact."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.inspection import InspectionRefused, inspect_file
from service.principal import Principal
from service.queries import artifacts as q
from service.schemas import ArtifactOut
from service.settings import Settings
from service.teachers import CODE_REFUSED

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file in a multipart body


@dataclass
class Received:
    path: Path
    sha256: str
    size: int
    filename: str | None


class _Sink:
    """The temporary file, its running hash and size, and the limit."""

    def __init__(self, f: IO[bytes], limit: int, setting: str):
        self.f, self.limit, self.setting, self.size, self.seen, self.hash = f, limit, setting, 0, 0, hashlib.sha256()

    def count(self, data: bytes) -> None:
        """Bytes of the body that count against the limit without being the file (a form's other parts)."""
        self.seen += len(data)
        if self.seen > self.limit:
            raise too_large(self.limit, self.setting)

    def write(self, data: bytes) -> None:
        self.count(data)
        self.size += len(data)
        self.hash.update(data)
        self.f.write(data)


def clean_filename(name: str | None) -> str | None:
    """What is kept of a client's file name: its last path component, printable, at most 255 characters."""
    if name is None:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if c.isprintable())[:255].strip()
    return kept or None


def too_large(limit: int, setting: str = "TTM_MAX_UPLOAD_BYTES") -> ApiError:
    return ApiError(413, f"upload is larger than the server's limit of {limit} bytes ({setting})")


class _FilePart:
    """Multipart callbacks that send the first file part (field `file`, or any part with a filename) to the sink."""

    def __init__(self, sink: _Sink):
        self.sink = sink
        self.headers: dict[str, str] = {}
        self._field = self._value = b""
        self.writing = self.done = False
        self.filename: str | None = None

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
                "on_header_end": self._hend, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self.headers = {}

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._bounded()

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._bounded()

    def _bounded(self) -> None:
        if len(self.headers) > 32 or len(self._field) + len(self._value) > 8192:
            raise ApiError(400, "a multipart part has too many or too long headers")

    def _hend(self) -> None:
        self._bounded()
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field = self._value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if not self.done and (name == "file" or filename is not None):
            self.writing = True
            self.filename = clean_filename(filename.decode("utf-8", "replace")) if filename else None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.writing:
            self.sink.write(data[start:end])
        else:
            self.sink.count(data[start:end])

    def _end(self) -> None:
        if self.writing:
            self.writing, self.done = False, True


async def receive_upload(request: Request, tmp_dir: Path, limit: int, filename: str | None = None,
                         setting: str = "TTM_MAX_UPLOAD_BYTES") -> Received:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    multipart = content_type == b"multipart/form-data"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (MULTIPART_SLACK if multipart else 0):
        raise too_large(limit, setting)  # refused before a byte is read
    if multipart and not params.get(b"boundary"):
        raise ApiError(400, "multipart body without a boundary")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f, limit, setting)
            part = _FilePart(sink) if multipart else None
            parser = MultipartParser(params[b"boundary"], part.callbacks()) if part else None  # type: ignore[arg-type]
            try:
                async for chunk in request.stream():
                    if parser is not None:
                        parser.write(chunk)
                    else:
                        sink.write(chunk)
                if parser is not None:
                    parser.finalize()
            except ParseError as err:
                raise ApiError(400, f"malformed multipart body ({err}); send the file as the form field `file` "
                                    "(curl -F file=@teacher.pt) or as the raw body") from None
        if part is not None and not part.done:
            raise ApiError(422, "no file in the form: send it as the field `file`", field="file")
        if sink.size == 0:
            raise ApiError(422, "empty upload", field="file")
        return Received(path, sink.hash.hexdigest(), sink.size,
                        (part.filename if part else None) or clean_filename(filename))
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def blob_path(settings: Settings, sha256: str) -> Path:
    return settings.artifact_dir / "blobs" / sha256[:2] / sha256


def store_artifact(session: Session, who: Principal, settings: Settings, received: Received,
                   project_id: int | None = None) -> tuple[ArtifactOut, bool]:
    """Inspect (unless these bytes were inspected before), keep one blob per sha256, record the owner's artifact
    (shared with the project `project_id`, when given)."""
    known = q.blob_known(session, received.sha256)
    blob = blob_path(settings, received.sha256)
    if known is not None and blob.is_file() and (known.tensors is not None or known.format == "torchscript"):
        fmt, tensors = known.format, known.tensors
    else:
        try:
            info = inspect_file(received.path, settings)
        except InspectionRefused as err:
            raise ApiError(422, f"file: {err}", code="invalid_artifact", field="file") from None
        fmt, tensors = info.format, info.tensors
    if fmt == "torchscript" and not settings.allow_code_teachers:
        raise ApiError(422, f"file: {received.filename or 'the upload'} {CODE_REFUSED}", code="code_refused",
                       field="file")
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received.path, blob)
    artifact, created = q.add_artifact(session, who.id, sha256=received.sha256, size=received.size, fmt=fmt,
                                       path=str(blob), filename=received.filename, tensors=tensors,
                                       project_id=project_id)
    return ArtifactOut.model_validate(artifact, from_attributes=True), created
