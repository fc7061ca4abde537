"""SDK clients: requests signed in the ``Authorization`` header (boto3, the aws CLI, ... with the proxy
as their ``endpoint_url``).

Such a request was signed for the proxy's host: it can neither be redirected (botocore follows a 307
from its endpoint as a region redirect, again and again) nor replayed to S3.  So, whatever
S3CACHE_ACCESS says:

- its signature is checked here, against S3CACHE_SIGNING_KEYS (``signatures.verify_header_signed``);
- reads are answered, never redirected: a hit from disk (Caddy's file_server after ``check_hit``, the
  Caddyfile's hit_checked route; or by us, for a ranged miss we have just filled); a GetObject miss
  streamed through while it is cached (``Filler.stream``: one origin GET serves the miss and every later
  hit); a ranged miss filled whole first (one background fill, concurrent ranges waiting for it, up
  to ``RANGE_WAIT``) and then served from disk; conditional misses, HeadObject misses, ListObjects(V2), HeadBucket,
  GetBucketLocation and ListBuckets relayed uncached, S3's status, headers and body as they come;
- what reaches S3 is the proxy's own request, signed with its own credentials (``upstream_auth``) for
  exactly the target ``upstream`` sends (S3's canonical spelling of the client's);
- anything else is one S3 XML error (``NotImplemented``), unless S3CACHE_SDK_WRITES=passthrough relays
  it re-signed (and a successful write or delete of a key then drops its cached copy);
- without signing keys or credentials of the proxy's own, one S3 XML error naming the setting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Iterator, Mapping
from urllib.parse import unquote

from flask import Response
from werkzeug.http import parse_range_header

from s3cache import entries, metadata
from s3cache.addressing import Resolved
from s3cache.config import Config
from s3cache.httpdate import format_http_date
from s3cache.layout import Layout, Uncacheable
from s3cache.request_path import BadRequest
from s3cache.wire import SERVED_HEADER
from sidecar import freshness, hit_headers
from sidecar.access import REVALIDATE_TIMEOUT, HitRequest, allow, deny, remove_cached, serves_object, unreachable
from sidecar.admission import Admission
from sidecar.fill import Filler
from sidecar.miss import MissPlan
from sidecar.s3errors import error_response, retry_later
from sidecar.signatures import canonical_target, verify_header_signed
from sidecar.status import Status
from sidecar.upstream import READ_ERRORS, Unreachable, Unsendable, Upstream, done, sendable_url
from sidecar.upstream_auth import UNSIGNED_PAYLOAD, NoCredentials, UpstreamSigner

log = logging.getLogger("sidecar.sdk")

CHUNK = 1 << 16
CONDITIONALS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
# Request headers S3 reads that go on to it (x-amz-* too, but for the client's own signature's).
FORWARDED = ("range", *CONDITIONALS, "content-type", "content-length", "content-md5", "content-encoding",
             "content-disposition", "content-language", "cache-control", "expires")
OWN_SIGNATURE = ("x-amz-date", "x-amz-content-sha256", "x-amz-security-token")
# Response headers that describe one hop, not S3's answer.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "upgrade", "server", "date"})
# Bucket-level reads that pass through: ListObjects(V2) and their paginators' parameters, GetBucketLocation.
BUCKET_READS = frozenset({"list-type", "prefix", "delimiter", "continuation-token", "start-after", "max-keys",
                          "encoding-type", "fetch-owner", "marker", "location", "x-id"})
# Object-level parameters of a plain GetObject / HeadObject (others name another operation).
OBJECT_READS = frozenset({"x-id", "response-cache-control", "response-content-disposition",
                          "response-content-encoding", "response-content-language", "response-content-type",
                          "response-expires"})
# Object reads that pass through uncached (another version, one part of a multipart object).
UNCACHED_READS = frozenset({"versionId", "partNumber"})
RELAY_TIMEOUT = 60.0
# How long a ranged miss waits for the object's fill before its range is relayed uncached.
RANGE_WAIT = 20.0

NO_KEYS = ("This cache answers requests signed in the Authorization header (SDK clients with the cache as "
           "endpoint_url) only for the access keys in S3CACHE_SIGNING_KEYS (or S3CACHE_SIGNING_KEYS_FILE), "
           "and none is set.")
NO_CREDENTIALS = ("This cache answers SDK clients (requests signed in the Authorization header) only with S3 "
                  "credentials of its own, and has none: set S3CACHE_UPSTREAM_ACCESS_KEY_ID and "
                  "S3CACHE_UPSTREAM_SECRET_ACCESS_KEY (or the standard AWS_* variables or credentials file).")


def _names(raw_query: str) -> set[str]:
    return {unquote(p.partition("=")[0]) for p in raw_query.split("&") if p}


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


class SDK:
    def __init__(self, config: Config, layout: Layout, filler: Filler, upstream: Upstream,
                 admission: Admission, status: Status, slots: threading.BoundedSemaphore):
        self.config, self.layout, self.filler, self.upstream = config, layout, filler, upstream
        self.admission, self.status, self.slots = admission, status, slots
        self.signer = UpstreamSigner(config)

    # -- who may ask ------------------------------------------------------------------

    def _setup_error(self) -> Response | None:
        if not self.config.keys():
            return error_response(403, "AccessDenied", NO_KEYS)
        if not self.signer.available():
            return error_response(403, "AccessDenied", NO_CREDENTIALS)
        return None

    def _authenticate(self, method: str, raw_uri: str, headers: Mapping[str, str],
                      host: str) -> tuple[Resolved | None, Response | None]:
        refused = self._setup_error()
        if refused is not None:
            return None, refused
        try:
            resolved = self.config.addressing.resolve(host, raw_uri)
        except BadRequest as exc:
            return None, error_response(exc.status, exc.code, exc.message)
        parsed = resolved.parsed
        verdict = verify_header_signed(method, parsed.raw_path, parsed.raw_query, host, headers, self.config.keys(),
                                       bucket=parsed.bucket if resolved.virtual else None)
        if not verdict.ok:
            return None, error_response(verdict.status, verdict.code, verdict.message, parsed.raw_path)
        return resolved, None

    def check_hit(self, hit: HitRequest) -> Response:
        """Caddy's question before it serves a cached file to a header-signed request (hit_checked)."""
        resolved, refused = self._authenticate(hit.method, hit.raw_uri, hit.headers, hit.host)
        if refused is not None:
            refused.headers["X-Cache"] = "DENIED"
            return refused
        ref = resolved.parsed.ref
        try:
            relative = self.layout.relative_path(ref)
        except Uncacheable:
            return deny(403, "AccessDenied", "Access Denied")
        if not serves_object(hit.headers.get(SERVED_HEADER), relative):
            return deny(403, "AccessDenied", "Access Denied")
        if self.config.ttl is not None and freshness.age(self.layout, ref) > self.config.ttl:
            return self._revalidate(hit, resolved)
        # The signature covers the query: its response-* overrides are the client's to ask for.
        return allow(hit, ref, self.layout)

    def _revalidate(self, hit: HitRequest, resolved: Resolved) -> Response:
        """S3CACHE_TTL: ask S3 (a HEAD, signed by the proxy) whether the stale entry is still the object.

        Unchanged: served, its age reset. Changed or gone: the entry is dropped, and the client told to
        retry (``503 SlowDown``, which SDKs retry): the retry is a miss, streamed from S3.  No body
        moves for the check, and nothing stale is served.
        """
        ref = resolved.parsed.ref
        url = self._upstream_url(resolved, hit.raw_uri)
        etag = metadata.load_headers(self.layout, ref).get("etag")
        try:
            validators = ({"If-None-Match": etag} if etag else
                          {"If-Modified-Since": format_http_date(os.stat(self.layout.object_path(ref)).st_mtime)})
        except FileNotFoundError:
            return deny(404, "NoSuchKey", "The specified key does not exist.")
        try:
            resp = self.upstream.request("HEAD", url, headers=self._sign("HEAD", url, validators),
                                         connect_timeout=REVALIDATE_TIMEOUT[0], read_timeout=REVALIDATE_TIMEOUT[1])
        except (Unreachable, Unsendable, NoCredentials) as exc:
            return self._unconfirmed(hit, ref, str(exc))
        try:
            status = resp.status
            if status == 304 or (status == 200 and etag and resp.headers.get("ETag") == etag):
                metadata.mark_validated(self.layout, ref)
                return allow(hit, ref, self.layout, told=resp.headers)
            if status >= 500:
                return self._unconfirmed(hit, ref, f"origin answered {status}")
            if status in (200, 404):
                remove_cached(self.layout, ref)
            if status == 200:
                log.info("stale %s: changed at the origin; dropped, the client retries", ref.name)
                busy = deny(503, "SlowDown", "The cached copy changed at S3; please retry.")
                busy.headers["Retry-After"] = "0"
                return busy
            if status == 404:
                return deny(404, "NoSuchKey", "The specified key does not exist.")
            return deny(status, "AccessDenied" if status == 403 else "InvalidRequest", f"S3 answered {status}.")
        finally:
            done(resp)

    def _unconfirmed(self, hit: HitRequest, ref, why: str) -> Response:
        """S3 could not be asked: S3CACHE_REVALIDATE_ON_ERROR decides, as for presigned hits.

        (The request's signature was checked here, so its response-* parameters apply if it is served.)
        """
        return unreachable(hit, ref, self.config, self.layout, why, overrides=True)

    def _upstream_url(self, resolved: Resolved, raw_uri: str) -> str:
        """Where S3 answers this request, its target in S3's canonical spelling (what the proxy signs and sends)."""
        base = resolved.upstream_url[: len(resolved.upstream_url) - len(raw_uri)]
        return base + canonical_target(resolved.parsed.raw_path, resolved.parsed.raw_query)

    # -- everything Caddy did not serve from disk ------------------------------------

    def handle(self, method: str, raw_uri: str, headers: Mapping[str, str], host: str, environ: dict) -> Response:
        if raw_uri.partition("?")[0] == "/" and self.config.addressing.bucket_for_host(host) is None:
            return self._service(method, raw_uri, headers, host)
        resolved, refused = self._authenticate(method, raw_uri, headers, host)
        if refused is not None:
            return refused
        # What follows holds a server thread for as long as S3 and the client take (a stream, a relayed
        # body, a wait for a fill): S3CACHE_STREAM_MAX at once, shared with stream mode, so hits, access
        # checks and health keep threads of their own. Beyond it, S3's own answer to a burst, which SDKs retry.
        if not self.slots.acquire(blocking=False):
            return retry_later("Please reduce your request rate.", "SlowDown", seconds=1)
        try:
            resp = self._handle(method, raw_uri, resolved, headers, environ)
        except BaseException:
            self.slots.release()
            raise
        resp.call_on_close(self.slots.release)
        return resp

    def _service(self, method: str, raw_uri: str, headers: Mapping[str, str], host: str) -> Response:
        """``/`` of no bucket: ListBuckets (the proxy's own buckets, as its credentials see them), relayed."""
        refused = self._setup_error()
        if refused is not None:
            return refused
        raw_query = raw_uri.partition("?")[2]
        verdict = verify_header_signed(method, "/", raw_query, host, headers, self.config.keys())
        if not verdict.ok:
            return error_response(verdict.status, verdict.code, verdict.message, "/")
        if method != "GET":
            return error_response(501, "NotImplemented", f"{method} / is not passed to S3 by this cache.", "/")
        return self._relay("GET", self.config.upstream + canonical_target("/", raw_query), headers)

    def _handle(self, method: str, raw_uri: str, resolved: Resolved, headers: Mapping[str, str],
                environ: dict) -> Response:
        parsed = resolved.parsed
        names = _names(parsed.raw_query)
        url = self._upstream_url(resolved, raw_uri)
        try:
            if parsed.key and method in ("GET", "HEAD") and names <= OBJECT_READS | UNCACHED_READS:
                if method == "GET" and not names & UNCACHED_READS:
                    return self._get_object(resolved, url, headers, environ)
                return self._relay(method, url, headers)
            if not parsed.key and method in ("GET", "HEAD") and names <= BUCKET_READS:
                return self._relay(method, url, headers)
            if self.config.sdk_writes == "passthrough":
                return self._passthrough(method, resolved, url, headers, environ)
        except NoCredentials:
            return error_response(403, "AccessDenied", NO_CREDENTIALS)
        return error_response(501, "NotImplemented",
                              f"This cache serves SDK clients reads only (GetObject, HeadObject, ListObjects, "
                              f"HeadBucket, GetBucketLocation): {method} of this resource"
                              f"{' (?' + '&'.join(sorted(names)) + ')' if names else ''} is not passed to S3 "
                              "unless S3CACHE_SDK_WRITES=passthrough.", parsed.raw_path)

    def _sign(self, method: str, url: str, headers: Mapping[str, str] | None = None,
              payload: str = UNSIGNED_PAYLOAD) -> dict[str, str]:
        """The request to S3: the client's headers S3 reads, signed by the proxy."""
        sent = {}
        for name, value in (headers or {}).items():
            lname = name.lower()
            if lname in FORWARDED or (lname.startswith("x-amz-") and lname not in OWN_SIGNATURE):
                sent[name] = value
        return self.signer.sign(method, url, sent, payload)

    # -- GetObject ----------------------------------------------------------------------

    def _get_object(self, resolved: Resolved, url: str, headers: Mapping[str, str], environ: dict) -> Response:
        parsed = resolved.parsed
        ref = parsed.ref
        lheaders = _lower(headers)
        try:
            final = str(self.layout.object_path(ref))
        except Uncacheable as exc:
            return self._relay("GET", url, headers, why=f"uncacheable key: {exc}")
        if parsed.literal_plus or not sendable_url(url):
            return self._relay("GET", url, headers, why="the key cannot be named to S3 unchanged")
        if "if-none-match" in lheaders or "if-modified-since" in lheaders:
            # The client most likely holds the object: S3's 304 costs no body, a fill the whole of it.
            return self._relay("GET", url, headers, why="revalidating miss")
        ranged = "range" in lheaders
        # If-Match / If-Unmodified-Since (s3transfer's ranged downloads send If-Match): judged against
        # the filled object, like a Range, so that it is filled (once) and answered from disk.
        whole_first = ranged or "if-match" in lheaders or "if-unmodified-since" in lheaders
        if ranged and not self.config.fill_on_range:
            return self._relay("GET", url, headers, why="range (S3CACHE_FILL_ON_RANGE=off)")
        if os.path.isfile(final) and self._await_cached(ref, final):  # filled since Caddy looked
            return self._serve_cached(resolved, headers, "HIT") or self._relay("GET", url, headers)
        if not self.admission.admit(ref):
            self.status.count_miss(MissPlan(url, None, "not admitted"))
            return self._relay("GET", url, headers, why=f"not admitted (S3CACHE_ADMIT={self.config.admit})")
        self.status.count_miss(MissPlan(url, ref))
        sign = self._sign  # signed as each request goes out: (method, url) -> headers
        if not whole_first:
            streamed = self.filler.stream(ref, url, sign=sign)
            if streamed is not None:
                resp = Response(streamed.body, status=streamed.status, headers=streamed.headers)
                if "Content-Type" not in streamed.headers:
                    del resp.headers["Content-Type"]
                resp.headers["X-Cache"] = "MISS"
                return resp
        else:
            # One background fill however many parts ask (s3transfer sends several at once), then each
            # part from disk.
            self.filler.submit(ref, url, sign=sign)
        # Cached now, or being cached here: served from disk once it is there -- within RANGE_WAIT (below
        # SDKs' 60-second read timeout); past it, or if the fill ended without the object, relayed.
        if self._await_cached(ref, final):
            served = self._serve_cached(resolved, headers, "MISS")
            if served is not None:
                return served
        return self._relay("GET", url, headers, why="not cached in time")

    def _await_cached(self, ref, final: str) -> bool:
        """Whether the object is cached with its metadata (S3's ETag: an If-Match part needs it), waiting for a
        fill under way for at most RANGE_WAIT. The object is in place a moment before its metadata
        (sidecar.fill): a fill still pending means "not yet"."""
        deadline = time.monotonic() + RANGE_WAIT
        while True:
            pending = self.filler.pending(ref)
            cached = os.path.isfile(final)
            if not pending or time.monotonic() > deadline:
                return cached
            time.sleep(0.05)

    def _serve_cached(self, resolved: Resolved, headers: Mapping[str, str], x_cache: str) -> Response | None:
        """The cached object as S3 would answer this GET (Range, conditionals, response-*); None if it is gone."""
        ref = resolved.parsed.ref
        try:
            fh = open(self.layout.object_path(ref), "rb")
        except OSError:
            return None
        st = os.fstat(fh.fileno())
        answer = hit_headers.answer("GET", headers, metadata.load_headers(self.layout, ref),
                                    resolved.parsed.raw_query, st.st_mtime)
        out = dict(answer.headers)
        if answer.status != hit_headers.SERVE:
            fh.close()
            resp = Response(status=answer.status, headers=out)
            del resp.headers["Content-Type"]
            resp.headers["X-Cache"] = x_cache
            return resp
        size, start, stop, status = st.st_size, 0, st.st_size, 200
        wanted = parse_range_header(out.pop(hit_headers.RANGE, None))
        if wanted is not None and len(wanted.ranges) == 1:  # several ranges: S3 sends the whole object
            bounds = wanted.range_for_length(size)
            if bounds is None:
                fh.close()
                resp = error_response(416, "InvalidRange", "The requested range is not satisfiable")
                resp.headers["Content-Range"] = f"bytes */{size}"
                return resp
            (start, stop), status = bounds, 206
            out["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        out.setdefault("Content-Type", hit_headers.OCTET_STREAM)
        out["Last-Modified"] = format_http_date(st.st_mtime)
        out["Content-Length"] = str(stop - start)
        out["Accept-Ranges"] = "bytes"
        out["X-Cache"] = x_cache
        return Response(_FileRange(fh, start, stop), status=status, headers=out, direct_passthrough=True)

    # -- relayed as they are ------------------------------------------------------------

    def _relay(self, method: str, url: str, headers: Mapping[str, str], *, why: str = "", body=None,
               payload: str = UNSIGNED_PAYLOAD) -> Response:
        if why:
            log.debug("relayed uncached (%s)", why)
        try:
            resp = self.upstream.request(method, url, headers=self._sign(method, url, headers, payload),
                                         connect_timeout=RELAY_TIMEOUT, read_timeout=RELAY_TIMEOUT, body=body)
        except Unsendable as exc:
            log.info("cannot relay an SDK request: %s", exc)
            return error_response(400, "InvalidRequest", "This request cannot be sent to S3 unchanged.")
        except Unreachable as exc:
            log.warning("S3 unreachable for an SDK request: %s", exc)
            return retry_later("Could not reach S3; please retry.")
        relayed = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
        if method == "HEAD" or resp.status in (204, 304):
            done(resp)
            out = Response(b"", status=resp.status)
        else:
            out = Response(_Relayed(resp), status=resp.status, direct_passthrough=True)
        del out.headers["Content-Type"]
        del out.headers["Content-Length"]  # S3's own, below (a HEAD's names the object's size)
        for name, value in relayed:
            out.headers.add(name, value)
        out.headers["X-Cache"] = "MISS"
        return out

    def _passthrough(self, method: str, resolved: Resolved, url: str, headers: Mapping[str, str],
                     environ: dict) -> Response:
        lheaders = _lower(headers)
        claimed = lheaders.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        if claimed.startswith("STREAMING-") and claimed != "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            # Each chunk carries a signature chained from the client's: it cannot be re-signed in passing.
            return error_response(501, "NotImplemented", "Uploads with signed chunks (STREAMING-AWS4-HMAC-SHA256-"
                                                         "PAYLOAD) are not passed through; disable chunked signing.")
        # The client's body hash, when it gave one, goes on to S3, which checks the body against it.
        body = environ["wsgi.input"] if method in ("PUT", "POST") else None
        resp = self._relay(method, url, headers, body=body, payload=claimed)
        key = resolved.parsed.key
        if key and 200 <= resp.status_code < 300 and method in ("PUT", "POST", "DELETE"):
            removal = entries.remove(self.layout, resolved.parsed.ref, wait=entries.DEFAULT_WAIT)
            if removal.outcome not in ("removed", "absent"):
                log.warning("kept %s after an SDK write: %s (%s)", resolved.parsed.ref.name, removal.outcome,
                            removal.detail)
        return resp


class _Relayed:
    """S3's body as it arrives; the connection is given back (or closed) when the server closes us."""

    def __init__(self, resp):
        self.resp = resp

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self.resp.read1(CHUNK, decode_content=False):
                yield chunk
        except READ_ERRORS as exc:  # the client gets a short body, as from S3 itself
            log.warning("relaying an SDK response cut: %s", type(exc).__name__)

    def close(self) -> None:
        done(self.resp)


class _FileRange:
    """Bytes [start, stop) of an open file, closed when the server closes us."""

    def __init__(self, fh, start: int, stop: int):
        self.fh, self.start, self.stop = fh, start, stop

    def __iter__(self) -> Iterator[bytes]:
        self.fh.seek(self.start)
        left = self.stop - self.start
        while left > 0:
            chunk = self.fh.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.fh.close()
