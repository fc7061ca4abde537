"""A 307 whose Location is exactly the URL given: presigned signatures cover every byte of it.

Werkzeug passes every Location header through ``iri_to_uri`` (quoting ``"``,
``|``, ...), which would change a URL the client's signature was made for.
"""

from __future__ import annotations

from flask import Response


class _ExactLocation(Response):
    def get_wsgi_headers(self, environ):
        headers = super().get_wsgi_headers(environ)
        headers["Location"] = self.headers["Location"]
        return headers


def redirect_307(location: str, x_cache: str = "MISS") -> Response:
    resp = _ExactLocation(status=307)
    resp.headers["Location"] = location
    resp.headers["X-Cache"] = x_cache
    # The next request for this object should reach us again (and hit).
    resp.headers["Cache-Control"] = "no-store"
    return resp
