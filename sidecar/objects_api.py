"""``/_s3cache/objects``: list and purge cached objects over HTTP (the admin API; guarded in ``sidecar.internal``).

    GET    /_s3cache/objects?prefix=P&after=A&limit=N   one page of entries, in name order
    GET    /_s3cache/objects/<bucket>/<key>              one entry (404 when not cached)
    DELETE /_s3cache/objects/<bucket>/<key>              purge one object
    DELETE /_s3cache/objects?prefix=<bucket>/<keyprefix> purge every object under the prefix

``<bucket>/<key>`` is read from the raw request URI exactly as an S3 path is
(percent-decoded, UTF-8; a ``+`` is a plus), so any key, however odd, can be
named: quote it as an S3 client would (``%2F`` and ``/`` are the same here,
as at S3).  Query values are percent-decoded the same way.  ``wait`` (seconds,
default 30) bounds how long a purge waits for a running fill of an object.

The work is ``s3cache.entries``'s, shared with ``s3cache purge`` and
``s3cache ls``; answers are JSON, refusals S3-style XML.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from flask import Response

from s3cache import entries, wire
from s3cache.layout import Layout, ObjectRef
from s3cache.request_path import BadRequest, decode_component, parse_uri
from sidecar.s3errors import error_response

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1000
MAX_WAIT = 300.0


def object_path(name: str) -> str:
    """The API path of ``bucket/key`` (every byte that is not unreserved percent-encoded)."""
    return wire.OBJECTS_PATH + "/" + quote(name, safe="/-._~")


def _json(body: dict, status: int = 200) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False, indent=1) + "\n", status=status,
                    content_type="application/json; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _query(raw_query: str) -> dict[str, str]:
    out = {}
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out[decode_component(name, "query")] = decode_component(value, "query")
    return out


def _number(params: dict, name: str, default: float, low: float, high: float) -> float:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise BadRequest(400, "InvalidArgument", f"{name} must be a number from {low:g} to {high:g}.")
    return value


def _entry_record(entry: entries.Entry) -> dict:
    return {**entry.record(), "path": object_path(entry.name)}


def handle(method: str, raw_uri: str, layout: Layout) -> Response:
    try:
        return _handle(method, raw_uri, layout)
    except BadRequest as exc:
        return error_response(exc.status, exc.code, exc.message)


def _handle(method: str, raw_uri: str, layout: Layout) -> Response:
    raw_path, _, raw_query = raw_uri.partition("?")
    params = _query(raw_query)
    rest = raw_path[len(wire.OBJECTS_PATH):]
    if rest in ("", "/"):
        if method in ("GET", "HEAD"):
            return _list(params, layout)
        if method == "DELETE":
            return _purge_prefix(params, layout)
        return _not_allowed(method)
    parsed = parse_uri(rest)
    if not parsed.key:
        raise BadRequest(400, "InvalidArgument",
                         f"Name an object ({wire.OBJECTS_PATH}/BUCKET/KEY) or a prefix (?prefix=BUCKET/KEYPREFIX).")
    ref = ObjectRef(parsed.bucket, parsed.key)
    if method in ("GET", "HEAD"):
        found = entries.lookup(layout, ref)
        if found is None:
            return error_response(404, "NoSuchKey", "The object is not cached.", raw_path)
        return _json(_entry_record(found))
    if method == "DELETE":
        wait = _number(params, "wait", entries.DEFAULT_WAIT, 0, MAX_WAIT)
        return _purged([entries.remove(layout, ref, wait=wait)])
    return _not_allowed(method)


def _list(params: dict, layout: Layout) -> Response:
    limit = int(_number(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))
    prefix, after = params.get("prefix", ""), params.get("after", "")
    found, cursor = entries.page(layout, prefix, after, limit)
    body = {"prefix": prefix, "objects": [_entry_record(e) for e in found], "next_after": cursor, "next": None}
    if cursor is not None:
        body["next"] = (f"{wire.OBJECTS_PATH}?prefix={quote(prefix, safe='')}&after={quote(cursor, safe='')}"
                        f"&limit={limit}")
    return _json(body)


def _purge_prefix(params: dict, layout: Layout) -> Response:
    if "prefix" not in params:
        raise BadRequest(400, "InvalidArgument",
                         f"DELETE {wire.OBJECTS_PATH} needs ?prefix=BUCKET/KEYPREFIX (or name one object).")
    try:
        entries.check_prefix(params["prefix"])
    except ValueError as exc:
        raise BadRequest(400, "InvalidArgument", str(exc)) from None
    wait = _number(params, "wait", entries.DEFAULT_WAIT, 0, MAX_WAIT)
    return _purged(entries.purge_prefix(layout, params["prefix"], wait=wait))


def _purged(removals) -> Response:
    body = entries.summary(removals)
    counts = body["counts"]
    if counts["error"]:
        return _json(body, 500)
    if counts["busy"]:
        resp = _json(body, 503)  # a fill held an object past the wait: the purge can be repeated
        resp.headers["Retry-After"] = "5"
        return resp
    return _json(body)


def _not_allowed(method: str) -> Response:
    resp = error_response(405, "MethodNotAllowed", f"{method} is not allowed here: GET lists, DELETE purges.")
    resp.headers["Allow"] = "GET, HEAD, DELETE"
    return resp
