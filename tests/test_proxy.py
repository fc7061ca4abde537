"""The core proxy end to end: real Caddy, the sidecar under waitress, a signature-enforcing origin."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import requests

from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
GATEWAY_KEYS = DATA.joinpath("gateway-keys.txt").read_text(encoding="utf-8").splitlines()
BUCKET = "proxy-tests"


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    return BUCKET


def put(origin, key: str, body: bytes, **kw) -> None:
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body, **kw)


def origin_gets(origin, key_path_fragment: str) -> int:
    return sum(1 for r in origin.stats()["requests"]
               if r["method"] == "GET" and r["path"].endswith(key_path_fragment))


def no_temp_files(stack) -> bool:
    return not any(stack.layout.tmp_dir.iterdir())


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_miss_redirects_to_the_exact_upstream_url_then_hit_serves_the_same_bytes(origin, stack, version):
    key = f"exact/{version}/data.bin"
    body = os.urandom(300_000)
    put(origin, key, body)
    url = origin.presign(BUCKET, key, version=version)

    miss = stack.get(stack.proxied(url))
    assert miss.status_code in (302, 307)
    assert miss.headers["X-Cache"] == "MISS"
    assert miss.headers["Location"] == url  # byte for byte
    # The redirect target really works (the signature survived).
    assert raw_request("GET", miss.headers["Location"]).content == body

    stack.wait_cached(BUCKET, key)
    origin.reset()
    hit = stack.get(stack.proxied(url))
    assert hit.status_code == 200
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.content == body
    assert origin.stats()["requests"] == []  # a hit costs the origin nothing


def test_another_signature_for_the_same_key_hits_the_same_entry(origin, stack):
    key = "same-entry/object.txt"
    put(origin, key, b"one object, many URLs")
    first = origin.presign(BUCKET, key, version="v4", expires=600)
    stack.get(stack.proxied(first))
    stack.wait_cached(BUCKET, key)
    for other in (origin.presign(BUCKET, key, version="v2", expires=900),
                  origin.presign(BUCKET, key, version="v4", expires=1200)):
        assert other != first
        hit = stack.get(stack.proxied(other))
        assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", b"one object, many URLs")
    assert len(list(stack.layout.objects_dir.rglob("object.txt"))) == 1


def test_32_concurrent_misses_fetch_the_object_once(origin, stack):
    key = "stampede/big.bin"
    body = os.urandom(2_000_000)
    put(origin, key, body)
    origin.reset()
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=4_000_000)  # ~0.5 s fill: all 32 land during it
    url = stack.proxied(origin.presign(BUCKET, key, version="v4"))
    barrier = threading.Barrier(32)
    results = []

    def client():
        barrier.wait()
        results.append(stack.get(url).headers.get("X-Cache"))

    threads = [threading.Thread(target=client) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    origin.clear_faults()
    assert len(results) == 32
    stack.wait_cached(BUCKET, key)
    assert origin_gets(origin, f"/{key}") == 1
    assert stack.object_file(BUCKET, key).read_bytes() == body


def test_range_head_and_conditional_requests_on_hits(origin, stack):
    key = "ranges/alphabet.txt"
    put(origin, key, b"abcdefghijklmnopqrstuvwxyz")
    url = origin.presign(BUCKET, key, version="v4")
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, key)
    proxied = stack.proxied(url)

    r = raw_request("GET", proxied, headers={"Range": "bytes=2-5"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"cdef", "bytes 2-5/26")
    assert r.headers["X-Cache"] == "HIT"
    r = raw_request("GET", proxied, headers={"Range": "bytes=-3"})
    assert (r.status_code, r.content) == (206, b"xyz")
    r = raw_request("GET", proxied, headers={"Range": "bytes=100-200"})
    assert r.status_code == 416

    head = raw_request("HEAD", proxied)
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "26", b"")
    assert head.headers["X-Cache"] == "HIT"

    etag = head.headers["ETag"]
    assert raw_request("GET", proxied, headers={"If-None-Match": etag}).status_code == 304
    assert raw_request("GET", proxied, headers={"If-Match": '"other"'}).status_code == 412
    last_modified = head.headers["Last-Modified"]
    assert raw_request("GET", proxied, headers={"If-Modified-Since": last_modified}).status_code == 304


def test_mtime_is_s3_last_modified_and_metadata_is_kept_outside_the_served_tree(origin, stack):
    key = "meta/has-type"
    put(origin, key, b"{}", ContentType="application/x-special")
    url = origin.presign(BUCKET, key, version="v2")
    direct = raw_request("GET", url)
    stack.get(stack.proxied(url))
    path = stack.wait_cached(BUCKET, key)
    from email.utils import parsedate_to_datetime
    assert path.stat().st_mtime == parsedate_to_datetime(direct.headers["Last-Modified"]).timestamp()
    import json
    meta = json.loads(stack.layout.meta_path_for_object_file(path).read_text())
    assert meta["headers"]["content-type"] == "application/x-special"
    assert meta["headers"]["etag"] == direct.headers["ETag"]
    assert not str(stack.layout.meta_dir).startswith(str(stack.layout.objects_dir))


def test_zero_byte_objects_are_cached(origin, stack):
    key = "empty/zero-bytes"
    put(origin, key, b"")
    url = origin.presign(BUCKET, key, version="v4")
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, key)
    hit = stack.get(stack.proxied(url))
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", b"")


def _assert_never_cached(origin, stack, key: str, url: str) -> None:
    origin.reset()
    before = stack.stats()
    first = stack.get(stack.proxied(url))
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers["Location"] == url
    # The background fetch happened and ended, counted as failed ...
    after = stack.wait_fills_settled(before)
    assert after["fills"]["failed"] == before["fills"]["failed"] + 1
    assert origin_gets(origin, f"/{key}") >= 1
    assert no_temp_files(stack)
    # ... and left nothing behind: no object, no metadata, still a miss.
    assert not stack.object_file(BUCKET, key).exists()
    assert not any(stack.layout.meta_dir.rglob(Path(key).name))
    assert stack.get(stack.proxied(url)).headers["X-Cache"] == "MISS"
    stack.wait_fills_settled(after)  # that miss's fill attempt too, before the caller goes on


def test_forbidden_missing_and_expired_are_never_cached(origin, stack):
    put(origin, "refused/tampered", b"secret")
    good = origin.presign(BUCKET, "refused/tampered", version="v4")
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    _assert_never_cached(origin, stack, "refused/tampered", tampered)

    _assert_never_cached(origin, stack, "refused/not-there", origin.presign(BUCKET, "refused/not-there", version="v2"))

    put(origin, "refused/expired", b"old")
    expired = origin.presign(BUCKET, "refused/expired", version="v2", expires=-60)
    _assert_never_cached(origin, stack, "refused/expired", expired)


@pytest.mark.parametrize("kind, kw", [("truncate", {}), ("bad_etag", {}), ("status", {"status": 500})])
def test_truncated_mismatched_or_failed_fetches_are_never_cached(origin, stack, kind, kw):
    key = f"faulty/{kind}.bin"
    put(origin, key, os.urandom(100_000))
    origin.fault(f"/{BUCKET}/{key}", kind, **kw)
    try:
        _assert_never_cached(origin, stack, key, origin.presign(BUCKET, key, version="v4"))
    finally:
        origin.clear_faults()


def test_objects_over_the_size_limit_are_never_cached(origin, make_stack):
    stack = make_stack(S3CACHE_MAX_OBJECT_BYTES="1000")
    put(origin, "limits/small", b"s" * 1000)
    put(origin, "limits/large", b"L" * 1001)
    stack.get(stack.proxied(origin.presign(BUCKET, "limits/small")))
    stack.wait_cached(BUCKET, "limits/small")
    _assert_never_cached(origin, stack, "limits/large", origin.presign(BUCKET, "limits/large"))


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_every_gateway_key_round_trips_byte_for_byte(origin, stack, version):
    for i, key in enumerate(GATEWAY_KEYS):
        put(origin, key, f"{i}:{key}".encode())
    urls = {key: origin.presign(BUCKET, key, version=version) for key in GATEWAY_KEYS}
    for key, url in urls.items():
        miss = stack.get(stack.proxied(url))
        assert miss.status_code == 307, key
        assert miss.headers["Location"] == url, key
    for i, (key, url) in enumerate(urls.items()):
        stack.wait_cached(BUCKET, key)
        hit = stack.get(stack.proxied(url))
        assert (hit.status_code, hit.headers.get("X-Cache"), hit.content) == (200, "HIT", f"{i}:{key}".encode()), key


def test_a_key_and_a_key_below_it_never_share_a_file(origin, stack):
    put(origin, "clash/a", b"file a")
    put(origin, "clash/a/b", b"file a/b")
    url_a = origin.presign(BUCKET, "clash/a")
    url_ab = origin.presign(BUCKET, "clash/a/b")
    stack.get(stack.proxied(url_a))
    stack.wait_cached(BUCKET, "clash/a")
    # 'clash/a' is a file, so 'clash/a/b' cannot be stored: always redirected, never the wrong bytes.
    for _ in range(2):
        before = stack.stats()
        r = stack.get(stack.proxied(url_ab))
        assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")
        after = stack.wait_fills_settled(before)
        assert after["fills"]["filled"] == before["fills"]["filled"]
        assert not stack.object_file(BUCKET, "clash/a").is_dir()
    assert stack.get(stack.proxied(url_a)).content == b"file a"


def test_literal_plus_is_redirected_and_encoded_plus_is_cached(origin, stack):
    put(origin, "plus/a+b", b"a plus b")
    url = origin.presign(BUCKET, "plus/a+b", version="v4")
    assert "%2B" in url
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, "plus/a+b")
    assert stack.get(stack.proxied(url)).headers["X-Cache"] == "HIT"
    literal = stack.proxied(url).replace("%2B", "+")
    r = stack.get(literal)
    assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")
    assert r.headers["Location"] == url.replace("%2B", "+")


@pytest.mark.parametrize("path", [
    "/etc/passwd",
    "/proxy-tests/../../../../etc/passwd",
    "/proxy-tests/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/proxy-tests/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/proxy-tests/a/..%5c..%5c..%5cetc%5cpasswd",
    "/proxy-tests//etc/passwd",
    "/proxy-tests/%2Fetc%2Fpasswd",
])
def test_traversal_attempts_never_read_or_write_outside_the_cache(origin, stack, path):
    before = set(stack.workdir.parent.iterdir())
    stats_before = stack.stats()
    r = stack.get(stack.url + path)
    assert b"root:" not in r.content
    assert r.status_code in (307, 400, 404)
    stack.wait_fills_settled(stats_before)  # a fill it queued (of bucket "etc", say) has done its worst
    assert set(stack.workdir.parent.iterdir()) == before
    assert not any("passwd" in str(p) for p in stack.layout.objects_dir.rglob("*"))


@pytest.mark.parametrize("path, status, code", [
    ("//no-bucket", 400, "InvalidRequest"),
    ("/Invalid..Bucket/key", 400, "InvalidBucketName"),
    ("/proxy-tests/nul%00byte", 400, "InvalidURI"),
    ("/proxy-tests/bad-utf8-%C3%28", 400, "InvalidURI"),
    ("/proxy-tests/" + "k" * 1100, 400, "KeyTooLongError"),
    ("/proxy-tests/" + "k/" * 5000, 414, "RequestURITooLong"),
])
def test_malformed_requests_get_an_s3_style_xml_error(stack, path, status, code):
    r = stack.get(stack.url + path)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/xml")
    assert f"<Code>{code}</Code>" in r.text
    assert "Traceback" not in r.text


@pytest.mark.parametrize("path", ["/proxy-tests/broken%zz", "/proxy-tests/trailing%", "/proxy-tests/half%4"])
def test_broken_percent_encoding_is_a_4xx_without_traceback(stack, path):
    # http.client sends the path as is; urllib3 would "repair" it to %25zz first.
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert 400 <= r.status < 500
    assert b"Traceback" not in body


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_redirected_upstream_untouched(origin, stack, method):
    uri = "/proxy-tests/upload%20here?uploads=&X-Amz-Signature=a%2Bb"
    r = raw_request(method, stack.url + uri)
    assert r.status_code == 307
    assert r.headers["Location"] == origin.url + uri
    assert r.headers["X-Cache"] == "MISS"
    assert not stack.object_file(BUCKET, "upload here").exists()


def test_sub_resource_requests_never_hit_the_cache(origin, stack):
    put(origin, "versions/v.txt", b"current")
    url = origin.presign(BUCKET, "versions/v.txt")
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, "versions/v.txt")
    r = stack.get(stack.url + "/proxy-tests/versions/v.txt?versionId=older")
    assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")


def test_health_and_root_page(stack):
    health = requests.get(stack.url + "/_s3cache/health", timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["parts"]["sidecar"]["status"] == "ok"
    assert body["parts"]["caddy"]["status"] == "running"
    assert body["cache"]["writable"] is True
    root = requests.get(stack.url + "/", timeout=5)
    assert root.status_code == 200
    assert "s3cache" in root.text and "<html" in root.text


def test_sidecar_killed_mid_fetch_leaves_nothing_served_and_the_next_miss_fetches_again(origin, stack):
    import signal

    key = "killed/mid-fetch.bin"
    body = os.urandom(3_000_000)
    put(origin, key, body)
    origin.fault(f"/{BUCKET}/{key}", "slow", bytes_per_sec=500_000)
    url = stack.proxied(origin.presign(BUCKET, key, version="v4"))
    assert stack.get(url).headers["X-Cache"] == "MISS"
    # Wait until the fill has written part of the body, then kill the sidecar outright.
    wait_until(lambda: any(p.stat().st_size > 100_000 for p in stack.layout.tmp_dir.glob("*.part")),
               what="a partial temp file")
    os.kill(stack.part_pid("sidecar"), signal.SIGKILL)
    origin.clear_faults()
    origin.reset()
    # The partial body is never served: Caddy only looks in objects/.
    assert not stack.object_file(BUCKET, key).exists()
    # Caddy waits a few seconds for the restarted sidecar (lb_try_duration): a miss (or a 502), never the partial body.
    r = stack.get(url)
    assert r.headers.get("X-Cache") != "HIT"
    assert r.content != body[:len(r.content)] or not r.content
    # The supervisor restarts the sidecar; the next miss fetches again and completes, once.
    wait_until(lambda: "restarting" in stack.log_text(), what="the supervisor to notice")
    stack.wait_healthy()
    stack.get(url)
    stack.wait_cached(BUCKET, key)
    assert origin_gets(origin, f"/{key}") == 1
    assert stack.get(url).content == body


@pytest.mark.parametrize("raw", [
    '/proxy-tests/quote"and|pipe%7E.txt?X-Amz-Signature=abc',   # bytes Go would re-encode
    "/proxy-tests/lower%c3%bccase?X-Amz-Signature=x%2By",        # lower-case escapes stay lower-case
    "/proxy-tests/tilde%7Eescaped?a=1&a=0",                      # an unnecessary escape stays escaped
])
def test_the_redirect_carries_the_request_line_byte_for_byte_even_where_go_would_re_encode(origin, stack, raw):
    import http.client
    for method in ("GET", "PUT"):
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        conn.request(method, raw)
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 307
        assert r.getheader("Location") == origin.url + raw, method


def test_the_access_log_holds_no_working_signature(origin, stack):
    put(origin, "logged/secret.txt", b"x")
    url = origin.presign(BUCKET, "logged/secret.txt", version="v4")
    v2 = origin.presign(BUCKET, "logged/secret.txt", version="v2")
    stack.get(stack.proxied(url))
    stack.wait_cached(BUCKET, "logged/secret.txt")
    stack.get(stack.proxied(url))
    stack.get(stack.proxied(v2))
    raw_request("PUT", stack.proxied(url))

    def logged():  # Caddy writes the line once the response is done: wait for the last request's
        text = (stack.layout.logs_dir / "access.log").read_text()
        return text if '"method":"PUT"' in text else None
    log = wait_until(logged, what="the PUT in the access log")
    for signed in (url, v2):
        signature = signed.rsplit("Signature=", 1)[1].split("&")[0]
        assert signature not in log
    assert "REDACTED" in log
