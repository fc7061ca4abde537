"""Run Debian's docker-compose (1.29) on the project's docker-compose.yml, with a clean environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.deploy.hostsetup import require_debs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TEST_ENV = Path(__file__).with_name("test.env")
PODMAN_OVERRIDE = Path(__file__).with_name("compose.podman.yml")
# The front tier on one host: each node a project of COMPOSE_FILE + NODE_OVERRIDE, the front a project of FRONT_FILE.
NODE_OVERRIDE = ROOT / "docker-compose.node.yml"
FRONT_FILE = ROOT / "docker-compose.front.yml"


def compose(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE_FILE,), project: str = "s3cache",
            docker_host: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    require_debs("docker-compose")
    # Settings exported in the caller's shell would win over the env file: keep them out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CACHE_")}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    cmd = ["docker-compose", "--project-directory", str(ROOT), "-p", project, "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def rendered(env_file: Path) -> dict:
    """The configuration as compose resolves it (variables substituted, paths absolute)."""
    out = compose("config", env_file=env_file)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
