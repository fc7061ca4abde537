"""README (eviction): a file being served when it is deleted finishes its response -- the client of a
hit gets every byte even if the evictor removes the object mid-download."""

from __future__ import annotations

import http.client
import os
import subprocess
from urllib.parse import urlsplit

import pytest

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
