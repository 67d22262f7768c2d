"""Streaming multipart parsing: the file part goes straight into the artifact store.

Starlette's form parser would spool the whole upload before we can refuse it; this parser
writes each chunk through the hashing, size-checked `Upload` as it arrives, and keeps the
small text fields (the spec) in memory under their own limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError
from .store.artifacts import ArtifactStore, TooLarge, Upload

MAX_FIELD_BYTES = 1 << 20  # all text parts of one request together, headers included


@dataclass
class Form:
    """What a multipart request carried."""

    fields: dict[str, str] = field(default_factory=dict)
    upload: Upload | None = None
    filename: str = ""


async def read_form(request: Request, store: ArtifactStore, file_field: str,
                    limit: int, text_fields: tuple[str, ...] = (),
                    text_limits: dict[str, int] | None = None, over: str | None = None
                    ) -> Form:
    """Parse the request; the part named `file_field` streams into an Upload, the parts
    named in `text_fields` are kept as text (each within `text_limits`, all of them and
    every part's headers within MAX_FIELD_BYTES), any other part is refused (422). Reading
    stops at the first limit passed, chunked or not; `over` names the limit in the 413
    when it is not the upload limit itself (e.g. what is left of a storage quota)."""
    text_limits = text_limits or {}
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "expected multipart/form-data with a file field "
                       f"{file_field!r} and a 'spec' field")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MAX_FIELD_BYTES:
        raise ApiError(413, f"request body of {length} bytes exceeds the "
                       + (f"{limit} bytes left {over}" if over else
                          f"upload limit of {limit} bytes"))
    form = Form()
    state: dict = {"headers": {}, "name": None, "buf": None, "error": None, "hname": b"",
                   "hval": b"", "text": 0}

    def count_text(n: int) -> None:
        state["text"] += n
        if state["text"] > MAX_FIELD_BYTES and not state["error"]:
            state["error"] = ApiError(413, f"the form's text parts and headers exceed "
                                      f"{MAX_FIELD_BYTES} bytes")

    def on_part_begin() -> None:
        state.update(headers={}, name=None, buf=None, hname=b"", hval=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_text(end - start)
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_text(end - start)
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == file_field:
            if form.upload is not None:
                state["error"] = ApiError(422, f"field {file_field!r} given twice")
                return
            form.upload = store.upload(limit)
            form.filename = disp.get(b"filename", b"").decode("utf-8", "replace")
        elif name in text_fields:
            if name in form.fields:
                state["error"] = ApiError(422, f"field {name!r} given twice")
                return
            state["buf"] = bytearray()
        elif not state["error"]:
            known = ", ".join(repr(f) for f in (file_field, *text_fields))
            state["error"] = ApiError(422, f"unknown form field {name[:60]!r}; the fields are "
                                      f"{known}")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["error"]:
            return
        chunk = data[start:end]
        if state["name"] == file_field and form.upload is not None:
            try:
                form.upload.write(chunk)
            except TooLarge as exc:
                state["error"] = ApiError(413, f"{file_field}: {exc}"
                                          + (f", what is left {over}" if over else ""))
        elif state["buf"] is not None:
            state["buf"] += chunk
            cap = text_limits.get(state["name"], MAX_FIELD_BYTES)
            if len(state["buf"]) > cap and not state["error"]:
                state["error"] = (
                    ApiError(422, f"{state['name']} is more than {cap} bytes, the limit is "
                             f"{cap}", "budget_exceeded") if state["name"] in text_limits
                    else ApiError(413, f"field {state['name']!r} is larger than {cap} bytes"))
            count_text(len(chunk))

    def on_part_end() -> None:
        if state["buf"] is not None and state["name"]:
            form.fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if state["error"]:
                raise state["error"]
        parser.finalize()
        if state["error"]:
            raise state["error"]
    except ApiError:
        if form.upload:
            form.upload.abort()
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed body is the caller's error
        if form.upload:
            form.upload.abort()
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    if form.upload is not None:
        form.upload.close()
    return form
