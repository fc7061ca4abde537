"""Host-in-path URLs through the real stack: ``http://proxy/<original host>/<path>?<query>``.

boto3 presigns path-style URLs on the origin (``127.0.0.1:<port>``) and virtual-hosted ones under
``<bucket>.localhost:<port>``; nothing resolves ``*.localhost`` here, so the stack reaches the origin
as an HTTP proxy (``HTTP_PROXY``), which reads the bucket from the Host as S3 does.  The allow-list
is ``http://127.0.0.1,http://*.localhost`` (no port: any port).  AWS's own forms cannot be fetched
from here: a property sends them to a stack in ``open`` mode whose cache was written by hand, so
that Caddy's reading of each path is compared with Python's without a single fill.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig
from hypothesis import HealthCheck, example, given, settings, strategies as st

from s3cache.addressing import Addressing
from s3cache.layout import ObjectRef
from s3cache.request_path import BadRequest
from s3cache.upstream_hosts import AWS_PATTERNS, parse_hosts
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1

pytestmark = pytest.mark.integration

BUCKET = "hip-tests"
HOSTS = "http://127.0.0.1,http://*.localhost"
BODY = b"one object, every URL form"


@pytest.fixture(scope="module")
def local(origin):
    """The origin under a name whose subdomains are buckets."""
    origin.ensure_bucket(BUCKET)
    return origin.url.replace("127.0.0.1", "localhost")


def presign(endpoint: str, key: str, version: str, style: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY_1, aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4" if version == "v4" else "s3",
                                            s3={"addressing_style": style}))
    return client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)


def host_in_path(url: str) -> bytes:
    """The documented rewrite: http://<host>/<path> -> http://proxy/<host>/<path>; the request target."""
    return ("/" + url.split("://", 1)[1]).encode()


def send(port: int, target: bytes, method: bytes = b"GET", host: bytes = b"127.0.0.1") -> tuple[int, dict, bytes]:
    """One request with this target, byte for byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
        resp = http.client.HTTPResponse(sock, method=method.decode())
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()


def origin_requests(origin) -> int:
    return len(origin.stats()["requests"])


def object_gets(origin, key: str) -> int:
    return origin.stats()["get_count_by_key"].get(f"/{BUCKET}/{key}", 0)


@pytest.mark.parametrize("mode", ["revalidate", "verify"])
@pytest.mark.parametrize("version", ["v2", "v4"])
@pytest.mark.parametrize("style", ["virtual", "path"])
def test_a_miss_goes_to_the_url_given_and_every_form_shares_the_hit(origin, local, make_stack, mode, version, style):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_UPSTREAM_HOSTS=HOSTS,
                       S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}", HTTP_PROXY=origin.url, NO_PROXY="")
    key = f"forms/{mode}/{version}/{style}/an object.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=BODY, ContentType="text/x-demo")
    url = presign(local if style == "virtual" else origin.url, key, version, style)
    assert url.startswith(f"http://{BUCKET}.localhost:" if style == "virtual" else f"{origin.url}/{BUCKET}/")

    status, headers, _ = send(stack.port, host_in_path(url))
    assert (status, headers.get("X-Cache")) == (307, "MISS")
    assert headers["Location"] == url  # exactly the URL the client was given
    stack.wait_cached(BUCKET, key)
    fetched = object_gets(origin, key)

    status, headers, body = send(stack.port, host_in_path(url))
    assert (status, headers.get("X-Cache"), body) == (200, "HIT", BODY), body[:300]
    assert headers["Content-Type"] == "text/x-demo"
    # The other forms of the same object: the path-style URL with the host swapped, and the other
    # host-in-path form; one file holds them all.
    other = presign(origin.url if style == "virtual" else local, key, version, "path" if style == "virtual" else "virtual")
    path_style = presign(origin.url, key, version, "path")
    for target in (host_in_path(other), stack.proxied(path_style)[len(stack.url):].encode()):
        status, headers, body = send(stack.port, target)
        assert (status, headers.get("X-Cache"), body) == (200, "HIT", BODY), (target, body[:300])
    assert [p for p in stack.layout.objects_dir.rglob("*") if p.is_file()] == [stack.object_file(BUCKET, key)]
    if mode == "verify":
        assert object_gets(origin, key) == fetched  # checked here, not at the origin

    # A tampered signature gets nothing, in either check.
    bad = host_in_path(url)
    bad = bad[:-1] + (b"0" if bad[-1:] != b"0" else b"1")
    status, headers, body = send(stack.port, bad)
    assert status == 403 and BODY not in body, (status, body[:300])


def test_open_mode_hits_come_from_disk_and_other_spellings_are_misses(origin, local, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_UPSTREAM_HOSTS=HOSTS, HTTP_PROXY=origin.url, NO_PROXY="")
    key = "forms/open/plain.bin"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=BODY)
    url = presign(local, key, "v4", "virtual")
    assert send(stack.port, host_in_path(url))[0] == 307
    stack.wait_cached(BUCKET, key)
    before = stack.stats()["sidecar_misses"]
    status, headers, body = send(stack.port, host_in_path(url))
    assert (status, headers.get("X-Cache"), body) == (200, "HIT", BODY)
    # Another spelling of the host names the same object, but only the canonical one is served from disk.
    upper = url.replace(f"http://{BUCKET}.localhost", f"http://{BUCKET.upper()}.LocalHost")
    status, headers, _ = send(stack.port, host_in_path(upper))
    assert (status, headers.get("X-Cache"), headers.get("Location")) == (307, "MISS", upper)
    after = stack.stats()["sidecar_misses"]
    assert sum(after.values()) == sum(before.values()) + 1  # the hit never reached the sidecar


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT"])
def test_hosts_not_allowed_are_refused_with_s3_xml_and_never_asked(origin, make_stack, method):
    stack = make_stack(S3CACHE_UPSTREAM_HOSTS=HOSTS)
    port = origin.url.rpartition(":")[2]
    targets = {
        b"/evil.example.com:80/hip-tests/k": (403, b"AccessDenied"),
        b"/s3.amazonaws.com/hip-tests/k": (403, b"AccessDenied"),    # not on this stack's list
        b"/hip-tests.s3.us-west-2.amazonaws.com/k?X-Amz-Signature=x": (403, b"AccessDenied"),
        b"/EVIL.amazonaws.com./k": (403, b"AccessDenied"),
        f"/127.0.0.1%3A{port}/hip-tests/k".encode(): (400, b"InvalidURI"),  # a host is written as it is
        f"/127.0.0.1:{port}/".encode(): (400, b"InvalidRequest"),          # names no bucket
        f"/127.0.0.1:{port}".encode(): (400, b"InvalidRequest"),
    }
    before = origin_requests(origin)
    for target, (want_status, code) in targets.items():
        status, headers, body = send(stack.port, target, method)
        assert status == want_status, (target, status, headers, body)
        assert "Location" not in headers, target
        if method != b"HEAD":
            assert headers["Content-Type"].startswith("application/xml") and b"<Code>" + code + b"</Code>" in body, body
    assert origin_requests(origin) == before


def test_a_write_in_host_form_is_redirected_to_its_host(origin, make_stack):
    stack = make_stack(S3CACHE_UPSTREAM_HOSTS=HOSTS)
    target = f"/127.0.0.1:{origin.url.rpartition(':')[2]}/hip-tests/up%20load?X-Amz-Signature=a%2Fb".encode()
    status, headers, _ = send(stack.port, target, b"PUT")
    assert (status, headers["Location"]) == (307, "http:/" + target.decode())


# --- AWS's forms, read by the real Caddy ----------------------------------------------------------

AWS_HOSTS = ",".join(AWS_PATTERNS) + ",http://127.0.0.1"
CACHED = [("b-one", "k"), ("b-two", "k"), ("b-one", "d/k"), ("x.s3", "k"), ("xs3", "k"),
          ("b-one", "s3.amazonaws.com/b-two/k"),   # the key of a virtual-hosted look-alike
          ("s3.amazonaws.com", "b-two/k"),         # buckets named like hosts: never their path-style reading
          ("S3.amazonaws.com", "b-two/k"), ("evil.amazonaws.com", "k"), ("b-one.s3.amazonaws.com.", "k"),
          ("b-one.s3.amazonaws.com", "k")]
BODIES = {f"{b}/{k}".encode() for b, k in CACHED}
BUCKETS = ["b-one", "b-two", "x.s3", "xs3", "B-One"]
REGIONS = ["us-west-2", "eu-west-1", "s3", "dualstack"]


@st.composite
def aws_targets(draw) -> bytes:
    bucket, region = draw(st.sampled_from(BUCKETS)), draw(st.sampled_from(REGIONS))
    host = draw(st.sampled_from([
        "s3.amazonaws.com", f"{bucket}.s3.amazonaws.com", f"s3.{region}.amazonaws.com",
        f"{bucket}.s3.{region}.amazonaws.com", f"s3-{region}.amazonaws.com", f"{bucket}.s3-{region}.amazonaws.com",
        f"s3.dualstack.{region}.amazonaws.com", f"{bucket}.s3.dualstack.{region}.amazonaws.com",
        "127.0.0.1", "127.0.0.1:9", "evil.amazonaws.com", "b-one.example.com", bucket]))
    host = "".join(c.upper() if draw(st.integers(0, 6)) == 0 else c for c in host)
    host += draw(st.sampled_from(["", "", "", ".", ":443", ":", ".:80"]))
    if draw(st.integers(0, 8)) == 0:
        host = host.replace(".", "%2E", 1) if draw(st.booleans()) else host.replace("s", "%73", 1)
    rest = draw(st.sampled_from(["/k", "/d/k", "/b-one/k", "/b-two/k", "/b-one/d/k", "/x.s3/k", "/b-two/", "",
                                 "/s3.amazonaws.com/b-two/k", "/b-one/%6B", "/%62-one/k", "/b-one/k/"]))
    return f"/{host}{rest}".encode() + draw(st.sampled_from([b"", b"?x=1", b"?versionId=3"]))


def expected(addressing: Addressing, target: bytes) -> bytes | None:
    try:
        ref = addressing.resolve("127.0.0.1", target.decode("latin-1")).parsed.ref
    except BadRequest:
        return None
    return f"{ref.bucket}/{ref.key}".encode() if (ref.bucket, ref.key) in CACHED else None


def test_caddy_serves_the_object_python_names_for_any_host_in_path(origin, make_stack):
    # No fill may ever run (AWS is out of reach, by design): nothing is admitted, and the proxy is the origin.
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_UPSTREAM_HOSTS=AWS_HOSTS, S3CACHE_ADMIT="count:1000000",
                       HTTP_PROXY=origin.url, HTTPS_PROXY=origin.url, NO_PROXY="")
    for bucket, key in CACHED:
        path = Path(stack.layout.objects_dir, bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{bucket}/{key}".encode())
    addressing = Addressing(stack.upstream, hosts=parse_hosts(AWS_HOSTS))
    served = []

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(target=aws_targets())
    @example(target=b"/s3.amazonaws.com/b-two/k")
    @example(target=b"/b-one.s3.amazonaws.com/s3.amazonaws.com/b-two/k")
    @example(target=b"/x.s3.s3.amazonaws.com/k")
    @example(target=b"/S3.amazonaws.com/b-two/k")
    @example(target=b"/evil.amazonaws.com/k")
    def prop(target):
        status, headers, body = send(stack.port, target)
        want = expected(addressing, target)
        if status in (200, 206) and headers.get("X-Cache") == "HIT":
            assert body == want, (target, body, want)
            served.append(target)
        else:
            assert body not in BODIES, (target, status, body)
            if want is None and status == 307:
                # Redirected only to a host on the list (or the upstream, path-style), never anywhere else.
                location = headers["Location"]
                assert location.startswith(("https://", "http://127.0.0.1")), (target, location)

    prop()
    # Each form reaches the disk, else the property would hold vacuously.
    for target, body in [(b"/s3.amazonaws.com/b-two/k", b"b-two/k"), (b"/b-one.s3.us-west-2.amazonaws.com/d/k", b"b-one/d/k"),
                         (b"/x.s3.s3.amazonaws.com/k", b"x.s3/k"), (b"/b-two.s3.dualstack.eu-west-1.amazonaws.com/k", b"b-two/k"),
                         (b"/s3-eu-west-1.amazonaws.com:443/b-one/k", b"b-one/k"), (b"/127.0.0.1:9/b-one/k", b"b-one/k")]:
        status, headers, got = send(stack.port, target)
        assert (status, headers.get("X-Cache"), got) == (200, "HIT", body), (target, status, got)
