"""Issue 12 item 4: a full disk never produces a short object (a real, small tmpfs).

Near ENOSPC an unbuffered write may write fewer bytes than asked without
raising; the fill must notice, keep nothing, and say so: health degraded with
the reason, failed fills counted by reason.  A streamed miss still gives its
client the whole object when the cache cannot take it.

A fill that would take the disk above S3CACHE_EVICT_HIGH is refused before
its body (``over-disk``), so here the disk fills the way that check cannot
foresee: another writer (``ballast``) takes the space while the fills are
downloading from a slowed origin.
"""

from __future__ import annotations

import os
import threading
import time

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


class Ballast:
    """Another writer: once the slowed origin has begun sending a body, it keeps the disk full but ``leave`` bytes.

    By then the fill has its response's head and has passed the disk check; its body, arriving at the
    slowed rate, is written after the ballast lands.  It keeps topping up (what failed fills free, it
    takes), as a busy neighbour on the disk would, until ``stop``.
    """

    def __init__(self, origin, mnt, leave: int):
        self.origin, self.path, self.mnt, self.leave = origin, mnt / "ballast", mnt, leave
        self.sent_before = origin.stats()["body_bytes"]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        while self.origin.stats()["body_bytes"] == self.sent_before:
            if time.monotonic() > deadline or self.done.is_set():
                return
            time.sleep(0.01)
        time.sleep(0.2)  # the sidecar reads the head that came with the first chunk
        while not self.done.is_set():
            st = os.statvfs(self.mnt)
            try:
                with open(self.path, "ab") as fh:
                    fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - self.leave))
            except OSError:  # the fills took some of it meanwhile: the disk is full all the same
                pass
            self.done.wait(0.02)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


@pytest.fixture
def ballasts():
    """Ballast(origin, mnt, leave), each stopped at teardown (before ``small_fs`` unmounts), pass or fail."""
    made: list[Ballast] = []
    yield lambda *args, **kw: made.append(Ballast(*args, **kw)) or made[-1]
    for b in made:
        b.stop()


def health(stack):
    r = requests.get(stack.url + "/_s3cache/health", timeout=10)
    return r.status_code, r.json()


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_a_burst_of_fills_onto_a_full_disk_never_commits_a_short_object(small_fs, ballasts, origin, make_stack, mode):
    stack = small_stack(make_stack, small_fs, S3CACHE_MISS=mode, S3CACHE_FILL_WORKERS="4")
    s3 = origin.s3()
    bodies = {}
    for i in range(12):  # 12 x 900,000 bytes onto an 8 MiB disk
        key = f"{mode}/burst-{i:02d}.bin"
        bodies[key] = os.urandom(900_000)
        s3.put_object(Bucket=BUCKET, Key=key, Body=bodies[key])
        origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=900_000)  # in flight when the ballast lands
    urls = {key: stack.proxied(origin.presign(BUCKET, key)) for key in bodies}
    ballasts(origin, small_fs, leave=100_000)  # room for no fill in flight
    for key, url in urls.items():
        r = stack.get(url)
        if r.status_code == 200:  # a streamed miss: the client always gets the whole object
            assert r.content == bodies[key]
        else:
            assert r.status_code == 307
    wait_until(lambda: finished_fills(stack) >= len(bodies), timeout=60, what="every fill to end")
    origin.clear_faults()
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
    assert status == 503 and report["status"] == "degraded", (fill_outcomes(stack), report)
    assert any("cache disk full" in reason for reason in report["reasons"]), report
    page = requests.get(stack.url + "/_s3cache", timeout=10).text
    assert "failed: disk-" in page


def test_a_stream_whose_cache_write_fails_still_gives_the_client_the_whole_object(small_fs, ballasts, origin, make_stack):
    stack = small_stack(make_stack, small_fs, S3CACHE_MISS="stream")
    key = "stream/whole.bin"
    body = os.urandom(300_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    url = stack.proxied(origin.presign(BUCKET, key))
    assert health(stack)[0] == 200
    # Once the fill is writing, leave about 100 KB free: the cache write fails a third of the way in.
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=300_000, once=True)
    writer = ballasts(origin, small_fs, leave=100_000)
    ballast = small_fs / "ballast"
    r = raw_request("GET", url, timeout=30)
    writer.stop()
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
