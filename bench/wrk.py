"""Run wrk against a loopback URL and read back its figures as a dict.

wrk prints its summary for people; a Lua ``done`` hook prints one JSON line
instead (requests, bytes, duration, latency percentiles in microseconds,
error counts), so nothing depends on wrk's text layout.  ``distinct_paths``
adds a ``request`` hook that gives every request its own path (every request
a miss).  Only 127.0.0.1 URLs are accepted.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MARK = "WRKJSON "

DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"status_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Each wrk thread has its own Lua state: setup() numbers them so paths never collide.
DISTINCT_PATHS_HOOK = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
function request()
  counter = counter + 1
  local path = PREFIX .. tid .. "-" .. counter .. SUFFIX
  if URI_HEADER then
    local headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers[URI_HEADER] = path
    return wrk.format(METHOD, path, headers)
  end
  return wrk.format(METHOD, path)
end
"""


@dataclass(frozen=True)
class WrkSettings:
    threads: int = 2
    connections: int = 32
    duration: int = 10   # seconds; wrk takes whole seconds only
    timeout: int = 10


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII text


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"benchmarks only target 127.0.0.1, not {host!r}")


def run_wrk(url: str, settings: WrkSettings, *, method: str = "GET", distinct_prefix: str | None = None,
            distinct_suffix: str = "", payload_bytes: int | None = None,
            header: tuple[str, str] | None = None, headers: dict[str, str] | None = None,
            uri_header: str | None = None) -> dict:
    """One wrk run; returns its figures plus req_per_s, mb_per_s (payload) and p50/p99 in ms.

    ``distinct_prefix``: every request goes to ``prefix<thread>-<n><suffix>`` on the URL's host.
    ``payload_bytes``: the body size of one response, for MB/s of payload (headers excluded).
    ``header``: one (name, value) sent with every request; ``headers``: more of them.
    ``uri_header``: with ``distinct_prefix``, a header that carries each request's own path too (as Caddy
    tells the sidecar the client's URI).
    """
    check_loopback(url)
    script = DONE_HOOK
    if distinct_prefix is not None:
        script = (f"METHOD = {_lua_string(method)}\nPREFIX = {_lua_string(distinct_prefix)}\n"
                  f"SUFFIX = {_lua_string(distinct_suffix)}\n"
                  f"URI_HEADER = {_lua_string(uri_header) if uri_header else 'nil'}\n" + DISTINCT_PATHS_HOOK + script)
    elif method != "GET":
        script = f"wrk.method = {_lua_string(method)}\n" + script
    for name, value in ([header] if header is not None else []) + list((headers or {}).items()):
        # wrk.format() sends wrk.headers with every request
        script = f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}\n" + script
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        script_path = fh.name
    cmd = ["wrk", f"-t{settings.threads}", f"-c{settings.connections}", f"-d{max(1, int(settings.duration))}s",
           f"--timeout={max(1, int(settings.timeout))}s", "-s", script_path, url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.duration + 60)
    finally:
        Path(script_path).unlink(missing_ok=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(lines[-1][len(MARK):])
    seconds = out["duration_us"] / 1e6
    out["req_per_s"] = out["requests"] / seconds if seconds else 0.0
    out["mb_per_s"] = (out["requests"] * payload_bytes if payload_bytes is not None else out["bytes"]) / seconds / 1e6
    out["p50_ms"] = out["p50_us"] / 1000
    out["p99_ms"] = out["p99_us"] / 1000
    out["errors"] = sum(out[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors",
                                         "timeouts"))
    return out


def wrk_version() -> str:
    proc = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if (proc.stdout + proc.stderr).strip() else "?"
