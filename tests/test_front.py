"""The front tier end to end: full nodes behind `s3cache up --front`, sharded by object path.

Each node is a whole stack (Caddy, sidecar, evictor, its own cache directory); the front is Caddy
alone with Caddyfile.front. Everything is on 127.0.0.1, in front of the signature-enforcing origin.
Three nodes for sharding; two for what an attacker or a bad node can do to the tier (hostile paths,
Hosts and bodies, a hung node, health probes from another host, secrets in Caddy's error lines).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from hypothesis import example, given, settings, strategies as st

from s3cache import wire
from s3cache.addressing import Addressing, split_host_port
from tests.caddymap import map_entries, map_value
from tests.rawhttp import parse_response
from tests.stack import BIN, FrontStack, free_port, Stack, raw_request, wait_until
from tests.test_host_canonical import hosts

pytestmark = pytest.mark.integration

BUCKET = "front-tests"
N_OBJECTS = 45


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    return BUCKET


@pytest.fixture
def make_front(make_stack, origin, tmp_path):
    """Factory: ``make_front(n, **env)``, n full nodes (S3CACHE_ACCESS=open: hits cost nothing upstream)
    and the front before them, ``env`` set on all of them."""
    fronts = []

    def make(n: int, **env: str) -> FrontStack:
        nodes = [make_stack(S3CACHE_ACCESS="open", **env) for _ in range(n)]
        f = FrontStack(tmp_path / f"front{len(fronts)}", origin.url, nodes, **env)
        fronts.append(f)
        return f.start()

    yield make
    for f in fronts:
        f.stop()


@pytest.fixture
def front(make_front):
    return make_front(3)


def holders(nodes: list[Stack], key: str) -> list[Stack]:
    return [node for node in nodes if node.object_file(BUCKET, key).is_file()]


def the_one_holder(nodes: list[Stack], key: str) -> Stack | None:
    """The node caching ``key``, once one does; a second copy anywhere fails the test at once."""
    found = holders(nodes, key)
    assert len(found) <= 1, f"{key} is cached on {len(found)} nodes"
    return found[0] if found else None


def wait_holder(nodes: list[Stack], key: str) -> Stack:
    return wait_until(lambda: the_one_holder(nodes, key), timeout=10, what=f"{key} to be cached on a node")


def origin_gets(origin) -> Counter:
    return Counter(r["key"] for r in origin.stats()["requests"] if r["method"] == "GET")


def test_each_object_lives_on_one_node_and_a_dead_node_costs_only_its_share(origin, front):
    nodes = front.nodes
    keys = [f"shard/{i:02d}/object-{i}.bin" for i in range(N_OBJECTS)]
    bodies = {key: os.urandom(2000 + i) for i, key in enumerate(keys)}
    for key, body in bodies.items():
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
    origin.reset()
    answered: list[int] = []  # every status any client saw

    def get(url: str):
        r = front.get(front.proxied(url))
        answered.append(r.status_code)
        return r

    # First reads miss: the redirect is the presigned URL byte for byte, and one node fills the object.
    owner = {}
    for key in keys:
        url = origin.presign(BUCKET, key, version="v4")
        r = get(url)
        assert (r.status_code, r.headers["X-Cache"], r.headers["Location"]) == (307, "MISS", url)
        owner[key] = wait_holder(nodes, key)

    # Other signatures for the same key (SigV2, another SigV4): the same node, so hits.
    for key in keys:
        for url in (origin.presign(BUCKET, key, version="v2", expires=900),
                    origin.presign(BUCKET, key, version="v4", expires=1200)):
            r = get(url)
            assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", bodies[key]), key
    assert all(holders(nodes, key) == [owner[key]] for key in keys)
    assert origin_gets(origin) == Counter({f"/{BUCKET}/{key}": 1 for key in keys})
    assert set(owner.values()) == set(nodes), "every node holds a share"

    # One node dies. Right away, every key at once: nobody gets an error.
    dead, survivors = nodes[0], nodes[1:]
    dead_keys = [key for key in keys if owner[key] is dead]
    # About a third (binomial: outside these bounds about once in 300,000 runs).
    assert 0.05 <= len(dead_keys) / len(keys) <= 0.7, f"{len(dead_keys)} of {len(keys)} keys on one node of three"
    dead.stop()
    origin.reset()

    def fetch(i_key):
        i, key = i_key
        url = origin.presign(BUCKET, key, version=("v2", "v4")[i % 2], expires=1500)
        return key, url, get(url)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetch, enumerate(keys)))
    for key, url, r in results:
        if owner[key] is dead:
            # Its keys move: a miss on the next node, redirected to S3 untouched.
            assert (r.status_code, r.headers["X-Cache"], r.headers["Location"]) == (307, "MISS", url), key
        else:
            # Keys of live nodes stay where they were: still hits.
            assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", bodies[key]), key

    # The dead node's keys went to the survivors, one copy each; zero of the survivors' keys moved.
    new_owner = {key: wait_holder(survivors, key) for key in dead_keys}
    assert [key for key in keys if key not in new_owner and holders(survivors, key) != [owner[key]]] == []
    assert origin_gets(origin) == Counter({f"/{BUCKET}/{key}": 1 for key in dead_keys})

    # From now on every key is a hit again, wherever it lives.
    origin.reset()
    for key in keys:
        r = get(origin.presign(BUCKET, key, version="v4", expires=1800))
        assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", bodies[key]), key
    assert origin_gets(origin) == Counter()
    assert set(answered) <= {200, 307}, Counter(answered)


def test_presigned_urls_pass_the_front_byte_for_byte(origin, front):
    odd_keys = ["odd/a b+c~d(1)!'*.txt", "odd/%25 and %2B.bin", "odd/ünï/cödé.txt", "odd/a//b"]
    for name in odd_keys:
        for version in ("v2", "v4"):
            key = f"{name}.{version}"
            body = b"through two proxies: " + key.encode()
            origin.s3().put_object(Bucket=BUCKET, Key=key, Body=body)
            url = origin.presign(BUCKET, key, version=version)
            r = front.get(front.proxied(url))
            assert (r.status_code, r.headers["X-Cache"], r.headers["Location"]) == (307, "MISS", url), key
            # The signature survived both hops: S3 honours the redirect.
            assert raw_request("GET", r.headers["Location"]).content == body, key
            if "//" in key:
                continue  # never cached (a file lookup would clean the path), only ever redirected
            wait_holder(front.nodes, key)
            r = front.get(front.proxied(origin.presign(BUCKET, key, version=version, expires=600)))
            assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", body), key


def test_the_front_answers_its_own_endpoints_and_sends_the_rest_to_s3(origin, front):
    health = raw_request("GET", front.url + "/_s3cache/health")
    assert (health.status_code, health.json()["part"]) == (200, "front")
    assert raw_request("GET", front.url + "/").status_code == 200
    for internal in ("/_s3cache/auth", "/_s3cache/status"):
        r = raw_request("GET", front.url + internal)
        assert (r.status_code, r.headers["Content-Type"]) == (404, "application/xml"), internal

    origin.reset()
    # Not a read: redirected by the front itself, URI untouched.
    for method in ("PUT", "DELETE", "POST"):
        r = raw_request(method, front.url + f"/{BUCKET}/put/here%7E.bin?uploads")
        assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS")
        assert r.headers["Location"] == origin.url + f"/{BUCKET}/put/here%7E.bin?uploads"
    # A raw byte the proxy would re-encode on the way to a node (`"`, `|`): redirected from here, as sent.
    # (http.client sends the request line as given; requests/urllib3 would percent-encode those bytes.)
    sent = f'/{BUCKET}/raw/a"b|c%7E.txt?X-Amz-Signature=abc'
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        conn.request("GET", sent)
        r = conn.getresponse()
        assert (r.status, r.getheader("X-Cache"), r.getheader("Location")) == (307, "MISS", origin.url + sent)
    finally:
        conn.close()
    assert origin.stats()["requests"] == []
    for node in front.nodes:  # none of them even saw these requests
        path = node.layout.logs_dir / "access.log"
        log = path.read_text(errors="replace") if path.exists() else ""
        assert "/put/here" not in log and "/raw/a" not in log


@pytest.mark.parametrize("nodes, message", [
    (None, "S3CACHE_NODES: s3cache up --front needs the cache nodes"),
    ("127.0.0.1:8080,nohost", "S3CACHE_NODES: node 2: expected HOST:PORT"),
])
def test_the_front_needs_its_nodes(tmp_path, nodes, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    env.update(S3CACHE_DIR=str(tmp_path / "front"), HOME=str(tmp_path))
    if nodes is not None:
        env["S3CACHE_NODES"] = nodes
    done = subprocess.run([str(BIN / "s3cache"), "up", "--front"], env=env, capture_output=True, text=True,
                          timeout=20, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.startswith("s3cache: configuration error: " + message)
    assert done.stderr.count("\n") == 1


# -- the front tier against bad input and bad nodes (issue 14, item 7) ------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "s3cache.test"


def send(url_base: str, target: bytes, host: bytes, method: str = "GET", timeout: float = 60):
    """One request with this Host and request target, byte for byte (a socket: no client re-encodes it)."""
    port = int(url_base.rsplit(":", 1)[1])
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_response(data, method)


def one_key_per_node(origin, front: FrontStack, prefix: str) -> dict[int, str]:
    """Cache objects through the front until every node holds one; {node index: a key it owns}."""
    owned: dict[int, str] = {}
    for i in range(64):
        key = f"{prefix}/{i:02d}.bin"
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        r = front.get(front.proxied(origin.presign(BUCKET, key, version="v2")))
        assert (r.status_code, r.headers["X-Cache"]) == (307, "MISS"), key
        owned.setdefault(front.nodes.index(wait_holder(front.nodes, key)), key)
        if len(owned) == len(front.nodes):
            return owned
    raise AssertionError("64 keys and a node still owns none")


def assert_served_by_owner(origin, front: FrontStack, owned: dict[int, str]) -> None:
    """Each node's key is a hit, so it went to its own node: no node has been taken out."""
    for i, key in owned.items():
        r = front.get(front.proxied(origin.presign(BUCKET, key, version="v4", expires=900)))
        assert (r.status_code, r.headers.get("X-Cache"), r.content) == (200, "HIT", key.encode()), (i, key)


def percent_encoded(data: bytes) -> bytes:
    return b"".join(b"%%%02X" % b for b in data)


def send_raw(url_base: str, data: bytes, read: bool = True) -> int | None:
    """Send ``data`` as is; the answer's status, or None when not read (or none came within 10 s)."""
    with socket.create_connection(("127.0.0.1", int(url_base.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(data)
        if not read:
            return None
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def bad_requests(host: bytes) -> list[tuple[str, bytes, bool]]:
    """What a client can send on purpose: (what, bytes, wait for the answer)."""
    head = b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    path = f"/{BUCKET}/odd/".encode()
    cases = [(f"{method} {odd!r}", method.encode() + b" " + path + odd + head + b"Connection: close\r\n\r\n", True)
             for odd in (b"%0ax", b"%00", b"%0d%0aX-Evil:%20yes", b"%7f", b"%ff%fe%c3%28") for method in ("GET", "HEAD")]
    return cases + [
        ("a body cut off", b"GET " + path + b"cut" + head + b"Content-Length: 100\r\n\r\n0123456789", False),
        ("a broken chunked body", b"GET " + path + b"chunk" + head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n", True),
        ("a path as long as the front takes", b"GET " + path + b"/" * 120_000 + head + b"Connection: close\r\n\r\n", True),
        ("a head larger than the front takes", b"GET " + path + b"x" + head + b"X-Pad: " + b"a" * 900_000 + b"\r\n\r\n", True),
    ]


def test_no_bad_request_takes_a_node_out(origin, make_front):
    """Each of these used to fail the proxy call to the node it hashed to (a header value that cannot be
    sent, a body that cannot be read, ...): with max_fails 1 and retries, one request marked every node
    down for 30 s and the whole tier answered 503."""
    front = make_front(2)
    owned = one_key_per_node(origin, front, "bad")
    for what, data, read in bad_requests(f"127.0.0.1:{front.port}".encode()):
        status = send_raw(front.url, data, read)
        assert status is None or status < 500, (what, status)
        # At once, and for as long as a node would stay marked down: both nodes still serve their own keys.
        assert_served_by_owner(origin, front, owned)


def test_no_request_bytes_can_take_a_node_out(origin, make_front):
    """Any path bytes (percent-encoded or raw), any Host: never a 5xx, and each node keeps its keys."""
    front = make_front(2)
    owned = one_key_per_node(origin, front, "fuzz")

    @settings(max_examples=80, deadline=None)
    @given(path=st.binary(max_size=24), encode=st.booleans(), host=hosts(), method=st.sampled_from(["GET", "HEAD"]))
    @example(path=b"\n", encode=True, host="x", method="GET")
    @example(path=b"\x00", encode=True, host="x", method="GET")
    def attack(path: bytes, encode: bool, host: str, method: str):
        safe = path.replace(b" ", b"%20").replace(b"\r", b"%0D").replace(b"\n", b"%0A").replace(b"#", b"%23")
        target = f"/{BUCKET}/odd/".encode() + (percent_encoded(path) if encode else safe)
        r = send(front.url, target, host.encode("latin-1") or b"x", method=method)
        assert r.status < 500, (target, host, r.status, r.body)

    attack()
    assert_served_by_owner(origin, front, owned)


def test_a_hung_node_holds_its_requests_only_seconds(origin, make_front):
    front = make_front(2)
    owned = one_key_per_node(origin, front, "hang")
    hung, alive = front.nodes
    caddy = hung.part_pid("caddy")
    os.kill(caddy, signal.SIGSTOP)  # accepts connections (the kernel's backlog), answers nothing
    try:
        url = origin.presign(BUCKET, owned[0], version="v4", expires=1200)
        started = time.monotonic()
        r = front.get(front.proxied(url), timeout=60)
        waited = time.monotonic() - started
        # The next node answered for the hung one: a miss, redirected to S3 untouched.
        assert (r.status_code, r.headers["X-Cache"], r.headers["Location"]) == (307, "MISS", url)
        assert waited < 25, f"held {waited:.1f}s"  # the front's response-header timeout is 15 s
        alive.wait_cached(BUCKET, owned[0])
        # The hung node is out: its keys go straight to the other node, whose own keys stay hits.
        started = time.monotonic()
        r = front.get(front.proxied(origin.presign(BUCKET, owned[0], version="v2", expires=900)), timeout=60)
        assert (r.status_code, r.headers["X-Cache"], r.content) == (200, "HIT", owned[0].encode())
        assert time.monotonic() - started < 5
        assert_served_by_owner(origin, front, {1: owned[1]})
    finally:
        os.kill(caddy, signal.SIGCONT)


def test_a_front_on_another_host_can_probe_node_health(make_front):
    """A front at 10.0.0.5 probes a node with the default S3CACHE_ADMIN_ALLOW (loopback): the node's Caddy
    asks its sidecar on the front's behalf, naming the front's address. Health answers, the rest does not."""
    front = make_front(1)
    node = front.nodes[0]
    as_caddy_for = {wire.CLIENT_IP_HEADER: "10.0.0.5"}

    def ask(path: str) -> requests.Response:
        return requests.get(node.sidecar_url + path, headers={**as_caddy_for, wire.RAW_URI_HEADER: path}, timeout=10)

    health = ask(wire.HEALTH_PATH)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})  # the status, no details
    for path in (*wire.PAGE_PATHS, wire.METRICS_PATH, wire.STATS_PATH):
        assert ask(path).status_code == 403, path
    # Loopback (docker/systemd health checks) still gets the whole report.
    assert "parts" in requests.get(node.url + wire.HEALTH_PATH, timeout=10).json()


def test_caddy_error_logs_redact_signatures_front_and_node(origin, make_front, tmp_path):
    front = make_front(2)
    started = front.log_text()
    for node in front.nodes:
        node.stop()
    secrets = []
    for version in ("v2", "v4"):
        url = origin.presign(BUCKET, f"gone/{version}.bin", version=version)
        secrets += re.findall(r"(?:Signature|X-Amz-Signature|X-Amz-Credential)=([^&]+)", url)
        r = front.get(front.proxied(url), timeout=60)
        assert r.status_code in (502, 503), r.status_code
    log = wait_until(lambda: (t := front.log_text()).count("/gone/") >= 2 and t, timeout=10, what="the error lines")
    assert "REDACTED" in log and len(secrets) == 3  # SigV2: Signature; SigV4: Credential, Signature
    assert not [s for s in secrets if s in log], log

    # The node's Caddy, its sidecar unreachable: the same.
    port, dead = free_ports(2)
    env = {**os.environ, "HOME": str(tmp_path), "S3CACHE_CADDY_SITE": f"http://:{port}", "S3CACHE_SIDECAR": f"127.0.0.1:{dead}",
           "S3CACHE_OBJECTS_DIR": str(tmp_path / "objects"), "S3CACHE_ACCESS_LOG": str(tmp_path / "access.log"),
           "S3CACHE_ACCESS": "open"}
    (tmp_path / "objects").mkdir()
    caddy = subprocess.Popen([str(BIN / "caddy"), "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port), timeout=10, what="the node's Caddy")
        url = origin.presign(BUCKET, "gone/node.bin", version="v4")
        r = raw_request("GET", f"http://127.0.0.1:{port}" + url[len(origin.url):], timeout=60)
        assert r.status_code == 502
    finally:
        caddy.terminate()
        err = caddy.communicate(timeout=20)[1].decode(errors="replace")
    assert "/gone/node.bin" in err and "REDACTED" in err
    assert not [s for s in re.findall(r"(?:Signature|Credential)=([^&]+)", url) if s in err], err
    # Plain HTTP only, as on the nodes: no HTTP/2 or HTTP/3 start-up warnings, no warning at all.
    assert "requires TLS" not in started and "requires TLS" not in err, started
    assert "WARN" not in started, started


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]  # distinct: free_port never hands out a port twice


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# -- the front reads a Host as the nodes do ---------------------------------------------------------------

def front_bucket_rule(bucket_dir: str):
    """Caddyfile.front's own lines, run in Python: the X-S3cache-Shard-Host edits, then the bucket map."""
    text = (ROOT / "Caddyfile.front").read_text()
    edits = []
    for find, replace in re.findall(r'^\t+request_header X-S3cache-Shard-Host ("[^"]*"|\S+) ("[^"]*"|\S+)$', text, re.M):
        edits.append((re.compile(find.strip('"')), replace.strip('"')))
    assert re.search(r"^\t+request_header X-S3cache-Shard-Host \{http\.request\.host\}$", text, re.M)
    assert len(edits) == 27, "the host folding changed shape"
    entries = map_entries(text, "{http.request.header.X-S3cache-Shard-Host}", "{shard_bucket}",
                          {"{$S3CACHE_DOMAIN_RE:s3cache-no-domain\\.invalid}": re.escape(DOMAIN),
                           "{$S3CACHE_BUCKET_DIR}": bucket_dir})

    def shard_bucket(caddy_host: str) -> str:
        for pattern, replace in edits:
            caddy_host = pattern.sub(replace, caddy_host)
        return map_value(entries, caddy_host)
    return shard_bucket


@pytest.mark.parametrize("bucket", [None, "one-bucket"])
@settings(max_examples=1000, deadline=None)
@given(host=hosts())
def test_the_front_names_the_bucket_the_nodes_name(bucket, host):
    rule = front_bucket_rule(f"/{bucket}" if bucket else "")
    python = Addressing("https://s3.amazonaws.com", domain=DOMAIN, bucket=bucket).bucket_for_host(host)
    # Caddy's {http.request.host} is the Host with the port split off as Go does it.
    assert rule(split_host_port(host.strip(" \t"))) == ("" if python is None else "/" + python)


def test_any_spelling_of_a_bucket_host_reaches_the_owner(origin, make_front):
    """Upper case, trailing dots, a port: one object, one node (never a second fill elsewhere)."""
    upstream = origin.url.replace("127.0.0.1", "localhost")
    front = make_front(2, S3CACHE_DOMAIN=DOMAIN, S3CACHE_UPSTREAM=upstream, HTTP_PROXY=origin.url, NO_PROXY="")
    owner = {}
    for i in range(16):
        key = f"hosts/{i:02d}.bin"
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        target = origin.presign(BUCKET, key, version="v2")[len(origin.url):]
        r = send(front.url, target.encode(), b"localhost")
        assert (r.status, r.headers["x-cache"]) == (307, "MISS"), key
        owner[key] = front.nodes.index(wait_holder(front.nodes, key))
    assert len(set(owner.values())) == 2, "both nodes own keys"
    spellings = [f"{BUCKET}.{DOMAIN}", f"{BUCKET.upper()}.{DOMAIN.upper()}", f"{BUCKET}.{DOMAIN}.",
                 f"{BUCKET.title()}.{DOMAIN}..:{front.port}", f"{BUCKET}.S3cache.Test:80"]
    probe = 0
    for key, home in owner.items():
        signed = origin.presign(BUCKET, key, version="v2")
        query = signed.split("?", 1)[1]
        for host in spellings:
            probe += 1
            r = send(front.url, f"/{key}?{query}&probe={probe}".encode(), host.encode())
            assert r.status < 500, (key, host, r.status)
            mark = f"probe={probe}\""
            seen = wait_until(lambda: [i for i, n in enumerate(front.nodes) if mark in access_log(n)],
                              timeout=10, what=f"{host}/{key} in a node's access log")
            assert seen == [home], (key, host, seen, home)
    # Every spelling was answered by the owner, so no other node can have filled a copy.
    assert all(holders(front.nodes, key) == [front.nodes[home]] for key, home in owner.items())


def access_log(node: Stack) -> str:
    path = node.layout.logs_dir / "access.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_host_in_path_urls_share_the_node_of_their_path_style_twin(origin, make_front):
    """Every form of an object is sharded as /<bucket>/<key> (the nodes' reading, s3cache/upstream_hosts.py):
    a host-in-path URL, in either of its forms, hits where the path-style URL filled."""
    front = make_front(3, S3CACHE_UPSTREAM_HOSTS="http://127.0.0.1,http://*.localhost")
    port = origin.url.rpartition(":")[2]
    keys = [f"hip/{i:02d}/object.bin" for i in range(12)]
    for key in keys:
        origin.s3().put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    for key in keys:
        url = origin.presign(BUCKET, key, version="v4")
        assert front.get(front.proxied(url)).status_code == 307
        wait_holder(front.nodes, key)
    for key in keys:
        for target in (f"/127.0.0.1:{port}/{BUCKET}/{key}", f"/{BUCKET}.localhost:{port}/{key}"):
            r = front.get(front.url + target)
            assert (r.status_code, r.headers.get("X-Cache"), r.content) == (200, "HIT", key.encode()), (target, r.status_code)
        assert len(holders(front.nodes, key)) == 1
    # A write in this form goes to the host in its path, not path-style to S3CACHE_UPSTREAM; a host off the
    # list is refused.
    target = f"/127.0.0.1:{port}/{BUCKET}/up%20load?X-Amz-Signature=a%2Fb"
    r = raw_request("PUT", front.url + target)
    assert (r.status_code, r.headers.get("Location")) == (307, "http:/" + target)
    r = raw_request("PUT", front.url + f"/evil.example.com:{port}/{BUCKET}/k")
    assert (r.status_code, r.headers.get("Location")) == (403, None) and b"<Code>AccessDenied</Code>" in r.content
