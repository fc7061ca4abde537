"""CORS in a real browser: a page on another loopback port fetch()es objects through the proxy, in every
access mode and miss mode: a miss (plain, and ranged), then hits (plain, ranged, and one whose extra header
makes the browser send a preflight first).

Headless Chromium (Debian's package, installed by the test set-up, ``python -m tests.host_tools``; skipped
with the reason where it is missing, failed on CI). The page reports what each fetch() saw by POSTing it
back to the server that served it. The snippet README's "Use it from a browser" shows is the plain case.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import chromium
from tests.host_tools import unavailable
from tests.origin.credentials import ACCESS_KEY_1, SECRET_KEY_1
from tests.stack import wait_until
from tests.test_cors import bucket_cors

pytestmark = pytest.mark.integration

BUCKET = "cors-browser"
BODY = "".join(f"{i:04d}" for i in range(250))  # 1000 bytes, every range distinct

# Each case: fetch(url, {headers}) and report what the script can see.
PAGE = """<!doctype html><meta charset="utf-8"><title>s3cache CORS</title><pre id="out">running</pre>
<script>
const cases = %s;
(async () => {
  const seen = {};
  for (const c of cases) {
    try {
      // The snippet README shows: a plain fetch() of the presigned URL with the proxy's host.
      const resp = await fetch(c.url, {headers: c.headers, cache: "no-store"});
      const text = await resp.text();
      seen[c.name] = {ok: true, status: resp.status, text: text, etag: resp.headers.get("ETag"),
                      contentRange: resp.headers.get("Content-Range"), xCache: resp.headers.get("X-Cache")};
    } catch (err) {
      seen[c.name] = {ok: false, error: String(err)};
    }
  }
  document.getElementById("out").textContent = "done";
  await fetch("/result", {method: "POST", body: JSON.stringify(seen)});
})();
</script>
"""


class PageServer:
    """Serves one page at a time from its own loopback port (another origin than the proxy's) and keeps its report."""

    def __init__(self):
        self.page = b""
        self.reports: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._send(200, server.page, "text/html; charset=utf-8")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.reports.append(json.loads(self.rfile.read(length)))
                self._send(204, b"", "text/plain")

            def _send(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def run(self, binary: str, cases: list[dict]) -> dict:
        """Load the page in Chromium; the fetches' report, once the page has posted it."""
        self.page = (PAGE % json.dumps(cases)).encode()
        before = len(self.reports)
        # --dump-dom returns once the page has loaded and the budget of (virtual) time has passed; the
        # report is the evidence the fetches ended, however long they took.
        chromium.dump_dom(binary, self.origin + "/page.html", extra=["--virtual-time-budget=30000"])
        return wait_until(lambda: self.reports[before] if len(self.reports) > before else None, 30,
                          what="the page's report")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def page_server():
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    binary, why = chromium.chromium_or_skip_reason()
    if binary is None:
        unavailable(why)
    return binary


# With the operator's rules (S3CACHE_CORS_ORIGINS) in every mode; and in revalidate mode without any: S3's
# own answers are relayed (the check, a streamed miss, a preflight) or asked for (a redirect).
MODES = [(access, miss, True) for access in ("open", "verify", "revalidate") for miss in ("redirect", "stream")]
MODES += [("revalidate", miss, False) for miss in ("redirect", "stream")]


@pytest.mark.parametrize("access, miss, rules", MODES,
                         ids=[f"{a}-{m}{'' if r else '-s3-only'}" for a, m, r in MODES])
def test_a_page_fetches_misses_and_hits(access, miss, rules, origin, make_stack, page_server, browser):
    origin.ensure_bucket(BUCKET)
    # What S3 must allow: the page's origin, and "null", which a browser sends after a cross-origin redirect.
    bucket_cors(origin, BUCKET, [page_server.origin, "null"])
    env = {"S3CACHE_ACCESS": access, "S3CACHE_MISS": miss}
    if access == "verify":
        env["S3CACHE_SIGNING_KEYS"] = f"{ACCESS_KEY_1}:{SECRET_KEY_1}"
    if rules:
        env["S3CACHE_CORS_ORIGINS"] = page_server.origin
    stack = make_stack(**env)
    s3 = origin.s3()
    keys = {name: f"{access}-{miss}-{rules}/{name}.txt" for name in ("whole", "ranged")}
    for key in keys.values():
        s3.put_object(Bucket=BUCKET, Key=key, Body=BODY.encode())
    url = {name: stack.proxied(origin.presign(BUCKET, key)) for name, key in keys.items()}

    misses = page_server.run(browser, [
        {"name": "miss", "url": url["whole"], "headers": {}},
        {"name": "miss-range", "url": url["ranged"], "headers": {"Range": "bytes=100-199"}},
    ])
    assert misses["miss"] == {**misses["miss"], "ok": True, "status": 200, "text": BODY}, misses["miss"]
    assert misses["miss"]["etag"], "ETag not exposed"
    # (Redirected in either miss mode: a ranged miss is never streamed.)
    assert misses["miss-range"] == {**misses["miss-range"], "ok": True, "status": 206, "text": BODY[100:200],
                                    "contentRange": "bytes 100-199/1000"}, misses["miss-range"]
    for key in keys.values():
        stack.wait_cached(BUCKET, key)

    origin.reset()
    hits = page_server.run(browser, [
        {"name": "hit", "url": url["whole"], "headers": {}},
        {"name": "hit-range", "url": url["whole"], "headers": {"Range": "bytes=10-19"}},
        # Not a CORS-safelisted header: the browser asks first (OPTIONS), and that must not be redirected.
        {"name": "hit-preflighted", "url": url["ranged"], "headers": {"If-None-Match": '"not-this-one"'}},
    ])
    assert hits["hit"] == {**hits["hit"], "ok": True, "status": 200, "text": BODY}, hits["hit"]
    assert hits["hit"]["etag"]
    assert hits["hit-range"] == {**hits["hit-range"], "ok": True, "status": 206, "text": BODY[10:20],
                                 "contentRange": "bytes 10-19/1000"}, hits["hit-range"]
    assert hits["hit-preflighted"] == {**hits["hit-preflighted"], "ok": True, "status": 200, "text": BODY}
    if access != "revalidate":
        assert {hits[name]["xCache"] for name in hits} == {"HIT"}  # exposed by the rules
    else:
        assert {hits[name]["xCache"] for name in hits} == {None}  # S3's answer: its exposed headers, not ours
    # Hits: no object body left S3 (revalidate asks with a conditional GET, answered 304).
    sent = [r for r in origin.stats()["requests"] if r["method"] == "GET" and r["status"] == 200]
    assert sent == []
