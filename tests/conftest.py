"""Shared fixtures: a signature-enforcing S3 origin (moto behind a checker) and the real stack."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.origin.fixture import start_origin
from tests.stack import Stack

# Property tests judged by the wall clock fail for the machine's load, not for the code: no per-example
# deadline and no "too slow" health check anywhere (a test's own @settings inherits this profile).
settings.register_profile("s3cache", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("s3cache")


@pytest.fixture(scope="session")
def origin(tmp_path_factory):
    o = start_origin(tmp_path_factory.mktemp("origin"))
    yield o
    o.stop()


@pytest.fixture
def make_stack(tmp_path, origin):
    """Factory: ``make_stack(**env)`` starts a stack in front of the origin; all are stopped afterwards."""
    stacks = []

    def make(**env) -> Stack:
        s = Stack(tmp_path / f"stack{len(stacks)}", origin.url, **env)
        stacks.append(s)  # before start(): a stack that fails to become healthy is still stopped
        return s.start()

    yield make
    for s in stacks:
        s.stop()


@pytest.fixture
def stack(make_stack):
    """The core proxy as issue 2 defines it: hits served by Caddy alone (S3CACHE_ACCESS=open)."""
    return make_stack(S3CACHE_ACCESS="open")

