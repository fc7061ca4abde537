"""The Ansible role passes ansible-lint's production profile, offline, and covers every setting."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from s3cache.config import SETTINGS
from tests.deploy.ansible import ANSIBLE_DIR, ROOT, run

pytestmark = pytest.mark.deploy

ROLE = ANSIBLE_DIR / "roles/s3cache"
# Where the role's default differs from the code's, on purpose: a system path, not ./cache.
ROLE_DEFAULTS = {"S3CACHE_DIR": "/var/cache/s3cache"}


def test_ansible_lint_production_profile_passes_offline():
    out = run("ansible-lint", "--offline")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Profile 'production' was required, and it passed" in out.stdout + out.stderr


def documented_variables(text: str) -> dict[str, bool]:
    """Each top-level variable of a defaults file, and whether a comment heads its group of lines."""
    found, commented = {}, False
    for line in text.splitlines():
        if line.startswith("#"):
            commented = True
        elif not line.strip():
            commented = False
        elif m := re.match(r"(\w+):", line):
            found[m.group(1)] = commented
    return found


def role_values(tmp_path: Path, *names: str) -> dict:
    """The role's derived variables (vars/main.yml over defaults/main.yml) as Ansible evaluates them here."""
    playbook = tmp_path / "values.yml"
    out_file = tmp_path / "values.json"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"ansible.builtin.include_vars": str(ROLE / "defaults/main.yml")},
            {"ansible.builtin.include_vars": str(ROLE / "vars/main.yml")},
            {"ansible.builtin.copy": {"dest": str(out_file), "mode": "0600",
                                      "content": "{{ {%s} | to_json }}" % ", ".join(f"'{n}': {n}" for n in names)}},
        ],
    }]))
    out = run("ansible-playbook", "-i", "localhost,", "-e", f"s3cache_source_dir={ROOT}",
              "-e", f"ansible_python_interpreter={sys.executable}", str(playbook))
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def derived(tmp_path_factory) -> dict:
    return role_values(tmp_path_factory.mktemp("role"), "s3cache_settings", "s3cache_source_files")


def test_every_setting_is_a_role_variable_written_to_the_env_file(derived):
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    settings = derived["s3cache_settings"]
    assert set(settings) == {s.name for s in SETTINGS}
    for s in SETTINGS:
        var = s.name.lower()
        assert var in defaults, f"{var} has no default"
        assert settings[s.name] == defaults[var], s.name
        assert str(defaults[var]) == ROLE_DEFAULTS.get(s.name, s.default), f"default of {var}"


def test_every_installed_file_is_deployed(derived):
    """Each package pyproject.toml installs, with every module and its package data (templates)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert "commands" in packages
    wanted = {str(f.relative_to(ROOT)) for package in packages for f in (ROOT / package).rglob("*")
              if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"}
    assert "sidecar/templates/status.html" in wanted
    assert wanted <= set(derived["s3cache_source_files"])
    assert {"pyproject.toml", "README.md"} <= set(derived["s3cache_source_files"])


def test_every_role_variable_is_documented():
    text = (ROLE / "defaults/main.yml").read_text()
    variables = documented_variables(text)
    assert set(variables) == set(yaml.safe_load(text))
    assert [v for v, documented in variables.items() if not documented] == []
