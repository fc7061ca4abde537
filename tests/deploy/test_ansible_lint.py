"""The Ansible role passes ansible-lint's production profile, offline, and covers every setting."""

from __future__ import annotations

import re

import pytest
import yaml

from s3cache.config import SETTINGS
from tests.deploy.ansible import ANSIBLE_DIR, run

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


def test_every_setting_is_a_role_variable_written_to_the_env_file():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    settings = yaml.safe_load((ROLE / "vars/main.yml").read_text())["s3cache_settings"]
    assert set(settings) == {s.name for s in SETTINGS}
    for s in SETTINGS:
        var = s.name.lower()
        assert settings[s.name] == f"{{{{ {var} }}}}", s.name
        assert var in defaults, f"{var} has no default"
        assert str(defaults[var]) == ROLE_DEFAULTS.get(s.name, s.default), f"default of {var}"


def test_every_role_variable_is_documented():
    text = (ROLE / "defaults/main.yml").read_text()
    variables = documented_variables(text)
    assert set(variables) == set(yaml.safe_load(text))
    assert [v for v, documented in variables.items() if not documented] == []
