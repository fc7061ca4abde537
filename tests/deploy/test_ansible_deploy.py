"""The Ansible role for real: site.yml onto booted Debian 12 roots (systemd-nspawn), over SSH.

Three targets, booted in parallel: two cache nodes (group cache_nodes) and a front (group front). Each
lives in a network namespace of the test's own and reaches the registries through NAT (apt and pip run
there as on a VM); between them the host routes, so each sees the others' own addresses, as on a LAN.
The signature-enforcing test origin runs on the host's 127.0.0.1; a relay puts it on each node's
127.0.0.1:9000, which the deployed caches use as their upstream. The test talks to a deployed Caddy on
its namespace's 127.0.0.1:8080, as a local client would: node a's for the node's own checks, the
front's for the tier.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig

from s3cache.config import Config, HostPort, caddy_environment
from tests.deploy.ansible import recap, run, tool
from tests.deploy.hostsetup import require_debs, require_namespaces, require_root, rootfs_tarball
from tests.deploy.netns import Relay, entered
from tests.deploy.target import Target, inventory
from tests.origin.credentials import ACCESS_KEY_1, REGION, SECRET_KEY_1
from tests.reload_clients import ReloadClients, assert_nothing_dropped
from tests.stack import wait_until

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

UPSTREAM = "http://127.0.0.1:9000"  # the relay to the origin, inside the target's namespace
PROXY = "http://127.0.0.1:8080"
BUCKET = "ansible-tests"
UNITS = ("s3cache-caddy", "s3cache-sidecar", "s3cache-evictor")
FRONT_UNIT = "s3cache-front"
FRONT_BUCKET = "ansible-front-tests"
# Settings for the test deploy; the domain exercises the regular expression derived for Caddy.
EXTRA_VARS = {
    "s3cache_upstream": UPSTREAM,
    "s3cache_domain": "Cache-1.Example.test.",
    "s3cache_evict_interval": 5,
}


class Deployment:
    def __init__(self, nodes: list[Target], front: Target, inventory, workdir):
        self.nodes, self.front, self.inventory, self.workdir = nodes, front, inventory, workdir
        self.target = nodes[0]  # the node the single-node checks look at
        self.hosts = [t.name for t in (*nodes, front)]

    def play(self, *options: str, **extra_vars) -> tuple[int, str, dict[str, dict[str, int]]]:
        """rc, output, and each host's PLAY RECAP counters."""
        vars_file = self.workdir / f"vars-{len(list(self.workdir.glob('vars-*')))}.json"
        vars_file.write_text(json.dumps({**EXTRA_VARS, **extra_vars}))
        out = run("ansible-playbook", "-i", str(self.inventory), "-e", f"@{vars_file}", *options, "site.yml")
        text = out.stdout + out.stderr
        return out.returncode, text, {h: recap(text, h) for h in self.hosts} if "PLAY RECAP" in text else {}

    def journal(self) -> str:
        """The units' last log lines and states, for failure messages."""
        units = " ".join(f"-u {unit}" for unit in UNITS)
        text = ""
        for node in self.nodes:
            text += f"--- {node.name}\n" + node.ssh(
                f"systemctl --no-pager status {' '.join(UNITS)}; journalctl --no-pager {units} | tail -40").stdout
        return text + f"--- {self.front.name}\n" + self.front.ssh(
            f"systemctl --no-pager status {FRONT_UNIT}; journalctl --no-pager -u {FRONT_UNIT} | tail -40").stdout

    def get(self, path_and_query: str, target: Target | None = None) -> requests.Response:
        with entered((target or self.target).netns.name):
            return requests.get(PROXY + path_and_query, allow_redirects=False, timeout=10)

    def process_env(self, unit: str, target: Target | None = None) -> dict[str, str]:
        target = target or self.target
        pid = target.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        raw = target.ssh(f"cat /proc/{pid}/environ").stdout
        return dict(item.partition("=")[::2] for item in raw.split("\0") if item)

    def cached(self, node: Target, bucket: str) -> set[str]:
        """The keys ``node`` holds in its cache for ``bucket``."""
        out = node.ssh(f"cd /var/cache/s3cache/objects/{bucket} 2>/dev/null && find . -type f")
        return {line[2:] for line in out.stdout.splitlines() if line.startswith("./")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, origin):
    require_root()
    tool("ansible-playbook")
    require_debs("systemd-container", "iptables", "openssh-client")
    require_namespaces()
    workdir = tmp_path_factory.mktemp("ansible")
    tarball = rootfs_tarball()
    # Three /30 subnets of 10.200.100-249.0 per run (the compose tests use 10.200.64-65.0/24).
    subnet = 100 + (os.getpid() % 50) * 3
    targets = [Target(workdir / name, tarball, f"s3c-{os.getpid()}-{name}", subnet=subnet + i)
               for i, name in enumerate(("a", "b", "f"))]
    *nodes, front = targets
    relays = []
    try:
        with ThreadPoolExecutor(len(targets)) as pool:
            list(pool.map(Target.boot, targets))
        for node in nodes:
            relays.append(Relay(node.netns.name, ("127.0.0.1", 9000), None,
                                ("127.0.0.1", int(origin.url.rpartition(":")[2]))))
        # Nodes listen where the front reaches them, with the default S3CACHE_ADMIN_ALLOW: the front's health
        # checks, from another host, get the status alone (which is all they read).
        node_vars = {"s3cache_listen": "0.0.0.0:8080"}
        hosts = inventory(workdir / "inventory.ini", nodes, [front], node_vars=node_vars,
                          front_vars={"s3cache_listen": "0.0.0.0:8080"})
        deployment = Deployment(nodes, front, hosts, workdir)
        deployment.first = deployment.play()
        yield deployment
    finally:
        for relay in relays:
            relay.close()
        with ThreadPoolExecutor(len(targets)) as pool:
            list(pool.map(Target.destroy, targets))


def test_the_first_run_deploys_and_ends_with_a_healthy_node(deployment):
    rc, output, counters = deployment.first
    assert rc == 0, output[-3000:] + deployment.journal()
    for host in deployment.hosts:
        assert counters[host]["failed"] == 0 and counters[host]["changed"] > 0, host
    assert "TASK [s3cache : Check /_s3cache/health answers 200 through Caddy]" in output
    assert "TASK [s3cache : Check every cache node answers the front's health check, from the front]" in output


def test_the_three_services_are_active_and_enabled(deployment):
    for node in deployment.nodes:
        for unit in UNITS:
            assert node.ssh(f"systemctl is-active {unit}").stdout.strip() == "active", (node.name, unit)
            assert node.ssh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", (node.name, unit)
        assert node.ssh(f"systemctl cat {FRONT_UNIT}").returncode != 0, "a node runs no front"


def test_the_front_runs_caddy_alone_as_its_one_unit(deployment):
    front = deployment.front
    assert front.ssh(f"systemctl is-active {FRONT_UNIT}").stdout.strip() == "active"
    assert front.ssh(f"systemctl is-enabled {FRONT_UNIT}").stdout.strip() == "enabled"
    for unit in UNITS:
        assert front.ssh(f"systemctl cat {unit}").returncode != 0, f"a front runs no {unit}"
    assert front.ssh("test -e /var/cache/s3cache/objects").returncode != 0, "a front caches nothing"


def test_systemd_analyze_verify_finds_nothing_in_the_units(deployment):
    units = " ".join(f"/etc/systemd/system/{unit}.service" for unit in UNITS) + " /etc/systemd/system/s3cache-caddy.socket"
    for target, listed in ((deployment.target, units), (deployment.front, f"/etc/systemd/system/{FRONT_UNIT}.service")):
        out = target.ssh(f"systemd-analyze verify {listed}")
        # It only warns about unknown keys and exits 0: any output at all is a finding.
        assert (out.returncode, out.stdout + out.stderr) == (0, ""), target.name


def test_caddy_gets_what_s3cache_up_would_derive(deployment, tmp_path):
    settings = {k: v for k, v in deployment.process_env("s3cache-sidecar").items() if k.startswith("S3CACHE_")}
    config = Config.from_env(settings)
    expected = caddy_environment(config)
    got = {k: v for k, v in deployment.process_env("s3cache-caddy").items() if k.startswith("S3CACHE_")}
    # Except where it listens: the socket systemd holds for it (s3cache-caddy.socket), its fd 3.
    assert got == {**expected, "S3CACHE_CADDY_BIND": "fd/3"}


def env_file(text: str) -> dict[str, str]:
    """KEY="value" lines as the role writes them for systemd (\\ and \" escaped)."""
    found = re.findall(r'^(S3CACHE_\w+)="((?:[^"\\]|\\.)*)"$', text, re.M)
    return {key: re.sub(r"\\(.)", r"\1", value) for key, value in found}


def test_the_fronts_caddy_gets_what_s3cache_up_front_would_derive(deployment):
    front = deployment.front
    settings = env_file(front.ssh("cat /etc/s3cache/s3cache.env").stdout)
    config = Config.from_env(settings)
    # S3CACHE_NODES from the inventory's cache_nodes: each node's address and the port it listens on.
    assert config.nodes == tuple(HostPort(node.address, 8080) for node in deployment.nodes)
    # As `s3cache caddy-env` (and so `s3cache up --front`) derives it.
    expected = caddy_environment(config)
    got = {k: v for k, v in deployment.process_env(FRONT_UNIT, front).items() if k.startswith("S3CACHE_")}
    assert got == expected


def test_a_miss_fills_and_the_next_request_is_a_hit_from_the_deployed_caddy(deployment, origin):
    s3 = origin.s3()
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    body = os.urandom(150_000)
    s3.put_object(Bucket=BUCKET, Key="deployed/object.bin", Body=body)
    signer = boto3.client("s3", endpoint_url=UPSTREAM, region_name=REGION, aws_access_key_id=ACCESS_KEY_1,
                          aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}))
    url = signer.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "deployed/object.bin"})
    path_and_query = url[len(UPSTREAM):]

    miss = deployment.get(path_and_query)
    assert (miss.status_code, miss.headers["X-Cache"], miss.headers["Location"]) == (307, "MISS", url)

    def hit():
        resp = deployment.get(path_and_query)
        return resp if resp.status_code == 200 else None

    try:
        resp = wait_until(hit, 30, interval=0.3, what="the object to be cached")
    except AssertionError:
        journal = deployment.target.ssh("journalctl -u s3cache-sidecar --no-pager | tail -30").stdout
        raise AssertionError(f"not cached; sidecar journal:\n{journal}") from None
    assert resp.headers["X-Cache"] == "HIT"
    assert resp.content == body
    assert deployment.target.ssh(f"test -f /var/cache/s3cache/objects/{BUCKET}/deployed/object.bin").returncode == 0


def test_the_front_serves_through_both_nodes_and_a_stopped_node_moves_only_its_keys(deployment, origin):
    s3 = origin.s3()
    try:
        s3.create_bucket(Bucket=FRONT_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    keys = [f"tier/{i:02d}/object.bin" for i in range(16)]
    bodies = {key: os.urandom(3000 + i) for i, key in enumerate(keys)}
    for key, body in bodies.items():
        s3.put_object(Bucket=FRONT_BUCKET, Key=key, Body=body)
    signer = boto3.client("s3", endpoint_url=UPSTREAM, region_name=REGION, aws_access_key_id=ACCESS_KEY_1,
                          aws_secret_access_key=SECRET_KEY_1,
                          config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}))
    answered = []  # every status a client of the front saw

    def get(key: str, expires: int) -> tuple[str, requests.Response]:
        url = signer.generate_presigned_url("get_object", Params={"Bucket": FRONT_BUCKET, "Key": key}, ExpiresIn=expires)
        resp = deployment.get(url[len(UPSTREAM):], deployment.front)
        answered.append(resp.status_code)
        return url, resp

    def holders(nodes: list[Target]) -> dict[str, list[Target]] | None:
        """Which node holds each key, once every key is cached; a key on two nodes fails at once."""
        cached = {node.name: deployment.cached(node, FRONT_BUCKET) for node in nodes}
        held = {key: [node for node in nodes if key in cached[node.name]] for key in keys}
        assert all(len(h) <= 1 for h in held.values()), {k: [n.name for n in h] for k, h in held.items() if len(h) > 1}
        return held if all(held.values()) else None

    def misses_then_hits(keys_to_miss: set[str], expires: int) -> None:
        for key in keys:
            url, resp = get(key, expires)
            if key in keys_to_miss:
                assert (resp.status_code, resp.headers["X-Cache"], resp.headers["Location"]) == (307, "MISS", url), key
            else:
                assert (resp.status_code, resp.headers["X-Cache"], resp.content) == (200, "HIT", bodies[key]), key

    # First reads miss through the front; each object is filled on exactly one node, both nodes get some.
    misses_then_hits(set(keys), 600)
    owner = {key: held[0] for key, held in
             wait_until(lambda: holders(deployment.nodes), 30, interval=0.5, what="every key cached on a node").items()}
    assert {node.name for node in owner.values()} == {node.name for node in deployment.nodes}, "one node got every key"
    # Another signature of the same key: the same node, so a hit.
    misses_then_hits(set(), 900)

    stopped, survivor = deployment.nodes
    moved = {key for key in keys if owner[key] is stopped}
    try:
        stopped.ssh(f"systemctl stop {' '.join(UNITS)}")
        # The stopped node's keys are misses on the survivor; the survivor's keys stay hits; nobody sees an error.
        misses_then_hits(moved, 1200)
        wait_until(lambda: holders([survivor]), 30, interval=0.5, what="the stopped node's keys to be cached on the survivor")
        misses_then_hits(set(), 1500)
        assert deployment.cached(stopped, FRONT_BUCKET) == moved, "the stopped node's own copies are kept as they were"
    finally:
        stopped.ssh(f"systemctl start {' '.join(UNITS)}")
    assert set(answered) <= {200, 307}, answered
    wait_until(lambda: answers(lambda: deployment.get("/_s3cache/health", stopped)), 30, interval=0.5,
               what="the stopped node to be back")


def answers(get) -> bool:
    """200 from ``get()``; a refused connection (a service still starting) is a no, not an error."""
    try:
        return get().status_code == 200
    except requests.ConnectionError:
        return False


def test_systemctl_reload_drops_no_connection(deployment):
    """`systemctl reload s3cache-caddy` swaps Caddy's configuration with clients connecting all the while."""
    node = deployment.target
    original = node.ssh("cat /etc/s3cache/caddy.env").stdout
    assert 'S3CACHE_UPSTREAM="http://127.0.0.1:9000"' in original
    changed = original.replace('S3CACHE_UPSTREAM="http://127.0.0.1:9000"', 'S3CACHE_UPSTREAM="http://127.0.0.1:9001"')

    def reload_with(text: str) -> None:
        # A changed value, so each reload is a real configuration swap (Caddy skips an unchanged one).
        out = node.ssh(f"printf %s {shlex.quote(text)} > /etc/s3cache/caddy.env && systemctl reload s3cache-caddy")
        assert out.returncode == 0, out.stdout + out.stderr

    try:
        with ReloadClients(8080, enter=lambda: entered(node.netns.name)) as clients:
            wait_until(lambda: len(clients.results) > 3, 30, what="the clients to start")
            reload_with(changed)
            with entered(node.netns.name):  # the swap happened: Caddy's own redirect of a write names the new value
                moved = requests.put(PROXY + "/b/k", allow_redirects=False, timeout=10)
            assert moved.headers["Location"] == "http://127.0.0.1:9001/b/k"
            reload_with(original)
            done = len(clients.results)
            wait_until(lambda: len(clients.results) > done + 20, 30, what="requests after the reloads")
    finally:
        node.ssh(f"printf %s {shlex.quote(original)} > /etc/s3cache/caddy.env && systemctl reload s3cache-caddy")
    assert_nothing_dropped(clients.results, reloads=2)


def test_a_second_run_changes_nothing(deployment):
    rc, output, counters = deployment.play()
    assert rc == 0, output[-6000:]
    for host in deployment.hosts:
        assert counters[host]["changed"] == 0, [line for line in output.splitlines() if line.startswith("changed:")]


def test_a_broken_setting_fails_the_run_and_a_fix_recovers(deployment):
    # The settings are validated on the node when the role derives Caddy's environment from them
    # (`s3cache caddy-env`): the run stops there, with the one line naming the variable. (A unit that
    # still fails at run time is caught by the role's closing health check.)
    # On the nodes only: a front would then wait out its own check of the broken nodes too.
    rc, output, counters = deployment.play("--limit", "cache_nodes", s3cache_fill_workers=0, s3cache_health_retries=4,
                                           s3cache_health_delay=2)
    assert rc != 0, output[-6000:]
    for node in deployment.nodes:
        assert counters[node.name]["failed"] == 1, output[-6000:]
    failed_task = output[:output.index("fatal:")].rpartition("TASK [")[2]
    assert failed_task.startswith(("s3cache : Derive", "s3cache : Check /_s3cache/health answers 200 through Caddy")), \
        output[-3000:]
    assert "S3CACHE_FILL_WORKERS: expected a positive integer" in output[output.index("fatal:"):], output[-3000:]

    rc, output, counters = deployment.play("--limit", "cache_nodes")
    assert rc == 0 and all(counters[node.name]["failed"] == 0 for node in deployment.nodes), output[-6000:]
