"""The status page (``/`` and ``/_s3cache/``): one self-contained HTML document from a stats snapshot.

No script, no external asset (a Content-Security-Policy forbids both), two
small inline SVG plots drawn here, and a meta refresh: it works offline and
weighs a few kilobytes.  Every figure is also marked with ``data-key`` (and
the raw number in ``data-value``) so tests can read the page like a person
and compare it with the metrics.
"""

from __future__ import annotations

from html import escape

from flask import Response

from s3cache.stats_summary import (details, fmt_bytes, fmt_count, fmt_percent, fmt_ratio, fmt_time,
                                   headline_rows)

REFRESH_SECONDS = 10
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; frame-ancestors 'none'"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:.8em 1.5em}header h1{margin:0;font-size:1.3em}
header p{margin:.2em 0 0;color:#b8c0cc;font-size:.9em}main{max-width:1100px;margin:0 auto;padding:1em 1.5em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:1em;margin-bottom:1em}
.card,section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:.8em 1em;overflow-x:auto}
.card .v{font-size:1.9em;font-weight:600}.card .l{color:#5b6575;font-size:.85em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1em;margin-bottom:1em}
h2{font-size:1em;margin:0 0 .5em}table{border-collapse:collapse;width:100%}
td,th{padding:.2em .5em;text-align:right;border-bottom:1px solid #eef0f3;white-space:nowrap}
td:first-child,th:first-child{text-align:left}th{color:#5b6575;font-weight:500}
td.name{text-align:left;white-space:normal;word-break:break-all}table.wrap td{white-space:normal}
.bar{position:relative;height:22px;background:#eef0f3;border-radius:4px;margin:.4em 0 1.6em}
.bar .fill{position:absolute;left:0;top:0;bottom:0;background:#3b82f6;border-radius:4px}
.bar .mark{position:absolute;top:-4px;bottom:-4px;width:2px}.bar .mark span{position:absolute;top:28px;
left:-20px;width:40px;text-align:center;font-size:.75em}
.hi{background:#dc2626;color:#dc2626}.lo{background:#d97706;color:#d97706}
.legend span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}
.note{color:#5b6575;font-size:.85em}svg{width:100%;height:auto;display:block}
"""


def _cell(key: str, text: str, value=None, period: str | None = None, cls: str = "") -> str:
    attrs = f' data-key="{escape(key)}"'
    if period:
        attrs += f' data-period="{period}"'
    if value is not None:
        attrs += f' data-value="{escape(str(value))}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{escape(text)}</td>"


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


def _axes(ymax_label: str, n: int) -> str:
    y0, y1 = H - PAD_B, PAD_T
    parts = [f'<line x1="{PAD_L}" y1="{y0}" x2="{W - 4}" y2="{y0}" stroke="#c5cbd3"/>',
             f'<line x1="{PAD_L}" y1="{y1}" x2="{W - 4}" y2="{y1}" stroke="#eef0f3"/>',
             f'<text x="{PAD_L - 4}" y="{y1 + 9}" text-anchor="end">{escape(ymax_label)}</text>',
             f'<text x="{PAD_L - 4}" y="{y0}" text-anchor="end">0</text>']
    for x, anchor, label in ((PAD_L, "start", f"-{n} min"), (_x(n // 2, n), "middle", f"-{n - n // 2} min"),
                             (W - 4, "end", "now")):
        parts.append(f'<text x="{x:.1f}" y="{H - 4}" text-anchor="{anchor}">{label}</text>')
    return "".join(parts)


def _svg(body: str, title: str) -> str:
    return (f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" '
            f'font-size="10" fill="#5b6575" xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def hit_ratio_plot(series: dict) -> str:
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
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="#16a34a"><title>{fmt_time(minutes[i])[11:16]}: '
                    f'{fmt_ratio(r)} of {h + m} reads</title></circle>')
    # Minutes without reads break the line rather than pretend a ratio.
    paths, run = [], []
    for p in points + [None]:
        if p is None:
            if len(run) > 1:
                paths.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in run))
            run = []
        else:
            run.append(p)
    line = "".join(f'<path d="{d}" fill="none" stroke="#16a34a" stroke-width="1.5"/>' for d in paths)
    return _svg(_axes("100%", n) + line + "".join(dots), "Hit ratio per minute, last hour")


def bytes_plot(series: dict) -> str:
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
        tip = f"{fmt_time(minutes[i])[11:16]}: {fmt_bytes(c)} from cache, {fmt_bytes(o)} from S3 (est.)"
        bars.append(f'<g><title>{escape(tip)}</title>'
                    f'<rect x="{x:.1f}" y="{y0 - hc:.1f}" width="{bw:.1f}" height="{hc:.1f}" fill="#16a34a"/>'
                    f'<rect x="{x:.1f}" y="{y0 - hc - ho:.1f}" width="{bw:.1f}" height="{ho:.1f}" fill="#f59e0b"/></g>')
    return _svg(_axes(fmt_bytes(top), n) + "".join(bars), "Bytes per minute by source, last hour")


# -- the page ---------------------------------------------------------------------------------


def _disk_bar(disk: dict, text: dict) -> str:
    usage = disk["usage_percent"]
    width = 0 if usage is None else min(100.0, usage)
    marks = "".join(f'<div class="mark {cls}" style="left:{pct:.2f}%"><span>{name} {pct:g}%</span></div>'
                    for cls, name, pct in (("lo", "LOW", disk["low"]), ("hi", "HIGH", disk["high"])))
    return (f'<div class="bar" title="usage {escape(fmt_percent(usage))}"><div class="fill" style="width:{width:.2f}%">'
            f'</div>{marks}</div>')


def render(snap: dict) -> str:
    d = details(snap)
    since, hour, disk, fills, ev = snap["since_start"], snap["last_hour"], snap["disk"], snap["fills"], snap["evictor"]
    raw = {"last_hour": _raw_values(hour), "since_start": _raw_values(since)}
    rows = "".join(
        f"<tr><td>{escape(label)}</td>{_cell(key, h, raw['last_hour'][key], 'last_hour')}"
        f"{_cell(key, s, raw['since_start'][key], 'since_start')}</tr>"
        for key, label, h, s in headline_rows(snap))

    def card(key: str, label: str, text: str, value) -> str:
        return (f'<div class="card"><div class="v" data-key="{key}" data-period="card" '
                f'data-value="{escape(str(value))}">{escape(text)}</div><div class="l">{escape(label)}</div></div>')

    cards = "".join([
        card("hit_ratio_requests", "hit ratio (requests), last hour", fmt_ratio(hour["hit_ratio_requests"]),
             hour["hit_ratio_requests"]),
        card("hit_ratio_bytes", "hit ratio (bytes), last hour", fmt_ratio(hour["hit_ratio_bytes"]),
             hour["hit_ratio_bytes"]),
        card("egress_saved", f"egress saved since start (${snap['price_per_gb']:g}/GB)",
             _since(snap, "egress_saved"),
             since["egress_saved_dollars"]),
        card("usage", "disk usage (evictor's measure)", d["usage"], disk["usage_percent"]),
    ])

    def kv(key: str, label: str, value=None) -> str:
        return f"<tr><td>{escape(label)}</td>{_cell(key, d[key], value)}</tr>"

    fills_rows = (kv("fills_in_progress", "in progress", fills["in_progress"])
                  + kv("fills_filled", "filled", fills["filled"])
                  + kv("fills_failed", "failed", fills["failed"])
                  + kv("fill_bytes", "bytes fetched into the cache", fills["bytes"])
                  + kv("misses_fill", "misses that queued a fill", snap["sidecar_misses"]["fill"])
                  + kv("misses_redirect", "misses only redirected (uncacheable)", snap["sidecar_misses"]["redirect"]))
    # Failed fills by reason first (disk-full, too-slow, timeout, status-403 ...), then the other outcomes.
    outcomes = {**{f"failed: {r}": n for r, n in fills["failed_by_reason"].items()}, **fills["other_outcomes"]}
    other = "".join(f"<tr><td>{escape(k)}</td><td>{fmt_count(n)}</td></tr>" for k, n in outcomes.items())

    passes = "".join(
        f"<tr><td title=\"{escape(fmt_time(p['finished_at']))}\">{escape(fmt_time(p['finished_at'])[11:19])}</td>"
        f"<td>{p['duration_seconds'] or 0:.2f}s</td>"
        f"<td>{fmt_count(p['evicted_files'])}</td><td>{escape(fmt_bytes(p['evicted_bytes']))}</td>"
        f"<td>{escape(fmt_percent(p['usage_percent_before']))} → {escape(fmt_percent(p['usage_percent_after']))}</td>"
        f"<td>{fmt_count(p['errors'])}</td></tr>"
        for p in ev["recent_passes"]) or '<tr><td colspan="6">no eviction pass recorded yet</td></tr>'

    top = "".join(
        f'<tr><td class="name" data-key="top_object">{escape(o["object"])}</td>'
        f'<td data-key="top_bytes" data-value="{o["bytes"]}">{escape(fmt_bytes(o["bytes"]))}</td>'
        f"<td>{fmt_count(o['hits'])}</td></tr>"
        for o in snap["top_objects"]) or '<tr><td colspan="3">no hits yet</td></tr>'
    top_note = "" if snap["top_objects_exact"] else \
        '<p class="note">More objects were hit than are remembered; less-served ones were forgotten along the way.</p>'

    series = snap["series"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>s3cache status</title><style>{_CSS}</style></head>
<body><header><h1>s3cache</h1>
<p>{escape(snap['upstream'])} &middot; access <b>{escape(snap['access'])}</b> &middot; misses
<b>{escape(snap['miss_mode'])}</b> &middot; up <span data-key="uptime">{escape(d['uptime'])}</span> (since
{escape(d['started'])}) &middot; refreshes every {REFRESH_SECONDS}s &middot;
<a style="color:#b8c0cc" href="/_s3cache/metrics">metrics</a> &middot;
<a style="color:#b8c0cc" href="/_s3cache/stats.json">json</a> &middot;
<a style="color:#b8c0cc" href="/_s3cache/health">health</a></p></header>
<main>
<div class="cards">{cards}</div>
<div class="grid">
<section><h2>Traffic</h2><table><tr><th></th><th>last hour</th><th>since start</th></tr>{rows}</table>
<p class="note">Hits and misses count GET and HEAD; writes (<span data-key="write_requests">{escape(d['write_requests'])}</span>
since start) are redirected by Caddy and left out of the ratios.</p></section>
<section><h2>Hit ratio per minute</h2>{hit_ratio_plot(series)}
<h2 style="margin-top:.8em">Bytes per minute</h2>{bytes_plot(series)}
<div class="legend note"><span style="background:#16a34a"></span>from cache<span style="background:#f59e0b"></span>from S3 (est.)</div>
</section></div>
<div class="grid">
<section><h2>Disk</h2>{_disk_bar(disk, d)}
<table class="wrap">{kv('usage', 'usage (max of disk and cache/cap)', disk['usage_percent'])}
{kv('watermarks', 'evict above / down to')}{kv('disk_used', 'filesystem')}
{kv('cache_size', 'cache', disk['cache_bytes'])}<tr><td></td><td class="note">{escape(d['cache_as_of'])}</td></tr></table></section>
<section><h2>Fills</h2><table>{fills_rows}{other}</table></section>
</div>
<div class="grid">
<section><h2>Eviction passes</h2><table><tr><th>finished (UTC)</th><th>took</th><th>objects</th><th>bytes</th>
<th>usage</th><th>errors</th></tr>{passes}</table>
<p class="note">Since the sidecar started: <span data-key="evictions">{escape(d['evictions'])}</span>.</p></section>
<section><h2>Top objects by bytes served from cache</h2><table><tr><th>object</th><th>bytes</th><th>hits</th></tr>
{top}</table>{top_note}</section>
</div>
<section class="note"><h2>What is measured and what is estimated</h2>
<p>Hits, their bytes, and bytes streamed through the sidecar are counted exactly from Caddy's access log.
A redirected client fetches the object from S3 itself, so <b>bytes from S3 are estimated</b>: each redirected GET counts
the object's size once the cache holds it (narrowed by its Range), a HEAD counts nothing. So far
<span data-key="redirects_sized">{escape(d['redirects_sized'])}</span> redirects were sized
(<span data-key="redirected_bytes">{escape(d['redirected_bytes'])}</span>),
<span data-key="redirects_pending">{escape(d['redirects_pending'])}</span> await their object, and
<span data-key="redirects_unknown">{escape(d['redirects_unknown'])}</span> could not be sized (sub-resources,
uncacheable keys, failed fills) and count as zero bytes.</p>
<p><b>Egress saved</b> is bytes served from cache &times; ${snap['price_per_gb']:g} per GB (2<sup>30</sup> bytes); net of
what the cache fetched for itself (<span data-key="fill_bytes_not_served">{escape(d['fill_bytes_not_served'])}</span>)
it is <span data-key="egress_saved_net">{escape(d['egress_saved_net'])}</span> since start.
Request prices and revalidation requests are not included.</p>
<p>Counters run from the sidecar's start; the last hour is by minute of each request.
Cache size is from the evictor's last pass; disk usage is read now.</p></section>
</main></body></html>
"""


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
