"""README (eviction): a file being served when it is deleted finishes its response -- the client of a
hit gets every byte even if the evictor removes the object mid-download; and a file deleted between
Caddy's lookup and its open is a miss, never a 404."""

from __future__ import annotations

import collections
import http.client
import os
import subprocess
import threading
from urllib.parse import urlsplit

import pytest
import requests

from tests.stack import BIN

pytestmark = pytest.mark.integration

BUCKET = "evicted-while-served-tests"


def test_a_hit_whose_file_is_evicted_mid_download_still_gets_every_byte(origin, make_stack):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open")
    key = "big.bin"
    body = os.urandom(32 * 1024 * 1024)  # far more than the socket buffers hold
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    url = stack.proxied(origin.presign(BUCKET, key))
    assert stack.get(url).headers["X-Cache"] == "MISS"
    path = stack.wait_cached(BUCKET, key, timeout=60)

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("X-Cache")) == (200, "HIT")
        first = resp.read(1024 * 1024)  # Caddy has the file open and is sending it
        # The real evictor, told the cache is over its cap, removes the object.
        env = {**stack.env, "S3CACHE_MAX_BYTES": "1"}
        evict = subprocess.run([str(BIN / "s3cache"), "evict", "--once"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert evict.returncode == 0, evict.stderr
        assert not path.exists(), evict.stdout
        rest = resp.read()
    finally:
        conn.close()
    assert len(first) + len(rest) == len(body)
    assert first + rest == body


def test_a_hit_whose_file_goes_between_the_lookup_and_the_open_is_a_miss_never_a_404(origin, make_stack):
    # Caddy's try_files finds the file, then file_server opens it: an eviction in between (a pass, or a
    # fill making room from the next victims) must hand the request to the sidecar as a miss.  A thread
    # links and unlinks the object's file as fast as it can while a client asks for it.
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_ADMIT="count:1000000")  # no fill races the toggling
    key = "flicker.bin"
    body = os.urandom(4096)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    path = stack.object_file(BUCKET, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    spare = stack.layout.tmp_dir / "flicker.spare"
    spare.write_bytes(body)
    stop = threading.Event()

    def flicker():
        while not stop.is_set():
            try:
                os.link(spare, path)
                os.unlink(path)
            except OSError:
                pass

    toggler = threading.Thread(target=flicker)
    toggler.start()
    url = stack.proxied(origin.presign(BUCKET, key))
    statuses: collections.Counter = collections.Counter()
    try:
        with requests.Session() as s:
            for _ in range(1500):
                r = s.get(url, allow_redirects=False, timeout=10)
                statuses[(r.status_code, r.headers.get("X-Cache"))] += 1
                if r.status_code == 200:
                    assert r.content == body
    finally:
        stop.set()
        toggler.join(10)
    assert set(statuses) <= {(200, "HIT"), (307, "MISS")}, statuses
    assert statuses[(200, "HIT")] and statuses[(307, "MISS")], statuses  # both sides of the race were met
