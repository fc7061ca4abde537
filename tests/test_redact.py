"""s3cache.redact: the one helper that keeps credentials out of every log line."""

from __future__ import annotations

import io
import logging

from hypothesis import given, settings, strategies as st

from s3cache.redact import REDACTED, RedactingFilter, redact

URL = ("https://s3.amazonaws.com/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F20261201%2Fus-east-1"
       "&X-Amz-Signature=abc123&X-Amz-Security-Token=tok&x=1")


def test_every_secret_parameter_is_redacted_and_nothing_else():
    out = redact(URL)
    for secret in ("AKIAX", "abc123", "tok"):
        assert secret not in out
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out and "x=1" in out
    assert out.count(REDACTED) == 3
    assert redact("/b/k?Signature=s%2Bg&AWSAccessKeyId=AK&Expires=1") == \
        f"/b/k?Signature={REDACTED}&AWSAccessKeyId={REDACTED}&Expires=1"


@settings(max_examples=200)
@given(secret=st.text(alphabet="ABCDEFabcdef0123456789%+/=", min_size=6, max_size=40),
       name=st.sampled_from(["Signature", "X-Amz-Signature", "X-Amz-Credential", "x-amz-signature"]),
       before=st.text(max_size=20), after=st.sampled_from(["", "&a=b", " ", "'", '"', ")"]))
def test_fuzz_a_secret_value_never_survives(secret, name, before, after):
    assert f"{name}={secret}" not in redact(f"{before}?{name}={secret}{after}")


def test_the_filter_redacts_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test-redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("fetching %s failed", URL)
        try:
            raise ConnectionError(f"Max retries exceeded with url: {URL}")
        except ConnectionError:
            logger.exception("fill crashed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "abc123" not in text and "AKIAX" not in text
    assert text.count(REDACTED) >= 6
