"""The sidecar's own endpoints, one blueprint, and the one rule for who may use them.

    /  /_s3cache  /_s3cache/   the status page (HTML)
    /_s3cache/metrics          Prometheus text
    /_s3cache/stats.json       the snapshot all three render (``s3cache stats`` reads it)
    /_s3cache/health           each part's status (``sidecar.health``)
    /_s3cache/auth             Caddy's forward_auth before it serves a cached file (``sidecar.access``)
    /_s3cache/objects[/...]    list (GET) and purge (DELETE) cached objects (``sidecar.objects_api``)
    /_s3cache/<anything else>  404

Who may ask (the blueprint's ``before_request``, nowhere else): clients in
``S3CACHE_ADMIN_ALLOW`` (``sidecar.admin`` says who the client is), with two
explicit exceptions: health answers everyone, and auth is Caddy's own question
about a client's request, never a client's.  Health's full report (parts, pids,
the cache directory, disk figures, reasons) goes to the list and to loopback
(docker and systemd health checks run on the machine itself); anyone else gets
the same status code with only ``{"status": "ok"}`` or ``{"status":
"degraded"}``: a front tier on another host (``s3cache up --front``) probes
its nodes' health from an address no admin list needs to name.

Only a path sent exactly as routed here reaches the blueprint
(``routes``): the rest of the sidecar dispatches on raw URIs, and
``/_s3cache/%6detrics`` must stay an unknown endpoint, not become metrics.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, g, request
from werkzeug.routing import BaseConverter

from s3cache import wire
from s3cache.config import Config
from s3cache.layout import Layout
from sidecar import admin, health, metrics, objects_api, status_page
from sidecar.access import HitRequest, check_hit
from sidecar.fill import Filler
from sidecar.s3errors import error_response
from sidecar.signatures import header_signed
from sidecar.status import Status
from sidecar.upstream import Upstream

ROUTED = frozenset({*wire.PAGE_PATHS, wire.METRICS_PATH, wire.STATS_PATH, wire.HEALTH_PATH, wire.AUTH_PATH})
# Flask routes need a list of methods; any other method gets the unknown endpoint's 404.
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]

# The guard's exceptions, by endpoint name.
CADDY_ONLY = {"internal.auth"}         # no allow-list: Caddy asks on a client's behalf
ANYONE_BRIEFLY = {"internal.health"}   # the status to anyone; the details to the allow-list, or loopback


def routes(path: str, method: str) -> bool:
    """Whether a request for a raw path (no query) is one of the blueprint's routes."""
    return (path in ROUTED or wire.is_objects(path)) and method in METHODS


class _Anything(BaseConverter):
    """The rest of a path, whatever it holds (newlines too): the objects API reads the raw URI itself."""

    regex = r"[\s\S]*"
    part_isolating = False


def not_found(path: str) -> Response:
    return error_response(404, "NoSuchKey", "No such s3cache endpoint.", path)


def client_host() -> str:
    return request.headers.get(wire.HOST_HEADER) or request.headers.get("Host", "")


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


def blueprint(config: Config, layout: Layout, filler: Filler, status: Status,
              upstream: Upstream, sdk=None) -> Blueprint:
    bp = Blueprint("internal", __name__)
    bp.record_once(lambda state: state.app.url_map.converters.setdefault("anything", _Anything))

    @bp.before_request
    def guard() -> Response | None:
        if request.endpoint in CADDY_ONLY:
            return None
        ip = admin.client_ip(request.environ.get("REMOTE_ADDR"), request.headers)
        if request.endpoint in ANYONE_BRIEFLY:
            g.s3cache_details = admin.allowed(ip, config.admin_allow, loopback_too=True)
            return None
        if not admin.allowed(ip, config.admin_allow):
            return error_response(403, "AccessDenied", "This endpoint is restricted to S3CACHE_ADMIN_ALLOW.")
        return None

    def page() -> Response:
        return status_page.response(status.snapshot())

    for path in wire.PAGE_PATHS:
        bp.add_url_rule(path, "page", page, methods=METHODS)

    @bp.route(wire.METRICS_PATH, endpoint="metrics", methods=METHODS)
    def metrics_text() -> Response:
        return _no_store(Response(metrics.render(status.snapshot()), content_type=metrics.CONTENT_TYPE))

    @bp.route(wire.STATS_PATH, endpoint="stats", methods=METHODS)
    def stats_json() -> Response:
        return _no_store(Response(json.dumps(status.snapshot(), indent=1), content_type="application/json"))

    @bp.route(wire.HEALTH_PATH, endpoint="health", methods=METHODS)
    def health_json() -> Response:
        if g.get("s3cache_details"):
            return health.health_response(config, layout, filler)
        ok, _ = health.health_report(config, layout, filler)
        brief = {"status": "ok" if ok else "degraded"}
        return _no_store(Response(json.dumps(brief), status=200 if ok else 503, content_type="application/json"))

    @bp.route(wire.OBJECTS_PATH + "<anything:_rest>", endpoint="objects", methods=METHODS)
    def objects(_rest: str) -> Response:
        # The raw URI, never Werkzeug's decoded path: keys must arrive byte for byte.
        raw = request.headers.get(wire.RAW_URI_HEADER) or request.environ.get("REQUEST_URI") or request.full_path
        return objects_api.handle(request.method, raw, layout)

    @bp.route(wire.AUTH_PATH, endpoint="auth", methods=METHODS)
    def auth() -> Response:
        # Caddy's forward_auth: the client's request arrives as headers.
        hit = HitRequest(method=request.headers.get("X-Forwarded-Method", "GET"),
                         raw_uri=request.headers.get(wire.RAW_URI_HEADER) or request.headers.get("X-Forwarded-Uri", ""),
                         headers=request.headers, host=client_host())
        if sdk is not None and header_signed(request.headers):
            return sdk.check_hit(hit)  # an SDK client's signature, checked whatever S3CACHE_ACCESS says
        return check_hit(hit, config, layout, filler, upstream)

    return bp
