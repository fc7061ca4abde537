"""A hit carries the object's own S3 headers, with its own request's response-* overrides and no one else's.

Issue 12 item 3: a fill made from a URL with ``response-*`` parameters must not
store S3's overridden answer as the object's headers (stored XSS: ``text/html``,
``attachment; filename="invoice.exe"``, ``Content-Encoding: gzip`` for every
later plain request).  Item 7: hits in every mode, ``open`` included, carry the
object's own headers (Content-Encoding, Cache-Control, the MD5 ETag, x-amz-meta-*).
"""

from __future__ import annotations

import gzip
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3cache.layout import ObjectRef
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1
from tests.stack import raw_request

pytestmark = pytest.mark.integration

BUCKET = "hit-header-tests"
KEYS = f"{ACCESS_KEY_1}:{SECRET_KEY_1}"

# The object's own headers (put_object argument -> response header).
OWN = {
    "ContentType": ("Content-Type", "application/vnd.s3cache-test"),
    "ContentDisposition": ("Content-Disposition", 'inline; filename="report.pdf"'),
    "ContentEncoding": ("Content-Encoding", "gzip"),
    "ContentLanguage": ("Content-Language", "de"),
    "CacheControl": ("Cache-Control", "max-age=60"),
}
# What an attacker's URL overrides them with (presign parameter -> header, value).
EVIL = {
    "ResponseContentType": ("Content-Type", "text/html"),
    "ResponseContentDisposition": ("Content-Disposition", 'attachment; filename="invoice.exe"'),
    "ResponseContentEncoding": ("Content-Encoding", "identity"),
    "ResponseContentLanguage": ("Content-Language", "xx"),
    "ResponseCacheControl": ("Cache-Control", "public, max-age=31536000"),
}
COMPARED = [h for h, _ in OWN.values()] + ["ETag", "Content-Length", "x-amz-meta-owner"]
_counter = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def _put(origin, key: str, **extras) -> bytes:
    body = gzip.compress(b"<html><script>alert(1)</script></html>" * 50)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body, Metadata={"owner": "alice"},
                           **{arg: value for arg, (_, value) in OWN.items()}, **extras)
    return body


def _get(url: str, **headers):
    resp = raw_request("GET", url, headers={"Accept-Encoding": "identity", **headers})
    return resp


def _fill(stack, url: str, key: str) -> None:
    first = stack.get(stack.proxied(url), headers={"Accept-Encoding": "identity"})
    assert first.status_code in (200, 307), first.text
    stack.wait_cached(BUCKET, key)


def _headers(resp) -> dict:
    return {name: resp.headers.get(name) for name in COMPARED}


@pytest.mark.parametrize("mode", ["verify", "revalidate", "stream"])
def test_a_fill_from_an_overriding_url_does_not_poison_later_hits(origin, make_stack, mode):
    env = {"S3CACHE_SIGNING_KEYS": KEYS}
    env.update({"S3CACHE_ACCESS": "revalidate", "S3CACHE_MISS": "stream"} if mode == "stream"
               else {"S3CACHE_ACCESS": mode})
    stack = make_stack(**env)
    key = f"xss/{mode}/invoice"
    _put(origin, key)
    evil = {param: value for param, (_, value) in EVIL.items()}
    _fill(stack, origin.presign(BUCKET, key, params=evil), key)

    plain = origin.presign(BUCKET, key)
    s3 = _get(plain)
    hit = _get(stack.proxied(plain))
    assert hit.headers["X-Cache"] == "HIT"
    for header, value in EVIL.values():
        # Unknown until a plain response tells it, never the attacker's value.
        assert hit.headers.get(header) != value, header
        assert hit.headers.get(header) in (None, s3.headers[header]), header
    assert hit.headers["ETag"] == s3.headers["ETag"]
    assert hit.headers["x-amz-meta-owner"] == "alice"

    # The attacker's own URL still gets its overrides, as from S3.
    again = _get(stack.proxied(origin.presign(BUCKET, key, params=evil)))
    assert again.headers["X-Cache"] == "HIT"
    for header, value in EVIL.values():
        assert again.headers.get(header) == value, header


@pytest.mark.parametrize("mode", ["open", "verify", "revalidate"])
def test_hits_carry_the_objects_own_headers_in_every_mode(origin, make_stack, mode):
    stack = make_stack(S3CACHE_ACCESS=mode, S3CACHE_SIGNING_KEYS=KEYS)
    key = f"own/{mode}/archive"  # no extension: Caddy alone would send no Content-Type at all
    body = _put(origin, key)
    url = origin.presign(BUCKET, key)
    _fill(stack, url, key)
    s3 = _get(url)
    hit = _get(stack.proxied(url))
    assert hit.headers["X-Cache"] == "HIT"
    assert _headers(hit) == _headers(s3)
    assert hit.content == s3.content == gzip.decompress(body)  # the client could decode it
    # Range and conditionals are still S3's.
    part = _get(stack.proxied(url), Range="bytes=0-9")
    assert (part.status_code, part.headers["Content-Range"], part.headers["ETag"]) == \
        (206, f"bytes 0-9/{len(body)}", s3.headers["ETag"])
    assert _get(stack.proxied(url), **{"If-None-Match": s3.headers["ETag"]}).status_code == 304


@pytest.mark.parametrize("key, extras", [("own/open/plain.png", {"ContentType": "image/png"}),
                                         ("own/open/default-type", {}),  # S3's binary/octet-stream
                                         # what the aws CLI sets on a .bin, and on anything it cannot name
                                         ("own/open/dataset.bin", {"ContentType": "application/octet-stream"}),
                                         ("own/open/no-extension", {"ContentType": "application/octet-stream"})])
def test_open_mode_plain_objects_stay_on_caddy_alone(origin, make_stack, key, extras):
    stack = make_stack(S3CACHE_ACCESS="open")
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"\x89PNG" + bytes(100), **extras)
    url = origin.presign(BUCKET, key)
    _fill(stack, url, key)
    s3 = _get(url)
    hit = _get(stack.proxied(url))
    assert (hit.headers["X-Cache"], hit.headers["Content-Type"]) == ("HIT", s3.headers["Content-Type"])
    assert not stack.layout.mark_path(ObjectRef(BUCKET, key), "headers").exists()
    # Caddy alone answered: its own ETag (mtime-size), not S3's MD5, which only the sidecar knows.
    assert hit.headers["ETag"] != s3.headers["ETag"]


def test_marks_go_with_their_objects(origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="revalidate")
    key = "own/marked/gone"
    _put(origin, key)
    url = origin.presign(BUCKET, key)
    _fill(stack, url, key)
    mark = stack.layout.mark_path(ObjectRef(BUCKET, key))
    assert mark.exists()
    origin.s3().delete_object(Bucket=BUCKET, Key=key)
    assert _get(stack.proxied(url)).status_code == 404  # revalidation: gone at S3, gone here
    assert not mark.exists() and not stack.object_file(BUCKET, key).exists()


HEADER_PARAMS = sorted(EVIL)
overrides = st.dictionaries(st.sampled_from(HEADER_PARAMS), st.sampled_from(["a", "b"]), max_size=len(HEADER_PARAMS))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fill_with=overrides, hit_with=overrides, version=st.sampled_from(["v2", "v4"]))
def test_a_hit_applies_its_own_overrides_and_no_others(origin, make_stack, fill_with, hit_with, version):
    """For any overrides in the filling URL and in the hit's: the object's own headers, with the hit's applied."""
    stack = _property_stack(make_stack)
    key = f"property/{next(_counter)}"
    _put(origin, key)

    def value(param, tag):
        return f"{EVIL[param][1]}-{tag}"  # never the object's own value

    _fill(stack, origin.presign(BUCKET, key, version=version,
                                params={p: value(p, t) for p, t in fill_with.items()}), key)
    url = origin.presign(BUCKET, key, version=version, params={p: value(p, t) for p, t in hit_with.items()})
    hit = _get(stack.proxied(url))
    assert hit.headers["X-Cache"] == "HIT"
    for param, (header, _) in EVIL.items():
        own = dict(OWN.values())[header]
        got = hit.headers.get(header)
        if param in hit_with:
            assert got == value(param, hit_with[param]), header
        elif param in fill_with:
            assert got in (None, own), header  # unknown: left out, never the filling URL's
        else:
            assert got == own, header
    assert hit.headers["x-amz-meta-owner"] == "alice"


_stacks: dict = {}


def _property_stack(make_stack):
    # One stack for all examples (each uses its own key): verify mode, so no revalidation tells
    # the headers a filling URL overrode.
    stack = _stacks.get(id(make_stack))
    if stack is None:
        _stacks.clear()
        stack = _stacks[id(make_stack)] = make_stack(S3CACHE_ACCESS="verify", S3CACHE_SIGNING_KEYS=KEYS)
    return stack


@pytest.mark.parametrize("addressing", ["virtual", "single-bucket"])
def test_open_mode_finds_the_mark_of_a_virtual_hosted_object(origin, make_stack, vhost_upstream, addressing):
    from tests.test_addressing import BUCKET as VBUCKET, DOMAIN, send, vhost_url
    env = {"S3CACHE_DOMAIN": DOMAIN} if addressing == "virtual" else {"S3CACHE_BUCKET": VBUCKET}
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_UPSTREAM=vhost_upstream, HTTP_PROXY=origin.url, NO_PROXY="",
                       **env)
    key = f"marked/{addressing}/archive"
    origin.s3().put_object(Bucket=VBUCKET, Key=key, Body=gzip.compress(b"tar bytes"), ContentEncoding="gzip",
                           ContentType="application/x-tar", Metadata={"owner": "alice"})
    url = vhost_url(vhost_upstream, key, "v4")
    host = f"{VBUCKET}.{DOMAIN}" if addressing == "virtual" else None
    assert send(url, via=stack.url, host=host).status_code == 307
    stack.wait_cached(VBUCKET, key)
    hit = send(url, via=stack.url, host=host)
    assert (hit.headers["X-Cache"], hit.content) == ("HIT", b"tar bytes")
    assert (hit.headers.get("Content-Encoding"), hit.headers.get("Content-Type"), hit.headers.get("x-amz-meta-owner")) \
        == ("gzip", "application/x-tar", "alice")


@pytest.fixture
def vhost_upstream(origin):
    from tests.test_addressing import BUCKET as VBUCKET
    origin.ensure_bucket(VBUCKET)
    return origin.url.replace("127.0.0.1", "localhost")


def test_open_mode_never_reflects_overrides_nobody_checked(origin, make_stack):
    """S3 refuses response-* on unsigned requests; open mode checks no signature, so it applies none."""
    stack = make_stack(S3CACHE_ACCESS="open")
    key = "own/open/reflected"
    _put(origin, key)
    url = origin.presign(BUCKET, key)
    _fill(stack, url, key)
    s3 = _get(url)
    path = stack.url + "/" + BUCKET + "/" + key
    for query in ("response-content-type=text%2Fhtml", "X-Amz-Signature=forged&response-content-type=text%2Fhtml",
                  "response-content-disposition=attachment%3B%20filename%3D%22invoice.exe%22"):
        hit = _get(f"{path}?{query}")
        assert hit.headers["X-Cache"] == "HIT"
        assert _headers(hit) == _headers(s3), query
