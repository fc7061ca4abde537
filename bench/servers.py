"""The servers the benchmarks start, all on 127.0.0.1 and all stopped by the caller.

- ``Nginx``: Debian's nginx in the foreground with a generated config, as a
  static-file origin (fast, unsigned URLs; its access log counts body bytes
  sent) or as a ``proxy_cache`` reverse proxy (the baseline other S3 gateways use).
- ``CaddyFileServer``: ``caddy file-server`` (the venv's Caddy), the bare
  baseline for hits.
- ``BenchStack``: ``tests.stack.Stack`` (the real ``s3cache up``) that can run
  another Caddyfile, for diagnostics such as the access log switched off.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stack import BIN, Stack, free_port, wait_until  # noqa: E402

CADDY = BIN / "caddy"

# The origin's log: what the egress benchmark counts ($body_bytes_sent: body only, as S3 bills it).
ORIGIN_LOG_FORMAT = "log_format bench '$request_method $uri $status $body_bytes_sent \"$http_user_agent\"';"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise RuntimeError("nginx not found: bench/run installs Debian's nginx (apt-get install nginx)")
    return found


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, timeout, what=f"{what} to listen on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class Nginx:
    """nginx -p WORKDIR in the foreground; ``server_blocks`` is the inside of its http {} block."""

    def __init__(self, workdir: Path, server_blocks: str, access_log: bool = True):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = self.workdir / "access.log"
        for sub in ("logs", "tmp/client", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.access_log.touch()
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read our 0700 temp dirs
        log = f"access_log {self.access_log} bench;" if access_log else "access_log off;"
        self.config = self.workdir / "nginx.conf"
        self.config.write_text(f"""{user}worker_processes auto;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {self.workdir}/tmp/client;
    proxy_temp_path {self.workdir}/tmp/proxy;
    fastcgi_temp_path {self.workdir}/tmp/fastcgi;
    uwsgi_temp_path {self.workdir}/tmp/uwsgi;
    scgi_temp_path {self.workdir}/tmp/scgi;
    {ORIGIN_LOG_FORMAT}
    {log}
    server {{
        listen 127.0.0.1:{self.port};
        server_name _;
{server_blocks.replace("PORT", str(self.port))}
    }}
}}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        self.proc = subprocess.Popen([nginx_binary(), "-p", str(self.workdir), "-c", str(self.config),
                                      "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "logs/stdout.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "nginx")
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)  # graceful: workers finish, the master removes its pid file


def origin_nginx(workdir: Path, docroot: Path, extra_locations: str = "") -> Nginx:
    """A static-file origin for ``docroot`` (plain unsigned URLs; query strings ignored, as files go)."""
    return Nginx(workdir, f"""        root {docroot};
        location / {{ }}
{extra_locations}""")


def proxy_cache_nginx(workdir: Path, upstream_url: str, tcp_nopush: bool = True) -> Nginx:
    """nginx as a caching reverse proxy in front of ``upstream_url``; the key is the path (query ignored).

    Logs each request, as s3cache does; says HIT/MISS in X-Cache-Status.  ``tcp_nopush`` on is
    Debian's default (with sendfile); on loopback (MTU 65536) it stalls responses just over 64 KiB
    on the peer's delayed ACK (~40 ms), hence the option.
    """
    cache = Path(workdir) / "proxy_cache"
    cache.mkdir(parents=True, exist_ok=True)
    ngx = Nginx(workdir, f"""        location / {{
            proxy_pass {upstream_url};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache s3;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}""")
    text = ngx.config.read_text().replace(
        "    server {",
        f"    proxy_cache_path {cache} levels=1:2 keys_zone=s3:16m max_size=20g inactive=1d use_temp_path=off;\n"
        "    server {", 1)
    if not tcp_nopush:
        text = text.replace("tcp_nopush on;", "tcp_nopush off;")
    ngx.config.write_text(text)
    return ngx


class CaddyFileServer:
    """``caddy file-server --root DIR`` on 127.0.0.1 (no access log, no compression): the bare baseline."""

    def __init__(self, workdir: Path, root: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CaddyFileServer":
        env = {**os.environ, "HOME": str(self.workdir), "XDG_DATA_HOME": str(self.workdir / "data"),
               "XDG_CONFIG_HOME": str(self.workdir / "config")}
        self.proc = subprocess.Popen([str(CADDY), "file-server", "--root", str(self.root), "--listen",
                                      f"127.0.0.1:{self.port}", "--no-compress"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=open(self.workdir / "caddy.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "caddy file-server")
        return self

    def stop(self) -> None:
        stop_process(self.proc)


class BenchStack(Stack):
    """The real stack (``s3cache up``), optionally with another Caddyfile."""

    def __init__(self, workdir: Path, upstream: str, caddyfile: Path | None = None, **env: str):
        super().__init__(workdir, upstream, **env)
        self.caddyfile = caddyfile

    def start(self, timeout: float = 30.0) -> "BenchStack":
        self._log = open(self.log_path, "ab")
        cmd = [str(BIN / "s3cache"), "up"] + (["--caddyfile", str(self.caddyfile)] if self.caddyfile else [])
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout)
        return self


def caddyfile_without_access_log(dest: Path) -> Path | None:
    """A copy of the project's Caddyfile with the site's ``log { ... }`` block removed (None if not found)."""
    text = (ROOT / "Caddyfile").read_text()
    site = text.find("\nhttp://")
    match = re.compile(r"\n(\t+)log \{\n").search(text, max(site, 0))
    if not match:
        return None
    indent = match.group(1)
    end = text.find(f"\n{indent}}}\n", match.end())
    if end < 0:
        return None
    dest.write_text(text[:match.start()] + "\n" + text[end + len(indent) + 3:])
    return dest


def wait_file_growth_settles(path: Path, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until ``path`` has not grown for ``quiet`` seconds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
