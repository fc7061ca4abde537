"""``s3cache stats``: the status page's summary in the terminal.

It asks the running sidecar for its snapshot (``/_s3cache/stats.json`` on
``S3CACHE_SIDECAR_LISTEN``) rather than reading the files itself: the miss and
fill counters live only in the sidecar's memory, and the access log is
counted from the sidecar's start, so only the sidecar can give the figures
the page and the metrics show.  The text comes from the same formatting
functions as the page (``s3cache.stats_summary``).
"""

from __future__ import annotations

import argparse
import json
import sys

import requests

from commands.common import ENV_FILE_HELP, load_config
from s3cache.config import Config, HostPort
from s3cache.wire import STATS_PATH
from s3cache.stats_summary import (details, fmt_age, fmt_bytes, fmt_count, fmt_percent, fmt_time,
                                   headline_rows)

TIMEOUT = 10.0


class StatsUnavailable(Exception):
    """The sidecar could not be asked; the message says why, in one line."""


def sidecar_url(listen: HostPort) -> str:
    # A wildcard listen address is reached on loopback (the sidecar allows loopback by default).
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    return f"http://[{host}]:{listen.port}" if ":" in host else f"http://{host}:{listen.port}"


def fetch(config: Config, url: str | None = None) -> dict:
    base = (url or sidecar_url(config.sidecar_listen)).rstrip("/")
    try:
        resp = requests.get(base + STATS_PATH, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise StatsUnavailable(f"the sidecar at {base} is not answering ({type(exc).__name__}); "
                               f"is `s3cache up` running?") from None
    if resp.status_code == 403:
        raise StatsUnavailable(f"the sidecar at {base} refused (403): this address is not in S3CACHE_ADMIN_ALLOW")
    if resp.status_code != 200:
        raise StatsUnavailable(f"the sidecar at {base} answered {resp.status_code}")
    try:
        return resp.json()
    except ValueError:
        raise StatsUnavailable(f"the sidecar at {base} did not answer JSON") from None


def render(snap: dict) -> str:
    d = details(snap)
    now = snap["generated_at"]
    lines = [
        f"s3cache -> {snap['upstream']}  (access {snap['access']}, misses {snap['miss_mode']})",
        f"since {d['started']}, up {d['uptime']}",
        "",
        f"{'':24}{'last hour':>14}{'since start':>14}",
    ]
    for _key, label, hour, since in headline_rows(snap):
        lines.append(f"{label:24}{hour:>14}{since:>14}")
    lines += [
        "",
        f"egress saved net of fills  {d['egress_saved_net']}  (the cache's own S3 downloads: "
        f"{d['fill_bytes_not_served']}; ${snap['price_per_gb']:g}/GB)",
        f"from S3 (since start)      {d['streamed_bytes']} streamed (exact), {d['redirected_bytes']} redirected (est.: "
        f"{d['redirects_sized']} sized, {d['redirects_pending']} pending, {d['redirects_unknown']} unknown)",
        f"writes (not in ratios)     {d['write_requests']}",
        "",
        f"disk     usage {d['usage']} ({d['watermarks']}); {d['disk_used']}",
        f"cache    {d['cache_size']} ({d['cache_as_of']})",
        f"fills    {d['fills_in_progress']} in progress, {d['fills_filled']} filled ({d['fill_bytes']}), "
        f"failed {d['fills_failed']}",
        f"misses   {d['misses_fill']} started a fill, {d['misses_redirect']} only redirected",
        f"evictor  since start: {d['evictions']}; last pass {d['last_pass']}",
    ]
    passes = snap["evictor"]["recent_passes"][:5]
    for p in passes:
        lines.append(f"         {fmt_time(p['finished_at'])}  {fmt_count(p['evicted_files'])} objects, "
                     f"{fmt_bytes(p['evicted_bytes'])}, usage {fmt_percent(p['usage_percent_before'])} -> "
                     f"{fmt_percent(p['usage_percent_after'])}, {p['duration_seconds'] or 0:.2f}s "
                     f"({fmt_age(now - p['finished_at'])} ago)")
    lines += ["", "top objects by bytes served from cache:"]
    if not snap["top_objects"]:
        lines.append("  (no hits yet)")
    for o in snap["top_objects"]:
        lines.append(f"  {fmt_bytes(o['bytes']):>11}  {fmt_count(o['hits']):>8} hits  {o['object']}")
    return "\n".join(lines)


def summary(config: Config, *, as_json: bool = False, url: str | None = None) -> str:
    snap = fetch(config, url)
    return json.dumps(snap, indent=1) if as_json else render(snap)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        print(summary(config, as_json=args.json, url=args.url))
    except StatsUnavailable as exc:
        print(f"s3cache: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    stats = sub.add_parser("stats", help="the status page's summary, from the running sidecar")
    stats.add_argument("--json", action="store_true", help="print the sidecar's snapshot as JSON")
    stats.add_argument("--url", help="the sidecar's base URL (default: from S3CACHE_SIDECAR_LISTEN)")
    stats.add_argument("--env-file", help=ENV_FILE_HELP)
    return stats
