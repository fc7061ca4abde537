"""Configuration: defaults, one-line errors naming the variable, .env.example and README in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from s3cache.config import SETTINGS, Config, ConfigError, read_env_file

ROOT = Path(__file__).resolve().parent.parent


def test_defaults():
    c = Config.from_env({})
    assert c.upstream == "https://s3.amazonaws.com"
    assert str(c.listen) == "127.0.0.1:8080"
    assert str(c.sidecar_listen) == "127.0.0.1:8081"
    assert c.dir.endswith("/cache")
    assert c.max_object_bytes is None


@pytest.mark.parametrize("name, value", [
    ("S3CACHE_UPSTREAM", "ftp://example"),
    ("S3CACHE_UPSTREAM", "https://s3.amazonaws.com/bucket"),
    ("S3CACHE_LISTEN", "8080"),
    ("S3CACHE_LISTEN", "127.0.0.1:99999"),
    ("S3CACHE_SIDECAR_LISTEN", "nohost"),
    ("S3CACHE_MAX_OBJECT_BYTES", "-5"),
    ("S3CACHE_MAX_OBJECT_BYTES", "lots"),
    ("S3CACHE_FILL_WORKERS", "0"),
    ("S3CACHE_EVICT_HIGH", "150"),
    ("S3CACHE_NODES", "127.0.0.1:8080,,127.0.0.1:8081"),
    ("S3CACHE_NODES", "127.0.0.1:8080,127.0.0.1:8080"),
    ("S3CACHE_NODES", "node one:8080"),
    ("S3CACHE_CORS_ORIGINS", "https://app.example.com/"),
    ("S3CACHE_CORS_ORIGINS", "app.example.com"),
    ("S3CACHE_CORS_ORIGINS", "https://a.example,,https://b.example"),
    ("S3CACHE_CORS_EXPOSE_HEADERS", "ETag,Bad Header"),
    ("S3CACHE_CORS_MAX_AGE", "-1"),
])
def test_bad_values_name_the_variable_in_one_line(name, value):
    with pytest.raises(ConfigError) as exc:
        Config.from_env({name: value})
    message = str(exc.value)
    assert message.startswith(name + ":")
    assert "\n" not in message


def test_low_watermark_must_be_below_high():
    with pytest.raises(ConfigError, match="^S3CACHE_EVICT_LOW:"):
        Config.from_env({"S3CACHE_EVICT_HIGH": "70", "S3CACHE_EVICT_LOW": "80"})


def test_env_file_format(tmp_path):
    f = tmp_path / ".env"
    f.write_text('# comment\nS3CACHE_DIR=/x # trailing comment\nexport S3CACHE_LISTEN="0.0.0.0:80"\n\nEMPTY=\n')
    assert read_env_file(str(f)) == {"S3CACHE_DIR": "/x", "S3CACHE_LISTEN": "0.0.0.0:80", "EMPTY": ""}
    f.write_text("not a pair\n")
    with pytest.raises(ConfigError, match=":1:"):
        read_env_file(str(f))


def test_env_example_documents_every_setting_with_a_comment():
    text = (ROOT / ".env.example").read_text()
    values = read_env_file(str(ROOT / ".env.example"))
    for s in SETTINGS:
        assert s.name in values, f"{s.name} missing from .env.example"
        assert re.search(rf"#[^\n]*\n(#[^\n]*\n)*{s.name}=", text), f"{s.name} has no comment above it"
    Config.from_env(values)  # the example itself is valid
    assert set(values) <= {s.name for s in SETTINGS}, "unknown variable in .env.example"


def test_readme_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    for s in SETTINGS:
        assert f"`{s.name}`" in readme, f"{s.name} missing from README's configuration table"


def test_code_reads_no_undocumented_variable():
    names = {s.name for s in SETTINGS}
    derived = {"S3CACHE_CADDY_BIND", "S3CACHE_CADDY_HTTP_BIND", "S3CACHE_CADDY_PORT", "S3CACHE_OBJECTS_DIR", "S3CACHE_ACCESS_LOG", "S3CACHE_SIDECAR",
               "S3CACHE_CADDY_NODES", "S3CACHE_DOMAIN_RE", "S3CACHE_BUCKET_DIR",
               "S3CACHE_CADDY_SITE", "S3CACHE_CADDY_TLS", "S3CACHE_CADDY_HTTPS", "S3CACHE_CADDY_HTTP_PORT",
               "S3CACHE_CADDY_HTTPS_PORT", "S3CACHE_CADDY_HTTPS_SUFFIX", "S3CACHE_CADDY_TRUSTED_PROXIES",
               "S3CACHE_CADDY_HOSTS_RE", "S3CACHE_CADDY_HOSTS_LOOSE_RE", "S3CACHE_CADDY_HOSTS_SHARD_RE",
               "S3CACHE_CADDY_CORS", "S3CACHE_CADDY_CORS_ORIGIN_RE", "S3CACHE_CADDY_CORS_ALLOW_ORIGIN",
               "S3CACHE_CADDY_GRANTS", "S3CACHE_CADDY_GRANT_DROP", "S3CACHE_CADDY_TTL"}
    used = set()
    caddyfiles = [ROOT / "Caddyfile", ROOT / "Caddyfile.front"]
    for path in list(ROOT.glob("s3cache/*.py")) + list(ROOT.glob("sidecar/*.py")) + list(ROOT.glob("evictor/*.py")) + caddyfiles:
        used |= set(re.findall(r"S3CACHE_[A-Z0-9_]+", path.read_text()))
    assert used - names - derived == set()


def test_upstream_default_port_is_dropped_because_sigv4_signs_the_host_without_it():
    assert Config.from_env({"S3CACHE_UPSTREAM": "https://S3.example.com:443"}).upstream == "https://s3.example.com"
    assert Config.from_env({"S3CACHE_UPSTREAM": "http://h:80/"}).upstream == "http://h"
    assert Config.from_env({"S3CACHE_UPSTREAM": "http://h:9000"}).upstream == "http://h:9000"


def test_signing_keys_from_variable_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops keys\nAKIAFILE:file-secret\n")
    c = Config.from_env({"S3CACHE_ACCESS": "verify", "S3CACHE_SIGNING_KEYS_FILE": str(f),
                         "S3CACHE_SIGNING_KEYS": "AKIAVAR:var:secret"})
    assert c.keys() == {"AKIAFILE": "file-secret", "AKIAVAR": "var:secret"}
    with pytest.raises(ConfigError, match="^S3CACHE_SIGNING_KEYS_FILE: cannot read"):
        Config.from_env({"S3CACHE_SIGNING_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError) as exc:
        Config.from_env({"S3CACHE_SIGNING_KEYS": "AKIA:topsecret\ntopsecret-without-id"})
    assert "topsecret" not in str(exc.value)
