"""Deployment tests (docker compose under podman, the Ansible role on a booted Debian root).

They need root and install their own tools (apt-get, debootstrap); where the machine cannot, they skip
with the reason. Cached artefacts live outside the repository, in /var/cache/s3cache-test.
"""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: deployment tests (tests/deploy): need root, install their own tools")
