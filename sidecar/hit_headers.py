"""S3's own answer on a hit: the stored headers, response-* overrides, and conditionals judged against S3's ETag.

Caddy's file_server knows only its own ETag (mtime+size) and guesses
Content-Type from the extension.  Whenever a hit passes the sidecar (the
``verify`` and ``revalidate`` modes, and ``open`` for objects whose headers
file_server cannot reproduce, see ``mark_kind``), it returns what S3
would have sent:

- the object's own headers under their S3 names (Content-Type, ETag,
  Content-Encoding, ``x-amz-meta-*``, ...), with the ``response-*`` overrides
  of *this* request applied; the Caddyfile copies them onto the response;
- the conditional request headers (If-Match, If-None-Match, If-Modified-Since,
  If-Unmodified-Since, If-Range) are evaluated here against S3's validators,
  RFC 9110 section 13.2.2 order; a 304 or 412 is answered by us, and Caddy
  strips those headers before file_server sees them, so its own ETag can never
  contradict S3's.

What is stored is the object's own: a header that a ``response-*`` parameter
of the filling URL overrode is S3's answer to that URL, not the object's, so
it is left out (``object_headers``) until a response to a URL that does not
override it tells it (``record``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl

from s3cache import metadata
from s3cache.httpdate import format_http_date, parse_http_date
from s3cache.layout import Layout, ObjectRef

# Stored header -> presigned override parameter (S3 GetObject's response-* parameters).
OVERRIDABLE = {
    "content-type": "response-content-type",
    "content-language": "response-content-language",
    "expires": "response-expires",
    "cache-control": "response-cache-control",
    "content-disposition": "response-content-disposition",
    "content-encoding": "response-content-encoding",
}
# Header names as S3 spells them, for what we hand to Caddy.
CANONICAL = {
    "content-type": "Content-Type", "content-language": "Content-Language", "expires": "Expires",
    "cache-control": "Cache-Control", "content-disposition": "Content-Disposition",
    "content-encoding": "Content-Encoding", "etag": "ETag",
}
# The object's own headers a hit answers with besides these: x-amz-meta-* and
# these x-amz-* (S3 sends them on a GET of the object whatever the URL).
OBJECT_AMZ = ("x-amz-version-id", "x-amz-server-side-encryption", "x-amz-storage-class")
# The request header Range as the check allows it (If-Range judged here); Caddy
# puts it back on the request, never on the response.
RANGE = "X-S3cache-Range"


# "Serve the file": an empty 200, not a 204. waitress (3.0) closes the connection after a bodyless status
# (it drops Content-Length, then closes for want of one), so with 204 every checked hit cost Caddy a new
# connection to the sidecar (bench/wsgi_servers.py: 1.3-1.5x more checks per second as an empty 200).
SERVE = 200


@dataclass
class HitAnswer:
    status: int                                   # SERVE: serve the file; 304 / 412: answer with this
    headers: dict[str, str] = field(default_factory=dict)


def overridden(raw_query: str) -> set[str]:
    """The (lower-case) headers a response-* parameter of this query replaces in S3's answer.

    Parameter names are compared case-insensitively: leaving out a header S3
    might not have overridden costs fidelity, storing one it did costs safety.
    """
    names = {name.lower() for name, _ in parse_qsl(raw_query, keep_blank_values=True)}
    return {header for header, param in OVERRIDABLE.items() if param in names}


def object_headers(response_headers: Mapping[str, str], raw_query: str) -> dict[str, str]:
    """S3's answer to a URL with this query, less what its response-* parameters overrode (lower-case names)."""
    replaced = overridden(raw_query)
    return {k.lower(): v for k, v in response_headers.items() if k.lower() not in replaced}


def _own(name: str) -> bool:
    return name in CANONICAL or name in OBJECT_AMZ or name.startswith("x-amz-meta-")


def s3_headers(stored: Mapping[str, str], raw_query: str) -> dict[str, str]:
    """The headers S3 answers a GET of this URL with (those we keep), lower-case names."""
    out = {k: v for k, v in stored.items() if _own(k)}
    params = dict(parse_qsl(raw_query, keep_blank_values=True))
    for header, param in OVERRIDABLE.items():
        if param in params:
            out[header] = params[param]
    return out


# The Content-Type Caddy's file_server sends for these extensions (Go's built-in table; the usual
# mime.types files agree).  Only these count as "Caddy sends it itself": elsewhere the guess
# depends on the machine's mime.types, or there is none (no extension: no Content-Type at all).
CADDY_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".avif": "image/avif", ".svg": "image/svg+xml", ".pdf": "application/pdf",
    ".wasm": "application/wasm", ".json": "application/json",
}
# Headers file_server never sends: an object with any of them needs the sidecar on open-mode hits.
BEYOND_CADDY = ("content-encoding", "content-disposition", "content-language", "cache-control", "expires")


# S3's default type, which Caddy sets itself for objects marked "octet"; and the type uploaders most often
# set on binaries (the aws CLI guesses it for .bin, .gz-less archives, ...), marked "app-octet", so hits of
# either stay Caddy's alone in open mode (Caddy's own guess may be another type or none).
OCTET_STREAM = "binary/octet-stream"
APP_OCTET_STREAM = "application/octet-stream"
_TYPE_MARKS = {OCTET_STREAM: "octet", APP_OCTET_STREAM: "app-octet"}


def mark_kind(key: str, stored: Mapping[str, str]) -> str | None:
    """What open-mode hits of this object need beyond file_server (a ``Layout.mark_path`` kind), or None.

    "headers": the sidecar's answer (S3's headers); "octet" / "app-octet": only
    a binary Content-Type (S3's default, or application/octet-stream), which Caddy sets itself.  ``stored``: the object's own
    headers, lower-case.  x-amz-version-id, x-amz-server-side-encryption and
    x-amz-storage-class alone do not count (open mode gives them up on
    otherwise plain objects), nor does S3's ETag.
    """
    if any(k in BEYOND_CADDY or k.startswith("x-amz-meta-") for k in stored):
        return "headers"
    content_type = stored.get("content-type")
    if content_type is None:
        return None  # unknown: the sidecar could not say more than file_server
    ext = os.path.splitext(key.rpartition("/")[2])[1].lower()
    if CADDY_TYPES.get(ext) == content_type:
        return None
    return _TYPE_MARKS.get(content_type, "headers")


def s3_name(name: str) -> str:
    """A stored (lower-case) header name as S3 spells it on the wire."""
    return CANONICAL.get(name, name)


def record(layout: Layout, ref: ObjectRef, response_headers: Mapping[str, str], raw_query: str) -> None:
    """Add to the stored headers what S3 just told about the object (a 304, or a 200 of the same ETag).

    Only headers this URL did not override, and only when the response names
    the stored ETag: then it is the same object (s3cache/metadata.add_headers
    says under which lock).  Best effort.
    """
    told = {k: v for k, v in object_headers(response_headers, raw_query).items() if _own(k) and k != "etag"}
    etag = {k.lower(): v for k, v in response_headers.items()}.get("etag")
    metadata.add_headers(layout, ref, told, etag)


def _etags(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _weak_match(tags: list[str], etag: str) -> bool:
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)


def _strong_match(tags: list[str], etag: str) -> bool:
    return any(t == "*" or (not t.startswith("W/") and not etag.startswith("W/") and t == etag) for t in tags)


def answer(method: str, request_headers: Mapping[str, str], stored: Mapping[str, str], raw_query: str,
           mtime: float) -> HitAnswer:
    """What to do with a hit the client may read: serve it (SERVE, with headers for Caddy), 304 or 412."""
    headers = s3_headers(stored, raw_query)
    etag = stored.get("etag", "")
    last_modified = int(parse_http_date(stored.get("last-modified")) or mtime)

    def get(name: str) -> str | None:
        return request_headers.get(name)

    # RFC 9110 13.2.2: If-Match, else If-Unmodified-Since; then If-None-Match, else If-Modified-Since.
    if get("If-Match") is not None:
        if not etag or not _strong_match(_etags(get("If-Match")), etag):
            return HitAnswer(412, _validators(etag, last_modified))
    elif (ius := parse_http_date(get("If-Unmodified-Since"))) is not None and last_modified > ius:
        return HitAnswer(412, _validators(etag, last_modified))
    if get("If-None-Match") is not None:
        if etag and _weak_match(_etags(get("If-None-Match")), etag):
            return HitAnswer(304, {**_validators(etag, last_modified), **_cache_headers(headers)})
    elif (ims := parse_http_date(get("If-Modified-Since"))) is not None and last_modified <= ims:
        return HitAnswer(304, {**_validators(etag, last_modified), **_cache_headers(headers)})

    out = {s3_name(k): v for k, v in headers.items()}
    rng = get("Range")
    if rng and method == "GET" and _if_range_holds(get("If-Range"), etag, last_modified):
        out[RANGE] = rng  # Caddy keeps only the request headers we hand back
    return HitAnswer(SERVE, out)


def _if_range_holds(if_range: str | None, etag: str, last_modified: int) -> bool:
    if if_range is None:
        return True
    if if_range.startswith('"') or if_range.startswith("W/"):
        return bool(etag) and _strong_match([if_range], etag)
    when = parse_http_date(if_range)
    return when is not None and int(when) == last_modified


def _validators(etag: str, last_modified: int) -> dict[str, str]:
    out = {"Last-Modified": format_http_date(last_modified)}
    if etag:
        out["ETag"] = etag
    return out


def _cache_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {CANONICAL[k]: v for k, v in headers.items() if k in ("cache-control", "expires")}


def object_mtime(layout: Layout, ref: ObjectRef) -> float:
    return os.stat(layout.object_path(ref)).st_mtime
