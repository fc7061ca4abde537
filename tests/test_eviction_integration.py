"""Eviction with the whole stack on a real, small filesystem (a 6 MiB tmpfs mounted noatime).

noatime makes the kernel's atime useless on purpose: recency must come from
Caddy's access log, or the object read most often would go first.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.tmpfs import mount_tmpfs
from tests.stack import wait_until

pytestmark = pytest.mark.integration

BUCKET = "evict-tests"
OBJECT_BYTES = 256 * 1024


@pytest.fixture
def small_fs(tmp_path):
    yield from mount_tmpfs(tmp_path, "size=6m,noatime")


def test_cache_filled_past_high_is_pruned_below_low_and_hot_objects_survive(small_fs, origin, make_stack):
    # small_fs first: it must outlive the stack that uses it.  Every miss fills (S3CACHE_ADMIT=first):
    # the test waits for each fill, and once a pass has evicted, tinylfu would decline first misses.
    origin.ensure_bucket(BUCKET)
    s3 = origin.s3()
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_DIR=str(small_fs / "cache"), S3CACHE_ADMIT="first",
                       S3CACHE_EVICT_HIGH="70", S3CACHE_EVICT_LOW="40", S3CACHE_EVICT_INTERVAL="1")
    keys = [f"obj-{i:02d}.bin" for i in range(18)]  # 18 x 256 KiB = 4.5 MiB of a 6 MiB disk
    urls = {}
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(OBJECT_BYTES))
        urls[key] = stack.proxied(origin.presign(BUCKET, key))
    hot = keys[0]  # fetched first: FIFO would evict it first

    def read_hot():
        r = stack.get(urls[hot])
        assert (r.status_code, r.headers["X-Cache"]) == (200, "HIT")

    # Fill the hot object, then keep reading it while the rest arrive.
    stack.get(urls[hot])
    stack.wait_cached(BUCKET, hot)
    for n, key in enumerate(keys[1:], 2):
        stack.get(urls[key])
        # The fill's own end (it may be evicted, or fail on the full disk, before we look at the file).
        wait_until(lambda n=n: stack.fills_finished() >= n, what=f"{key}'s fill to end")
        read_hot()
        time.sleep(0.05)
    # The evictor must have acted: a fill would have taken usage past HIGH (refused, it brings a pass) ...
    wait_until(lambda: _evicted_files(stack) > 0, timeout=15, what="an eviction pass that evicts")
    read_hot()
    # ... and a pass that finds usage above HIGH, or a fill refused, brings it below LOW.
    passes = _passes(stack)
    evicting = [p for p in passes if p["evicted_files"] > 0]
    assert evicting, passes
    assert all(p["usage_percent_before"] > 70 or p["refused_bytes"] > 0 for p in evicting), evicting
    assert all(p["usage_percent_after"] < 40 for p in evicting), evicting
    # The hot object survived; objects fetched later but never read again went.
    assert stack.object_file(BUCKET, hot).exists()
    cold_gone = [k for k in keys[1:6] if not stack.object_file(BUCKET, k).exists()]
    assert cold_gone, "no early cold object was evicted"
    # Their metadata went with them.
    for k in cold_gone:
        assert not stack.layout.meta_path_for_object_file(stack.object_file(BUCKET, k)).exists()
    # The proxy keeps answering: an evicted key is a miss again, and is filled again.
    again = cold_gone[0]
    r = stack.get(urls[again])
    assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")
    stack.wait_cached(BUCKET, again)
    assert stack.get(urls[again]).headers["X-Cache"] == "HIT"
    read_hot()


def _passes(stack) -> list[dict]:
    import json
    path = stack.layout.run_dir / "evictor-passes.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evicted_files(stack) -> int:
    return sum(p["evicted_files"] for p in _passes(stack))
