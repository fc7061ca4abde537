"""The Ansible role for real: site.yml onto a booted Debian 12 root (systemd-nspawn), over SSH.

The target lives in a network namespace of the test's own and reaches the registries through NAT
(apt and pip run there as on a VM). The signature-enforcing test origin runs on the host's 127.0.0.1;
a relay puts it on the namespace's 127.0.0.1:9000, which the deployed cache uses as its upstream, and
the test talks to the deployed Caddy on the namespace's 127.0.0.1:8080, as a local client would.
"""

from __future__ import annotations

import json
import os

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig

from s3cache.config import caddy_environment
from s3cache.config import Config
from tests.deploy.ansible import recap, run, tool
from tests.deploy.hostsetup import require_debs, require_namespaces, require_root, rootfs_tarball
from tests.deploy.netns import Relay, entered
from tests.deploy.target import Target
from tests.origin.credentials import ACCESS_KEY_1, REGION, SECRET_KEY_1
from tests.stack import wait_until

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

UPSTREAM = "http://127.0.0.1:9000"  # the relay to the origin, inside the target's namespace
PROXY = "http://127.0.0.1:8080"
BUCKET = "ansible-tests"
UNITS = ("s3cache-caddy", "s3cache-sidecar", "s3cache-evictor")
# Settings for the test deploy; the domain exercises the regular expression derived for Caddy.
EXTRA_VARS = {
    "s3cache_upstream": UPSTREAM,
    "s3cache_domain": "Cache-1.Example.test.",
    "s3cache_evict_interval": 5,
}


class Deployment:
    def __init__(self, target: Target, inventory, workdir):
        self.target, self.inventory, self.workdir = target, inventory, workdir

    def play(self, **extra_vars) -> tuple[int, str, dict[str, int]]:
        vars_file = self.workdir / f"vars-{len(list(self.workdir.glob('vars-*')))}.json"
        vars_file.write_text(json.dumps({**EXTRA_VARS, **extra_vars}))
        out = run("ansible-playbook", "-i", str(self.inventory), "-e", f"@{vars_file}", "site.yml")
        text = out.stdout + out.stderr
        return out.returncode, text, recap(text) if "PLAY RECAP" in text else {}

    def journal(self) -> str:
        """The units' last log lines and states, for failure messages."""
        units = " ".join(f"-u {unit}" for unit in UNITS)
        return self.target.ssh(f"systemctl --no-pager status {' '.join(UNITS)}; journalctl --no-pager {units} | tail -40").stdout

    def get(self, path_and_query: str) -> requests.Response:
        with entered(self.target.netns.name):
            return requests.get(PROXY + path_and_query, allow_redirects=False, timeout=10)

    def process_env(self, unit: str) -> dict[str, str]:
        pid = self.target.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        raw = self.target.ssh(f"cat /proc/{pid}/environ").stdout
        return dict(item.partition("=")[::2] for item in raw.split("\0") if item)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, origin):
    require_root()
    tool("ansible-playbook")
    require_debs("systemd-container", "iptables", "openssh-client")
    require_namespaces()
    workdir = tmp_path_factory.mktemp("ansible")
    target = Target(workdir, rootfs_tarball(), f"s3c-{os.getpid()}-a", subnet=1 + os.getpid() % 250)
    relay = None
    try:
        target.boot()
        relay = Relay(target.netns.name, ("127.0.0.1", 9000), None, ("127.0.0.1", int(origin.url.rpartition(":")[2])))
        deployment = Deployment(target, target.inventory(workdir / "inventory.ini"), workdir)
        deployment.first = deployment.play()
        yield deployment
    finally:
        if relay:
            relay.close()
        target.destroy()


def test_the_first_run_deploys_and_ends_with_a_healthy_node(deployment):
    rc, output, counters = deployment.first
    assert rc == 0, output[-3000:] + deployment.journal()
    assert counters["failed"] == 0 and counters["changed"] > 0
    assert "TASK [s3cache : Check /_s3cache/health answers 200 through Caddy]" in output


def test_the_three_services_are_active_and_enabled(deployment):
    for unit in UNITS:
        assert deployment.target.ssh(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert deployment.target.ssh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit


def test_systemd_analyze_verify_finds_nothing_in_the_units(deployment):
    units = " ".join(f"/etc/systemd/system/{unit}.service" for unit in UNITS)
    out = deployment.target.ssh(f"systemd-analyze verify {units}")
    # It only warns about unknown keys and exits 0: any output at all is a finding.
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_caddy_gets_what_s3cache_up_would_derive(deployment, tmp_path):
    settings = {k: v for k, v in deployment.process_env("s3cache-sidecar").items() if k.startswith("S3CACHE_")}
    config = Config.from_env(settings)
    expected = caddy_environment(config)
    got = {k: v for k, v in deployment.process_env("s3cache-caddy").items() if k.startswith("S3CACHE_")}
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


def test_a_second_run_changes_nothing(deployment):
    rc, output, counters = deployment.play()
    assert rc == 0, output[-6000:]
    assert counters["changed"] == 0, [line for line in output.splitlines() if line.startswith("changed:")]


def test_a_broken_setting_fails_the_run_and_a_fix_recovers(deployment):
    # The settings are validated on the node when the role derives Caddy's environment from them
    # (`s3cache caddy-env`): the run stops there, with the one line naming the variable. (A unit that
    # still fails at run time is caught by the role's closing health check.)
    rc, output, counters = deployment.play(s3cache_fill_workers=0, s3cache_health_retries=4, s3cache_health_delay=2)
    assert rc != 0 and counters["failed"] == 1, output[-6000:]
    failed_task = output[:output.index("fatal:")].rpartition("TASK [")[2]
    assert failed_task.startswith(("s3cache : Derive", "s3cache : Check /_s3cache/health answers 200 through Caddy")), \
        output[-3000:]
    assert "S3CACHE_FILL_WORKERS: expected a positive integer" in output[output.index("fatal:"):], output[-3000:]

    rc, output, counters = deployment.play()
    assert rc == 0 and counters["failed"] == 0, output[-6000:]
