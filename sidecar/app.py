"""The sidecar's Flask app: thin routes over miss planning, fills and health.

Caddy only sends us what it could not serve from disk.  Every route answers
at once; the work behind a miss (the fill) runs in the background pool.  No
traceback ever reaches a client: unexpected errors become an S3-style 500.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from flask import Flask, Response, request

from s3cache import wire
from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.request_path import BadRequest

from sidecar import cors, internal
from sidecar.internal import client_host
from sidecar.status import Status
from sidecar.admission import Admission
from sidecar.backchannel import BackLink, RemoteAdmission, RemoteFiller, RemoteStatus
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


def create_app(config: Config, filler: Filler | None = None, *, link: BackLink | None = None) -> Flask:
    """The app of the one sidecar process, or (``link``) of one request worker among several."""
    app = Flask(__name__)
    layout = Layout(config.dir)
    layout.ensure()
    if link is not None:  # background fills and the counters live in the fill process (sidecar.backchannel)
        filler = RemoteFiller.linked(config, layout, link)
    # The one way to S3 (fills, streams, revalidation): exact request targets, keep-alive pools.
    upstream = filler.upstream if filler is not None else Upstream()
    filler = filler or Filler.from_config(config, layout, upstream)
    admission = Admission(config.admit, layout) if link is None else RemoteAdmission(config.admit, layout, link)
    # Streams hold a server thread for as long as S3 and the client take: at most
    # S3CACHE_STREAM_MAX of them (per worker process), so hits, access checks and health never wait behind streams.
    stream_slots = threading.BoundedSemaphore(config.stream_max)
    learned_cors = cors.Learned(upstream)  # S3's CORS verdicts, for redirects when S3CACHE_CORS_ORIGINS is empty
    # The collector behind the page, metrics and stats.
    status = Status(config, layout, filler, admission) if link is None else RemoteStatus(link)
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
        if cors.is_preflight(request.method, request.headers):
            return answer_preflight(raw_uri)
        return answer_miss(raw_uri)

    def answer_preflight(raw_uri: str) -> Response:
        try:
            url = config.addressing.resolve(client_host(), raw_uri).upstream_url
        except BadRequest:
            url = None  # nothing S3 could be asked about: only the rules can answer
        return cors.preflight(config, upstream, url, request.headers)

    # With request workers, what a miss tells the fill process goes in one write (sidecar.backchannel).
    events = link.held if link is not None else contextlib.nullcontext

    def answer_miss(raw_uri: str) -> Response:
        if header_signed(request.headers):
            # An SDK with the proxy as its endpoint: never redirected (botocore would follow a 307 as a region
            # redirect, over and over); its signature is checked and S3 is asked with the proxy's own.
            # (Not inside events(): it may wait for the fill it asked for, which must go out at once.)
            return sdk.handle(request.method, raw_uri, request.headers, client_host(), request.environ)
        with events():
            return _answer_miss(raw_uri)

    def _answer_miss(raw_uri: str) -> Response:
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
                    streamed = filler.stream(plan.fill, plan.location, cors.client_origin(request.headers))
                finally:
                    if streamed is None:
                        stream_slots.release()
            else:
                log.debug("all %d stream slots busy: redirecting", config.stream_max)
            if streamed is not None:
                body = _Releasing(streamed.body, stream_slots.release)
                # S3 was asked with the client's Origin (if any): its answer depends on it.
                headers = cors.with_vary_origin(streamed.headers, config)
                resp = Response(body, status=streamed.status, headers=headers)
                resp.headers["X-Cache"] = "MISS"
                return resp
            # All stream slots busy, another fill holds the object (or it just arrived): redirect as usual.
        if plan.fill is not None:
            filler.submit(plan.fill, plan.location)
        else:
            log.debug("redirect only (%s): %s", plan.why_not, raw_uri.partition("?")[0])
        redirect = redirect_307(plan.location)
        origin = request.headers.get("Origin")
        if origin and not config.cors_origins:
            # A browser follows a cross-origin redirect only if the redirect allows its origin: S3's rules say.
            resolved = config.addressing.resolve(client_host(), raw_uri)
            redirect.headers.update(learned_cors.headers(plan.location, resolved.upstream_host,
                                                         resolved.parsed.bucket, origin, request.method))
            redirect.headers["Vary"] = "Origin"
        return redirect

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
