"""Issue 12 item 4: a full disk never produces a short object (a real, small tmpfs).

Near ENOSPC an unbuffered write may write fewer bytes than asked without
raising; the fill must notice, keep nothing, and say so: health degraded with
the reason, failed fills counted by reason.  A streamed miss still gives its
client the whole object when the cache cannot take it.
"""

from __future__ import annotations

import os

import pytest
import requests

from tests.fill_outcomes import fill_outcomes, finished_fills
from tests.tmpfs import mount_tmpfs
from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "full-disk"


@pytest.fixture
def small_fs(tmp_path):
    yield from mount_tmpfs(tmp_path, "size=8m")


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def small_stack(make_stack, mnt, **env):
    # The evictor's first pass runs at start on an empty cache; no later pass may free space mid-test.
    return make_stack(S3CACHE_ACCESS="open", S3CACHE_DIR=str(mnt / "cache"), S3CACHE_EVICT_INTERVAL="3600",
                      S3CACHE_EVICT_HIGH="99", S3CACHE_EVICT_LOW="98", **env)


def health(stack):
    r = requests.get(stack.url + "/_s3cache/health", timeout=10)
    return r.status_code, r.json()


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_a_burst_of_fills_onto_a_full_disk_never_commits_a_short_object(small_fs, origin, make_stack, mode):
    stack = small_stack(make_stack, small_fs, S3CACHE_MISS=mode, S3CACHE_FILL_WORKERS="4")
    s3 = origin.s3()
    bodies = {}
    for i in range(12):  # 12 x 900,000 bytes onto an 8 MiB disk
        key = f"{mode}/burst-{i:02d}.bin"
        bodies[key] = os.urandom(900_000)
        s3.put_object(Bucket=BUCKET, Key=key, Body=bodies[key])
    urls = {key: stack.proxied(origin.presign(BUCKET, key)) for key in bodies}
    for key, url in urls.items():
        r = stack.get(url)
        if r.status_code == 200:  # a streamed miss: the client always gets the whole object
            assert r.content == bodies[key]
        else:
            assert r.status_code == 307
    wait_until(lambda: finished_fills(stack) >= len(bodies), timeout=60, what="every fill to end")
    outcomes = fill_outcomes(stack)
    assert outcomes[("failed", "disk-full")] + outcomes[("failed", "disk-error")] > 0, outcomes
    for key, body in bodies.items():
        path = stack.object_file(BUCKET, key)
        if path.exists():
            assert path.read_bytes() == body, f"{key}: {path.stat().st_size} of {len(body)} bytes committed"
        r = stack.get(urls[key])
        if r.status_code == 200:
            assert r.content == body and int(r.headers["Content-Length"]) == len(body)
        else:
            assert r.status_code == 307
    status, report = health(stack)
    assert status == 503 and report["status"] == "degraded", report
    assert any("cache disk full" in reason for reason in report["reasons"]), report
    page = requests.get(stack.url + "/_s3cache", timeout=10).text
    assert "failed: disk-" in page


def test_a_stream_whose_cache_write_fails_still_gives_the_client_the_whole_object(small_fs, origin, make_stack):
    stack = small_stack(make_stack, small_fs, S3CACHE_MISS="stream")
    key = "stream/whole.bin"
    body = os.urandom(300_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    url = stack.proxied(origin.presign(BUCKET, key))
    assert health(stack)[0] == 200
    # Leave about 100 KB free: the cache write fails a third of the way in.
    st = os.statvfs(small_fs)
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 100_000))
    r = raw_request("GET", url, timeout=30)
    assert (r.status_code, r.headers["X-Cache"]) == (200, "MISS")
    assert int(r.headers["Content-Length"]) == len(body) and r.content == body
    wait_until(lambda: finished_fills(stack) >= 1, timeout=20, what="the streamed fill to end")
    assert fill_outcomes(stack)[("failed", "disk-full")] == 1
    assert not stack.object_file(BUCKET, key).exists()
    assert not [p for p in stack.layout.tmp_dir.iterdir() if p.name.endswith(".part")]
    status, report = health(stack)
    assert status == 503 and any("cache disk full" in reason for reason in report["reasons"]), report
    # Space back (the evictor's job, here by hand): the next miss is cached, and health is ok again.
    ballast.unlink()
    assert health(stack)[0] == 200
    again = raw_request("GET", url, timeout=30)
    assert again.content == body
    stack.wait_cached(BUCKET, key)
    assert stack.object_file(BUCKET, key).read_bytes() == body
