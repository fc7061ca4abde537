"""docker-compose.yml for real: Debian's docker-compose driving podman, miss -> fill -> hit through it;
then the front tier on one host: that stack as node1 (docker-compose.node.yml), a second node, and the
front (docker-compose.front.yml), each a project of its own on the tier network, as README documents.

The images are built by compose from the project's Dockerfile on a local debootstrapped base (no
registry is reachable here); the official Caddy image is stood in for by that base plus the same
pinned Caddy binary. The stack runs inside a network namespace of the test's own: the client reaches
Caddy's published port on that namespace's loopback, and the sidecar reaches the signature-enforcing
test origin (on the host's 127.0.0.1) through a relay on the project network's gateway.
Podman runs no health checks by itself here (no systemd timers), so the test runs them.
"""

from __future__ import annotations

import os
import re

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig

from tests.deploy.compose import COMPOSE_FILE, FRONT_FILE, NODE_OVERRIDE, PODMAN_OVERRIDE, compose
from tests.deploy.hostsetup import require_debs, require_namespaces, require_root, rootfs_tarball
from tests.deploy.netns import NetNS, Relay, entered
from tests.deploy.podman import Podman
from tests.origin.credentials import ACCESS_KEY_1, REGION, SECRET_KEY_1
from tests.stack import wait_until

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

NS = f"s3c-{os.getpid()}-c"
PROJECT = f"s3ctest{os.getpid()}"
UPSTREAM = "http://10.200.64.1:9000"  # the relay, on the gateway compose.podman.yml gives the network
PROXY = "http://127.0.0.1:8080"       # Caddy's published port, inside NS
BUCKET = "compose-tests"
PARTS = ("sidecar", "evictor", "caddy")
# The front tier: the tier network (the nodes keep the default S3CACHE_ADMIN_ALLOW: the front's health
# checks get the status alone), the second node's and the front's projects, and where the front is published.
TIER_SUBNET = "10.200.65.0/24"
NODE2_PROJECT = f"{PROJECT}n2"
FRONT_PROJECT = f"{PROJECT}f"
FRONT = "http://127.0.0.1:8090"
TIER_BUCKET = "compose-tier"


class ComposeStack:
    def __init__(self, podman: Podman):
        self.podman = podman

    def container(self, part: str, project: str = PROJECT) -> str:
        return f"{project}_{part}_1"

    def healthy(self, part: str) -> bool:
        return self.podman.run("healthcheck", "run", self.container(part), check=False).returncode == 0

    def logs(self, part: str) -> str:
        out = self.podman.run("logs", self.container(part), check=False)
        return out.stdout + out.stderr

    def wait_until(self, predicate, timeout: float, what: str):
        """tests.stack.wait_until, with every part's log in the failure message."""
        try:
            return wait_until(predicate, timeout, interval=0.5, what=what)
        except AssertionError as exc:
            logs = "\n".join(f"--- {part}:\n{self.logs(part)[-3000:]}" for part in PARTS)
            raise AssertionError(f"{exc}\n{logs}") from None

    def get(self, path_and_query: str, base: str = PROXY) -> requests.Response:
        with entered(NS):
            return requests.get(base + path_and_query, allow_redirects=False, timeout=10)

    def cached(self, project: str, bucket: str) -> set[str]:
        """The keys a node's cache volume holds for ``bucket`` (read in its sidecar's container)."""
        out = self.podman.run("exec", self.container("sidecar", project), "sh", "-c",
                              f"cd /var/cache/s3cache/objects/{bucket} 2>/dev/null && find . -type f", check=False)
        return {line[2:] for line in out.stdout.splitlines() if line.startswith("./")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, origin):
    require_root()
    require_debs("podman", "docker-compose", "iptables")
    require_namespaces()
    podman = Podman(tmp_path_factory.mktemp("podman"))
    base = podman.base_image(rootfs_tarball())
    images = f"S3CACHE_PYTHON_IMAGE={base}\nS3CACHE_CADDY_IMAGE={podman.caddy_image(base)}\n"
    node_env = (f"S3CACHE_UPSTREAM={UPSTREAM}\nS3CACHE_EVICT_INTERVAL=2\n"
                + images)
    env_file = podman.workdir / "compose.env"  # node1's: the single-node checks use this stack
    env_file.write_text(f"S3CACHE_LISTEN=127.0.0.1:8080\nS3CACHE_NODE_NAME=node1\n{node_env}")
    node2_env = podman.workdir / "node2.env"
    node2_env.write_text(f"S3CACHE_LISTEN=127.0.0.1:8082\nS3CACHE_NODE_NAME=node2\n{node_env}")
    front_env = podman.workdir / "front.env"
    front_env.write_text(f"S3CACHE_LISTEN=127.0.0.1:8090\nS3CACHE_NODES=node1:8080,node2:8080\nS3CACHE_UPSTREAM={UPSTREAM}\n"
                         + images)
    # Each project as README says: node1 (with the test's podman additions), node2, the front.
    projects = [(PROJECT, env_file, (COMPOSE_FILE, NODE_OVERRIDE, PODMAN_OVERRIDE)),
                (NODE2_PROJECT, node2_env, (COMPOSE_FILE, NODE_OVERRIDE)),
                (FRONT_PROJECT, front_env, (FRONT_FILE,))]

    def run(*args: str, docker_host: str, check: bool = True, project=projects[0]):
        name, env, files = project
        out = compose(*args, env_file=env, files=files, project=name, docker_host=docker_host)
        assert not check or out.returncode == 0, f"docker-compose {' '.join(args)}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
        return out

    with podman.service("build") as host:
        run("build", docker_host=host)

    ns = NetNS(NS)
    relay = None
    try:
        ns.create()
        relay = Relay(NS, ("0.0.0.0", 9000), None, ("127.0.0.1", int(origin.url.rpartition(":")[2])))
        # The tier network, made once before the projects, as README's first command does.
        podman.run("network", "create", "--subnet", TIER_SUBNET, "s3cache-tier")
        with podman.service("run", netns=NS) as engine:
            try:
                for project in projects:
                    run("up", "-d", "--no-build", docker_host=engine, project=project)
                yield ComposeStack(podman)
            finally:
                for project in reversed(projects):
                    run("down", "-v", "-t", "5", docker_host=engine, check=False, project=project)
                    podman.remove_project(project[0])
                podman.run("network", "rm", "-f", "s3cache-tier", check=False)
                podman.run("image", "prune", "-f", check=False)  # layers of earlier sources, not the cache
    finally:
        if relay:
            relay.close()
        ns.delete()


@pytest.fixture(scope="module")
def cached_object(stack, origin):
    """An object fetched through the stack once (the miss), and cached by the fill."""
    s3 = origin.s3()
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    body = os.urandom(200_000)
    s3.put_object(Bucket=BUCKET, Key="dir/object.bin", Body=body)
    # Signed for the host the stack knows the origin by: SigV4 signs the Host.
    signer = boto3.client("s3", endpoint_url=UPSTREAM, region_name=REGION, aws_access_key_id=ACCESS_KEY_1,
                          aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}))
    url = signer.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "dir/object.bin"}, ExpiresIn=3600)
    path_and_query = url[len(UPSTREAM):]
    wait_until(lambda: stack.get("/_s3cache/health").status_code != 502, 30, what="Caddy to reach the sidecar")
    miss = stack.get(path_and_query)
    return url, path_and_query, body, miss


def test_all_three_parts_become_healthy(stack):
    for part in PARTS:
        wait_until(lambda: stack.healthy(part), 60, interval=1, what=f"{part} to be healthy")


def test_a_miss_redirects_to_the_exact_upstream_url(cached_object):
    url, _, _, miss = cached_object
    assert miss.status_code == 307
    assert miss.headers["X-Cache"] == "MISS"
    assert miss.headers["Location"] == url


def test_the_fill_makes_the_next_request_a_hit_served_by_caddy(stack, cached_object):
    _, path_and_query, body, _ = cached_object

    def hit():
        resp = stack.get(path_and_query)
        return resp if resp.status_code == 200 else None

    resp = stack.wait_until(hit, 30, what="the object to be cached")
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.content == body


def test_the_evictor_reads_caddys_access_log_from_the_shared_volume(stack, cached_object):
    test_the_fill_makes_the_next_request_a_hit_served_by_caddy(stack, cached_object)
    hits = lambda: any(int(n) > 0 for n in re.findall(r"log_hits=(\d+)", stack.logs("evictor")))  # noqa: E731
    stack.wait_until(hits, 30, what="an eviction pass to count the hit from Caddy's log")


def test_every_part_logs_to_stdout(stack):
    wait_until(lambda: "0.0.0.0:8081" in stack.logs("sidecar"), 20, what="the sidecar's start line")
    wait_until(lambda: "evicting /var/cache/s3cache" in stack.logs("evictor"), 20, what="the evictor's start line")


def test_a_front_tier_serves_through_two_nodes_and_a_stopped_node_moves_only_its_keys(stack, origin):
    s3 = origin.s3()
    try:
        s3.create_bucket(Bucket=TIER_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    keys = [f"tier/{i:02d}.bin" for i in range(12)]
    bodies = {key: os.urandom(2000 + i) for i, key in enumerate(keys)}
    for key, body in bodies.items():
        s3.put_object(Bucket=TIER_BUCKET, Key=key, Body=body)
    signer = boto3.client("s3", endpoint_url=UPSTREAM, region_name=REGION, aws_access_key_id=ACCESS_KEY_1,
                          aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}))
    nodes = (PROJECT, NODE2_PROJECT)
    answered = []

    def reads(misses: set[str], expires: int) -> None:
        for key in keys:
            url = signer.generate_presigned_url("get_object", Params={"Bucket": TIER_BUCKET, "Key": key}, ExpiresIn=expires)
            resp = stack.get(url[len(UPSTREAM):], FRONT)
            answered.append(resp.status_code)
            if key in misses:
                assert (resp.status_code, resp.headers["X-Cache"], resp.headers["Location"]) == (307, "MISS", url), key
            else:
                assert (resp.status_code, resp.headers["X-Cache"], resp.content) == (200, "HIT", bodies[key]), key

    def holders(projects) -> dict[str, str] | None:
        cached = {p: stack.cached(p, TIER_BUCKET) for p in projects}
        held = {key: [p for p in projects if key in cached[p]] for key in keys}
        assert all(len(h) <= 1 for h in held.values()), held
        return {key: h[0] for key, h in held.items()} if all(held.values()) else None

    def front_answers() -> bool:
        try:
            return stack.get("/_s3cache/health", FRONT).status_code == 200
        except requests.ConnectionError:
            return False  # still starting

    stack.wait_until(front_answers, 30, what="the front to answer")
    reads(set(keys), 600)
    owner = stack.wait_until(lambda: holders(nodes), 30, what="every key cached on one node")
    assert set(owner.values()) == set(nodes), "one node got every key"
    reads(set(), 900)  # another signature of each key: the same node, a hit

    # node2's Caddy stops: its keys move to node1 (misses there), node1's stay hits, nobody sees an error.
    moved = {key for key in keys if owner[key] == NODE2_PROJECT}
    stack.podman.run("stop", "-t", "2", stack.container("caddy", NODE2_PROJECT))
    reads(moved, 1200)
    stack.wait_until(lambda: holders((PROJECT,)), 30, what="node2's keys to be cached on node1")
    reads(set(), 1500)
    assert set(answered) <= {200, 307}, answered


def test_a_part_that_dies_is_restarted(stack, cached_object):
    name = stack.container("sidecar")
    before = int(stack.podman.run("inspect", name, "--format", "{{.RestartCount}}").stdout)
    # SIGINT: the one signal Python as PID 1 acts on (it has a handler for it).
    stack.podman.run("exec", name, "python", "-c", "import os, signal; os.kill(1, signal.SIGINT)", check=False)
    wait_until(lambda: int(stack.podman.run("inspect", name, "--format", "{{.RestartCount}}").stdout) > before,
               30, interval=0.5, what="the sidecar to be restarted")
    wait_until(lambda: stack.healthy("sidecar"), 30, interval=1, what="the restarted sidecar to be healthy")
    # The restarted sidecar answers the access checks of hits again.
    test_the_fill_makes_the_next_request_a_hit_served_by_caddy(stack, cached_object)
