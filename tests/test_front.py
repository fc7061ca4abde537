"""The front tier end to end: three full nodes behind `s3cache up --front`, sharded by object path.

Each node is a whole stack (Caddy, sidecar, evictor, its own cache directory); the front is Caddy
alone with Caddyfile.front. Everything is on 127.0.0.1, in front of the signature-enforcing origin.
"""

from __future__ import annotations

import http.client
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack import BIN, FrontStack, Stack, raw_request, wait_until

pytestmark = pytest.mark.integration

BUCKET = "front-tests"
N_OBJECTS = 45


@pytest.fixture(scope="module", autouse=True)
def bucket(origin):
    origin.ensure_bucket(BUCKET)
    return BUCKET


@pytest.fixture
def front(make_stack, origin, tmp_path):
    """Three full nodes (S3CACHE_ACCESS=open: hits cost nothing upstream) and the front before them."""
    nodes = [make_stack(S3CACHE_ACCESS="open") for _ in range(3)]
    f = FrontStack(tmp_path / "front", origin.url, nodes).start()
    yield f
    f.stop()


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
