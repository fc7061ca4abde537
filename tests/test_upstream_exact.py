"""Issue 12 item 2: a fill stores exactly the object the client's URL names.

Every request the sidecar sends to S3 carries the client's request target byte
for byte (sidecar.upstream); a target HTTP cannot carry unchanged is never
fetched (redirect only), and in revalidate mode never checked against a
look-alike key.  The look-alike objects below are what the old re-encoding
(``é`` -> ``%C3%83%C2%A9``, a raw ``#`` cutting the path) fetched instead.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from s3cache.config import Config
from s3cache.layout import Layout
from s3cache.request_path import BadRequest
from sidecar.miss import plan_miss
from tests.fill_outcomes import finished_fills
from tests.rawhttp import raw_get
from tests.stack import wait_until

BUCKET = "public-exact"


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)


def put(origin, key: str) -> bytes:
    body = f"the object at key {key!r}".encode("utf-8", "backslashreplace")
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    return body


def origin_object(origin, key: str) -> bytes | None:
    try:
        return origin.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except Exception:  # NoSuchKey, or a key moto cannot address
        return None


def request_and_settle(stack, target: bytes) -> None:
    """Send ``target`` raw; if the sidecar queued a fill for it, wait until that fill has ended."""
    before = finished_fills(stack)
    config = Config.from_env(stack.env)
    try:
        plan = plan_miss("GET", target.decode("latin-1"), {}, config, Layout(config.dir))
    except BadRequest:
        plan = None
    resp = raw_get(stack.url, target)
    if resp.status == 307 and plan is not None and plan.fill is not None:
        wait_until(lambda: finished_fills(stack) > before, timeout=20, what=f"the fill of {target!r} to end")


def cached_bytes(stack, key: str) -> bytes | None:
    path = stack.object_file(BUCKET, key)
    return path.read_bytes() if path.is_file() else None


# -- through the real stack -----------------------------------------------------------

@pytest.mark.parametrize("key, look_alike, raw", [
    ("é.txt", "Ã©.txt", "é.txt".encode()),        # requests re-encoded raw UTF-8: a different key
    ("a#b.txt", "a", b"a#b.txt"),                   # requests cut the path at a raw '#'
])
def test_a_fill_never_stores_a_look_alike_object(origin, make_stack, key, look_alike, raw):
    stack = make_stack(S3CACHE_ACCESS="open")
    own = put(origin, key)
    put(origin, look_alike)
    request_and_settle(stack, f"/{BUCKET}/".encode() + raw)
    assert cached_bytes(stack, key) in (None, own)
    assert cached_bytes(stack, key) != origin_object(origin, look_alike)


def test_a_raw_hash_is_never_fetched_but_its_escaped_form_is_filled(origin, make_stack):
    """A raw '#' is in no valid request target (S3 may cut the path there): redirect only."""
    stack = make_stack(S3CACHE_ACCESS="open")
    own = put(origin, "x#y")
    put(origin, "x")
    origin.reset()
    resp = raw_get(stack.url, f"/{BUCKET}/x#y".encode())
    assert resp.status == 307 and resp.headers["location"].endswith(f"/{BUCKET}/x#y")
    request_and_settle(stack, f"/{BUCKET}/x%23y".encode())
    assert cached_bytes(stack, "x#y") == own
    assert [r["path"] for r in origin.stats()["requests"]] == [f"/{BUCKET}/x%23y"]


def test_revalidation_never_asks_s3_about_a_look_alike_key(origin, make_stack):
    """revalidate mode: the check must be about the file Caddy serves, or not be made (redirect)."""
    stack = make_stack(S3CACHE_ACCESS="revalidate")
    own = put(origin, "ré.txt")
    other = put(origin, "rÃ©.txt")
    # Cache the object through a well-formed (percent-encoded) request.
    request_and_settle(stack, f"/{BUCKET}/{quote('ré.txt')}".encode())
    assert cached_bytes(stack, "ré.txt") == own
    origin.reset()
    resp = raw_get(stack.url, f"/{BUCKET}/".encode() + "ré.txt".encode())
    assert resp.status == 307 and resp.headers["x-cache"] == "DENIED"
    assert resp.body != other
    looked_up = [r["key"] for r in origin.stats()["requests"]]
    assert f"/{BUCKET}/rÃ©.txt" not in looked_up, looked_up
    assert cached_bytes(stack, "ré.txt") == own


# Path bytes a client may send: printable ASCII (with the troublesome ones), escapes, raw UTF-8.
_PATH_PIECES = st.lists(st.one_of(
    st.sampled_from(["a", "b", "#", "|", '"', "[", "]", "{", "}", "^", "`", "\\", "%23", "%7c", "%7C", "%20",
                     "%C3%A9", "%c3%a9", "é", "ü", "~", "!", "$", "'", "(", ")", "*", ",", ";", "=", ":", "@",
                     "..", ".", "/", "%2F", "%2e", "\x7f", " ", "\t"]),
    st.text(alphabet="abcxyz0123456789-_", min_size=1, max_size=4)), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=_PATH_PIECES)
def test_fuzz_the_cached_bytes_are_the_origins_object_for_the_key_the_path_decodes_to(origin, fuzz_stack, pieces):
    stack = fuzz_stack
    raw_key = "fz-" + "".join(pieces)
    raw = raw_key.encode("utf-8")
    try:
        key = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return
    if "\x00" in key or key.endswith("/") or "//" in key or any(p in ("..", ".") for p in key.split("/")):
        return  # not an object key anyone can put
    own = put(origin, key)
    decoy = _requests_reading(origin.url, f"/{BUCKET}/{raw.decode('latin-1')}")
    if decoy is not None and decoy != key:
        put(origin, decoy)  # what a re-encoding fetch would bring back instead
    request_and_settle(stack, f"/{BUCKET}/".encode() + raw)
    got = cached_bytes(stack, key)
    assert got in (None, own), (raw, got)


def _requests_reading(base: str, wsgi_target: str) -> str | None:
    """The key a ``requests`` fetch of this raw target (as WSGI text) would really have asked for."""
    try:
        sent = requests.Request("GET", base + wsgi_target).prepare().path_url
        key = unquote_to_bytes(sent.split("?", 1)[0]).decode("utf-8").split("/", 2)[2]
    except Exception:
        return None
    if not key or "\x00" in key or key.endswith("/") or "//" in key or any(p in ("..", ".") for p in key.split("/")):
        return None
    return key


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory, origin):
    from tests.stack import Stack
    s = Stack(tmp_path_factory.mktemp("fuzz-stack"), origin.url, S3CACHE_ACCESS="open")
    try:
        yield s.start()
    finally:
        s.stop()
