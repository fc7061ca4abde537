"""CORS over HTTP on the real stack: preflights answered as S3 would (relayed, or from S3CACHE_CORS_ORIGINS),
and the Access-Control-* headers on hits, redirects and streamed misses for each request's Origin.

The bucket's CORS configuration at the test origin allows APP (and "null", the Origin a browser sends S3
after a cross-origin redirect); OTHER is allowed nowhere. tests/test_cors_browser.py does the same from
a real browser.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from tests.stack import FrontStack, raw_request
from tests.test_cors_units import ALLOWED, origins

pytestmark = pytest.mark.integration

BUCKET = "cors-tests"
APP = "http://app.example.test:3000"
OTHER = "http://other.example.test"
BODY = b"0123456789" * 100
S3_EXPOSED = "ETag, Content-Length, Content-Range"


def bucket_cors(origin, bucket: str, origins: list[str]) -> None:
    """The bucket CORS a browser needs through the proxy: the page's origin, and "null" for redirected misses."""
    origin.s3().put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedOrigins": origins, "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag", "Content-Length", "Content-Range"], "MaxAgeSeconds": 600}]})


@pytest.fixture(scope="module")
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    bucket_cors(origin, BUCKET, [APP, "null"])
    return BUCKET


def put(origin, key: str) -> str:
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=BODY)
    return origin.presign(BUCKET, key)


def preflight(url: str, origin: str, method: str = "GET", headers: str | None = "range") -> dict:
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        sent["Access-Control-Request-Headers"] = headers
    return raw_request("OPTIONS", url, headers=sent)


def options_at_origin(origin) -> int:
    return sum(1 for r in origin.stats()["requests"] if r["method"] == "OPTIONS")


def vary(resp) -> set[str]:
    names = [v.strip().lower() for v in resp.headers.get("Vary", "").split(",") if v.strip()]
    assert len(names) == len(set(names)), f"Vary names one twice: {resp.headers['Vary']}"
    return set(names)


def test_preflight_is_relayed_to_s3_without_rules(bucket, origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open")
    url = stack.proxied(put(origin, "preflight-relayed.txt"))
    origin.reset()
    ok = preflight(url, APP)
    assert ok.status_code == 200, ok.text
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert ok.headers["Access-Control-Expose-Headers"] == S3_EXPOSED  # S3's answer, not ours
    assert "GET" in ok.headers["Access-Control-Allow-Methods"]
    refused = preflight(url, OTHER)
    assert refused.status_code == 403, refused.text
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert b"CORSResponse" in refused.content
    assert options_at_origin(origin) == 2  # both asked S3, with the client's own URL
    # Not a preflight (no Access-Control-Request-Method): still S3's, as before.
    plain = raw_request("OPTIONS", url, headers={"Origin": APP})
    assert plain.status_code == 307


def test_preflight_for_reads_from_rules_and_others_relayed(bucket, origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_CORS_ORIGINS=f"{APP},http://second.example.test",
                       S3CACHE_CORS_MAX_AGE="120")
    url = stack.proxied(put(origin, "preflight-rules.txt"))
    origin.reset()
    ok = preflight(url, APP, headers="range,if-none-match")
    assert ok.status_code == 200, ok.text
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert set(ok.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert ok.headers["Access-Control-Allow-Headers"] == "range,if-none-match"
    assert ok.headers["Access-Control-Max-Age"] == "120"
    assert "content-range" in ok.headers["Access-Control-Expose-Headers"].lower()
    assert "origin" in vary(ok)
    refused = preflight(url, OTHER)
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert options_at_origin(origin) == 0  # the rules answered reads
    # A write's preflight is S3's to answer: relayed.
    preflight(url, APP, method="PUT")
    assert options_at_origin(origin) == 1


def test_rules_on_redirects_and_hits(bucket, origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_CORS_ORIGINS=APP)
    url = stack.proxied(put(origin, "rules.txt"))

    miss = raw_request("GET", url, headers={"Origin": APP})
    assert miss.status_code == 307
    # The browser follows a cross-origin redirect only if the redirect itself allows the origin.
    assert miss.headers["Access-Control-Allow-Origin"] == APP
    assert "origin" in vary(miss)
    stack.wait_cached(BUCKET, "rules.txt")

    hit = raw_request("GET", url, headers={"Origin": APP, "Range": "bytes=10-19"})
    assert (hit.status_code, hit.headers["X-Cache"]) == (206, "HIT")
    assert hit.headers["Access-Control-Allow-Origin"] == APP
    exposed = {h.strip().lower() for h in hit.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "content-length", "content-range"} <= exposed
    assert "origin" in vary(hit)

    for headers in ({"Origin": OTHER}, {}):
        other = raw_request("GET", url, headers=headers)
        assert (other.status_code, other.headers["X-Cache"]) == (200, "HIT")
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "Access-Control-Expose-Headers" not in other.headers
        assert "origin" in vary(other)  # the same URL from APP would be answered differently


def test_wildcard_rule_allows_any_origin(bucket, origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_CORS_ORIGINS="*")
    url = stack.proxied(put(origin, "wildcard.txt"))
    assert raw_request("GET", url, headers={"Origin": OTHER}).headers["Access-Control-Allow-Origin"] == "*"
    assert preflight(url, OTHER).headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in raw_request("GET", url).headers


def test_revalidate_and_stream_relay_s3s_own_answer_without_rules(bucket, origin, make_stack):
    stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_MISS="stream")
    url = stack.proxied(put(origin, "s3-says.txt"))

    miss = raw_request("GET", url, headers={"Origin": APP})
    assert (miss.status_code, miss.headers["X-Cache"], miss.content) == (200, "MISS", BODY)
    assert miss.headers["Access-Control-Allow-Origin"] == APP
    assert miss.headers["Access-Control-Expose-Headers"] == S3_EXPOSED
    assert "origin" in vary(miss)
    stack.wait_cached(BUCKET, "s3-says.txt")

    hit = raw_request("GET", url, headers={"Origin": APP})
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", BODY)
    assert hit.headers["Access-Control-Allow-Origin"] == APP
    assert hit.headers["Access-Control-Expose-Headers"] == S3_EXPOSED
    assert "origin" in vary(hit)
    # A conditional hit (answered by the sidecar itself) carries them too.
    cond = raw_request("GET", url, headers={"Origin": APP, "If-None-Match": hit.headers["ETag"]})
    assert cond.status_code == 304
    assert cond.headers["Access-Control-Allow-Origin"] == APP

    for headers in ({"Origin": OTHER}, {}):
        other = raw_request("GET", url, headers=headers)
        assert (other.status_code, other.headers["X-Cache"]) == (200, "HIT")
        assert "Access-Control-Allow-Origin" not in other.headers
        assert "origin" in vary(other)


def test_only_a_listed_origin_is_ever_allowed_by_caddy(bucket, origin, make_stack):
    """Any Origin a client sends (attacker-controlled): Caddy's rule allows exactly the listed ones."""
    listed = ALLOWED
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_CORS_ORIGINS=",".join(listed))
    url = stack.proxied(put(origin, "any-origin.txt"))
    assert raw_request("GET", url).status_code == 307
    stack.wait_cached(BUCKET, "any-origin.txt")

    @settings(max_examples=60)
    @given(origins)
    def check(sent):
        resp = raw_request("GET", url, headers={"Origin": sent})
        assert (resp.status_code, resp.headers["X-Cache"]) == (200, "HIT")
        if sent in listed:
            assert resp.headers["Access-Control-Allow-Origin"] == sent
        else:
            assert "Access-Control-Allow-Origin" not in resp.headers
        assert "origin" in vary(resp)
    check()


def test_a_redirect_carries_s3s_verdict_without_rules(bucket, origin, make_stack):
    stack = make_stack()  # the defaults: revalidate, redirect, no S3CACHE_CORS_*
    first, second = (stack.proxied(put(origin, f"learned-{n}.txt")) for n in (1, 2))
    origin.reset()
    allowed = raw_request("GET", first, headers={"Origin": APP})
    assert (allowed.status_code, allowed.headers["Access-Control-Allow-Origin"]) == (307, APP)
    assert allowed.headers["Access-Control-Expose-Headers"] == S3_EXPOSED
    assert "origin" in vary(allowed)
    refused = raw_request("GET", second, headers={"Origin": OTHER})
    assert refused.status_code == 307
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "origin" in vary(refused)
    assert options_at_origin(origin) == 2  # S3 was asked, once per origin
    # The bucket's verdict for APP is known: another of its keys costs no second question.
    again = raw_request("GET", second, headers={"Origin": APP})
    assert again.headers["Access-Control-Allow-Origin"] == APP
    assert options_at_origin(origin) == 2
    # Without an Origin nothing changes: no question, no header.
    plain = raw_request("GET", stack.proxied(put(origin, "learned-3.txt")))
    assert plain.status_code == 307 and "Access-Control-Allow-Origin" not in plain.headers
    assert options_at_origin(origin) == 2


def test_revalidate_keeps_s3s_answer_and_the_rules_fill_in(bucket, origin, make_stack):
    rules_only = "http://rules-only.example.test"
    stack = make_stack(S3CACHE_ACCESS="revalidate", S3CACHE_CORS_ORIGINS=f"{APP},{rules_only}")
    url = stack.proxied(put(origin, "both.txt"))
    assert raw_request("GET", url).status_code == 307
    stack.wait_cached(BUCKET, "both.txt")

    s3_says = raw_request("GET", url, headers={"Origin": APP})
    assert (s3_says.headers["X-Cache"], s3_says.headers["Access-Control-Allow-Origin"]) == ("HIT", APP)
    assert s3_says.headers["Access-Control-Expose-Headers"] == S3_EXPOSED  # S3's, not the rules'
    assert "origin" in vary(s3_says)
    rules_say = raw_request("GET", url, headers={"Origin": rules_only})  # S3 says nothing: the rules fill in
    assert rules_say.headers["Access-Control-Allow-Origin"] == rules_only
    assert "x-cache" in rules_say.headers["Access-Control-Expose-Headers"].lower()
    assert "origin" in vary(rules_say)
    nobody = raw_request("GET", url, headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in nobody.headers
    assert "origin" in vary(nobody)


def test_preflight_passes_a_front_to_the_objects_node(bucket, origin, make_stack, tmp_path):
    nodes = [make_stack(S3CACHE_ACCESS="open", S3CACHE_CORS_ORIGINS=APP) for _ in range(2)]
    front = FrontStack(tmp_path / "front", origin.url, nodes).start()
    try:
        url = front.proxied(put(origin, "through-front.txt"))
        ok = preflight(url, APP)
        assert ok.status_code == 200, ok.text
        assert ok.headers["Access-Control-Allow-Origin"] == APP
        assert preflight(url, OTHER).status_code == 403
        miss = raw_request("GET", url, headers={"Origin": APP})
        assert (miss.status_code, miss.headers["Access-Control-Allow-Origin"]) == (307, APP)
        # Other OPTIONS requests are still S3's, redirected by the front itself.
        assert raw_request("OPTIONS", url).status_code == 307
    finally:
        front.stop()
