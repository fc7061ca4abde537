"""Every refusal is S3-style XML, whatever bytes the request target carries.

Caddy passes a raw non-ASCII query byte on to the sidecar unescaped, and waitress refused it with
a plain-text "Bad URI"; the Caddyfile now answers S3's InvalidURI itself.  Control characters (and
DEL) anywhere, and a broken percent-escape in the path, never reach Caddy's handlers: Go's HTTP
server refuses them with its own plain-text 400, which no configuration can change; those are the
exceptions allowed here.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tests.test_host_rule import send

pytestmark = pytest.mark.integration

BUCKET = "public-raw-target"
KEY = "k"


BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def refused_by_go(target: bytes) -> bool:
    """What Go's HTTP server refuses before Caddy sees the request: control characters anywhere,
    a broken percent-escape in the path (Go decodes the path; the query it keeps raw)."""
    return any(b < 0x20 or b == 0x7F for b in target) or bool(BROKEN_ESCAPE.search(target.partition(b"?")[0]))


@st.composite
def targets(draw) -> bytes:
    # Any byte but those that end the request line or split the header block.
    junk = st.binary(max_size=20).map(lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b""))
    path = draw(st.sampled_from([f"/{BUCKET}/{KEY}".encode(), f"/{BUCKET}/".encode(), b"/"])) + draw(junk)
    if draw(st.booleans()):
        path += b"?" + draw(junk)
    return path


@pytest.mark.parametrize("mode", ["open", "revalidate"])
def test_refusals_are_s3_xml_for_any_raw_target(origin, make_stack, mode):
    origin.ensure_bucket(BUCKET)
    origin.s3().put_object(Bucket=BUCKET, Key=KEY, Body=b"cached")
    stack = make_stack(S3CACHE_ACCESS=mode)
    assert send(stack.port, "127.0.0.1", f"/{BUCKET}/{KEY}".encode())[0] == 307
    stack.wait_cached(BUCKET, KEY)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(target=targets())
    @example(target=f"/{BUCKET}/{KEY}?a=\u00e9".encode())
    @example(target=f"/{BUCKET}/{KEY}?a=".encode() + b"\x80")
    @example(target=f"/{BUCKET}/nokey?a=\u00e9".encode())
    @example(target="/_s3cache/health?a=\u00e9".encode())
    def prop(target):
        status, headers, body = send(stack.port, "127.0.0.1", target)
        if status >= 400 and not refused_by_go(target):
            assert headers.get("Content-Type") == "application/xml", (target, status, headers, body)
            assert body.startswith(b"<?xml") and b"<Error><Code>" in body, (target, status, body)

    prop()
