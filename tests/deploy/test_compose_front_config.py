"""The front tier on one host, offline: docker-compose.front.yml and docker-compose.node.yml as the real
compose schema reads them, and the front's Caddy gets what `s3cache up --front` derives.

(tests/deploy/test_compose_podman.py runs the same files for real under podman.)
"""

from __future__ import annotations

import dataclasses

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from s3cache.config import Config, HostPort, caddy_environment
from tests.deploy.compose import COMPOSE_FILE, FRONT_FILE, NODE_OVERRIDE, ROOT, compose

pytestmark = pytest.mark.deploy

FRONT_ENV = "S3CACHE_NODES=node1:8080,node2:8080,node3:8080\nS3CACHE_LISTEN=0.0.0.0:80\n"
NODE_ENV = "S3CACHE_NODE_NAME=node2\nS3CACHE_LISTEN=127.0.0.1:8082\n"


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tier.env"
    path.write_text(text)
    return path


def rendered(env: Path, files: tuple[Path, ...]) -> dict:
    out = compose("config", env_file=env, files=files)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("files, text", [((FRONT_FILE,), FRONT_ENV), ((COMPOSE_FILE, NODE_OVERRIDE), NODE_ENV)],
                         ids=["front", "node"])
def test_the_tier_files_validate_offline_without_warnings(tmp_path, files, text):
    out = compose("config", "-q", env_file=env_file(tmp_path, text), files=files)
    assert (out.returncode, out.stderr) == (0, "")


@pytest.mark.parametrize("files, missing", [((FRONT_FILE,), "S3CACHE_NODES"),
                                            ((COMPOSE_FILE, NODE_OVERRIDE), "S3CACHE_NODE_NAME")],
                         ids=["front", "node"])
def test_what_the_tier_needs_is_required_by_name(tmp_path, files, missing):
    out = compose("config", "-q", env_file=env_file(tmp_path, ""), files=files)
    assert out.returncode != 0 and missing in out.stderr


def test_a_node_joins_the_tier_network_under_its_name(tmp_path):
    config = rendered(env_file(tmp_path, NODE_ENV), (COMPOSE_FILE, NODE_OVERRIDE))
    caddy = config["services"]["caddy"]
    assert caddy["networks"]["tier"]["aliases"] == ["node2"]
    assert "default" in caddy["networks"], "the node's Caddy still reaches its own sidecar"
    assert caddy["ports"] == ["127.0.0.1:8082:8080/tcp"]
    assert config["networks"]["tier"] == {"external": True, "name": "s3cache-tier"}


def test_the_front_is_caddy_alone_with_caddyfile_front_on_the_tier_network(tmp_path):
    config = rendered(env_file(tmp_path, FRONT_ENV), (FRONT_FILE,))
    # Caddy, after the one-shot that derives what it reads (`s3cache caddy-env`, no copy of the derivation here).
    assert sorted(config["services"]) == ["caddy-env", "front"]
    derive = config["services"]["caddy-env"]
    assert derive["command"][:2] == ["s3cache", "caddy-env"] and derive["restart"] == "no"
    front = config["services"]["front"]
    assert front["depends_on"] == {"caddy-env": {"condition": "service_completed_successfully"}}
    assert f"{ROOT / 'Caddyfile.front'}:/etc/caddy/Caddyfile:ro" in front["volumes"]
    assert front["ports"] == ["0.0.0.0:80:8080/tcp"]
    assert list(front["networks"]) == ["tier"]
    assert config["networks"]["tier"] == {"external": True, "name": "s3cache-tier"}
    assert front["restart"] == "unless-stopped" and front["read_only"] is True
    assert front["healthcheck"]["test"][0] == "CMD" and not any(" " in arg for arg in front["healthcheck"]["test"])


def front_process_env(config: dict, tmp_path: Path) -> dict[str, str]:
    """The environment the front's container command hands to `caddy run` (a stand-in caddy prints it),
    after the caddy-env service's command ran with its environment (here, with this checkout's code)."""
    derive = config["services"]["caddy-env"]
    shared = "/var/cache/s3cache/"
    output = derive["command"][derive["command"].index("--output") + 1]
    assert output.startswith(shared)
    env_out = tmp_path / output.removeprefix(shared)
    args = [a if a != output else str(env_out) for a in derive["command"][1:]]
    subprocess.run([sys.executable, "-m", "commands.main", *args], check=True, cwd=tmp_path,
                   env={**{k: str(v) for k, v in derive["environment"].items()},
                        "PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)})
    fake = tmp_path / "bin" / "caddy"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    front = config["services"]["front"]
    script = front["command"][0].replace("$$", "$").replace(shared, f"{tmp_path}/")  # compose prints $ escaped
    env = {k: str(v) for k, v in front["environment"].items()}
    env["PATH"] = f"{fake.parent}:{os.environ['PATH']}"
    out = subprocess.run([*front["entrypoint"], script], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("domain, bucket", [
    ("", ""),
    ("Cache-1.Example.COM.", ""),
    ("", "my-bucket.v2"),
])
def test_the_fronts_caddy_gets_what_s3cache_up_front_derives(tmp_path, domain, bucket):
    settings = {"S3CACHE_NODES": "node1:8080,node2:8080,node3:8080", "S3CACHE_UPSTREAM": "http://origin.test:9000",
                "S3CACHE_DOMAIN": domain, "S3CACHE_BUCKET": bucket}
    text = "".join(f"{k}={v}\n" for k, v in settings.items())
    got = front_process_env(rendered(env_file(tmp_path, text), (FRONT_FILE,)), tmp_path)
    config = Config.from_env(settings)
    # As `s3cache caddy-env` derives it for `s3cache up --front`; the address is the container's (port 8080).
    expected = caddy_environment(dataclasses.replace(config, listen=HostPort("0.0.0.0", 8080)))
    front = (ROOT / "Caddyfile.front").read_text()
    read = set(re.findall(r"\{\$(S3CACHE_[A-Z0-9_]+)", front))
    assert read <= set(expected), "Caddyfile.front reads a variable `s3cache up --front` does not set"
    # A variable the compose file leaves unset takes the Caddyfile's default, which must be the derived value
    # (the TLS ones: TLS at a compose front is not offered, README says so).
    defaults = dict(re.findall(r"\{\$(S3CACHE_[A-Z0-9_]+):([^}]*)\}", front))
    read -= {"S3CACHE_CADDY_HTTPS_SUFFIX"}  # only the https_on snippet reads it, which TLS off never imports
    assert {k: got.get(k, defaults.get(k, "")) for k in read} == {k: expected[k] for k in read}
