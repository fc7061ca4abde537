"""The sidecar's Flask app: thin routes over miss planning, fills and health.

Caddy only sends us what it could not serve from disk.  Every route answers
at once; the work behind a miss (the fill) runs in the background pool.  No
traceback ever reaches a client: unexpected errors become an S3-style 500.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask, Response, request

from s3cache import wire
from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.request_path import BadRequest

from sidecar import internal
from sidecar.internal import client_host
from sidecar.status import Status
from s3cache.ledger import fill_limit
from sidecar.admission import Admission
from sidecar.fill import Filler
from sidecar.miss import MissPlan, plan_miss
from sidecar.redirect import redirect_307
from sidecar.s3errors import error_response
from sidecar.sdk import SDK
from sidecar.signatures import header_signed
from sidecar.upstream import Upstream

log = logging.getLogger("sidecar")


def raw_request_uri() -> str:
    # Caddy passes the URI exactly as the client sent it; waitress's REQUEST_URI
    # is the fallback when the sidecar is reached directly.
    return request.headers.get(wire.RAW_URI_HEADER) or request.environ.get("REQUEST_URI") or request.full_path


def create_app(config: Config, filler: Filler | None = None) -> Flask:
    app = Flask(__name__)
    layout = Layout(config.dir)
    layout.ensure()
    # The one way to S3 (fills, streams, revalidation): exact request targets, keep-alive pools.
    upstream = filler.upstream if filler is not None else Upstream()
    filler = filler or Filler(layout, workers=config.fill_workers, timeout=config.fill_timeout,
                              max_object_bytes=config.max_object_bytes, upstream=upstream,
                              min_rate=config.fill_min_rate,
                              cap=fill_limit(config.max_bytes, config.evict_high))
    admission = Admission(config.admit, layout)
    # Streams hold a server thread for as long as S3 and the client take: at most
    # S3CACHE_STREAM_MAX of them, so hits, access checks and health never wait behind streams.
    stream_slots = threading.BoundedSemaphore(config.stream_max)
    status = Status(config, layout, filler, admission)  # the collector behind the page, metrics and stats
    sdk = SDK(config, layout, filler, upstream, admission, status, stream_slots)  # requests signed in the Authorization header
    app.register_blueprint(internal.blueprint(config, layout, filler, status, upstream, sdk=sdk))
    app.url_map.merge_slashes = False  # routing sees an internal path exactly as sent (internal.routes)

    @app.before_request
    def dispatch() -> Response | None:
        # Dispatch on the raw URI ourselves: Werkzeug's routing would merge
        # '//' and decode the path, and S3 keys need every byte as sent.
        # Our own endpoints are recognised by the URI Caddy sent us (forward_auth
        # rewrites it to /_s3cache/auth) and routed to the blueprint; misses by
        # the client's original URI.
        path = (request.environ.get("REQUEST_URI") or request.path).partition("?")[0]
        raw_uri = raw_request_uri()
        if path == "/" and config.addressing.bucket_for_host(client_host()) is not None:
            return answer_miss(raw_uri)  # a virtual-hosted bucket's root: S3's (a listing), not our page
        if path == "/" and header_signed(request.headers):
            return answer_miss(raw_uri)  # an SDK's ListBuckets, not our page
        if internal.routes(path, request.method):
            return None  # the blueprint's, guard included
        if wire.is_internal(path):
            return internal.not_found(path)
        return answer_miss(raw_uri)

    def answer_miss(raw_uri: str) -> Response:
        if header_signed(request.headers):
            # An SDK with the proxy as its endpoint: never redirected (botocore would follow a 307 as a region
            # redirect, over and over); its signature is checked and S3 is asked with the proxy's own.
            return sdk.handle(request.method, raw_uri, request.headers, client_host(), request.environ)
        try:
            plan = plan_miss(request.method, raw_uri, request.headers, config, layout, host=client_host())
        except BadRequest as exc:
            return error_response(exc.status, exc.code, exc.message)
        if plan.fill is not None and not admission.admit(plan.fill):
            plan = MissPlan(plan.location, None, f"not admitted (S3CACHE_ADMIT={config.admit})")
        status.count_miss(plan)
        if plan.fill is not None and config.miss == "stream" and "Range" not in request.headers:
            streamed = None
            if stream_slots.acquire(blocking=False):
                try:
                    streamed = filler.stream(plan.fill, plan.location)
                finally:
                    if streamed is None:
                        stream_slots.release()
            else:
                log.debug("all %d stream slots busy: redirecting", config.stream_max)
            if streamed is not None:
                body = _Releasing(streamed.body, stream_slots.release)
                resp = Response(body, status=streamed.status, headers=streamed.headers)
                resp.headers["X-Cache"] = "MISS"
                return resp
            # All stream slots busy, another fill holds the object (or it just arrived): redirect as usual.
        if plan.fill is not None:
            filler.submit(plan.fill, plan.location)
        else:
            log.debug("redirect only (%s): %s", plan.why_not, raw_uri.partition("?")[0])
        return redirect_307(plan.location)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "InternalError", "We encountered an internal error. Please try again.")

    return app


class _Releasing:
    """A response body that calls ``release`` once when the server closes it (done, or the client gone).

    A class, not a generator: the server may close the body before reading
    it, and a generator that never started would never run its ``finally``.
    """

    def __init__(self, body, release):
        self._body, self._release, self._released = body, release, False

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._released:
                self._released = True
                self._release()
