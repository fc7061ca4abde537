"""Issue 12 item 5: with S3CACHE_REVALIDATE_ON_ERROR=open, fail-open means "S3 could not be reached".

Only a connection failure, a timeout or a 5xx lets a cached private object
through without S3's 304.  Anything the client puts in its request (header
names and values, what X-Amz-SignedHeaders names) that cannot be sent to S3
unchanged is the client's error: refused with S3 XML, never served.

The sidecar app runs in-process (Flask's test client) against the real test
origin, so header names and values reach the check exactly as generated.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from s3cache.config import Config
from s3cache.layout import Layout, ObjectRef
from sidecar.app import create_app

BUCKET = "private-failopen"
KEY = "secret.txt"
BODY = b"private bytes"


@pytest.fixture(scope="module")
def cached(origin, tmp_path_factory):
    origin.ensure_bucket(BUCKET)
    origin.s3().put_object(Bucket=BUCKET, Key=KEY, Body=BODY)
    cache_dir = tmp_path_factory.mktemp("failopen-cache")
    layout = Layout(str(cache_dir))
    layout.ensure()
    path = layout.object_path(ObjectRef(BUCKET, KEY))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BODY)
    return cache_dir


def make_client(cache_dir, upstream: str):
    config = Config.from_env({"S3CACHE_UPSTREAM": upstream, "S3CACHE_DIR": str(cache_dir),
                              "S3CACHE_ACCESS": "revalidate", "S3CACHE_REVALIDATE_ON_ERROR": "open"})
    return create_app(config).test_client()


@pytest.fixture(scope="module")
def client(cached, origin):
    return make_client(cached, origin.url)


def auth(client, query: str, headers: dict[str, str]):
    # What Caddy sends with a hit on objects/<BUCKET>/<KEY> (the served-file check is not under test here).
    sent = {**headers, "X-S3cache-Uri": f"/{BUCKET}/{KEY}" + (f"?{query}" if query else ""),
            "X-Forwarded-Method": "GET", "X-S3cache-Served": f"/{BUCKET}/{KEY}|"}
    return client.get("/_s3cache/auth", headers=sent)


def served(resp) -> bool:
    """A 2xx from the auth endpoint lets Caddy serve the cached file."""
    return resp.status_code < 300


# Names and values as WSGI holds them (latin-1 text), minus what no HTTP server passes on (CR, LF).
_LATIN1 = st.characters(min_codepoint=0x01, max_codepoint=0xFF, blacklist_characters="\r\n")
_RESERVED = ("content-length", "content-type", "transfer-encoding", "host", "x-s3cache-uri",
             "x-s3cache-host", "x-s3cache-served", "x-forwarded-method", "x-forwarded-uri", "connection", "expect")
_NAMES = st.one_of(st.text(alphabet=_LATIN1, min_size=1, max_size=12),
                   st.sampled_from(["x-amz-date", "x-amz-meta-a", "range", "if-match", "x-a", "X-Ä", "x a",
                                    "x:y", "x-\xff", "user-agent"]))
_VALUES = st.one_of(st.text(alphabet=_LATIN1, max_size=20),
                    st.sampled_from([" leading", "trailing ", "\t", "", "\x00", "\x7f", "é", "a\x01b"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(_NAMES, _VALUES, max_size=4),
       extra_signed=st.lists(st.text(alphabet=_LATIN1, max_size=8), max_size=3),
       encode_names=st.booleans())
def test_fuzz_fail_open_never_serves_without_s3s_304(client, headers, extra_signed, encode_names):
    headers = {k: v for k, v in headers.items() if k.strip().lower() not in _RESERVED and k.strip()}
    names = [k.lower() for k in headers] + extra_signed
    signed = ";".join(["host"] + names)
    if encode_names:
        from urllib.parse import quote
        signed = quote(signed.encode("latin-1", "replace"), safe=";")
    query = "X-Amz-SignedHeaders=" + signed
    try:
        resp = auth(client, query, headers)
    except ValueError:  # the test client itself refuses such a header: no server would pass it on
        return
    assert not served(resp), (resp.status_code, dict(resp.headers))
    assert resp.status_code in (400, 403, 404, 307), resp.status_code
    assert resp.data.startswith(b"<?xml") or resp.status_code == 307


@pytest.mark.parametrize("header, value", [("X-Amz-Meta-Note", " leading space"), ("X-Amz-Meta-Note", "a\x00b")])
def test_a_signed_header_that_cannot_be_forwarded_is_refused_not_served(client, header, value):
    resp = auth(client, "X-Amz-SignedHeaders=host;x-amz-meta-note", {header: value})
    assert resp.status_code == 400 and b"<Code>InvalidRequest</Code>" in resp.data
    assert resp.headers["X-Cache"] == "DENIED"


def test_an_unsigned_request_s3_refuses_is_refused(client):
    resp = auth(client, "", {})
    assert resp.status_code == 403 and not served(resp)


def test_s3_unreachable_is_what_fail_open_serves(cached):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resp = auth(make_client(cached, f"http://127.0.0.1:{port}"), "", {})
    assert served(resp)


def test_a_5xx_from_s3_is_what_fail_open_serves(client, origin):
    origin.fault(f"/{BUCKET}/{KEY}", "status", once=True, status=503)  # a signed request gets that far
    resp = auth(client, origin.presign(BUCKET, KEY).partition("?")[2], {})
    assert served(resp)


# -- the same through the real stack (Caddy's forward_auth in front) --------------------

@pytest.fixture(scope="module")
def open_stack(tmp_path_factory, origin, cached):
    from tests.stack import Stack
    s = Stack(tmp_path_factory.mktemp("failopen-stack"), origin.url, S3CACHE_ACCESS="revalidate",
              S3CACHE_REVALIDATE_ON_ERROR="open")
    try:
        s.start()
        path = s.object_file(BUCKET, KEY)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BODY)  # cached, as a fill would have left it
        yield s
    finally:
        s.stop()


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=10)
_WIRE_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=16)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(_TOKEN.map(lambda n: "x-" + n), _WIRE_VALUE, max_size=3),
       extra=st.lists(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF,
                                                      blacklist_characters="&#;%+\x7f"), max_size=6), max_size=2))
def test_fuzz_through_the_stack_fail_open_never_serves_a_private_object(open_stack, headers, extra):
    from urllib.parse import quote
    from tests.rawhttp import raw_get
    signed = ";".join(["host", *headers, *extra])
    target = f"/{BUCKET}/{KEY}?X-Amz-SignedHeaders={quote(signed.encode('latin-1'), safe=';')}".encode()
    resp = raw_get(open_stack.url, target, headers=headers)
    assert resp.status != 200 and BODY not in resp.body, (resp.status, resp.headers)
