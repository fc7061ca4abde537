"""S3-style XML error responses: what every client-facing refusal looks like."""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape

from flask import Response


def error_xml(code: str, message: str, resource: str = "", request_id: str = "") -> bytes:
    request_id = request_id or uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{escape(request_id)}</RequestId></Error>"
    ).encode("utf-8")


def error_response(status: int, code: str, message: str, resource: str = "") -> Response:
    body = error_xml(code, message, resource)
    resp = Response(body, status=status, content_type="application/xml")
    resp.headers["Cache-Control"] = "no-store"
    return resp
