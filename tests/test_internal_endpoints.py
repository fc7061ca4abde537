"""The sidecar's own endpoints in one blueprint: routed by the raw path, guarded in one place."""

from __future__ import annotations

import pytest

from s3cache import wire
from s3cache.config import Config
from sidecar.app import create_app

GUARDED = (*wire.PAGE_PATHS, wire.METRICS_PATH, wire.STATS_PATH)


@pytest.fixture
def client(tmp_path):
    app = create_app(Config.from_env({"S3CACHE_DIR": str(tmp_path / "cache"), "S3CACHE_ADMIN_ALLOW": "192.0.2.0/24"}))
    return app.test_client()


def get(client, raw_path: str, peer: str = "127.0.0.1", headers: dict | None = None):
    # waitress hands the sidecar the raw request URI; the test client does not, so say it.
    return client.get(raw_path, headers=headers or {}, environ_base={"REMOTE_ADDR": peer, "REQUEST_URI": raw_path})


@pytest.mark.parametrize("path", GUARDED)
def test_the_allow_list_guards_every_admin_endpoint(client, path):
    assert get(client, path, peer="192.0.2.7").status_code == 200
    assert get(client, path, peer="127.0.0.1").status_code == 403
    resp = get(client, path, headers={wire.RAW_URI_HEADER: path, wire.CLIENT_IP_HEADER: "203.0.113.9"})
    assert resp.status_code == 403 and b"S3CACHE_ADMIN_ALLOW" in resp.data


def test_health_answers_everyone_but_details_only_loopback_and_the_list(client):
    for peer in ("127.0.0.1", "192.0.2.7"):
        resp = get(client, wire.HEALTH_PATH, peer=peer)
        assert resp.status_code == 200 and "parts" in resp.get_json(), peer
    # Anyone else (a front tier on another host): the status alone, with the same code.
    for peer, headers in (("198.51.100.1", {}),
                          ("127.0.0.1", {wire.RAW_URI_HEADER: wire.HEALTH_PATH, wire.CLIENT_IP_HEADER: "10.0.0.5"})):
        resp = get(client, wire.HEALTH_PATH, peer=peer, headers=headers)
        assert (resp.status_code, resp.get_json(), resp.headers["Cache-Control"]) == (200, {"status": "ok"}, "no-store")


@pytest.mark.parametrize("raw_path", ["/_s3cache/nope", "/_s3cache//metrics", "/_s3cache/%6detrics",
                                      "/_s3cache/metrics/"])
def test_an_internal_path_not_sent_exactly_as_routed_is_an_unknown_endpoint(client, raw_path):
    resp = get(client, raw_path, peer="192.0.2.7")
    assert resp.status_code == 404 and b"<Code>NoSuchKey</Code>" in resp.data


def test_the_status_page_links_the_other_endpoints(client):
    page = get(client, "/", peer="192.0.2.7")
    assert page.status_code == 200 and page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert f'href="{wire.STATS_PATH}"'.encode() in page.data
