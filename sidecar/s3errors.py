"""S3-style XML error responses: what every client-facing refusal looks like."""

from __future__ import annotations

import re
import secrets

from flask import Response

# Characters XML 1.0 cannot carry at all (a key may contain them): replaced, never dropped silently.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(s: str) -> str:
    s = _XML_INVALID.sub("\ufffd", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def error_xml(code: str, message: str, resource: str = "", request_id: str = "") -> bytes:
    """An S3-style ``<Error>`` document.  Without a request id, a random one (S3 always sends one)."""
    request_id = request_id or secrets.token_hex(8).upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{_xml_text(code)}</Code><Message>{_xml_text(message)}</Message>"
        f"<Resource>{_xml_text(resource)}</Resource><RequestId>{_xml_text(request_id)}</RequestId></Error>"
    ).encode("utf-8")


def error_response(status: int, code: str, message: str, resource: str = "") -> Response:
    resp = Response(error_xml(code, message, resource), status=status, content_type="application/xml")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def retry_later(message: str, code: str = "ServiceUnavailable", seconds: int = 5) -> Response:
    """A 503 the client should retry after ``seconds``: S3 unreachable, or busy (``SlowDown``), as S3 says it."""
    resp = error_response(503, code, message)
    resp.headers["Retry-After"] = str(seconds)
    return resp
