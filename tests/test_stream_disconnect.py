"""README (S3CACHE_MISS=stream): if the client disconnects mid-body, nothing partial is ever kept.

The stream learns of the client's departure only when Caddy tells it, and Caddy may notice a reset
only once a small object's upstream transfer has ended: then the object arrived whole and verified,
and keeping it is right.  Either way the cache holds nothing or exactly the object, and the next
request gets the whole body.
"""

from __future__ import annotations

import os
import socket
import struct
from urllib.parse import urlsplit

import pytest

from tests.stack import wait_until

pytestmark = pytest.mark.integration

BUCKET = "stream-disconnect-tests"


def start_reading(url: str, nbytes: int) -> tuple[socket.socket, bytes, bytes]:
    """Send a GET on a raw socket and read the head and the first ``nbytes`` of the body."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < nbytes:
        chunk = sock.recv(65536)
        assert chunk, data[:500]
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return sock, head, body


@pytest.mark.parametrize("size", [1_000_000, 20_000_000])
def test_a_client_that_leaves_mid_body_leaves_nothing_cached(origin, make_stack, size):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    key = f"left-early-{size}.bin"
    body = os.urandom(size)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=size // 10)  # ten seconds of body
    url = stack.proxied(origin.presign(BUCKET, key))
    try:
        sock, head, first = start_reading(url, 20_000)
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nX-Cache: MISS" in head, head
        assert body.startswith(first)
        assert list(stack.layout.tmp_dir.iterdir())  # mid-body: the fill's temp file is being written
        # The client goes away (a reset, as a killed client's kernel sends).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        # The streamed fill notices and drops its temp file (and its lock) ...
        wait_until(lambda: not list(stack.layout.tmp_dir.iterdir()), timeout=30,
                   what="the abandoned stream's temp file to go")
    finally:
        origin.clear_faults()
    # ... and keeps nothing partial: either nothing, or the whole object.
    cached = stack.object_file(BUCKET, key)
    kept = cached.exists()
    if kept:
        assert cached.read_bytes() == body
    else:
        assert not stack.layout.meta_path_for_object_file(cached).exists()
    # The next request gets the whole body: from the cache if it was kept, else fetched again.
    again = stack.get(url, timeout=60)
    assert (again.status_code, again.headers["X-Cache"], again.content) == (200, "HIT" if kept else "MISS", body)
    assert stack.wait_cached(BUCKET, key).read_bytes() == body
