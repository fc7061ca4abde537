"""S3CACHE_ADMIN_ALLOW on the real stack: the client address Caddy saw decides; health stays reachable
from loopback for health checks.  A second loopback address (127.0.0.2) stands in for another host."""

from __future__ import annotations

import http.client
import subprocess

import pytest

from tests.stack import BIN

pytestmark = pytest.mark.integration

ADMIN = ("/", "/_s3cache", "/_s3cache/", "/_s3cache/metrics", "/_s3cache/stats.json")


def get(url_base: str, path: str, source: str = "127.0.0.1", headers: dict | None = None) -> int:
    host, port = url_base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_default_allows_loopback(make_stack):
    stack = make_stack(S3CACHE_ACCESS="open")
    for path in ADMIN + ("/_s3cache/health",):
        assert get(stack.url, path) == 200, path


def test_clients_outside_the_list_get_403_but_health_stays_up_for_loopback(make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_ADMIN_ALLOW="127.0.0.2/32")
    for path in ADMIN:
        assert get(stack.url, path, source="127.0.0.1") == 403, path
        assert get(stack.url, path, source="127.0.0.2") == 200, path
    # A client cannot claim to be someone else: Caddy replaces the header.
    assert get(stack.url, "/_s3cache/metrics", headers={"X-S3cache-Client-Ip": "127.0.0.2",
                                                        "X-Forwarded-For": "127.0.0.2"}) == 403
    assert get(stack.url, "/_s3cache/health") == 200
    # Objects are not affected.
    assert get(stack.url, "/some-bucket/key") == 307


def test_health_follows_the_list_for_other_hosts(make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_ADMIN_ALLOW="192.0.2.0/24")
    assert get(stack.url, "/_s3cache/health", source="127.0.0.2") == 200  # still loopback
    assert get(stack.url, "/_s3cache/metrics", source="127.0.0.2") == 403
    # `s3cache stats` asks the sidecar directly, from loopback: refused too, and it says why.
    done = subprocess.run([str(BIN / "s3cache"), "stats"], env=stack.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "S3CACHE_ADMIN_ALLOW" in done.stderr
