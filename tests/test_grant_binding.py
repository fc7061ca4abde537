"""A grant serves exactly the request it was made for: never another host form, bucket, key, method,
signature or expiry, nor the same URL with a response-* override, a repeated parameter or a header
that needs the check.

The real Caddy (``verify``, S3CACHE_DOMAIN set) over a cache whose files hold their own
"<bucket>/<key>", including keys with glob characters.  Hypothesis draws a request A, writes A's grant
under the name ``s3cache.grants`` gives it (the sidecar's naming: A itself must then be served, so
Caddy and the sidecar name it alike), and sends a request B that differs from A in some ways.  The
signatures are random, so the sidecar's check refuses whatever reaches it: B is served (200) if and
only if a grant served it, and that must happen only for B == A.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, replace
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from s3cache import grants
from s3cache.layout import ObjectRef
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1

pytestmark = pytest.mark.integration

DOMAIN = "s3cache.test"
BUCKETS = ["gb-one", "gb-two"]
KEYS = ["k", "K", "k2", "dir/k", "a*", "a?", "a[k]", "[ak]", "a\\k", "*"]
ETAG = "0123456789abcdef0123456789abcdef"
TTL = 10 ** 9  # one window for the whole test: no window ends between writing a grant and using it
HEX = "0123456789abcdef"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"
EXTRAS = ["", "response-content-type", "dup-signature", "authorization", "if-none-match", "pct-name"]


@dataclass(frozen=True)
class Req:
    virtual: bool
    bucket: str
    key: str
    method: str
    version: str
    signature: str
    date: str        # v4 X-Amz-Date
    lifetime: int    # v4 X-Amz-Expires, v2 Expires - now
    extra: str = ""

    def same_url(self, other: "Req") -> bool:
        """The same request, as far as S3 could tell (a SigV2 URL has no X-Amz-Date)."""
        date = "" if self.version == "v2" else self.date
        return replace(self, date=date) == replace(other, date="" if other.version == "v2" else other.date)

    def query(self, now: int) -> str:
        if self.version == "v4":
            q = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={ACCESS_KEY_1}%2F{self.date[:8]}%2Fus-east-1"
                 f"%2Fs3%2Faws4_request&X-Amz-Date={self.date}&X-Amz-Expires={self.lifetime}"
                 f"&X-Amz-SignedHeaders=host&X-Amz-Signature={self.signature}")
            sig_param = "X-Amz-Signature"
        else:
            q = f"AWSAccessKeyId={ACCESS_KEY_1}&Expires={now + self.lifetime}&Signature={quote(self.signature, safe='')}"
            sig_param = "Signature"
        if self.extra == "response-content-type":
            q += "&response-content-type=text%2Fhtml"
        elif self.extra == "dup-signature":
            q += f"&{sig_param}=0"
        elif self.extra == "pct-name":
            q += "&x-%69d=GetObject"
        return q

    def grant_name(self, now: int) -> str | None:
        part = grants.url_part(self.method, self.virtual, self.query(now))
        return None if part is None else f"{grants.window(TTL)}_{part}"


def _date(offset: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - offset))


@st.composite
def requests_(draw) -> Req:
    version = draw(st.sampled_from(["v2", "v4"]))
    sig = (draw(st.text(HEX, min_size=64, max_size=64)) if version == "v4"
           else draw(st.text(B64, min_size=27, max_size=27)) + "=")
    return Req(draw(st.booleans()), draw(st.sampled_from(BUCKETS)), draw(st.sampled_from(KEYS)),
               draw(st.sampled_from(["GET", "HEAD"])), version, sig,
               _date(draw(st.integers(0, 50))), draw(st.integers(3600, 7200)))


@st.composite
def pairs(draw) -> tuple[Req, Req]:
    a = draw(requests_())
    b = draw(requests_())
    # B takes each of A's fields with some probability, so near misses (one field off) are common.
    fields = {name: getattr(a, name) for name in ("virtual", "bucket", "key", "method", "version", "signature",
                                                  "date", "lifetime")}
    kept = {name: value for name, value in fields.items() if draw(st.integers(0, 9)) > 0}
    if kept.get("version", b.version) != b.version:
        kept.pop("signature", None)  # a signature of the other version's shape
    b = replace(b, **kept)
    if b.version != a.version or len(b.signature) != len(a.signature):
        b = replace(b, signature=draw(st.text(HEX, min_size=64, max_size=64)) if b.version == "v4"
                    else draw(st.text(B64, min_size=27, max_size=27)) + "=")
    return a, replace(b, extra=draw(st.sampled_from(EXTRAS)))


def send(stack, req: Req, now: int) -> tuple[int, str, bytes]:
    host = f"{req.bucket}.{DOMAIN}" if req.virtual else f"127.0.0.1:{stack.port}"
    path = "/" + quote(req.key) if req.virtual else f"/{req.bucket}/{quote(req.key)}"
    headers = {"Host": host}
    if req.extra == "authorization":
        headers["Authorization"] = "AWS AKIA:x"
    elif req.extra == "if-none-match":
        headers["If-None-Match"] = f'"{ETAG}"'
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=15)
    try:
        conn.putrequest(req.method, f"{path}?{req.query(now)}", skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Cache", ""), resp.read()
    finally:
        conn.close()


@pytest.fixture
def grant_stack(make_stack):
    stack = make_stack(S3CACHE_ACCESS="verify", S3CACHE_SIGNING_KEYS=f"{ACCESS_KEY_1}:{SECRET_KEY_1}",
                       S3CACHE_DOMAIN=DOMAIN, S3CACHE_GRANT_TTL=str(TTL))
    for bucket in BUCKETS:
        for key in KEYS:
            path = stack.layout.object_path(ObjectRef(bucket, key))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{bucket}/{key}".encode())
    return stack


# date "": the time of the check (resolved once for both requests)
_V4 = Req(True, "gb-one", "a*", "GET", "v4", "ab" * 32, "", 3600)
_V2 = Req(False, "gb-two", "dir/k", "GET", "v2", "A+" * 13 + "b=", "", 3600)


@pytest.mark.parametrize("extra", EXTRAS[1:])
def test_a_grant_serves_its_own_url_only_as_it_was(grant_stack, extra):
    for a in (_V4, _V2):
        check(grant_stack, a, replace(a, extra=extra))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=pairs())
# The near misses spelled out: each extra on the granted URL itself, the other host form, a glob's neighbour.
@example(pair=(_V4, replace(_V4, virtual=False)))
@example(pair=(_V4, replace(_V4, key="ab")))
@example(pair=(_V4, replace(_V4, method="HEAD")))
@example(pair=(_V4, replace(_V4, lifetime=7200)))
@example(pair=(_V2, replace(_V2, lifetime=7200)))
@example(pair=(_V2, replace(_V2, virtual=True)))
@example(pair=(replace(_V4, key="a[k]"), replace(_V4, key="ak")))
@example(pair=(replace(_V4, key="[ak]"), replace(_V4, key="k")))
def test_a_grant_serves_its_own_request_and_no_other(grant_stack, pair):
    check(grant_stack, *pair)


def check(grant_stack, a: Req, b: Req) -> None:
    now = int(time.time())
    today = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    a, b = (replace(r, date=r.date or today) for r in (a, b))
    name = a.grant_name(now)
    assert name is not None
    grant = grants.path(grant_stack.layout, ObjectRef(a.bucket, a.key), name, ETAG)
    grant.parent.mkdir(parents=True, exist_ok=True)
    grant.touch()
    try:
        status, cache, body = send(grant_stack, a, now)
        assert (status, cache) == (200, "HIT"), "the grant did not serve its own request"
        if a.method == "GET":
            assert body == f"{a.bucket}/{a.key}".encode()
        status, cache, body = send(grant_stack, b, now)
        if b.same_url(a):
            assert status == 200
        else:
            assert status != 200 and cache != "HIT", f"{b} was served by the grant of {a}"
            assert not body.startswith(f"{a.bucket}/{a.key}".encode())
    finally:
        grant.unlink()
        grant.parent.rmdir()
