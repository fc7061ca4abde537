"""README: one fetch per object however many misses arrive, across threads *and processes* (the temp
file's flock): two sidecars (or a sidecar and ``s3cache warm``) on one cache directory fetch it once."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from s3cache.layout import Layout, ObjectRef

pytestmark = pytest.mark.integration

BUCKET = "lock-tests"


def _fill_in_a_process(cache_dir: str, bucket: str, key: str, url: str, barrier, results) -> None:
    from sidecar.fill import Filler

    filler = Filler(Layout(cache_dir), workers=1, timeout=30, max_object_bytes=None)
    barrier.wait(timeout=60)  # both processes ask at the same moment
    results.put(filler.fill(ObjectRef(bucket, key), url).outcome)


def test_two_processes_filling_one_object_fetch_it_once(origin, tmp_path):
    origin.ensure_bucket(BUCKET)
    key = "contended.bin"
    body = os.urandom(300_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    # Three seconds of body: the first fill holds the lock while the other one asks.
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=100_000)
    layout = Layout(tmp_path / "cache")
    layout.ensure()
    url = origin.presign(BUCKET, key)
    origin.reset()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_fill_in_a_process, args=(str(layout.root), BUCKET, key, url, barrier, results))
             for _ in range(2)]
    try:
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        origin.clear_faults()
        for p in procs:
            if p.is_alive():
                p.kill()
    assert outcomes in (["busy", "filled"], ["cached", "filled"]), outcomes
    gets = [r for r in origin.stats()["requests"] if r["method"] == "GET" and r["key"] == f"/{BUCKET}/{key}"]
    assert len(gets) == 1, gets
    assert layout.object_path(ObjectRef(BUCKET, key)).read_bytes() == body
