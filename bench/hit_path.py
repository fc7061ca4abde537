"""Hit path (issue 6, item 2): s3cache hits vs bare ``caddy file-server`` vs nginx ``proxy_cache`` hits.

The same objects (random bytes) are served by:

- ``s3cache``: the real stack, S3CACHE_ACCESS=open, access log on (as shipped),
  its cache filled through real misses from a local nginx origin;
- ``caddy``: ``caddy file-server`` (the venv's Caddy, no access log) on that very cache directory;
- ``nginx``: Debian's nginx ``proxy_cache`` in front of the same origin, warmed (access log on),
  with Debian's ``sendfile on; tcp_nopush on``; ``nginx-nopush-off`` the same with
  ``tcp_nopush off`` (on loopback, nopush stalls 64 KiB responses on a delayed ACK);
  "vs nginx" compares with the faster of the two, round by round;
- ``s3cache-nolog`` (diagnostic): the stack with the Caddyfile's access log removed, to
  show what logging costs.

Every request carries a SigV4-style presigned query (valid dates, dummy signature),
as real clients send: s3cache's open mode evaluates its expiry check on it.
wrk runs with the same settings for all, rounds interleaved in rotated order;
ratios are medians of per-round pairs.  After the runs, one evictor pass over
the access log the runs wrote is timed (the log is the evictor's recency source).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from bench.common import KiB, MiB, Context, median, ratio, rotated
from bench.servers import (BIN, BenchStack, CaddyFileServer, caddyfile_without_access_log, origin_nginx,
                           proxy_cache_nginx)
from bench.wrk import run_wrk
from tests.stack import raw_request

BUCKET = "bench-hit"
SIZES = [("4 KiB", 4 * KiB), ("64 KiB", 64 * KiB), ("1 MiB", MiB), ("16 MiB", 16 * MiB)]
BASELINE = "caddy"
# Issue 15: hits (open, access log on) ÷ bare Caddy.
TARGETS = {"4 KiB": 0.7, "1 MiB": 0.95}


def presigned_looking_query() -> str:
    now = time.gmtime()
    return ("X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAEXAMPLEBENCH%2F{time.strftime('%Y%m%d', now)}%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date={time.strftime('%Y%m%dT%H%M%SZ', now)}&X-Amz-Expires=86400"
            "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "5a" * 32)


def key_for(label: str) -> str:
    # An extension whose Content-Type Caddy sends itself (sidecar/hit_headers.CADDY_TYPES), as the origin
    # does: the fill marks the object plain, so an open-mode hit is Caddy's alone. (A ".bin" gets
    # application/octet-stream from nginx, which Caddy's guess may not match: marked, it takes the sidecar.)
    return "obj-" + label.replace(" ", "").lower() + ".png"


def _check_served(url: str, size: int, header: str | None = None, expect: str | None = None) -> None:
    r = raw_request("GET", url, timeout=60)
    if r.status_code != 200 or len(r.content) != size:
        raise RuntimeError(f"{url}: expected 200 with {size} bytes, got {r.status_code} / {len(r.content)}")
    if header and r.headers.get(header) != expect:
        raise RuntimeError(f"{url}: expected {header}: {expect}, got {r.headers.get(header)!r}")


def _warm_stack(stack: BenchStack, path_q: str, key: str, size: int) -> None:
    r = stack.get(stack.url + path_q)
    if r.status_code != 307:
        raise RuntimeError(f"first request for {key}: expected a 307 miss, got {r.status_code}")
    stack.wait_cached(BUCKET, key, timeout=120)
    _check_served(stack.url + path_q, size, "X-Cache", "HIT")


def time_evictor_pass(stack: BenchStack) -> dict:
    """One ``s3cache evict --once`` over the stack's cache: it reads the access log the runs wrote."""
    logs = stack.layout.logs_dir
    log_bytes = sum(p.stat().st_size for p in logs.glob("access*.log*"))
    lines = 0
    for p in logs.glob("access*.log*"):
        with open(p, "rb") as fh:
            lines += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    env = {**stack.env, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    cpu0 = os.times()
    proc = subprocess.run([str(BIN / "s3cache"), "evict", "--once"], env=env, capture_output=True, text=True,
                          timeout=600)
    cpu1 = os.times()
    seconds = time.monotonic() - started
    out = proc.stdout + proc.stderr
    busy = "another eviction pass is running" in out
    m = re.search(r"log_hits=(\d+)", out)
    return {
        "log_files_bytes": log_bytes, "log_lines": lines,
        "bytes_per_line": log_bytes / lines if lines else None,
        "seconds": seconds, "cpu_seconds": (cpu1.children_user + cpu1.children_system)
        - (cpu0.children_user + cpu0.children_system),
        "log_hits": int(m.group(1)) if m else None, "returncode": proc.returncode, "busy": busy,
        "output": out.strip()[-2000:],
    }


def run(ctx: Context) -> dict:
    work = ctx.dir("hit")
    docroot = ctx.dir("hit/origin-docroot")
    (docroot / BUCKET).mkdir(exist_ok=True)
    for label, size in SIZES:
        (docroot / BUCKET / key_for(label)).write_bytes(os.urandom(size))
    query = presigned_looking_query()
    servers: dict[str, object] = {}
    stoppers = []
    try:
        origin = origin_nginx(ctx.dir("hit/origin"), docroot).start()
        stoppers.append(origin.stop)
        # A pass every hour: the benchmark measures Caddy, not an evictor pass landing mid-run.
        stack = BenchStack(ctx.dir("hit/s3cache"), origin.url, S3CACHE_ACCESS="open",
                           S3CACHE_EVICT_INTERVAL="3600").start()
        stoppers.append(stack.stop)
        servers["s3cache"] = stack
        nolog_file = caddyfile_without_access_log(work / "Caddyfile.nolog")
        nolog = None
        if nolog_file:
            nolog = BenchStack(ctx.dir("hit/s3cache-nolog"), origin.url, caddyfile=nolog_file,
                               S3CACHE_ACCESS="open", S3CACHE_EVICT_INTERVAL="3600").start()
            stoppers.append(nolog.stop)
        for label, size in SIZES:
            path_q = f"/{BUCKET}/{key_for(label)}?{query}"
            _warm_stack(stack, path_q, key_for(label), size)
            if nolog:
                _warm_stack(nolog, path_q, key_for(label), size)
        caddy = CaddyFileServer(ctx.dir("hit/caddy"), stack.cache_dir / "objects").start()
        stoppers.append(caddy.stop)
        servers["caddy"] = caddy
        for name, nopush in (("nginx", True), ("nginx-nopush-off", False)):
            ngx = proxy_cache_nginx(ctx.dir(f"hit/{name}"), origin.url, tcp_nopush=nopush).start()
            stoppers.append(ngx.stop)
            servers[name] = ngx
        if nolog:
            servers["s3cache-nolog"] = nolog
        for label, size in SIZES:
            path_q = f"/{BUCKET}/{key_for(label)}?{query}"
            _check_served(caddy.url + path_q, size)
            for name in ("nginx", "nginx-nopush-off"):
                raw_request("GET", servers[name].url + path_q, timeout=60)  # fills nginx's cache
                _check_served(servers[name].url + path_q, size, "X-Cache-Status", "HIT")

        names = list(servers)
        runs: dict[str, dict[str, list[dict]]] = {label: {n: [] for n in names} for label, _ in SIZES}
        settings = ctx.wrk
        for label, size in SIZES:
            path_q = f"/{BUCKET}/{key_for(label)}?{query}"
            if not ctx.quick:  # one short untimed run each: connections, page cache, Go's and nginx's warm-up
                for name in names:
                    run_wrk(servers[name].url + path_q, type(settings)(2, 32, 1), payload_bytes=size)
            for round_no in range(ctx.rounds):
                for name in rotated(names, round_no):
                    r = run_wrk(servers[name].url + path_q, settings, payload_bytes=size)
                    runs[label][name].append(r)
                    ctx.log(f"hit {label:>6} {name:<14} {r['req_per_s']:9.0f} req/s {r['mb_per_s']:8.1f} MB/s "
                            f"p50 {r['p50_ms']:7.2f} ms p99 {r['p99_ms']:7.2f} ms errors {r['errors']}")
        evictor = time_evictor_pass(stack)
        ctx.log(f"evictor pass over {evictor['log_lines']} access-log lines "
                f"({evictor['log_files_bytes'] / MiB:.0f} MiB): {evictor['seconds']:.1f} s")
    finally:
        for stop in reversed(stoppers):
            stop()

    table = []
    for label, size in SIZES:
        by = runs[label]
        for name in names:
            rs = by[name]
            row = {
                "size": label, "bytes": size, "server": name,
                "req_per_s": median(r["req_per_s"] for r in rs),
                "mb_per_s": median(r["mb_per_s"] for r in rs),
                "p50_ms": median(r["p50_ms"] for r in rs),
                "p99_ms": median(r["p99_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "runs": [round(r["req_per_s"], 1) for r in rs],
            }
            row["vs_caddy"] = median(ratio(a["req_per_s"], b["req_per_s"]) for a, b in zip(rs, by["caddy"]))
            # Against the better nginx configuration at this size (per round).
            row["vs_nginx"] = median(ratio(a["req_per_s"], max(b["req_per_s"], c["req_per_s"]))
                                     for a, b, c in zip(rs, by["nginx"], by["nginx-nopush-off"]))
            table.append(row)
    return {"settings": vars(ctx.wrk) | {"rounds": ctx.rounds}, "table": table, "targets": TARGETS,
            "evictor_after_runs": evictor, "query": query}
