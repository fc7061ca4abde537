"""Stampede (issue 6, item 4): 256 concurrent first requests for one object -> origin GETs (must be 1).

256 threads each open a connection to the proxy, wait at a barrier, then send
the same valid presigned GET for an object that is not cached yet.  Clients do
not follow the redirect, so every GET the test origin counts for that key is a
fill.  Run with S3CACHE_MISS=redirect (the default) and =stream.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

from bench.common import MiB, Context
from bench.servers import BenchStack
from tests.origin.fixture import start_origin

BUCKET = "bench-stampede"
CLIENTS = 256


def _storm(url: str, clients: int) -> tuple[Counter, float]:
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    barrier = threading.Barrier(clients, timeout=60)
    statuses: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            conn.connect()
            barrier.wait()
            conn.request("GET", target)
            resp = conn.getresponse()
            resp.read()
            outcome = f"{resp.status} {resp.getheader('X-Cache', '-')}"
        except Exception as exc:  # counted, not raised: the figure is the origin's count
            outcome = type(exc).__name__
        finally:
            conn.close()
        with lock:
            statuses.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return Counter(statuses), time.monotonic() - started


def run(ctx: Context) -> dict:
    size = MiB if ctx.quick else 8 * MiB
    trials = 1 if ctx.quick else 3
    origin = start_origin(ctx.dir("stampede/origin"))
    results = []
    try:
        s3 = origin.s3()
        s3.create_bucket(Bucket=BUCKET)
        for mode in ("redirect", "stream"):
            stack = BenchStack(ctx.dir(f"stampede/{mode}"), origin.url, S3CACHE_ACCESS="open", S3CACHE_MISS=mode,
                               S3CACHE_EVICT_INTERVAL="3600").start()
            try:
                for trial in range(trials):
                    key = f"{mode}-{trial}.bin"
                    s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
                    origin.reset()
                    statuses, seconds = _storm(stack.proxied(origin.presign(BUCKET, key)), CLIENTS)
                    stack.wait_cached(BUCKET, key, timeout=120)
                    time.sleep(0.5)  # a second fill, were there one, would have begun by now
                    gets = origin.stats()["get_count_by_key"].get(f"/{BUCKET}/{key}", 0)
                    results.append({"mode": mode, "trial": trial, "bytes": size, "clients": CLIENTS,
                                    "origin_gets": gets, "statuses": dict(statuses), "seconds": seconds})
                    ctx.log(f"stampede {mode:<8} trial {trial}: {CLIENTS} clients -> origin GETs {gets}; "
                            f"answers {dict(statuses)}")
            finally:
                stack.stop()
    finally:
        origin.stop()
    return {"trials": results, "max_origin_gets": max(r["origin_gets"] for r in results),
            "ok": all(r["origin_gets"] == 1 for r in results)}
