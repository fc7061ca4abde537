"""sidecar.upstream_auth: the proxy's own credentials, and signatures S3 accepts for exactly the target sent.

The oracle is the test origin's checker (tests/origin/sigcheck.py), written from the
AWS spec and sharing no code with botocore or sidecar.signatures.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3cache.config import Config
from s3cache.request_path import parse_uri
from sidecar.signatures import canonical_target
from sidecar.upstream_auth import UpstreamSigner
from tests.origin import sigcheck

AKID, SECRET = "AKIAS3CACHEUPSTREAM", "upstream/secret+key"


def signer(**env) -> UpstreamSigner:
    return UpstreamSigner(Config.from_env({"S3CACHE_UPSTREAM_ACCESS_KEY_ID": AKID,
                                           "S3CACHE_UPSTREAM_SECRET_ACCESS_KEY": SECRET, **env}))


def check(method, url, headers, region="us-east-1"):
    parts = urlsplit(url)
    return sigcheck.check_header_v4(method, parts.path, parts.query, {"host": parts.netloc, **headers},
                                    {AKID: SECRET}, region=region)


@settings(max_examples=80, deadline=None)
@given(key=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+"), min_size=1, max_size=30),
       query=st.lists(st.tuples(st.sampled_from(["prefix", "continuation-token", "response-content-type", "list-type"]),
                                st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)), max_size=3))
def test_the_signature_is_for_exactly_the_canonical_target(key, query):
    from urllib.parse import quote
    raw_path = "/bucket/" + quote(key, safe="/!'()*")  # a client's own spelling, not S3's canonical one
    raw_query = "&".join(f"{quote(n)}={quote(v, safe='=')}" for n, v in query)
    target = canonical_target(raw_path, raw_query)
    # The same object as the client's raw target names.
    assert parse_uri(target).key == parse_uri(raw_path).key == key
    url = "http://127.0.0.1:9000" + target
    headers = signer().sign("GET", url, {"Range": "bytes=0-1"})
    assert check("GET", url, headers).ok


def test_session_token_and_region_are_signed():
    s = signer(S3CACHE_UPSTREAM_SESSION_TOKEN="tok", S3CACHE_UPSTREAM_REGION="eu-west-1")
    headers = s.sign("HEAD", "https://s3.eu-west-1.amazonaws.com/b/k", {})
    assert headers["X-Amz-Security-Token"] == "tok"
    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]
    assert check("HEAD", "https://s3.eu-west-1.amazonaws.com/b/k", headers, region="eu-west-1").ok


def test_client_signature_headers_are_replaced_not_doubled():
    headers = signer().sign("GET", "http://h/b/k", {"authorization": "AWS4-HMAC-SHA256 theirs", "X-Amz-Date": "x"})
    assert [k for k in headers if k.lower() == "authorization"] == ["Authorization"]
    assert "theirs" not in headers["Authorization"]


def test_credentials_from_the_standard_aws_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    s = UpstreamSigner(Config.from_env({}))
    assert s.available()
    assert check("GET", "http://h/b/k", s.sign("GET", "http://h/b/k", {})).ok


def test_no_credentials_anywhere(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert not UpstreamSigner(Config.from_env({})).available()


def test_half_a_key_pair_is_a_config_error():
    from s3cache.config import ConfigError
    with pytest.raises(ConfigError, match="^S3CACHE_UPSTREAM_SECRET_ACCESS_KEY:"):
        Config.from_env({"S3CACHE_UPSTREAM_ACCESS_KEY_ID": AKID})
