"""``/_s3cache/health``: each part's status as JSON, 200 when the cache can serve and fill.

The supervisor (``s3cache up``) records its parts in ``run/parts.json`` and the
evictor its last pass in ``run/evictor.json``; under docker compose or systemd
those files may be absent, and only what is known is reported.
"""

from __future__ import annotations

import json
import os
import time

from flask import Response

from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.usage import statvfs_usage
from sidecar.fill import Filler



def _read_json(path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def health_report(config: Config, layout: Layout, filler: Filler) -> tuple[bool, dict]:
    writable = os.access(layout.objects_dir, os.W_OK) and os.access(layout.tmp_dir, os.W_OK)
    try:
        usage = statvfs_usage(layout.root)()
        disk = {"used_bytes": usage.used, "available_bytes": usage.avail, "used_percent": round(usage.percent, 2)}
    except OSError:
        disk = None
    parts: dict = {"sidecar": {"status": "ok", "fills_in_progress": filler.in_progress}}
    supervised = _read_json(layout.parts_file) or {}
    for name, info in supervised.get("parts", {}).items():
        if name != "sidecar":
            parts[name] = info
    evictor = _read_json(layout.evictor_status_file)
    if evictor is not None:
        age = time.time() - evictor.get("finished_at", 0)
        stale = age > 3 * config.evict_interval + 60
        parts.setdefault("evictor", {}).update(
            {"last_pass_age_seconds": round(age, 1), "status": "stale" if stale else "ok"})
    ok = writable and disk is not None
    report = {"status": "ok" if ok else "degraded", "cache": {"dir": str(layout.root), "writable": writable, "disk": disk},
              "parts": parts}
    return ok, report


def health_response(config: Config, layout: Layout, filler: Filler) -> Response:
    ok, report = health_report(config, layout, filler)
    resp = Response(json.dumps(report, indent=1), status=200 if ok else 503, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp
