"""The small HTML page at ``/``: says what this server is, instead of a blank page."""

from __future__ import annotations

from html import escape

from flask import Response

from s3cache.config import Config

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>s3cache</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42em;margin:3em auto;padding:0 1em;color:#222}}
code{{background:#f3f3f3;padding:.1em .3em}}</style></head>
<body><h1>s3cache</h1>
<p>A caching proxy for Amazon S3. Replace the S3 host in an object URL &mdash; plain or presigned &mdash;
with this server's host. Cached objects are served from local disk; anything else is redirected to
<code>{upstream}</code> and fetched into the cache in the background.</p>
<p>Example: <code>{upstream}/bucket/key?X-Amz-...</code> becomes <code>http://&lt;this host&gt;/bucket/key?X-Amz-...</code></p>
<p>Health: <a href="/_s3cache/health"><code>/_s3cache/health</code></a></p>
</body></html>
"""


def root_page(config: Config) -> Response:
    resp = Response(_PAGE.format(upstream=escape(config.upstream)), content_type="text/html; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store"
    return resp
