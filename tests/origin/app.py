"""WSGI middleware that turns moto's S3 server into a signature-enforcing origin.

This module owns the origin's request policy:

- a request with an ``Authorization`` header is test setup (boto3 creating
  buckets and objects) and goes to moto unchecked -- unless it is signed
  (SigV4) with a key of ``CREDENTIALS``: then its signature is checked as S3
  would (what the proxy sends for SDK clients with its own credentials);
- a presigned request (SigV2 or SigV4 query parameters) must pass
  ``sigcheck`` against ``CREDENTIALS``, else 403 with an S3 XML error;
- an anonymous request is refused (403 AccessDenied) unless its bucket's
  name starts with ``public-``, or it is a CORS preflight (``OPTIONS``), which
  S3 answers from the bucket's CORS configuration alone;
- every request is counted, GETs may get an armed fault, and If-None-Match is
  settled here (moto only honours a single exact ETag).

Control endpoints (never counted): ``GET /_origin/stats``,
``POST /_origin/reset``, ``POST``/``DELETE /_origin/fault``,
``GET /_origin/faults``, ``GET /_origin/ping``. Path-style addressing only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

from . import sigcheck
from .credentials import ADMIN_ACCESS_KEY, CREDENTIALS, PUBLIC_BUCKET_PREFIX, REGION
from .state import Fault, Faults, Stats

CONTROL_PREFIX = "/_origin/"
_REASONS = {200: "OK", 301: "Moved Permanently", 307: "Temporary Redirect", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_ANONYMOUS_STAND_IN = (f"AWS4-HMAC-SHA256 Credential={ADMIN_ACCESS_KEY}/20000101/{REGION}/s3/aws4_request, "
                       "SignedHeaders=host, Signature=0")
_STATUS_FAULT_CODES = {500: ("InternalError", "We encountered an internal error. Please try again."),
                       503: ("SlowDown", "Please reduce your request rate.")}


def make_moto_app() -> Any:
    """moto's S3 Flask app on its own: every request here is S3, path-style."""
    # S3 sends Access-Control-* headers only as the bucket's CORS configuration says; moto's server
    # would add its own (flask-cors: any origin allowed) to every answer. Read when moto is imported.
    os.environ["MOTO_DISABLE_GLOBAL_CORS"] = "1"
    from moto.moto_server.werkzeug_app import create_backend_app

    return create_backend_app("s3")


def split_request_uri(environ: dict[str, Any]) -> tuple[str, str]:
    """(raw path, raw query) exactly as the client sent them.

    waitress puts the undecoded request-target in REQUEST_URI; PATH_INFO is
    already percent-decoded and useless for SigV2 or for counting. Like every
    WSGI string it holds bytes as latin-1; a client sending raw UTF-8 meant
    UTF-8, so that is how it is read (invalid bytes survive as surrogates).
    """
    uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not uri:  # not waitress: rebuild, losing the client's exact spelling
        uri = quote(environ.get("PATH_INFO") or "/", safe="/~", encoding="latin-1")
        if environ.get("QUERY_STRING"):
            uri += "?" + environ["QUERY_STRING"]
    try:
        uri = uri.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        pass  # already text, not WSGI bytes-as-latin-1
    if "://" in uri.split("?", 1)[0]:  # absolute-form request-target
        parts = urlsplit(uri)
        return parts.path or "/", parts.query
    path, _, query = uri.partition("?")
    return path or "/", query


VHOST_SUFFIX = ".localhost"


def vhost_bucket_of(host: str) -> str | None:
    """``bucket`` for a Host of ``bucket.localhost[:port]`` (virtual-hosted style), else None."""
    name = host.lower().rsplit(":", 1)[0]
    if name.endswith(VHOST_SUFFIX) and len(name) > len(VHOST_SUFFIX):
        return name[: -len(VHOST_SUFFIX)]
    return None


def uri_for_moto(raw_path: str, raw_query: str) -> str:
    """RAW_URI for moto: ASCII, with S3's reading of '+' (a space) spelled out."""
    data = raw_path.replace("+", "%20").encode("utf-8", "surrogateescape")
    path = "".join(chr(b) if 0x21 <= b < 0x7F else "%%%02X" % b for b in data)
    return path + ("?" + raw_query if raw_query else "")


def decoded_path(raw_path: str) -> str:
    """The "/bucket/key" S3 serves for a raw path ('+' is a space, as S3 has it)."""
    return unquote(raw_path.replace("+", "%20"), errors="replace")


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def error_xml(code: str, message: str, **extra: str) -> bytes:
    fields = {"Code": code, "Message": message, **extra, "RequestId": "S3CACHETESTORIGIN"}
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items())
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{inner}</Error>'.encode("utf-8", "backslashreplace")


def _status_line(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Status')}"


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match list against one ETag."""
    if if_none_match.strip() == "*":
        return True
    bare = etag.strip().removeprefix("W/").strip('"')
    return any(t.strip().removeprefix("W/").strip('"') == bare for t in if_none_match.split(","))


class OriginApp:
    def __init__(self, inner: Any = None, credentials: dict[str, str] = CREDENTIALS,
                 region: str = REGION, clock: Callable[[], float] = time.time) -> None:
        self.inner = inner if inner is not None else make_moto_app()
        self.credentials = credentials
        self.region = region
        self.clock = clock
        self.stats = Stats()
        self.faults = Faults()

    # --- entry point ------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        raw_path, raw_query = split_request_uri(environ)
        if raw_path.startswith(CONTROL_PREFIX):
            return self._control(environ, start_response, raw_path)
        # Virtual-hosted style, as S3 has it: the bucket is the first label of
        # <bucket>.localhost. Only the checker sees the path as sent; moto and
        # the counters get the path-style equivalent.
        vhost_bucket = vhost_bucket_of(environ.get("HTTP_HOST", ""))
        signed_path = raw_path
        headers = request_headers(environ)  # as sent: SigV4 signs the Host
        if vhost_bucket:
            raw_path = f"/{vhost_bucket}{raw_path}"
            environ["PATH_INFO"] = f"/{vhost_bucket}{environ.get('PATH_INFO', '')}"
            environ["HTTP_HOST"] = environ["HTTP_HOST"].split(".", 1)[1]  # moto sees path-style
        # S3 reads a path-style bucket name decoded ("/v%69c-bucket/k" is bucket "vic-bucket"); moto takes
        # the segment literally and answers NoSuchBucket, so the bucket goes to moto decoded.
        bucket_raw, slash, rest = raw_path[1:].partition("/")
        if "%" in bucket_raw:
            raw_path = "/" + unquote(bucket_raw, errors="replace") + slash + rest
        # moto reads RAW_URI (set by werkzeug/gunicorn, not waitress) to get
        # the undecoded key; without it it decodes PATH_INFO a second time
        # and mangles keys containing '%'. S3 reads a literal '+' in the path
        # as a space (only %2B is a plus); moto keeps it as '+'.
        environ["RAW_URI"] = uri_for_moto(raw_path, raw_query)
        method = environ["REQUEST_METHOD"].upper()
        key = decoded_path(raw_path)
        record = self.stats.begin(method=method, path=raw_path, query=raw_query, key=key,
                                  auth=None, headers=headers, peer_port=environ.get("REMOTE_PORT"))

        auth, denial = self._authorize(method, signed_path, raw_query, headers, key, vhost_bucket)
        self.stats.update(record, auth=auth)
        if denial is not None:
            code, message, details = denial
            return self._respond(start_response, record, 403, error_xml(code, message, **details), method)

        if auth == "anonymous":
            # moto refuses anonymous reads of objects without a public-read
            # ACL; here the bucket name alone makes it public, so present the
            # request to moto as an authenticated one.
            environ["HTTP_AUTHORIZATION"] = _ANONYMOUS_STAND_IN
        fault = self.faults.take(key) if method == "GET" else None
        if fault is not None:
            self.stats.update(record, fault=fault.kind)
            if fault.kind == "status":
                code, message = _STATUS_FAULT_CODES.get(fault.status, ("InjectedFault", "Injected fault"))
                extra = [("Location", fault.location)] if fault.location else []
                return self._respond(start_response, record, fault.status, error_xml(code, message), method, extra)
        return self._forward(environ, start_response, record, method, headers, fault)

    # --- policy -----------------------------------------------------------

    def _authorize(self, method: str, raw_path: str, raw_query: str, headers: dict[str, str],
                   key: str, vhost_bucket: str | None = None) -> tuple[str, tuple[str, str, dict[str, str]] | None]:
        """(how the request authenticated, None or the (code, message, details) refusing it)."""
        if "authorization" in headers:
            if sigcheck.header_access_key(headers["authorization"]) not in self.credentials:
                return "header", None  # test setup (the admin key)
            # A key of the table signed in the header (a proxy with credentials of its own): checked as S3 would.
            checked = sigcheck.check_header_v4(method, raw_path, raw_query, headers, self.credentials,
                                               now=self.clock(), region=self.region)
            return "header-v4", None if checked.ok else (checked.code, checked.message, dict(checked.details))
        if method == "OPTIONS":
            # A CORS preflight is never authenticated at S3 (a browser sends no credentials with it, and
            # a presigned URL's signature is for GET): the bucket's CORS configuration alone answers it.
            return "anonymous", None
        result = sigcheck.check(method, raw_path, raw_query, headers, self.credentials,
                                now=self.clock(), region=self.region, vhost_bucket=vhost_bucket)
        if result is not None:
            return result.version, None if result.ok else (result.code, result.message, dict(result.details))
        bucket = key.lstrip("/").split("/", 1)[0]
        if bucket.startswith(PUBLIC_BUCKET_PREFIX):
            return "anonymous", None
        return "anonymous", ("AccessDenied", "Access Denied", {})

    # --- responses --------------------------------------------------------

    def _respond(self, start_response: Callable, record: dict[str, Any], status: int,
                 body: bytes, method: str, extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))] + (extra or [])
        start_response(_status_line(status), headers)
        sent = b"" if method == "HEAD" else body
        self.stats.update(record, status=status, bytes=len(sent))
        return [sent]

    def _forward(self, environ: dict[str, Any], start_response: Callable, record: dict[str, Any],
                 method: str, req_headers: dict[str, str], fault: Fault | None) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def inner_start(status: str, headers: list, exc_info: Any = None) -> Callable:
            # Held back: the origin may still rewrite status and headers.
            captured["status"], captured["headers"] = status, list(headers)
            return _no_write

        inner_iter = self.inner(environ, inner_start)
        status_line, headers = captured["status"], captured["headers"]
        status = int(status_line.split()[0])

        inm = req_headers.get("if-none-match")
        etag = next((v for k, v in headers if k.lower() == "etag"), None)
        if inm and etag and status == 200 and method in ("GET", "HEAD") and _etag_matches(inm, etag):
            status, status_line = 304, _status_line(304)
        if status == 304:
            # moto sends "Not Modified" as a 304 body; S3 sends none, and the
            # content-* headers describe a body that is not there.
            headers = [(k, v) for k, v in headers if not k.lower().startswith("content-")]
        if fault is not None and fault.kind == "bad_etag" and etag:
            wrong = hashlib.md5(b"s3cache-origin-bad-etag:" + etag.encode()).hexdigest()
            headers = [(k, f'"{wrong}"' if k.lower() == "etag" else v) for k, v in headers]

        self.stats.update(record, status=status)
        start_response(status_line, headers)
        if method == "HEAD" or status in (204, 304) or status < 200:
            _close(inner_iter)
            return []
        if fault is not None and status in (200, 206) and fault.kind in ("slow", "truncate"):
            body = b"".join(inner_iter)
            _close(inner_iter)
            if fault.kind == "truncate":
                # Content-Length stays whole; waitress sees too few bytes and
                # closes the connection, which is what a cut-off origin does.
                chunks: Iterable[bytes] = [body[: len(body) // 2]]
            else:
                chunks = _slow(body, fault.bytes_per_sec)
            return _Counted(chunks, None, self.stats, record)
        return _Counted(inner_iter, inner_iter, self.stats, record)

    # --- control endpoints ------------------------------------------------

    def _control(self, environ: dict[str, Any], start_response: Callable, path: str) -> list[bytes]:
        method = environ["REQUEST_METHOD"].upper()
        name = path[len(CONTROL_PREFIX):]
        if (method, name) == ("GET", "stats"):
            return _json(start_response, 200, self.stats.snapshot())
        if (method, name) == ("GET", "ping"):
            return _json(start_response, 200, {"ok": True})
        if (method, name) == ("POST", "reset"):
            self.stats.reset()
            return _json(start_response, 200, {"ok": True})
        if (method, name) == ("GET", "faults"):
            return _json(start_response, 200, {"faults": self.faults.list()})
        if (method, name) == ("DELETE", "fault"):
            self.faults.clear()
            return _json(start_response, 200, {"ok": True})
        if (method, name) == ("POST", "fault"):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                fault = Fault.from_json(json.loads(environ["wsgi.input"].read(length) or b"null"))
            except ValueError as exc:  # JSONDecodeError is a ValueError too
                return _json(start_response, 400, {"error": str(exc)})
            self.faults.arm(fault)
            return _json(start_response, 200, {"ok": True, "fault": fault.as_json()})
        return _json(start_response, 404, {"error": f"no control endpoint {method} {path}"})


def _json(start_response: Callable, status: int, payload: Any) -> list[bytes]:
    # ensure_ascii: a raw path may hold undecodable bytes (as surrogates).
    body = json.dumps(payload, default=str).encode("ascii")
    start_response(_status_line(status), [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
    return [body]


def _slow(body: bytes, bytes_per_sec: int) -> Iterator[bytes]:
    # Ten chunks a second keeps the rate smooth without a syscall per byte.
    step = max(1, bytes_per_sec // 10)
    for i in range(0, len(body), step):
        chunk = body[i:i + step]
        time.sleep(len(chunk) / bytes_per_sec)
        yield chunk


def _no_write(data: bytes) -> None:
    raise RuntimeError("the origin middleware does not support WSGI write()")


def _close(iterable: Any) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class _Counted:
    """Iterates a body, counting each chunk before the server sends it."""

    def __init__(self, chunks: Iterable[bytes], inner: Any, stats: Stats, record: dict[str, Any]) -> None:
        self._it = iter(chunks)
        self._chunks, self._inner, self._stats, self._record = chunks, inner, stats, record

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> bytes:
        chunk = next(self._it)
        self._stats.add_bytes(self._record, len(chunk))
        return chunk

    def close(self) -> None:
        _close(self._chunks)
        if self._inner is not None and self._inner is not self._chunks:
            _close(self._inner)
