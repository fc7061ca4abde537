"""docker-compose.yml offline: the real compose schema accepts it, and every setting reaches the parts that read it."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from s3cache.config import caddy_environment
from s3cache.config import SETTINGS, Config
from tests.deploy.compose import COMPOSE_FILE, ROOT, TEST_ENV, compose, read_env, rendered

pytestmark = pytest.mark.deploy

CACHE_MOUNT = "/var/cache/s3cache"
# Settings whose value inside the containers is fixed by docker-compose.yml, whatever .env says.
FIXED = {
    "S3CACHE_DIR": CACHE_MOUNT,
    "S3CACHE_SIDECAR_LISTEN": "0.0.0.0:8081",
    "S3CACHE_SIGNING_KEYS_FILE": "/run/secrets/signing_keys",
}
PYTHON_PARTS = ("sidecar", "evictor")


@pytest.fixture(scope="module")
def test_values() -> dict[str, str]:
    values = read_env(TEST_ENV)
    assert set(values) == {s.name for s in SETTINGS}, "tests/deploy/test.env must set every setting"
    assert all(values[s.name] != s.default for s in SETTINGS), "test.env values must differ from the defaults"
    return values


@pytest.fixture(scope="module")
def config(test_values) -> dict:
    return rendered(TEST_ENV)


@pytest.fixture(scope="module")
def default_config(tmp_path_factory) -> dict:
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")
    return rendered(empty)


@pytest.mark.parametrize("env_file", ["test", "empty"])
def test_compose_validates_offline_without_warnings(env_file, tmp_path):
    path = TEST_ENV
    if env_file == "empty":
        path = tmp_path / "empty.env"
        path.write_text("")
    out = compose("config", "-q", env_file=path)
    assert out.returncode == 0, out.stderr
    # Unset variables and missing secret files are only warnings to compose: treat them as errors.
    assert out.stderr == ""


def test_every_setting_reaches_the_sidecar_and_the_evictor(config, test_values):
    for part in PYTHON_PARTS:
        env = config["services"][part]["environment"]
        for s in SETTINGS:
            assert s.name in env, f"{s.name} is not passed to the {part}"
            expected = FIXED.get(s.name, test_values[s.name])
            assert str(env[s.name]) == expected, f"{part}: {s.name}"
        assert f"cache:{CACHE_MOUNT}" in config["services"][part]["volumes"][0]
        assert [s["source"] for s in config["services"][part]["secrets"]] == ["signing_keys"]
    keys_file = (ROOT / test_values["S3CACHE_SIGNING_KEYS_FILE"]).resolve()
    assert Path(config["secrets"]["signing_keys"]["file"]) == keys_file


def test_the_rendered_settings_are_a_valid_configuration(config, test_values):
    env = dict(config["services"]["sidecar"]["environment"])
    env["S3CACHE_SIGNING_KEYS_FILE"] = str(ROOT / test_values["S3CACHE_SIGNING_KEYS_FILE"])
    Config.from_env({k: str(v) for k, v in env.items()})


def test_defaults_are_the_codes_defaults(default_config):
    for part in PYTHON_PARTS:
        env = default_config["services"][part]["environment"]
        for s in SETTINGS:
            if s.name not in FIXED:
                assert str(env[s.name] or "") == s.default, f"{part}: default of {s.name}"
    assert default_config["services"]["caddy"]["ports"] == ["127.0.0.1:8080:8080/tcp"]
    # The keys file compose mounts when none is named holds no keys.
    default_keys = Path(default_config["secrets"]["signing_keys"]["file"])
    assert Config.from_env({"S3CACHE_SIGNING_KEYS_FILE": str(default_keys)}).keys() == {}


def test_listen_is_where_caddys_port_is_published(config, test_values):
    port = config["services"]["caddy-env"]["environment"]["S3CACHE_LISTEN"].rpartition(":")[2]
    assert config["services"]["caddy"]["ports"] == [f"{test_values['S3CACHE_LISTEN']}:{port}/tcp"]


def caddyfile_variables() -> set[str]:
    text = (ROOT / "Caddyfile").read_text()
    return set(re.findall(r"\{\$(S3CACHE_[A-Z0-9_]+)", text)) | set(re.findall(r"\{env\.(S3CACHE_[A-Z0-9_]+)\}", text))


def caddy_process_env(config: dict, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment Caddy's container hands to `caddy run`: the caddy-env service's command writes the
    file (our own `s3cache caddy-env`, as in its container), Caddy's command sources it (a stand-in caddy prints
    what it got)."""
    service = config["services"]["caddy-env"]
    assert service["image"] == config["services"]["sidecar"]["image"]  # the image that has the s3cache command
    assert service["depends_on"] == {"sidecar": {"condition": "service_started"}}
    command = list(service["command"])
    assert command[:2] == ["s3cache", "caddy-env"] and command[-2] == "--output"
    env_file = command[-1]
    assert f"cache:{str(Path(env_file).parent.parent)}:rw" in service["volumes"]
    written = tmp_path / "run" / "caddy.env"
    env = {k: str(v) for k, v in service["environment"].items()}
    env.update(settings, S3CACHE_SIGNING_KEYS_FILE=str(ROOT / "tests/deploy/signing-keys.test"),
               PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "commands.main", *command[1:-1], str(written)], env=env, cwd=tmp_path,
                   check=True)

    caddy = config["services"]["caddy"]
    assert caddy["depends_on"]["caddy-env"] == {"condition": "service_completed_successfully"}
    fake = tmp_path / "bin" / "caddy"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = caddy["command"][0].replace("$$", "$")  # compose prints $ escaped
    assert env_file in script
    script = script.replace(env_file, str(written))
    env = {k: str(v) for k, v in caddy["environment"].items()}
    env["PATH"] = f"{fake.parent}:{os.environ['PATH']}"
    out = subprocess.run([*caddy["entrypoint"], script], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("domain, bucket", [
    ("", ""),
    ("s3cache.example.com", ""),
    ("Cache-1.Example.COM.", ""),
    ("", "my-bucket.v2"),
])
def test_caddy_gets_what_s3cache_up_derives(config, test_values, tmp_path, domain, bucket):
    settings = dict(test_values, S3CACHE_DOMAIN=domain, S3CACHE_BUCKET=bucket)
    settings["S3CACHE_SIGNING_KEYS_FILE"] = str(ROOT / settings["S3CACHE_SIGNING_KEYS_FILE"])
    expected = caddy_environment(Config.from_env(settings))
    got = caddy_process_env(config, tmp_path, S3CACHE_DOMAIN=domain, S3CACHE_BUCKET=bucket)

    assert caddyfile_variables() <= set(expected), "the Caddyfile reads a variable `s3cache up` does not set"
    for name, value in expected.items():
        assert name in got, f"{name} does not reach Caddy"
    # Paths and addresses are the containers' own; everything else is exactly what `s3cache up` computes.
    assert got.pop("S3CACHE_OBJECTS_DIR") == f"{CACHE_MOUNT}/objects"
    access_log = Path(got.pop("S3CACHE_ACCESS_LOG"))
    assert access_log == Path(CACHE_MOUNT) / "logs/access.log"
    assert f"logs:{access_log.parent}:rw" in config["services"]["caddy"]["volumes"]
    assert f"logs:{CACHE_MOUNT}/logs:rw" in config["services"]["evictor"]["volumes"]  # where the evictor reads it
    assert got.pop("S3CACHE_CADDY_BIND") == got.pop("S3CACHE_CADDY_HTTP_BIND") == "0.0.0.0"
    assert got.pop("S3CACHE_SIDECAR") == "sidecar:" + FIXED["S3CACHE_SIDECAR_LISTEN"].rpartition(":")[2]
    port = got.pop("S3CACHE_CADDY_PORT")
    assert f":{port}/tcp" in config["services"]["caddy"]["ports"][0]
    # What names the listen port (the site address, the HTTPS port) names the container's.
    inside = caddy_environment(Config.from_env({**settings, "S3CACHE_LISTEN": f"0.0.0.0:{port}"}))
    for name in ("S3CACHE_CADDY_SITE", "S3CACHE_CADDY_HTTPS_PORT", "S3CACHE_CADDY_HTTPS_SUFFIX"):
        assert got.pop(name) == inside[name], name
        expected.pop(name)
    for name in ("S3CACHE_OBJECTS_DIR", "S3CACHE_ACCESS_LOG", "S3CACHE_CADDY_BIND", "S3CACHE_CADDY_HTTP_BIND", "S3CACHE_SIDECAR",
                 "S3CACHE_CADDY_PORT"):
        expected.pop(name)
    assert {k: got[k] for k in expected} == expected
    # The keys never reach Caddy.
    assert got["S3CACHE_SIGNING_KEYS"] == ""


def test_caddy_serves_the_cache_read_only(config):
    volumes = config["services"]["caddy"]["volumes"]
    assert f"cache:{CACHE_MOUNT}:ro" in volumes
    assert f"{ROOT / 'Caddyfile'}:/etc/caddy/Caddyfile:ro" in volumes


def test_every_part_has_a_health_check_and_a_restart_policy(config):
    # caddy-env runs once per start and exits; Caddy starts only once it has succeeded.
    assert config["services"]["caddy-env"]["restart"] == "no"
    for name, service in config["services"].items():
        if name == "caddy-env":
            continue
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        # podman 4.3 splits CMD arguments on spaces; none may contain one.
        assert not any(" " in arg for arg in test), name


def test_images_are_build_arguments_with_official_defaults(default_config):
    assert default_config["services"]["caddy"]["image"] == "caddy:2.11.7"
    for part in PYTHON_PARTS:
        build = default_config["services"][part]["build"]
        assert build["args"]["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
        dockerfile = (ROOT / build["dockerfile"]).read_text()
        assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile
        assert re.search(r"^USER s3cache$", dockerfile, re.M), f"{part} must not run as root"
        # One Dockerfile, one target per part, differing only in the command.
        assert build["target"] == part
        stage = re.search(rf"^FROM base AS {part}\n(?:#.*\n)*CMD (.*)$", dockerfile, re.M)
        assert stage and json.loads(stage.group(1)) == ["python", "-m", part], part
    assert COMPOSE_FILE.exists()


def test_the_image_gets_every_package_pyproject_installs():
    """The Dockerfile copies the build context, which .dockerignore (an allow-list) narrows."""
    packages = [p.rstrip("*") for p in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert "commands" in packages
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in allowed
    for package in packages:
        assert f"!{package}/" in allowed, f"{package}/ is not in the image"
    assert re.search(r"^COPY \. /tmp/src/$", (ROOT / "Dockerfile").read_text(), re.M)
