"""The status page (``/`` and ``/_s3cache/``): one self-contained HTML document from a stats snapshot.

No script, no external asset (a Content-Security-Policy forbids both), two
small inline SVG plots drawn here, and a meta refresh: it works offline and
weighs a few kilobytes.  Every figure is also marked with ``data-key`` (and
the raw number in ``data-value``) so tests can read the page like a person
and compare it with the metrics.

The markup is ``templates/status.html``, a Jinja template rendered with
autoescaping on: every text that comes from a snapshot (object names among
them, which clients choose) is escaped by Jinja, never by hand.  This module
only shapes the snapshot for it: the figures and the plots' geometry.
"""

from __future__ import annotations

from flask import Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from s3cache import wire
from s3cache.stats_summary import (details, fmt_bytes, fmt_count, fmt_percent, fmt_ratio, fmt_time,
                                   headline_rows)

REFRESH_SECONDS = 10
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'"


def _raw_values(period: dict) -> dict:
    reads, b = period["reads"], period["bytes"]
    return {
        "hit_ratio_requests": period["hit_ratio_requests"], "hit_ratio_bytes": period["hit_ratio_bytes"],
        "cache_bytes": b["cache"], "origin_bytes": b["streamed"] + b["redirected_estimated"],
        "egress_saved": period["egress_saved_dollars"], "hits": reads["hit"], "misses": reads["miss"],
        "denied": reads["denied"], "errors": reads["error"],
    }


# -- plots ------------------------------------------------------------------------------------

W, H, PAD_L, PAD_B, PAD_T = 600, 150, 46, 18, 8


def _x(i: int, n: int) -> float:
    return PAD_L + (W - PAD_L - 4) * (i + 0.5) / n


def _ticks(n: int) -> list[tuple[str, str, str]]:
    return [(f"{x:.1f}", anchor, label) for x, anchor, label in (
        (PAD_L, "start", f"-{n} min"), (_x(n // 2, n), "middle", f"-{n - n // 2} min"), (W - 4, "end", "now"))]


def hit_ratio_plot(series: dict) -> dict:
    hits, misses, minutes = series["hit"], series["miss"], series["minute"]
    n = len(minutes)
    y0, span = H - PAD_B, H - PAD_B - PAD_T
    points, dots = [], []
    for i, (h, m) in enumerate(zip(hits, misses)):
        if h + m == 0:
            points.append(None)
            continue
        r = h / (h + m)
        x, y = _x(i, n), y0 - span * r
        points.append((x, y))
        dots.append((f"{x:.1f}", f"{y:.1f}", f"{fmt_time(minutes[i])[11:16]}: {fmt_ratio(r)} of {h + m} reads"))
    # Minutes without reads break the line rather than pretend a ratio.
    paths, run = [], []
    for p in points + [None]:
        if p is None:
            if len(run) > 1:
                paths.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in run))
            run = []
        else:
            run.append(p)
    return {"title": "Hit ratio per minute, last hour", "ymax": "100%", "ticks": _ticks(n),
            "paths": paths, "dots": dots}


def bytes_plot(series: dict) -> dict:
    cache, origin, minutes = series["cache_bytes"], series["origin_bytes"], series["minute"]
    n = len(minutes)
    top = max([c + o for c, o in zip(cache, origin)] + [1])
    y0, span = H - PAD_B, H - PAD_B - PAD_T
    bw = max(1.0, (W - PAD_L - 4) / n - 1.5)
    bars = []
    for i, (c, o) in enumerate(zip(cache, origin)):
        if c + o == 0:
            continue
        x = _x(i, n) - bw / 2
        hc, ho = span * c / top, span * o / top
        bars.append({"tip": f"{fmt_time(minutes[i])[11:16]}: {fmt_bytes(c)} from cache, {fmt_bytes(o)} from S3 (est.)",
                     "x": f"{x:.1f}", "w": f"{bw:.1f}", "yc": f"{y0 - hc:.1f}", "hc": f"{hc:.1f}",
                     "yo": f"{y0 - hc - ho:.1f}", "ho": f"{ho:.1f}"})
    return {"title": "Bytes per minute by source, last hour", "ymax": fmt_bytes(top), "ticks": _ticks(n),
            "bars": bars}


# -- the page ---------------------------------------------------------------------------------

_ENV = Environment(loader=PackageLoader("sidecar", "templates"), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, keep_trailing_newline=True)
_ENV.filters.update(bytes=fmt_bytes, count=fmt_count, percent=fmt_percent, time=fmt_time)
_ENV.globals.update(wire=wire, g={"W": W, "H": H, "PAD_L": PAD_L, "PAD_B": PAD_B, "PAD_T": PAD_T})
_PAGE = "status.html"


def render(snap: dict) -> str:
    d = details(snap)
    since, hour, disk = snap["since_start"], snap["last_hour"], snap["disk"]
    usage = disk["usage_percent"]
    cards = [
        {"key": "hit_ratio_requests", "label": "hit ratio (requests), last hour",
         "text": fmt_ratio(hour["hit_ratio_requests"]), "value": hour["hit_ratio_requests"]},
        {"key": "hit_ratio_bytes", "label": "hit ratio (bytes), last hour",
         "text": fmt_ratio(hour["hit_ratio_bytes"]), "value": hour["hit_ratio_bytes"]},
        {"key": "egress_saved", "label": f"egress saved since start (${snap['price_per_gb']:g}/GB)",
         "text": _since(snap, "egress_saved"), "value": since["egress_saved_dollars"]},
        {"key": "admission", "label": f"admitted (S3CACHE_ADMIT={snap['admission']['policy']}); saved by declining",
         "text": f"{fmt_ratio(snap['admission']['admit_rate'])}; {fmt_bytes(snap['admission']['saved_bytes_estimated'])}"
                 f" (${snap['admission']['saved_dollars_estimated']:.2f})",
         "value": snap["admission"]["admit_rate"]},
        {"key": "usage", "label": "disk usage (evictor's measure)", "text": d["usage"], "value": usage},
    ]
    disk_bar = {"usage": fmt_percent(usage), "width": f"{0 if usage is None else min(100.0, usage):.2f}",
                "marks": [(cls, name, f"{pct:.2f}", f"{pct:g}")
                          for cls, name, pct in (("lo", "LOW", disk["low"]), ("hi", "HIGH", disk["high"]))]}
    return _ENV.get_template(_PAGE).render(
        snap=snap, d=d, refresh=REFRESH_SECONDS, price=f"{snap['price_per_gb']:g}",
        rows=headline_rows(snap), raw={"last_hour": _raw_values(hour), "since_start": _raw_values(since)},
        cards=cards, disk_bar=disk_bar, ratio_plot=hit_ratio_plot(snap["series"]),
        bytes_plot=bytes_plot(snap["series"]))


def _since(snap: dict, key: str) -> str:
    for k, _label, _hour, since in headline_rows(snap):
        if k == key:
            return since
    raise KeyError(key)


def response(snap: dict) -> Response:
    resp = Response(render(snap), content_type="text/html; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp
