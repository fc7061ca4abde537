"""Access control on hits: a cached private object reaches only requests S3 itself would allow.

Each mode is tried against the signature-enforcing origin with both signature
versions.  An attacker knows the bucket and key but holds no valid signature;
they must never receive a byte of the cached object.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.origin.credentials import ACCESS_KEY_1, ACCESS_KEY_2, SECRET_KEY_1, SECRET_KEY_2
from tests.stack import raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "private-tests"
SIGNING_KEYS = f"{ACCESS_KEY_1}:{SECRET_KEY_1},{ACCESS_KEY_2}:{SECRET_KEY_2}"


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def cache_object(origin, stack, key: str, body: bytes, version: str = "v4") -> str:
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    url = origin.presign(BUCKET, key, version=version)
    assert stack.get(stack.proxied(url)).headers["X-Cache"] == "MISS"
    stack.wait_cached(BUCKET, key)
    return url


def attacker_urls(origin, key: str, version: str, good: str) -> dict[str, str]:
    """Every way to ask for the object without a valid signature."""
    unsigned = origin.url + good[len(origin.url):].split("?", 1)[0]
    sig_param = "Signature=" if version == "v2" else "X-Amz-Signature="
    head, _, tail = good.partition(sig_param)
    value, amp, rest = tail.partition("&")
    tampered = head + sig_param + ("A" if value[0] != "A" else "B") + value[1:] + amp + rest
    return {
        "tampered signature": tampered,
        "wrong secret": origin.presign(BUCKET, key, version=version, secret="not-the-secret"),
        "another key's signature": origin.presign(BUCKET, key, version=version, access_key=ACCESS_KEY_1,
                                                  secret=SECRET_KEY_2),
        "unknown key": origin.presign(BUCKET, key, version=version, access_key="AKIAUNKNOWNKEY00",
                                      secret="whatever"),
        "expired": origin.presign(BUCKET, key, version=version, expires=1),
        "unsigned": unsigned,
        "signed for another key": origin.presign(BUCKET, key + ".other", version=version).replace(
            "/" + key.rsplit("/", 1)[-1] + ".other", "/" + key.rsplit("/", 1)[-1]),
    }


def assert_no_bytes(stack, url: str, body: bytes, why: str) -> None:
    for headers in ({}, {"Range": "bytes=0-99"}):
        r = raw_request("GET", stack.proxied(url), headers=headers)
        assert r.status_code not in (200, 206, 304), f"{why}: {r.status_code}"
        assert body[:100] not in r.content, f"{why}: cached bytes leaked"
        assert r.headers.get("X-Cache") != "HIT", why


@pytest.mark.parametrize("mode", ["verify", "revalidate"])
@pytest.mark.parametrize("version", ["v2", "v4"])
def test_valid_urls_are_served_from_cache_and_attackers_get_nothing(origin, make_stack, mode, version):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=SIGNING_KEYS)
    key = f"secret/{mode}-{version}.bin"
    body = os.urandom(50_000)
    url = cache_object(origin, stack, key, body, version)

    hit = stack.get(stack.proxied(url))
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", body)
    other = origin.presign(BUCKET, key, version="v2" if version == "v4" else "v4", access_key=ACCESS_KEY_2)
    hit = stack.get(stack.proxied(other))
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", body)

    attacks = attacker_urls(origin, key, version, url)
    time.sleep(2.1)  # let the 1-second URL expire (Expires has 1 s granularity)
    for why, bad in attacks.items():
        assert_no_bytes(stack, bad, body, why)
    # Still cached, still served to the rightful URL.
    assert stack.get(stack.proxied(url)).content == body


def test_verify_answers_with_s3_style_errors(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="verify", S3CACHE_SIGNING_KEYS=SIGNING_KEYS)
    key = "secret/errors.txt"
    url = cache_object(origin, stack, key, b"private words")
    origin.reset()
    cases = {
        "SignatureDoesNotMatch": origin.presign(BUCKET, key, secret="wrong"),
        "InvalidAccessKeyId": origin.presign(BUCKET, key, access_key="AKIANOBODY000000", secret="x"),
    }
    for code, bad in cases.items():
        r = stack.get(stack.proxied(bad))
        assert r.status_code == 403
        assert f"<Code>{code}</Code>" in r.text
        assert r.headers["X-Cache"] == "DENIED"
    expired = origin.presign(BUCKET, key, version="v2", expires=1)
    time.sleep(2.1)
    r = stack.get(stack.proxied(expired))
    assert r.status_code == 403 and "Request has expired" in r.text
    # verify decides locally: the origin heard nothing.
    assert origin.stats()["requests"] == []
    assert stack.get(stack.proxied(url)).headers["X-Cache"] == "HIT"


def test_verify_without_keys_is_a_configuration_error(tmp_path):
    import subprocess
    from tests.stack import BIN
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    env.update(S3CACHE_ACCESS="verify", S3CACHE_DIR=str(tmp_path / "c"))
    r = subprocess.run([str(BIN / "s3cache"), "up"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "S3CACHE_SIGNING_KEYS" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_revalidate_hit_moves_no_body_bytes_from_the_origin(origin, make_stack):
    stack = make_stack(S3CACHE_GRANT_TTL="0")  # revalidate is the default; no grants: S3 is asked every hit
    key = "revalidate/counted.bin"
    body = os.urandom(200_000)
    url = cache_object(origin, stack, key, body)
    origin.reset()
    for _ in range(3):
        hit = stack.get(stack.proxied(url))
        assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", body)
    stats = origin.stats()
    assert [r["status"] for r in stats["requests"]] == [304, 304, 304]  # one conditional request per hit
    assert stats["body_bytes"] == 0
    head = raw_request("HEAD", stack.proxied(origin.presign(BUCKET, key, method="head_object")))
    assert (head.status_code, head.headers["X-Cache"]) == (200, "HIT")


def test_revalidate_never_serves_a_changed_object_stale(origin, make_stack):
    stack = make_stack()
    key = "revalidate/changes.txt"
    url = cache_object(origin, stack, key, b"version one")
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"version two, longer")
    r = stack.get(stack.proxied(url))
    assert b"version one" not in r.content
    assert (r.status_code, r.headers["X-Cache"], r.headers["Location"]) == (307, "MISS", url)
    # The cache refreshes itself from that same response, then serves the new bytes.
    wait_until(lambda: stack.object_file(BUCKET, key).read_bytes() == b"version two, longer",
               what="the refresh")
    r = stack.get(stack.proxied(url))
    assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", b"version two, longer")


def test_revalidate_relays_s3_refusals_and_a_404_drops_the_copy(origin, make_stack):
    stack = make_stack()
    key = "revalidate/deleted.txt"
    url = cache_object(origin, stack, key, b"soon gone")
    bad = origin.presign(BUCKET, key, secret="wrong")
    r = stack.get(stack.proxied(bad))
    assert r.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in r.text
    assert stack.object_file(BUCKET, key).exists()  # a bad client does not evict

    origin.s3().delete_object(Bucket=BUCKET, Key=key)
    r = stack.get(stack.proxied(url))
    assert r.status_code == 404 and "<Code>NoSuchKey</Code>" in r.text
    assert not stack.object_file(BUCKET, key).exists()
    assert not stack.layout.meta_path_for_object_file(stack.object_file(BUCKET, key)).exists()


@pytest.mark.parametrize("on_error, expected", [("closed", 503), ("open", 200)])
def test_revalidate_when_s3_is_unreachable(make_stack, tmp_path, on_error, expected):
    from tests.stack import free_port
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    stack = make_stack(S3CACHE_UPSTREAM=dead, S3CACHE_REVALIDATE_ON_ERROR=on_error)
    path = stack.object_file(BUCKET, "offline/object.txt")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached while S3 was up")
    r = stack.get(f"{stack.url}/{BUCKET}/offline/object.txt?X-Amz-Signature=x")
    assert r.status_code == expected
    if expected == 503:
        assert b"cached while S3 was up" not in r.content
        assert "<Code>ServiceUnavailable</Code>" in r.text
    else:
        assert r.content == b"cached while S3 was up"


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_open_mode_serves_anyone_but_refuses_expired_urls_without_python(origin, make_stack, version):
    stack = make_stack(S3CACHE_ACCESS="open")
    key = f"open/{version}.txt"
    url = cache_object(origin, stack, key, b"public bytes")
    unsigned = stack.url + "/" + BUCKET + "/" + key
    assert stack.get(unsigned).content == b"public bytes"
    expired = origin.presign(BUCKET, key, version=version, expires=1)
    time.sleep(2.1)
    r = stack.get(stack.proxied(expired))
    assert r.status_code == 403 and "Request has expired" in r.text
    assert r.headers["X-Cache"] == "DENIED"
    assert stack.get(stack.proxied(url)).content == b"public bytes"


def test_open_mode_hit_with_half_a_sigv4_expiry_is_served_never_a_500(origin, make_stack):
    # Caddy's vars_regexp with two variables matches when either does: a date without a lifetime (or the
    # reverse) once reached the expiry expression, whose int() of the missing half answered 500 about
    # every other request (Go visits the two in random order each time).
    stack = make_stack(S3CACHE_ACCESS="open")
    key = "open/half-expiry.txt"
    cache_object(origin, stack, key, b"public bytes")
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for query in (f"X-Amz-Date={now}", f"X-Amz-Date={now}&X-Amz-Expires=soon", "X-Amz-Date=junk&X-Amz-Expires=600"):
        for _ in range(20):
            r = stack.get(f"{stack.url}/{BUCKET}/{key}?{query}")
            assert (r.status_code, r.headers.get("X-Cache"), r.content) == (200, "HIT", b"public bytes"), query


def test_clients_cannot_call_the_auth_endpoint(make_stack):
    stack = make_stack()
    r = stack.get(stack.url + "/_s3cache/auth")
    assert r.status_code == 404


def _closed_by_sidecar(port: int) -> int:
    """Connections the sidecar closed lately (TIME-WAIT stays on the side that closes first)."""
    out = subprocess.run(["ss", "-Htn", "state", "time-wait", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_checked_hits_reuse_caddys_connection_to_the_sidecar(origin, make_stack):
    """Every checked hit is one request to the sidecar, not one connection: its 'serve it' keeps the connection.

    (A 204 did not: waitress closes after a bodyless status, so each check cost Caddy a new connection.)
    """
    stack = make_stack(S3CACHE_ACCESS="verify", S3CACHE_SIGNING_KEYS=SIGNING_KEYS, S3CACHE_GRANT_TTL="0")
    body = os.urandom(2048)
    url = stack.proxied(cache_object(origin, stack, "keepalive.bin", body))
    port = int(stack.env["S3CACHE_SIDECAR_LISTEN"].rpartition(":")[2])
    before = _closed_by_sidecar(port)
    for _ in range(20):
        r = raw_request("GET", url)
        assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", body)
    assert _closed_by_sidecar(port) - before <= 2
