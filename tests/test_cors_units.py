"""CORS rules without HTTP: S3CACHE_CORS_* parsing, what Caddy is given, and the sidecar's preflight answer."""

from __future__ import annotations

import re

from hypothesis import given, strategies as st

from s3cache.config import Config, caddy_environment
from sidecar import cors

ALLOWED = ("https://app.example.com", "http://localhost:3000")
RULES = Config.from_env({"S3CACHE_CORS_ORIGINS": ",".join(ALLOWED)})
NO_RULES = Config.from_env({})
# Origin-like strings near the allowed ones, and anything else a header can hold.
near = st.sampled_from(ALLOWED).flatmap(lambda o: st.sampled_from([
    o, o + "/", o.upper(), o + ".evil.test", "x" + o, o[:-1], o.replace(".", "x"), o + ":443", "null", "*"]))
origins = st.one_of(near, st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=40))


def test_origins_are_parsed_as_browsers_send_them():
    c = Config.from_env({"S3CACHE_CORS_ORIGINS": " https://App.Example.com , http://localhost:3000,https://app.example.com"})
    assert c.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert Config.from_env({"S3CACHE_CORS_ORIGINS": "https://a.example,*"}).cors_origins == ("*",)
    assert NO_RULES.cors_origins == ()
    assert Config.from_env({"S3CACHE_CORS_EXPOSE_HEADERS": " ETag , Content-Range "}).cors_expose_headers == \
        "ETag,Content-Range"


def test_caddy_is_given_one_regexp_and_the_allow_origin_value():
    env = caddy_environment(RULES)
    assert env["S3CACHE_CADDY_CORS"] == "rules"
    assert env["S3CACHE_CADDY_CORS_ALLOW_ORIGIN"] == "{http.request.header.Origin}"
    assert " " not in env["S3CACHE_CORS_EXPOSE_HEADERS"]  # one Caddyfile token
    star = caddy_environment(Config.from_env({"S3CACHE_CORS_ORIGINS": "*"}))
    assert (star["S3CACHE_CADDY_CORS_ALLOW_ORIGIN"], star["S3CACHE_CADDY_CORS"]) == ("*", "rules")
    assert caddy_environment(NO_RULES)["S3CACHE_CADDY_CORS"] == "off"


@given(origins)
def test_caddys_regexp_and_the_sidecar_allow_exactly_the_listed_origins(origin):
    pattern = caddy_environment(RULES)["S3CACHE_CADDY_CORS_ORIGIN_RE"]
    assert bool(re.search(pattern, origin)) == (origin in ALLOWED)
    assert cors.allows(RULES, origin) == (origin in ALLOWED)


@given(origins, st.sampled_from(["GET", "HEAD"]))
def test_a_read_preflight_from_the_rules_allows_only_listed_origins(origin, method):
    resp = cors.preflight(RULES, upstream=None, url=None,
                          headers={"Origin": origin, "Access-Control-Request-Method": method})
    if origin in ALLOWED:
        assert resp.status_code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    else:
        assert resp.status_code == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.headers["Vary"].startswith("Origin")


def test_vary_names_origin_once_and_only_where_caddy_does_not():
    s3 = {"Access-Control-Allow-Origin": "https://app.example.com",
          "Vary": "Origin, Access-Control-Request-Headers"}
    assert cors.with_vary_origin(s3, NO_RULES)["Vary"] == "Origin, Access-Control-Request-Headers"
    assert cors.with_vary_origin(s3, RULES)["Vary"] == "Access-Control-Request-Headers"
    assert cors.with_vary_origin({}, NO_RULES) == {"Vary": "Origin"}
    assert cors.with_vary_origin({}, RULES) == {}


def test_s3s_cors_headers_are_picked_from_its_answer():
    answer = {"access-control-allow-origin": "null", "ACCESS-CONTROL-EXPOSE-HEADERS": "ETag", "vary": "Origin",
              "Content-Type": "text/plain", "x-amz-request-id": "1"}
    assert cors.from_s3(answer) == {"Access-Control-Allow-Origin": "null", "Access-Control-Expose-Headers": "ETag",
                                    "Vary": "Origin"}


def test_an_origin_http_cannot_carry_is_not_sent_to_s3():
    assert cors.client_origin({"Origin": "https://app.example.com"}) == {"Origin": "https://app.example.com"}
    assert cors.client_origin({"Origin": "bad\x00value"}) == {}
    assert cors.client_origin({}) == {}


class _Answer:
    """Just enough of a urllib3 response for ``upstream.done``."""

    def __init__(self, status, headers):
        self.status, self.headers, self.length_remaining = status, headers, 0

    def read(self, *args, **kwargs):
        return b""

    def release_conn(self):
        pass

    def close(self):
        pass


class _S3:
    def __init__(self):
        self.asked, self.down = [], False

    def request(self, method, url, headers=None, **timeouts):
        self.asked.append((method, headers["Origin"]))
        if self.down:
            raise cors.Unreachable("connection failed")
        if headers["Origin"] == "https://app.example.com":
            return _Answer(200, {"Access-Control-Allow-Origin": "https://app.example.com",
                                 "Access-Control-Allow-Methods": "GET", "Access-Control-Max-Age": "60"})
        return _Answer(403, {"Content-Type": "application/xml"})


def test_s3s_verdict_is_learned_per_bucket_and_origin_for_a_minute():
    s3, now = _S3(), [0.0]
    learned = cors.Learned(s3, clock=lambda: now[0])

    def ask(origin, bucket="b", key="k"):
        return learned.headers(f"https://s3.example/{bucket}/{key}", "s3.example", bucket, origin, "GET")

    app = {"Access-Control-Allow-Origin": "https://app.example.com"}  # what S3 puts on a GET, not the rest
    assert ask("https://app.example.com") == app
    assert ask("https://app.example.com", key="other") == app
    assert ask("https://evil.example") == {}
    assert ask("https://evil.example") == {}
    assert len(s3.asked) == 2  # one question per (bucket, origin)
    assert ask("https://app.example.com", bucket="c") == app
    assert len(s3.asked) == 3
    now[0] += cors.Learned.TTL + 1
    s3.down = True
    assert ask("https://app.example.com") == {}  # S3 cannot say: nothing, and nothing kept
    s3.down = False
    assert ask("https://app.example.com") == app
    assert len(s3.asked) == 5
