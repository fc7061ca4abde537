"""Deployment tests (docker compose under podman, the Ansible role on a booted Debian root).

They need root, and tools the test set-up installs before pytest runs (``python -m tests.host_tools``:
Debian packages and a debootstrapped Debian root); where the machine cannot, they skip with the reason
(fail on CI). Cached artefacts live outside the repository, in /var/cache/s3cache-test.
"""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "deploy: deployment tests (tests/deploy): need root and the tools tests/host_tools.py installs")
