"""The headline figures of a stats snapshot, as text: shared by the status page and ``s3cache stats``.

Both render the sidecar's one snapshot (``/_s3cache/stats.json``) through
these functions, so a figure reads the same in the browser and the terminal.
Pure functions of the snapshot dict; no I/O.
"""

from __future__ import annotations

import time

# (key, label): the rows of the headline table, each with a "last hour" and a "since start" value.
HEADLINE = (
    ("hit_ratio_requests", "Hit ratio (requests)"),
    ("hit_ratio_bytes", "Hit ratio (bytes)"),
    ("cache_bytes", "Served from cache"),
    ("origin_bytes", "From S3 (est.)"),
    ("egress_saved", "Egress saved"),
    ("hits", "Hits"),
    ("misses", "Misses"),
    ("denied", "Denied"),
    ("errors", "Errors"),
)


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{100 * r:.1f}%"


def fmt_percent(p: float | None) -> str:
    return "–" if p is None else f"{p:.1f}%"


def fmt_dollars(d: float | None) -> str:
    if d is None:
        return "–"
    if 0 < abs(d) < 0.005:  # would read as $0.00: say it is a little, not nothing
        return "<$0.01" if d > 0 else "-<$0.01"
    return f"-${-d:,.2f}" if d < 0 else f"${d:,.2f}"


def fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_time(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def origin_bytes(period: dict) -> int:
    b = period["bytes"]
    return b["streamed"] + b["redirected_estimated"]


def headline(period: dict) -> dict[str, str]:
    """Text for each HEADLINE key, for one period (``snap["last_hour"]`` or ``snap["since_start"]``)."""
    reads = period["reads"]
    return {
        "hit_ratio_requests": fmt_ratio(period["hit_ratio_requests"]),
        "hit_ratio_bytes": fmt_ratio(period["hit_ratio_bytes"]),
        "cache_bytes": fmt_bytes(period["bytes"]["cache"]),
        "origin_bytes": fmt_bytes(origin_bytes(period)),
        "egress_saved": fmt_dollars(period["egress_saved_dollars"]),
        "hits": fmt_count(reads["hit"]),
        "misses": fmt_count(reads["miss"]),
        "denied": fmt_count(reads["denied"]),
        "errors": fmt_count(reads["error"]),
    }


def headline_rows(snap: dict) -> list[tuple[str, str, str, str]]:
    """(key, label, last hour, since start) for each headline figure."""
    hour, since = headline(snap["last_hour"]), headline(snap["since_start"])
    return [(key, label, hour[key], since[key]) for key, label in HEADLINE]


def _changes(n: int | None) -> str:
    if not n:
        return "with no fill or removal since"
    return f"plus {fmt_count(n)} fill{'s' if n != 1 else ''} and removals since"


def details(snap: dict) -> dict[str, str]:
    """The other figures the page and the command both show, by key."""
    since, fills, disk, ev = snap["since_start"], snap["fills"], snap["disk"], snap["evictor"]
    now = snap["generated_at"]
    b = since["bytes"]
    failed = ", ".join(f"{r} {n}" for r, n in fills["failed_by_reason"].items())
    writes = sum(by_method["other"] for by_method in since["requests"].values())
    cap = f" of cap {fmt_bytes(disk['max_bytes'])}" if disk["max_bytes"] else ""
    out = {
        "egress_saved_net": fmt_dollars(since["egress_saved_net_dollars"]),
        "fill_bytes_not_served": fmt_bytes(since["fill_bytes_not_served"]),
        "redirected_bytes": fmt_bytes(b["redirected_estimated"]),
        "streamed_bytes": fmt_bytes(b["streamed"]),
        "redirects_sized": fmt_count(b["redirects_sized"]),
        "redirects_unknown": fmt_count(b["redirects_unknown"]),
        "redirects_pending": fmt_count(b["redirects_pending"]),
        "other_requests": fmt_count(since["reads"]["other"]),
        "write_requests": fmt_count(writes),
        "usage": fmt_percent(disk["usage_percent"]),
        "disk_used": f"{fmt_bytes(disk['used_bytes'])} used, {fmt_bytes(disk['available_bytes'])} free "
                     f"({fmt_percent(disk['used_percent'])})",
        "watermarks": f"HIGH {disk['high']:g}% / LOW {disk['low']:g}%"
                      + (" (the cap is filled to 100%: fills make room at it)" if disk["max_bytes"] else ""),
        "cache_size": ("–" if disk["cache_bytes"] is None else
                       f"{fmt_bytes(disk['cache_bytes'])}{cap} in {fmt_count(disk['cache_files'])} files"),
        "cache_as_of": "no eviction pass yet" if disk["cache_as_of"] is None else
                       f"live: the last eviction pass's measure ({fmt_age(now - disk['cache_as_of'])} ago) "
                       f"{_changes(disk.get('changes_since_pass'))}",
        "fills_in_progress": fmt_count(fills["in_progress"]),
        "fills_filled": fmt_count(fills["filled"]),
        "fills_failed": fmt_count(fills["failed"]) + (f" ({failed})" if failed else ""),
        "fill_bytes": fmt_bytes(fills["bytes"]),
        "misses_fill": fmt_count(snap["sidecar_misses"]["fill"]),
        "misses_redirect": fmt_count(snap["sidecar_misses"]["redirect"]),
        "evictions": f"passes {fmt_count(ev['since_start']['passes'])}, evicted "
                     f"{fmt_count(ev['since_start']['evicted_files'])} objects, "
                     f"{fmt_bytes(ev['since_start']['evicted_bytes'])}",
        "last_pass": "–" if ev["last_pass_at"] is None else f"{fmt_age(now - ev['last_pass_at'])} ago",
        "uptime": fmt_age(now - snap["started_at"]),
        "started": fmt_time(snap["started_at"]),
    }
    return out
