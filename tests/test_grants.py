"""Grants: a URL the check accepted once is served by Caddy alone, and by nothing else.

Grants are made with S3CACHE_GRANT_TTL = 10^9 (one window for the test) unless the window is the point.

The real stack in front of the signature-checking origin.  "Without Python" is
shown by freezing the sidecar (SIGSTOP: its socket still accepts, nothing
answers) and still getting the hit; "still checked" by the same freeze making
a request wait, or by S3's request count in ``revalidate``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from contextlib import contextmanager

import pytest
import requests

from s3cache.layout import ObjectRef
from tests.origin.credentials import ACCESS_KEY_1, ACCESS_KEY_2, SECRET_KEY_1, SECRET_KEY_2
from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "grant-tests"
SIGNING_KEYS = f"{ACCESS_KEY_1}:{SECRET_KEY_1},{ACCESS_KEY_2}:{SECRET_KEY_2}"
# One window for the whole test (the unix time less 9 digits): no window ends between a check and the hits
# that use its grant, nor between Caddy's look and the sidecar's (which would make no grant that time).
ONE_WINDOW = str(10 ** 9)
_V2_GRANTABLE = re.compile(r"[A-Za-z0-9+]{27}=")


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def presign(origin, key: str, version: str, expires: int = 3600, access_key: str = ACCESS_KEY_1) -> str:
    """A URL that can have a grant: a SigV2 signature with a "/" cannot (those are always checked)."""
    for extra in range(200):
        url = origin.presign(BUCKET, key, version=version, expires=expires + extra, access_key=access_key)
        if version == "v4":
            return url
        sig = requests.utils.unquote(re.search(r"Signature=([^&]*)", url).group(1))
        if _V2_GRANTABLE.fullmatch(sig):
            return url
    raise AssertionError("no SigV2 signature without a '/' in 200 tries")


def cache_object(origin, stack, key: str, body: bytes) -> None:
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    assert stack.get(stack.proxied(presign(origin, key, "v4"))).headers["X-Cache"] == "MISS"
    stack.wait_cached(BUCKET, key)
    wait_until(lambda: stack.layout.meta_path(ObjectRef(BUCKET, key)).exists(), what="the metadata")


def grant_files(stack, key: str) -> list[str]:
    d = stack.layout.grant_dir(ObjectRef(BUCKET, key))
    return sorted(os.listdir(d)) if d.is_dir() else []


@contextmanager
def sidecar_frozen(stack):
    """The sidecar stopped in its tracks (its master, request workers and fill process): its socket
    accepts, nothing answers."""
    state = json.loads(stack.layout.sidecar_file.read_text())
    pids = {stack.part_pid("sidecar"), *(state.get("worker_pids") or []), state.get("fill_pid")} - {None}
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def answered_without_sidecar(url: str, method: str = "GET", headers: dict | None = None):
    """The response, or None when the request waited for the (frozen) sidecar."""
    try:
        return raw_request(method, url, headers=headers, timeout=3)
    except requests.RequestException:
        return None


def origin_gets(origin, key: str) -> int:
    return origin.stats()["get_count_by_key"].get(f"/{BUCKET}/{key}", 0)


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
@pytest.mark.parametrize("version", ["v2", "v4"])
def test_a_checked_url_is_served_again_without_the_sidecar(origin, make_stack, mode, version):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=SIGNING_KEYS, S3CACHE_GRANT_TTL=ONE_WINDOW)
    key = f"granted/{mode}-{version}.bin"
    body = os.urandom(20_000)
    cache_object(origin, stack, key, body)
    url = stack.proxied(presign(origin, key, version))
    s3_etag = origin.s3().head_object(Bucket=BUCKET, Key=key)["ETag"]

    checked = stack.get(url)
    assert (checked.status_code, checked.headers["X-Cache"], checked.content) == (200, "HIT", body)
    assert len(grant_files(stack, key)) == 1

    other = stack.proxied(presign(origin, key, "v2" if version == "v4" else "v4", access_key=ACCESS_KEY_2))
    with sidecar_frozen(stack):
        for _ in range(3):
            hit = answered_without_sidecar(url)
            assert hit is not None, "the second hit of the URL waited for the sidecar"
            assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", body)
            assert hit.headers["ETag"] == s3_etag  # S3's, not file_server's
            assert hit.headers["Content-Type"] == checked.headers["Content-Type"] == "binary/octet-stream"
            assert hit.headers["Last-Modified"] == checked.headers["Last-Modified"]
        ranged = answered_without_sidecar(url, headers={"Range": "bytes=10-19"})
        assert (ranged.status_code, ranged.content) == (206, body[10:20])
        # Another valid URL, a HEAD of a GET-signed URL, a conditional request: checked, so they wait.
        assert answered_without_sidecar(other) is None
        assert answered_without_sidecar(url, method="HEAD") is None
        assert answered_without_sidecar(url, headers={"If-None-Match": s3_etag}) is None
    # (Frozen, the sidecar could ask S3 nothing either: the granted hits cost S3 no request.)


def test_grant_ttl_zero_asks_s3_on_every_hit(origin, make_stack):
    for ttl, expected in ((ONE_WINDOW, 1), ("0", 3)):
        stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_GRANT_TTL=ttl)
        key = f"ttl/{ttl}.bin"
        cache_object(origin, stack, key, b"x" * 1000)
        url = stack.proxied(presign(origin, key, "v4"))
        before = origin_gets(origin, key)
        for _ in range(3):
            assert stack.get(url).headers["X-Cache"] == "HIT"
        assert origin_gets(origin, key) - before == expected, ttl
        assert bool(grant_files(stack, key)) == (ttl != "0")
        stack.stop()


def test_an_expired_url_is_refused_though_it_has_a_grant(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="verify", S3CACHE_SIGNING_KEYS=SIGNING_KEYS, S3CACHE_GRANT_TTL=ONE_WINDOW)
    key = "expiring.bin"
    cache_object(origin, stack, key, b"y" * 1000)
    url = stack.proxied(presign(origin, key, "v4", expires=3))
    assert stack.get(url).status_code == 200
    assert grant_files(stack, key)

    def refused():
        r = stack.get(url)
        return [r] if r.status_code != 200 else None  # (a 403 Response is falsy)
    [r] = wait_until(refused, timeout=15, what="the URL to expire")
    assert (r.status_code, r.headers["X-Cache"]) == (403, "DENIED")
    assert b"Request has expired" in r.content
    assert grant_files(stack, key)  # the grant is still there: Caddy's expiry check refused it
    # A conditional request takes the check, which must not take the grant's word for an expired URL.
    etag = origin.s3().head_object(Bucket=BUCKET, Key=key)["ETag"]
    r = stack.get(url, headers={"If-None-Match": etag})
    assert (r.status_code, r.headers["X-Cache"]) == (403, "DENIED")


def _sidecar_backlog(port: int) -> int:
    """Connections waiting in the sidecar's listening socket (ss: Recv-Q of a listener)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


def test_concurrent_first_hits_of_one_url_ask_s3_once_across_workers(origin, make_stack):
    """Four request workers (no shared memory) wake to 24 queued checks of one URL at once: S3 is asked once."""
    from concurrent.futures import ThreadPoolExecutor

    stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_GRANT_TTL=ONE_WINDOW, S3CACHE_SIDECAR_WORKERS="4")
    key = "stampede.bin"
    body = os.urandom(10_000)
    cache_object(origin, stack, key, body)
    url = stack.proxied(presign(origin, key, "v4"))
    before = origin_gets(origin, key)
    port = int(stack.env["S3CACHE_SIDECAR_LISTEN"].rpartition(":")[2])
    with ThreadPoolExecutor(24) as pool:
        with sidecar_frozen(stack):
            futures = [pool.submit(stack.get, url, timeout=60) for _ in range(24)]
            # Every check is queued for the frozen workers, so they all race when they wake.
            wait_until(lambda: _sidecar_backlog(port) >= 24, 30, what="24 checks queued at the sidecar")
        hits = [f.result() for f in futures]
    assert all((h.status_code, h.content) == (200, body) for h in hits)
    assert origin_gets(origin, key) - before == 1


def test_purge_eviction_and_refresh_end_grants(origin, make_stack):
    from evictor.remove import marks_for_object, meta_for_object, remove_object
    from evictor.report import Errors

    stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_GRANT_TTL=ONE_WINDOW)
    key = "ending.bin"
    ref = ObjectRef(BUCKET, key)
    cache_object(origin, stack, key, b"1" * 1000)
    url = stack.proxied(presign(origin, key, "v4"))

    # Purge.
    assert stack.get(url).status_code == 200 and grant_files(stack, key)
    assert requests.delete(f"{stack.url}/_s3cache/objects/{BUCKET}/{key}", timeout=10).status_code == 200
    assert grant_files(stack, key) == []

    # Eviction (the evictor's removal of one victim).
    cache_object(origin, stack, key, b"2" * 1000)
    assert stack.get(url).status_code == 200 and grant_files(stack, key)
    path = os.fsencode(stack.layout.object_path(ref))
    assert remove_object(stack.layout, path, meta_for_object(stack.layout, path), Errors(),
                         marks_for_object(stack.layout, path))
    assert grant_files(stack, key) == []

    # Refresh: S3 has a new object; another URL's check finds it changed and refills the entry.
    cache_object(origin, stack, key, b"3" * 1000)
    assert stack.get(url).content == b"3" * 1000 and grant_files(stack, key)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"4" * 1000)
    before = stack.stats()
    assert stack.get(stack.proxied(presign(origin, key, "v2"))).status_code == 307  # changed: redirected
    stack.wait_fills_settled(before)
    wait_until(lambda: stack.object_file(BUCKET, key).read_bytes() == b"4" * 1000, what="the refresh")
    assert grant_files(stack, key) == []
    asked = origin_gets(origin, key)
    hit = stack.get(url)
    assert (hit.status_code, hit.content) == (200, b"4" * 1000)
    assert origin_gets(origin, key) == asked + 1  # the old grant did not serve: S3 was asked
