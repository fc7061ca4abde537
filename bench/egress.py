"""Egress (issue 6, item 5): origin bytes / client bytes for a Zipf workload, end to end, beside simulations.

A Zipf (alpha 0.9) trace over objects of lognormal sizes (``bench.cachesim``)
is replayed by one client, in order, through the real stack: a hit is read from
the proxy; a miss (307) is followed to the origin, as curl -L or a browser
would.  The cache is capped at 10% of the working set's bytes
(S3CACHE_MAX_BYTES, evictor every S3CACHE_EVICT_INTERVAL=0.25 s between the
shipped watermarks, ``policysim.shipped_watermarks``; misses are paced so one
interval's fills stay a fraction of the cap, see ``run_mode``).  The origin is a local nginx whose access log
counts every body byte it sends, split by User-Agent into the clients' own
downloads (after a redirect) and the sidecar's fills.

Beside it, at the same capacity and on the same (executed) trace: an ideal
LRU, LRU between the same watermarks but evicting after every request, and
Belady (``bench.cachesim``).  Each miss there costs one transfer.  With
S3CACHE_MISS=redirect a real miss costs two (the client's download and the
fill); S3CACHE_MISS=stream (run too) costs one.
"""

from __future__ import annotations

import re
import time

import requests

from bench.cachesim import simulate_belady, simulate_lru, zipf_lognormal_workload
from bench.common import Context
from bench.policysim import shipped_watermarks
from bench.servers import BenchStack, origin_nginx, wait_file_growth_settles

PREFIX = "egress"
CLIENT_UA = "s3cache-bench-client"
PRICE_PER_GB = 0.09
CACHE_FRACTION = 0.10
LOG_LINE = re.compile(r'^GET /(\S+) (\d{3}) (\d+) "(.*)"$')
EVICT_INTERVAL = 0.25
PASS_BYTES = re.compile(r"pass: scanned=\d+ files bytes_before=(\d+) bytes_after=(\d+)")


def dollars_saved_per_tb(origin_per_client: float) -> float:
    """S3 egress saved per TB served to clients, at PRICE_PER_GB (1 TB = 1000 GB); negative: it costs more."""
    return PRICE_PER_GB * 1000 * (1 - origin_per_client)


def start_origin(ctx: Context, name: str, workload):
    """An nginx origin under ``name`` serving ``workload``'s objects as sparse files (sizes matter, content not)."""
    docroot = ctx.dir(f"{name}/origin-docroot")
    (docroot / PREFIX).mkdir(exist_ok=True)
    for i, size in enumerate(workload.sizes):
        with open(docroot / _object_path(i), "wb") as fh:
            fh.truncate(size)
    return origin_nginx(ctx.dir(f"{name}/origin"), docroot).start()


def _object_path(i: int) -> str:
    return f"{PREFIX}/obj-{i:05d}.bin"


def _replay(stack: BenchStack, trace: list[int], deadline: float, miss_bytes_per_s: float) -> dict:
    """Replay ``trace`` in order; misses are paced to ``miss_bytes_per_s`` (see ``run_mode``)."""
    proxy, s3 = requests.Session(), requests.Session()
    s3.headers["User-Agent"] = proxy.headers["User-Agent"] = CLIENT_UA
    hits = misses = errors = client_bytes = hit_bytes = done = miss_bytes = 0
    started = time.monotonic()
    for obj in trace:
        if time.monotonic() > deadline:
            break
        r = proxy.get(f"{stack.url}/{_object_path(obj)}", allow_redirects=False, timeout=60)
        if r.status_code == 200 and r.headers.get("X-Cache") == "HIT":
            hits += 1
            hit_bytes += len(r.content)
        else:  # a 307 to follow, or (S3CACHE_MISS=stream) the body relayed from the origin
            misses += 1
            if r.status_code == 307:
                r = s3.get(r.headers["Location"], allow_redirects=False, timeout=60)
            miss_bytes += len(r.content)
            ahead = miss_bytes / miss_bytes_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, deadline - time.monotonic())))
        if r.status_code != 200:
            errors += 1
        client_bytes += len(r.content)
        done += 1
    return {"requests": done, "hits": hits, "misses": misses, "errors": errors, "client_bytes": client_bytes,
            "hit_bytes": hit_bytes}


def _origin_bytes(log_path, offset: int) -> dict:
    client = fills = client_n = fills_n = 0
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        for line in fh:
            m = LOG_LINE.match(line.strip())
            if not m or not m.group(1).startswith(PREFIX + "/"):
                continue
            n = int(m.group(3))
            if m.group(4) == CLIENT_UA:
                client, client_n = client + n, client_n + 1
            else:
                fills, fills_n = fills + n, fills_n + 1
    return {"origin_bytes": client + fills, "origin_client_bytes": client, "origin_fill_bytes": fills,
            "origin_client_gets": client_n, "origin_fill_gets": fills_n}


def run_mode(ctx: Context, origin, workload, capacity: int, mode: str, time_budget: float, overshoot: float,
             label: str = "", **env: str) -> dict:
    """One replay through a fresh stack.

    Fills make room at S3CACHE_MAX_BYTES from the victims each pass (every
    EVICT_INTERVAL) lists, a tenth of the cache; a fill finding none left is
    refused until the next pass.  So that the policy, not that list running dry,
    is what is measured, misses are paced so that one interval's fills stay
    within ``overshoot`` x the cap; the passes' ``bytes_before`` show the cap held.
    """
    # The watermarks as shipped (the test stack's own are 100/99%, for deterministic tests): what users run.
    high, low = shipped_watermarks()
    env = {"S3CACHE_EVICT_HIGH": f"{high * 100:g}", "S3CACHE_EVICT_LOW": f"{low * 100:g}", **env}
    stack = BenchStack(ctx.dir(f"egress/{label or mode}"), origin.url, S3CACHE_ACCESS="open", S3CACHE_MISS=mode,
                       S3CACHE_MAX_BYTES=str(capacity), S3CACHE_EVICT_INTERVAL=str(EVICT_INTERVAL), **env).start()
    try:
        offset = origin.access_log.stat().st_size
        started = time.monotonic()
        out = _replay(stack, workload.trace, started + time_budget, overshoot * capacity / EVICT_INTERVAL)
        out["seconds"] = time.monotonic() - started
        # Fills still queued belong to this workload too: wait for the origin to go quiet.
        wait_file_growth_settles(origin.access_log, quiet=2.0, timeout=60)
        time.sleep(1.5)  # one more eviction pass
        out.update(_origin_bytes(origin.access_log, offset))
        passes = [(int(a), int(b)) for a, b in PASS_BYTES.findall(stack.log_text())]
        out["evictor_passes"] = len(passes)
        out["peak_cache_bytes_seen"] = max((a for a, _ in passes), default=0)
        busy = [a for a, _ in passes if a > 0]
        out["mean_cache_bytes_seen"] = sum(busy) / len(busy) if busy else 0
        out["evicted_files"] = sum(int(n) for n in re.findall(r"evicted=(\d+) files", stack.log_text()))
    finally:
        stack.stop()
    out["mode"] = mode
    out["settings"] = env
    out["origin_per_client"] = out["origin_bytes"] / out["client_bytes"] if out["client_bytes"] else float("nan")
    out["byte_hit_ratio"] = out["hit_bytes"] / out["client_bytes"] if out["client_bytes"] else float("nan")
    out["hit_ratio"] = out["hits"] / out["requests"] if out["requests"] else float("nan")
    out["dollars_saved_per_tb"] = dollars_saved_per_tb(out["origin_per_client"])
    ctx.log(f"egress {label or mode:<8} {out['requests']} requests in {out['seconds']:.0f}s: byte hit ratio "
            f"{out['byte_hit_ratio']:.3f}, origin/client {out['origin_per_client']:.3f}, "
            f"cache at passes: mean {out['mean_cache_bytes_seen'] / capacity:.0%}, "
            f"peak {out['peak_cache_bytes_seen'] / capacity:.0%} of the cap; errors {out['errors']}")
    return out


def run(ctx: Context) -> dict:
    objects, requests_n = (200, 1000) if ctx.quick else (2000, 20000)
    budget = 15.0 if ctx.quick else 300.0
    overshoot = 0.5 if ctx.quick else 0.2
    modes = ["redirect", "stream"]
    workload = zipf_lognormal_workload(objects, requests_n, alpha=0.9, seed=6)
    capacity = int(workload.working_set_bytes * CACHE_FRACTION)
    origin = start_origin(ctx, "egress", workload)
    try:
        real = [run_mode(ctx, origin, workload, capacity, mode, budget, overshoot) for mode in modes]
    finally:
        origin.stop()
    executed = min(r["requests"] for r in real)
    trace = workload.trace[:executed]
    high, low = shipped_watermarks()
    sims = [simulate_lru(trace, workload.sizes, capacity, policy="LRU (ideal)"),
            simulate_lru(trace, workload.sizes, capacity, high=high, low=low,
                         policy=f"LRU, watermarks {high:.0%}/{low:.0%}"),
            simulate_belady(trace, workload.sizes, capacity)]
    sim_rows = [{"policy": s.policy, "hit_ratio": s.hit_ratio, "byte_hit_ratio": s.byte_hit_ratio,
                 "origin_per_client": s.origin_per_client_byte,
                 "dollars_saved_per_tb": dollars_saved_per_tb(s.origin_per_client_byte)} for s in sims]
    for row in sim_rows:
        ctx.log(f"egress sim {row['policy']:<24} byte hit ratio {row['byte_hit_ratio']:.3f}")
    return {"objects": objects, "requests_planned": requests_n, "requests_executed": executed,
            "alpha": workload.alpha, "working_set_bytes": workload.working_set_bytes, "capacity_bytes": capacity,
            "distinct_objects": len(set(trace)), "mean_object_bytes": sum(workload.sizes) / len(workload.sizes),
            "real": real, "sim": sim_rows, "price_per_gb": PRICE_PER_GB, "evict_interval": EVICT_INTERVAL,
            "overshoot_pacing": overshoot}
