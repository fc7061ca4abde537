"""``/_s3cache/health``: each part's status as JSON, 200 when the cache can serve and fill.

"Can fill" is tested, not assumed: a byte is written to (and removed from) the
temp directory, and a fill the disk refused (full, read-only, I/O error) keeps
the cache degraded until a fill succeeds or the space that fill needed is free.
A degraded answer (503) lists its ``reasons``.

The supervisor (``s3cache up``) records its parts in ``run/parts.json`` and the
evictor its last pass in ``run/evictor.json``; under docker compose or systemd
those files may be absent, and only what is known is reported.
"""

from __future__ import annotations

import json
import os
import threading
import time

from flask import Response

from s3cache import atomic
from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.usage import statvfs_usage
from sidecar import processes
from sidecar.fill import Filler

_probe_lock = threading.Lock()


def _write_probe(layout: Layout) -> str | None:
    """None if a byte can be written to the cache's temp directory, else why not."""
    path = os.path.join(layout.tmp_dir, f"health-probe-{os.getpid()}")
    with _probe_lock:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if os.write(fd, b"\n") != 1:
                    return "cache directory not writable: no space for one byte"
            finally:
                os.close(fd)
                os.unlink(path)
        except OSError as exc:
            return f"cache directory not writable: {exc.strerror or exc}"
    return None


def health_report(config: Config, layout: Layout, filler: Filler) -> tuple[bool, dict]:
    reasons = []
    writable = os.access(layout.objects_dir, os.W_OK) and os.access(layout.tmp_dir, os.W_OK)
    if not writable:
        reasons.append("cache directory not writable")
    elif (probe := _write_probe(layout)) is not None:
        writable = False
        reasons.append(probe)
    try:
        usage = statvfs_usage(layout.root)()
        disk = {"used_bytes": usage.used, "available_bytes": usage.avail, "used_percent": round(usage.percent, 2)}
    except OSError:
        disk = None
        reasons.append("cannot read the cache disk's usage")
    try:
        in_progress, failure = filler.state()
    except OSError as exc:  # S3CACHE_SIDECAR_WORKERS > 1: the fill process is down or stuck
        in_progress, failure = None, None
        reasons.append(f"fill process not answering: {exc}")
    if failure is not None and (failure.needed == 0 or disk is None or disk["available_bytes"] < failure.needed):
        what = "cache disk full" if failure.reason == "disk-full" else "cache disk error"
        reasons.append(f"{what}: a fill failed ({failure.detail})"
                       + (f"; it needs {failure.needed} bytes" if failure.needed else ""))
    parts: dict = {"sidecar": {"status": "ok", "fills_in_progress": in_progress, **processes.report(layout)}}
    supervised = atomic.read_json(layout.parts_file) or {}
    for name, info in supervised.get("parts", {}).items():
        if name != "sidecar":
            parts[name] = info
    evictor = atomic.read_json(layout.evictor_status_file)
    if evictor is not None:
        age = time.time() - evictor.get("finished_at", 0)
        stale = age > 3 * config.evict_interval + 60
        parts.setdefault("evictor", {}).update(
            {"last_pass_age_seconds": round(age, 1), "status": "stale" if stale else "ok"})
    if evictor is not None and not evictor.get("target_reached", True):
        # Fills above HIGH are refused, not failed: without this, a disk filled by other data would leave
        # a node that caches nothing reporting ok.
        reasons.append("cache disk above S3CACHE_EVICT_LOW even after the last pass emptied what it could: "
                       "other data fills it, and nothing new is cached")
    ok = not reasons
    report = {"status": "ok" if ok else "degraded", "cache": {"dir": str(layout.root), "writable": writable, "disk": disk},
              "parts": parts}
    if reasons:
        report["reasons"] = reasons
    return ok, report


def health_response(config: Config, layout: Layout, filler: Filler) -> Response:
    ok, report = health_report(config, layout, filler)
    resp = Response(json.dumps(report, indent=1), status=200 if ok else 503, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp
