"""TLS the Caddy way (S3CACHE_TLS: acme, internal, files), the redirect from plain HTTP, and
S3CACHE_TRUSTED_PROXIES, on the real stack with real handshakes: clients trust Caddy's internal root
(or the operator's certificate) and nothing else. ACME cannot be reached from here: its configuration
is checked as Caddy adapts it."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from s3cache.config import Config, ConfigError, caddy_environment
from tests.stack import BIN, FrontStack, Stack, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
CADDY = str(BIN / "caddy")
BUCKET = "tls-tests"


# -- the settings -----------------------------------------------------------------------------------

def test_off_is_plain_http_on_the_listen_port_as_before():
    env = caddy_environment(Config.from_env({}))
    assert env["S3CACHE_CADDY_SITE"] == "http://:8080"
    assert (env["S3CACHE_CADDY_TLS"], env["S3CACHE_CADDY_HTTPS"]) == ("off", "off")
    assert env["S3CACHE_CADDY_TRUSTED_PROXIES"] == ""


@pytest.mark.parametrize("mode, extra, snippet", [
    ("acme", {}, "acme"),
    ("acme", {"S3CACHE_TLS_EMAIL": "ops@example.com"}, "acme_email"),
    ("internal", {}, "internal"),
    ("files", {"S3CACHE_TLS_CERT_FILE": "/etc/c.pem", "S3CACHE_TLS_KEY_FILE": "/etc/k.pem"}, "files"),
])
def test_tls_serves_https_for_each_name_and_redirects_plain_http(mode, extra, snippet):
    env = caddy_environment(Config.from_env({
        "S3CACHE_TLS": mode, "S3CACHE_TLS_NAMES": "Cache.Example.com., *.cache.example.com,10.0.0.5",
        "S3CACHE_LISTEN": "0.0.0.0:8443", "S3CACHE_HTTP_PORT": "8080", **extra}))
    assert env["S3CACHE_CADDY_SITE"] == ("https://cache.example.com:8443 https://*.cache.example.com:8443 "
                                         "https://10.0.0.5:8443")
    assert (env["S3CACHE_CADDY_TLS"], env["S3CACHE_CADDY_HTTPS"]) == (snippet, "on")
    assert (env["S3CACHE_CADDY_HTTP_PORT"], env["S3CACHE_CADDY_HTTPS_PORT"]) == ("8080", "8443")
    assert env["S3CACHE_CADDY_HTTPS_SUFFIX"] == ":8443"


def test_the_redirect_names_no_port_for_443():
    env = caddy_environment(Config.from_env({"S3CACHE_TLS": "acme", "S3CACHE_TLS_NAMES": "cache.example.com",
                                             "S3CACHE_LISTEN": "0.0.0.0:443"}))
    assert (env["S3CACHE_CADDY_HTTP_PORT"], env["S3CACHE_CADDY_HTTPS_SUFFIX"]) == ("80", "")


@pytest.mark.parametrize("env, variable", [
    ({"S3CACHE_TLS": "internal"}, "S3CACHE_TLS_NAMES"),
    ({"S3CACHE_TLS": "on", "S3CACHE_TLS_NAMES": "a.example"}, "S3CACHE_TLS"),
    ({"S3CACHE_TLS": "files", "S3CACHE_TLS_NAMES": "a.example"}, "S3CACHE_TLS_CERT_FILE"),
    ({"S3CACHE_TLS": "files", "S3CACHE_TLS_NAMES": "a.example", "S3CACHE_TLS_CERT_FILE": "/c"}, "S3CACHE_TLS_KEY_FILE"),
    ({"S3CACHE_TLS": "internal", "S3CACHE_TLS_NAMES": "a.example", "S3CACHE_HTTP_PORT": "8080"}, "S3CACHE_HTTP_PORT"),
    ({"S3CACHE_TLS_NAMES": "a.example,,b.example"}, "S3CACHE_TLS_NAMES"),
    ({"S3CACHE_TLS_NAMES": "::1"}, "S3CACHE_TLS_NAMES"),
    ({"S3CACHE_TLS_NAMES": "a b.example"}, "S3CACHE_TLS_NAMES"),
    ({"S3CACHE_TLS_NAMES": "a.example {"}, "S3CACHE_TLS_NAMES"),
    ({"S3CACHE_TLS_EMAIL": "not an address"}, "S3CACHE_TLS_EMAIL"),
    ({"S3CACHE_TLS_CERT_FILE": "/etc/my cert.pem"}, "S3CACHE_TLS_CERT_FILE"),
    ({"S3CACHE_HTTP_PORT": "0"}, "S3CACHE_HTTP_PORT"),
    ({"S3CACHE_TRUSTED_PROXIES": "10.0.0.0/33"}, "S3CACHE_TRUSTED_PROXIES"),
])
def test_bad_tls_settings_are_one_line_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as exc:
        Config.from_env(env)
    assert str(exc.value).startswith(variable + ":") and "\n" not in str(exc.value)


# -- what Caddy makes of them -----------------------------------------------------------------------

def adapted(caddyfile: str, settings: dict[str, str], tmp_path) -> dict:
    env = caddy_environment(Config.from_env({"S3CACHE_NODES": "127.0.0.1:9001", **settings}))
    r = subprocess.run([CADDY, "adapt", "--config", str(ROOT / caddyfile), "--adapter", "caddyfile"],
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def servers_by_port(config: dict) -> dict[int, dict]:
    return {int(s["listen"][0].rpartition(":")[2]): s for s in config["apps"]["http"]["servers"].values()}


@pytest.mark.parametrize("caddyfile", ["Caddyfile", "Caddyfile.front"])
def test_off_adapts_to_one_plain_listener_trusting_no_proxy(caddyfile, tmp_path):
    config = adapted(caddyfile, {"S3CACHE_LISTEN": "127.0.0.1:18080"}, tmp_path)
    servers = servers_by_port(config)
    assert list(servers) == [18080]
    assert "tls" not in config["apps"]
    assert servers[18080]["trusted_proxies"] == {"source": "static"}  # no ranges: nobody's header is believed
    assert servers[18080]["trusted_proxies_strict"] == 1


@pytest.mark.parametrize("caddyfile", ["Caddyfile", "Caddyfile.front"])
@pytest.mark.parametrize("mode, extra", [
    ("acme", {}),
    ("acme", {"S3CACHE_TLS_EMAIL": "ops@example.com"}),
    ("internal", {}),
    ("files", {"S3CACHE_TLS_CERT_FILE": "/etc/s3cache/c.pem", "S3CACHE_TLS_KEY_FILE": "/etc/s3cache/k.pem"}),
])
def test_tls_adapts_to_https_for_the_names_and_a_redirect_on_the_http_port(caddyfile, mode, extra, tmp_path):
    # (Caddy would take a private address out of ACME's hands and give it an internal certificate.)
    names = ["cache.example.com", "s3.example.com" if mode == "acme" else "10.0.0.5"]
    config = adapted(caddyfile, {"S3CACHE_TLS": mode, "S3CACHE_TLS_NAMES": ",".join(names),
                                 "S3CACHE_LISTEN": "0.0.0.0:443", "S3CACHE_HTTP_PORT": "80",
                                 "S3CACHE_TRUSTED_PROXIES": "10.1.0.0/16,192.0.2.1", **extra}, tmp_path)
    http_app = config["apps"]["http"]
    assert (http_app["http_port"], http_app["https_port"]) == (80, 443)
    servers = servers_by_port(config)
    assert sorted(servers) == [80, 443]
    assert all(s["listen"][0].startswith("0.0.0.0:") for s in servers.values())
    # HTTPS: only the names are answered (the site's routes match their hosts).
    assert servers[443]["routes"][0]["match"] == [{"host": names}]
    assert servers[443]["trusted_proxies"] == {"source": "static", "ranges": ["10.1.0.0/16", "192.0.2.1/32"]}
    # Plain HTTP: one redirect to HTTPS with the URI as the client sent it, and Caddy's own redirects off.
    redirect = json.dumps(servers[80]["routes"])
    assert '"Location": ["https://{http.request.host}{http.request.orig_uri}"]' in redirect
    assert '"status_code": 308' in redirect
    assert servers[80]["automatic_https"] == {"disable_redirects": True}
    policies = config["apps"].get("tls", {}).get("automation", {}).get("policies", [])
    issuers = [i["module"] for p in policies for i in p.get("issuers", [])]
    if mode == "internal":
        assert issuers == ["internal"]
    elif mode == "files":
        assert config["apps"]["tls"]["certificates"]["load_files"] == [
            {"certificate": "/etc/s3cache/c.pem", "key": "/etc/s3cache/k.pem", "tags": ["cert0"]}]
    else:  # Caddy's automatic HTTPS: its default ACME issuers, with the e-mail address if one is set
        assert "internal" not in issuers
        if extra:
            assert policies and issuers and all(i.get("email") == "ops@example.com"
                                                for p in policies for i in p["issuers"])
        else:
            assert all("issuers" not in p for p in policies)


def test_the_redirect_names_the_https_port_when_it_is_not_443(tmp_path):
    config = adapted("Caddyfile", {"S3CACHE_TLS": "internal", "S3CACHE_TLS_NAMES": "localhost",
                                   "S3CACHE_LISTEN": "127.0.0.1:8443", "S3CACHE_HTTP_PORT": "8080"}, tmp_path)
    assert '"https://{http.request.host}:8443{http.request.orig_uri}"' in json.dumps(servers_by_port(config)[8080])


# -- real handshakes ----------------------------------------------------------------------------------

def internal_root(stack: Stack) -> Path:
    return stack.layout.run_dir / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"


class TLSStack(Stack):
    """`s3cache up` with S3CACHE_TLS on, reached over HTTPS by a client that trusts only ``ca()``."""

    def __init__(self, workdir: Path, upstream: str, ca=None, **env: str):
        super().__init__(workdir, upstream, S3CACHE_HTTP_PORT=str(free_port()), **env)
        self.url = f"https://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.env['S3CACHE_HTTP_PORT']}"
        self.ca = ca or internal_root(self)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"s3cache up exited ({self.proc.returncode}):\n{self.log_text()}")
            if not Path(self.ca).is_file():
                return False
            try:
                return requests.get(self.url + "/_s3cache/health", timeout=2, verify=str(self.ca)).status_code == 200
            except requests.RequestException:
                return False
        wait_until(healthy, timeout, what="the stack to answer over HTTPS")

    def get(self, url: str, **kw) -> requests.Response:
        session = requests.Session()
        session.verify = str(self.ca)
        req = requests.Request("GET", url, headers=kw.get("headers") or {}).prepare()
        req.url = url  # byte for byte
        return session.send(req, allow_redirects=False, timeout=10)


@pytest.fixture
def make_tls_stack(tmp_path, origin):
    origin.ensure_bucket(BUCKET)
    stacks = []

    def make(**env) -> TLSStack:
        s = TLSStack(tmp_path / f"stack{len(stacks)}", origin.url, **env)
        stacks.append(s)
        return s.start()

    yield make
    for s in stacks:
        s.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=s3cache test", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(params=["internal", "files"])
def tls_stack(request, make_tls_stack, tmp_path):
    if request.param == "files":
        cert, key = self_signed(tmp_path)
        return make_tls_stack(ca=cert, S3CACHE_TLS="files", S3CACHE_TLS_NAMES="127.0.0.1,localhost",
                              S3CACHE_TLS_CERT_FILE=str(cert), S3CACHE_TLS_KEY_FILE=str(key), S3CACHE_ACCESS="open")
    return make_tls_stack(S3CACHE_TLS="internal", S3CACHE_TLS_NAMES="127.0.0.1,localhost", S3CACHE_ACCESS="open")


def test_miss_and_hit_over_https_for_a_client_that_trusts_the_ca(origin, tls_stack):
    key = "secure/data.bin"
    body = os.urandom(200_000)
    origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    url = origin.presign(BUCKET, key, version="v4")

    miss = tls_stack.get(tls_stack.proxied(url))
    assert (miss.status_code, miss.headers["X-Cache"], miss.headers["Location"]) == (307, "MISS", url)
    tls_stack.wait_cached(BUCKET, key)
    hit = tls_stack.get(tls_stack.proxied(url))
    assert (hit.status_code, hit.headers["X-Cache"], hit.content) == (200, "HIT", body)
    # By name too: the certificate is for both.
    by_name = tls_stack.get(tls_stack.proxied(url).replace("127.0.0.1", "localhost", 1))
    assert by_name.status_code == 200 and by_name.content == body


def test_a_client_that_does_not_trust_the_ca_is_refused_the_handshake(tls_stack):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_stack.url + "/_s3cache/health", timeout=10)  # the system's trust store only
    # A name that is not among S3CACHE_TLS_NAMES gets no certificate at all.
    context = ssl.create_default_context(cafile=str(tls_stack.ca))
    port = int(tls_stack.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock, server_hostname="elsewhere.example").close()


def test_a_host_that_is_not_among_the_names_is_refused_with_s3_xml(tls_stack):
    r = tls_stack.get(tls_stack.url + "/bucket/key", headers={"Host": "elsewhere.example"})
    assert r.status_code == 421
    assert r.headers["Content-Type"] == "application/xml"
    assert "<Code>InvalidRequest</Code>" in r.text


def test_plain_http_is_redirected_to_https_with_the_uri_as_sent(origin, tls_stack):
    url = origin.presign(BUCKET, "a%2Fb/c+d.bin", version="v4")
    target = url[len(origin.url):]
    for method in ("GET", "HEAD", "PUT"):
        r = requests.Session().send(requests.Request(method, tls_stack.http_url + target).prepare(),
                                    allow_redirects=False, timeout=10)
        assert r.status_code == 308, method
        assert r.headers["Location"] == tls_stack.url + target, method
    # And the HTTPS port speaks only TLS.
    port = int(tls_stack.url.rpartition(":")[2])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_s3cache/health")
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_the_internal_ca_is_never_installed_in_the_systems_trust_store(make_tls_stack):
    before = set(os.listdir("/usr/local/share/ca-certificates")) if os.path.isdir("/usr/local/share/ca-certificates") else set()
    stack = make_tls_stack(S3CACHE_TLS="internal", S3CACHE_TLS_NAMES="127.0.0.1")
    after = set(os.listdir("/usr/local/share/ca-certificates")) if os.path.isdir("/usr/local/share/ca-certificates") else set()
    assert after == before
    assert "installing root certificate" not in stack.log_text()
    # Nothing is logged at WARN unless something is wrong, with TLS on too.
    assert [line for line in stack.log_text().splitlines() if "WARN" in line or "ERROR" in line] == []


def test_up_refuses_a_certificate_file_it_cannot_read(origin, tmp_path):
    stack = Stack(tmp_path / "s", origin.url, S3CACHE_TLS="files", S3CACHE_TLS_NAMES="127.0.0.1",
                  S3CACHE_TLS_CERT_FILE=str(tmp_path / "missing.pem"), S3CACHE_TLS_KEY_FILE=str(tmp_path / "k.pem"),
                  S3CACHE_HTTP_PORT=str(free_port()))
    done = subprocess.run([str(BIN / "s3cache"), "up"], env=stack.env, cwd=stack.workdir, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"S3CACHE_TLS_CERT_FILE: cannot read {tmp_path / 'missing.pem'}")
    assert done.stderr.count("\n") == 1


# -- S3CACHE_TRUSTED_PROXIES ------------------------------------------------------------------------

def admin_get(stack: Stack, source: str, forwarded_for: str | None = None,
              path: str = "/_s3cache/metrics") -> tuple[int, bytes]:
    """GET an admin page from ``source`` (a loopback address standing in for a host), as a proxy would send it."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={} if forwarded_for is None else {"X-Forwarded-For": forwarded_for})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def admin_status(stack: Stack, source: str, forwarded_for: str | None = None, path: str = "/_s3cache/metrics") -> int:
    return admin_get(stack, source, forwarded_for, path)[0]


def test_a_trusted_proxy_names_the_client_and_nothing_else_is_believed(make_stack):
    # 127.0.0.2 is the proxy in front; the admin client is 192.0.2.7, somewhere behind it.
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_TRUSTED_PROXIES="127.0.0.2/32",
                       S3CACHE_ADMIN_ALLOW="192.0.2.7/32")
    assert admin_status(stack, "127.0.0.2", "192.0.2.7") == 200
    assert admin_status(stack, "127.0.0.2", "192.0.2.7, 127.0.0.2") == 200  # the proxy's own hop is skipped
    # The proxy appends the real peer: whatever a client wrote before it is not believed.
    assert admin_status(stack, "127.0.0.2", "192.0.2.7, 198.51.100.1") == 403
    assert admin_status(stack, "127.0.0.2", "198.51.100.1") == 403
    # The proxy itself (no header) is not in the list; neither is anyone that is not a trusted proxy,
    # whatever header it sends.
    assert admin_status(stack, "127.0.0.2") == 403
    assert admin_status(stack, "127.0.0.1", "192.0.2.7") == 403
    assert admin_status(stack, "127.0.0.3", "192.0.2.7") == 403
    # Health: a client behind the proxy is judged as itself: outside the list it gets the status alone,
    # the details go to the list (and to loopback peers, which are not behind a proxy).
    assert admin_get(stack, "127.0.0.2", "198.51.100.1", path="/_s3cache/health") == (200, b'{"status": "ok"}')
    status, body = admin_get(stack, "127.0.0.2", "192.0.2.7", path="/_s3cache/health")
    assert status == 200 and b'"parts"' in body
    status, body = admin_get(stack, "127.0.0.1", "198.51.100.1", path="/_s3cache/health")
    assert status == 200 and b'"parts"' in body


def test_without_trusted_proxies_no_forwarded_header_is_believed(make_stack):
    stack = make_stack(S3CACHE_ACCESS="open", S3CACHE_ADMIN_ALLOW="192.0.2.7/32")
    assert admin_status(stack, "127.0.0.2", "192.0.2.7") == 403
    assert admin_status(stack, "127.0.0.1", "192.0.2.7") == 403


# What Caddy reads from each X-Forwarded-For entry (None: not an address, skipped), and the rule: from a
# trusted proxy, right to left, the first address that is not a trusted proxy; if none, the proxy itself.
FORWARDED = {
    "192.0.2.7": "192.0.2.7", " 192.0.2.8 ": "192.0.2.8", "192.0.2.9:4711": "192.0.2.9",
    "192.0.2.200": "192.0.2.200", "198.51.100.1": "198.51.100.1", "[2001:db8::1]:80": "2001:db8::1",
    "127.0.0.1": "127.0.0.1", "10.1.2.3": "10.1.2.3", "127.0.0.2": "127.0.0.2", "unknown": None, "": None,
}
# Go's SplitHostPort runs before the trim: " [2001:db8::1]:80" has "too many colons" and is not read as an address.
AFTER_A_SPACE = {**FORWARDED, "[2001:db8::1]:80": None}
TRUSTED = [ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8")]
ADMIN_ALLOW = [ipaddress.ip_network("192.0.2.0/25"), ipaddress.ip_network("127.0.0.2/32")]


def expected_client(peer: str, entries: list[str] | None, separator: str) -> str:
    def trusted(ip: str) -> bool:
        return any(ipaddress.ip_address(ip) in net for net in TRUSTED if ipaddress.ip_address(ip).version == net.version)
    if entries is None or not trusted(peer):
        return peer
    for n in reversed(range(len(entries))):
        ip = (AFTER_A_SPACE if n and separator.endswith(" ") else FORWARDED)[entries[n]]
        if ip is not None and not trusted(ip):
            return ip
    return peer


@pytest.fixture(scope="module")
def proxied_stack(tmp_path_factory, origin):
    stack = Stack(tmp_path_factory.mktemp("proxied"), origin.url, S3CACHE_ACCESS="open",
                  S3CACHE_TRUSTED_PROXIES=",".join(map(str, TRUSTED)), S3CACHE_ADMIN_ALLOW=",".join(map(str, ADMIN_ALLOW)))
    try:
        yield stack.start()
    finally:
        stack.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(peer=st.sampled_from(["127.0.0.1", "127.0.0.2"]),
       entries=st.none() | st.lists(st.sampled_from(sorted(FORWARDED)), max_size=4),
       separator=st.sampled_from([",", ", "]))
def test_the_admin_allow_list_judges_the_client_the_trusted_proxies_name(proxied_stack, peer, entries, separator):
    header = None if entries is None else separator.join(entries)
    client = ipaddress.ip_address(expected_client(peer, entries, separator))
    want = 200 if any(client.version == net.version and client in net for net in ADMIN_ALLOW) else 403
    assert admin_status(proxied_stack, peer, header) == want, (peer, header, str(client))


def test_reload_turns_tls_on_in_place(origin, tmp_path):
    """An operator's move: add the TLS lines to the env file, `s3cache reload`; the port now speaks HTTPS."""
    env_file = tmp_path / "s3cache.env"
    env_file.write_text("S3CACHE_ACCESS=open\n")
    stack = Stack(tmp_path / "stack", origin.url)
    stack._log = open(stack.log_path, "ab")
    stack.proc = subprocess.Popen([str(BIN / "s3cache"), "up", "--env-file", str(env_file)], env=stack.env,
                                  stdout=stack._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        stack.wait_healthy()
        http_port = free_port()
        env_file.write_text(f"S3CACHE_ACCESS=open\nS3CACHE_TLS=internal\nS3CACHE_TLS_NAMES=127.0.0.1\n"
                            f"S3CACHE_HTTP_PORT={http_port}\n")
        done = subprocess.run([str(BIN / "s3cache"), "reload", "--env-file", str(env_file)], env=stack.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr + stack.log_text()
        https = f"https://127.0.0.1:{stack.port}"
        root = internal_root(stack)
        wait_until(root.is_file, 20, what="Caddy's internal root")
        health = requests.get(https + "/_s3cache/health", verify=str(root), timeout=10)
        assert health.status_code == 200
        moved = requests.get(f"http://127.0.0.1:{http_port}/b/k?x=1", allow_redirects=False, timeout=10)
        assert (moved.status_code, moved.headers["Location"]) == (308, https + "/b/k?x=1")
    finally:
        stack.stop()


class TLSFront(FrontStack):
    """`s3cache up --front` with S3CACHE_TLS=internal: HTTPS at the front, plain HTTP to the nodes."""

    def __init__(self, workdir: Path, upstream: str, nodes: list[Stack], **env: str):
        super().__init__(workdir, upstream, nodes, S3CACHE_HTTP_PORT=str(free_port()), **env)
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = internal_root(self)

    wait_healthy = TLSStack.wait_healthy
    get = TLSStack.get


def test_tls_at_the_front_and_the_nodes_see_the_client_through_it(origin, make_stack, tmp_path):
    # The front reaches the node from 127.0.0.1: the node trusts that address as its proxy.
    node = make_stack(S3CACHE_ACCESS="open", S3CACHE_TRUSTED_PROXIES="127.0.0.1/32")
    front = TLSFront(tmp_path / "front", origin.url, [node], S3CACHE_TLS="internal", S3CACHE_TLS_NAMES="127.0.0.1")
    try:
        front.start()
        origin.ensure_bucket(BUCKET)
        key = "front/object.bin"
        body = os.urandom(50_000)
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
        url = origin.presign(BUCKET, key, version="v4")
        miss = front.get(front.proxied(url))
        assert (miss.status_code, miss.headers["Location"]) == (307, url)
        node.wait_cached(BUCKET, key)
        # A client on another address, over HTTPS through the front.
        context = ssl.create_default_context(cafile=str(front.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", front.port, timeout=10, context=context,
                                           source_address=("127.0.0.3", 0))
        try:
            conn.request("GET", front.proxied(url)[len(front.url):])
            hit = conn.getresponse()
            assert (hit.status, hit.getheader("X-Cache"), hit.read()) == (200, "HIT", body)
        finally:
            conn.close()

        def node_saw_the_client():
            lines = [json.loads(line) for line in node.layout.access_log.read_text().splitlines() if line]
            return [entry["request"].get("client_ip") for entry in lines if entry.get("status") == 200]
        assert wait_until(lambda: "127.0.0.3" in node_saw_the_client(), 10, what="the node to log the hit")
    finally:
        front.stop()


def test_reload_picks_up_renewed_certificate_files(origin, tmp_path):
    """Caddy does not watch the files: `s3cache reload` after renewing them must load them, though
    the configuration itself has not changed."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    cert, key = self_signed(first)
    env_file = tmp_path / "s3cache.env"
    env_file.write_text(f"S3CACHE_ACCESS=open\nS3CACHE_TLS=files\nS3CACHE_TLS_NAMES=127.0.0.1\n"
                        f"S3CACHE_TLS_CERT_FILE={cert}\nS3CACHE_TLS_KEY_FILE={key}\n"
                        f"S3CACHE_HTTP_PORT={free_port()}\n")
    stack = TLSStack(tmp_path / "stack", origin.url, ca=tmp_path / "trusted.pem")
    for name in ("S3CACHE_HTTP_PORT",):
        del stack.env[name]  # from the file
    (tmp_path / "trusted.pem").write_bytes(cert.read_bytes())
    stack._log = open(stack.log_path, "ab")
    stack.proc = subprocess.Popen([str(BIN / "s3cache"), "up", "--env-file", str(env_file)], env=stack.env,
                                  stdout=stack._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        stack.wait_healthy()
        renewed, renewed_key = self_signed(second)
        cert.write_bytes(renewed.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        done = subprocess.run([str(BIN / "s3cache"), "reload", "--env-file", str(env_file)], env=stack.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr + stack.log_text()

        def serves_the_renewed_certificate():
            try:
                return requests.get(stack.url + "/_s3cache/health", verify=str(renewed), timeout=5).status_code == 200
            except requests.exceptions.SSLError:
                return False
        wait_until(serves_the_renewed_certificate, 10, what="the renewed certificate to be served")
    finally:
        stack.stop()
