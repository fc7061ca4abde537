"""README: Caddy's access log has Signature, X-Amz-Signature and X-Amz-Credential redacted."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.stack import wait_until

pytestmark = pytest.mark.integration

BUCKET = "redaction-tests"


def test_the_access_log_holds_no_credential_and_no_signature(origin, make_stack):
    origin.ensure_bucket(BUCKET)
    stack = make_stack(S3CACHE_ACCESS="open")
    key = "logged.txt"
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=b"logged")
    v4 = origin.presign(BUCKET, key, version="v4")
    v2 = origin.presign(BUCKET, key, version="v2")
    stack.get(stack.proxied(v4))                        # miss
    stack.wait_cached(BUCKET, key)
    stack.get(stack.proxied(v4))                        # hit
    stack.get(stack.proxied(v2) + "&last=request")      # hit, the last line we wait for

    def logged():
        text = (stack.layout.logs_dir / "access.log").read_text()
        return text if "last=request" in text else None
    log = wait_until(logged, what="the last request in the access log")
    assert log.count("X-Amz-Credential=REDACTED") >= 2
    credential = parse_qs(urlsplit(v4).query)["X-Amz-Credential"][0]  # AKID/date/region/s3/aws4_request
    # (The access key id alone is not redacted: a SigV2 URL carries it as AWSAccessKeyId.)
    for secret in (credential, quote(credential, safe=""),
                   parse_qs(urlsplit(v4).query)["X-Amz-Signature"][0],
                   quote(parse_qs(urlsplit(v2).query)["Signature"][0], safe="")):
        assert secret not in log
