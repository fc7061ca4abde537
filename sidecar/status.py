"""The sidecar's view of itself: status page, metrics and stats JSON, and who may see them.

``create_app`` makes one ``Status`` and asks it first about every request:
``answer`` returns a response for its own endpoints (or a 403 for a client
outside ``S3CACHE_ADMIN_ALLOW``), and None for everything else, health
included once its caller is allowed (``sidecar.health`` answers that).

    /  /_s3cache  /_s3cache/   the status page (HTML)
    /_s3cache/metrics          Prometheus text
    /_s3cache/stats.json       the snapshot all three render (``s3cache stats`` reads it)
    /_s3cache/health           loopback or S3CACHE_ADMIN_ALLOW
"""

from __future__ import annotations

import json

from flask import Request, Response

from s3cache.config import Config
from s3cache.layout import Layout
from sidecar import admin, metrics, status_page
from sidecar.collector import Collector
from sidecar.fill import Filler
from sidecar.s3errors import error_response

PAGE_PATHS = frozenset({"/", "/_s3cache", "/_s3cache/"})
METRICS_PATH = "/_s3cache/metrics"
STATS_PATH = "/_s3cache/stats.json"
HEALTH_PATH = "/_s3cache/health"
ADMIN_PATHS = PAGE_PATHS | {METRICS_PATH, STATS_PATH, HEALTH_PATH}


class Status:
    def __init__(self, config: Config, layout: Layout, filler: Filler, *, background: bool = True):
        self.config = config
        self.collector = Collector(config, layout, filler)
        if background:
            self.collector.start()

    def count_miss(self, plan) -> None:
        """The sidecar's own miss counter: did this miss start a fill, or is it only redirected?"""
        self.collector.count_miss(plan.fill is not None)

    def answer(self, path: str, request: Request) -> Response | None:
        if path not in ADMIN_PATHS:
            return None
        ip = admin.client_ip(request.environ.get("REMOTE_ADDR"), request.headers)
        if not admin.allowed(ip, self.config.admin_allow, loopback_too=path == HEALTH_PATH):
            return error_response(403, "AccessDenied", "This endpoint is restricted to S3CACHE_ADMIN_ALLOW.")
        if path == HEALTH_PATH:
            return None
        snap = self.collector.snapshot()
        if path == METRICS_PATH:
            resp = Response(metrics.render(snap), content_type=metrics.CONTENT_TYPE)
        elif path == STATS_PATH:
            resp = Response(json.dumps(snap, indent=1), content_type="application/json")
        else:
            return status_page.response(snap)
        resp.headers["Cache-Control"] = "no-store"
        return resp
