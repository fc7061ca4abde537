"""Issue 12 items 6 and 7: streams never starve the sidecar, fills have a deadline, streamed
redirects keep their Location, and no log line hands out a working URL."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import requests

from tests.fill_outcomes import fill_outcomes
from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "public-stream-bound"


@pytest.fixture(autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    yield
    origin.clear_faults()  # the origin is shared by the whole session


def slow_gets_started(origin, prefix: str) -> int:
    return sum(1 for r in origin.stats()["requests"] if r["method"] == "GET" and r["key"].startswith(prefix))


class _HeldClient:
    """A client that sends a GET and then reads its answer slowly, holding the connection open."""

    def __init__(self, base: str, target: str):
        host, port = base.split("://", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while self.sock.recv(1024):
                time.sleep(0.05)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def test_slow_streams_never_hold_up_hits_health_or_new_misses(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_MISS="stream", S3CACHE_STREAM_MAX="4")
    s3 = origin.s3()
    s3.put_object(Bucket=BUCKET, Key="hot.txt", Body=b"hot object")
    hot = stack.proxied(origin.presign(BUCKET, "hot.txt"))
    assert stack.get(hot).content == b"hot object"
    stack.wait_cached(BUCKET, "hot.txt")
    for i in range(20):
        key = f"slow/{i:02d}.bin"
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(200_000))
        origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=2000)  # 100 s each
    s3.put_object(Bucket=BUCKET, Key="new.txt", Body=b"a new miss")
    origin.reset()
    clients = [_HeldClient(stack.url, f"/{BUCKET}/slow/{i:02d}.bin") for i in range(20)]
    try:
        # Streams (and fills) of the slow objects are under way at the origin.
        wait_until(lambda: slow_gets_started(origin, f"/{BUCKET}/slow/") >= 8, timeout=30,
                   what="slow streams to start")
        t0 = time.monotonic()
        assert requests.get(stack.url + "/_s3cache/health", timeout=10).status_code == 200
        r = stack.get(hot, timeout=10)
        assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", b"hot object")
        r = stack.get(stack.proxied(origin.presign(BUCKET, "new.txt")), timeout=10)
        assert r.status_code in (200, 307)
        assert time.monotonic() - t0 < 20
    finally:
        for c in clients:
            c.close()


def test_a_dripping_origin_cannot_hold_a_fill_past_its_deadline(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_FILL_TIMEOUT="5", S3CACHE_FILL_MIN_RATE="1000")
    key = "drip/object.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=os.urandom(6000))
    # 50 B/s: a byte arrives every 20 ms (no gap reaches S3CACHE_FILL_TIMEOUT), the whole object in 120 s;
    # the deadline is 5 + 6000/1000 = 11 s.
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=50)
    started = time.monotonic()
    assert stack.get(stack.proxied(origin.presign(BUCKET, key))).status_code == 307
    wait_until(lambda: fill_outcomes(stack)[("failed", "too-slow")] == 1, timeout=60,
               what="the fill to be abandoned at its deadline")
    assert time.monotonic() - started < 60
    assert not stack.object_file(BUCKET, key).exists()
    assert "S3CACHE_FILL_MIN_RATE" in stack.log_text()


@pytest.mark.parametrize("status", [301, 307])
def test_a_streamed_miss_relays_s3s_redirect_with_its_location_and_body(origin, make_stack, status):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS="stream")
    key = f"moved-{status}.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"elsewhere")
    location = f"https://{BUCKET}.s3.eu-west-1.amazonaws.com/{key}?x=1"
    origin.fault(f"/{BUCKET}/{key}", "status", status=status, location=location)
    direct = raw_request("GET", f"{origin.url}/{BUCKET}/{key}")
    r = stack.get(f"{stack.url}/{BUCKET}/{key}")
    assert r.status_code == status
    assert r.headers["Location"] == location
    assert r.content == direct.content and b"<Error>" in r.content
    assert not stack.object_file(BUCKET, key).exists()


@pytest.mark.parametrize("mode", ["redirect", "stream"])
def test_no_log_line_carries_a_signature_or_credential(tmp_path, origin, make_stack, mode):
    with socket.socket() as s:  # an S3 that cannot be reached: the fill fails and says why
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_MISS=mode, S3CACHE_UPSTREAM=dead)
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASECRETCREDENTIAL%2F20261201%2Fus-east-1"
             "&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=5ecre7519na7ure&Signature=V2SECRETSIG&AWSAccessKeyId=AKIAV2SECRET")
    r = stack.get(f"{stack.url}/{BUCKET}/unreachable.bin?{query}")
    assert r.status_code == 307
    wait_until(lambda: "unreachable.bin" in stack.log_text().split("listening on", 1)[-1]
               and ("not caching" in stack.log_text() or "cannot stream" in stack.log_text()),
               timeout=30, what="the failed fill's log line")
    log = stack.log_text()
    for secret in ("5ecre7519na7ure", "SECRETCREDENTIAL", "V2SECRETSIG"):
        assert secret not in log, [line for line in log.splitlines() if secret in line]
