"""Configuration: every S3CACHE_* variable, read once from the environment into one object.

Each variable is declared once, as a field of ``Config``: its type, default,
parser, description and what the Caddyfiles read of it (``setting(...)``).
``SETTINGS`` lists them; ``.env.example``, README's table, docker-compose.yml
and the Ansible role are checked against it by the tests.  A bad value raises ``ConfigError``
whose message is one line naming the variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from s3cache.addressing import Addressing
    from s3cache.upstream_hosts import UpstreamHosts
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """One line, naming the offending variable."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _domain(value: str) -> str | None:
    value = value.strip().strip(".").lower()
    if not value:
        return None
    if not all(label and len(label) < 64 and label.replace("-", "").isalnum() for label in value.split(".")):
        raise ValueError(f"expected a DNS name such as s3cache.example.com, got {value!r}")
    return value


def _bucket(value: str) -> str | None:
    from s3cache.layout import is_valid_bucket
    if not value:
        return None
    if not is_valid_bucket(value):
        raise ValueError(f"not a valid bucket name: {value!r}")
    return value


def _host_port(value: str) -> HostPort:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"expected HOST:PORT with a host, got {value!r}")
    return HostPort(host, int(port))


def _upstream(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s):// URL, got {value!r}")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"expected scheme://host[:port] only, got {value!r}")
    # Signers (botocore, S3) drop a default port from the Host they sign; so must we.
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    if netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return f"{parts.scheme}://{netloc}"


def _nodes(value: str) -> tuple[HostPort, ...]:
    """Cache nodes for the front tier: HOST:PORT, comma-separated; empty when this is not a front."""
    if not value:
        return ()
    nodes: list[HostPort] = []
    for n, item in enumerate(value.split(","), 1):
        item = item.strip()
        if not item:
            raise ValueError(f"node {n} is empty (a stray comma?) in {value!r}")
        try:
            node = _host_port(item)
        except ValueError as exc:
            raise ValueError(f"node {n}: {exc}") from None
        # Caddy gets the list space-separated, and the node string is part of the shard hash.
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", node.host):
            raise ValueError(f"node {n}: expected HOST:PORT (a hostname or IP address), got {item!r}")
        if node in nodes:
            raise ValueError(f"node {n}: {node} is listed twice")
        nodes.append(node)
    return tuple(nodes)


def _upstream_hosts(value: str) -> "UpstreamHosts | None":
    from s3cache.upstream_hosts import parse_hosts
    return parse_hosts(value)  # None: derived from S3CACHE_UPSTREAM in Config.from_env


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return n


def _optional_positive_int(value: str) -> int | None:
    return _positive_int(value) if value else None


def _workers(value: str) -> int:
    """A positive count; empty: the cores this process may run on."""
    return _positive_int(value) if value else len(os.sched_getaffinity(0))


def _optional_positive_float(value: str) -> float | None:
    return _positive_float(value) if value else None


def _on_off(value: str) -> bool:
    v = value.lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got {value!r}")


def _percent(value: str) -> float:
    n = float(value)
    if not 0 < n <= 100:
        raise ValueError(f"expected a percentage in (0, 100], got {value!r}")
    return n


def _positive_float(value: str) -> float:
    n = float(value)
    if n <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return n


def _grant_ttl(value: str) -> int:
    """0 (no grants) or a power of ten: Caddy tells a grant's window by dropping digits of the time."""
    n = int(value)
    if n < 0 or (n and str(n).rstrip("0") != "1") or n > 10 ** 9:
        raise ValueError(f"expected 0 or a power of ten up to 1000000000 (1, 10, 100 ...), got {value!r}")
    return n


def _caddy_grants(ttl: int) -> dict[str, str]:
    # A window is the unix time less its last log10(ttl) digits: the regexp that matches those digits.
    return {"S3CACHE_CADDY_GRANTS": "on" if ttl else "off",
            "S3CACHE_CADDY_GRANT_DROP": "[0-9]" * (len(str(ttl)) - 1 if ttl else 0)}


def _price(value: str) -> float:
    n = float(value)
    if not 0 <= n < 1e6 or n != n:
        raise ValueError(f"expected a price in dollars such as 0.09, got {value!r}")
    return n


def _cidrs(value: str) -> tuple:
    """Comma-separated CIDRs (a bare address is one host); empty: nobody."""
    import ipaddress
    nets = []
    for item in value.split(","):
        item = item.strip()
        if item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"expected CIDRs such as 127.0.0.0/8,::1/128, got {item!r}") from None
    return tuple(nets)


def _tls_names(value: str) -> tuple[str, ...]:
    """Names the TLS certificate is for: host names (``*.`` wildcard allowed) or IPv4 addresses, comma-separated."""
    import ipaddress
    names: list[str] = []
    for n, item in enumerate(value.split(","), 1):
        item = item.strip().strip(".").lower()
        if not item:
            if value.strip():
                raise ValueError(f"name {n} is empty (a stray comma?) in {value!r}")
            continue
        try:
            ipaddress.IPv4Address(item)
        except ValueError:
            labels = item.removeprefix("*.").split(".")
            if ":" in item or not all(label and len(label) < 64 and label.replace("-", "").isalnum() for label in labels):
                raise ValueError(f"expected host names such as cache.example.com or *.cache.example.com, "
                                 f"or IPv4 addresses, got {item!r}") from None
        if item not in names:
            names.append(item)
    return tuple(names)


def _email(value: str) -> str | None:
    if not value:
        return None
    if not re.fullmatch(r"[^@\s{}]+@[^@\s{}]+\.[^@\s{}]+", value):
        raise ValueError(f"expected an e-mail address, got {value!r}")
    return value


def _file_path(value: str) -> str | None:
    """A file path Caddy reads; checked by `s3cache up`, which starts Caddy (other parts may not see the file)."""
    if not value:
        return None
    if any(c.isspace() or c in "{}\"" for c in value):
        raise ValueError(f"a path without spaces, quotes or braces is needed here, got {value!r}")
    return os.path.abspath(value)


_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


def _cors_origins(value: str) -> tuple[str, ...]:
    """Origins as browsers send them (scheme://host[:port], lower case, no path), or ("*",); empty: none."""
    origins: list[str] = []
    for n, item in enumerate(value.split(","), 1):
        item = item.strip().lower()
        if not item:
            if value.strip():
                raise ValueError(f"origin {n} is empty (a stray comma?) in {value!r}")
            continue
        if item != "*" and not _ORIGIN.fullmatch(item):
            raise ValueError(f"expected origins such as https://app.example.com or http://localhost:3000 "
                             f"(no path, no trailing slash), or *, got {item!r}")
        if item not in origins:
            origins.append(item)
    if "*" in origins:
        return ("*",)
    return tuple(origins)


def _caddy_cors(origins: tuple[str, ...]) -> dict[str, str]:
    # Caddy matches the request's Origin with one regexp; "*" answers every origin with "*", as S3 does.
    if not origins:
        return {"S3CACHE_CADDY_CORS": "off", "S3CACHE_CADDY_CORS_ORIGIN_RE": "^$",
                "S3CACHE_CADDY_CORS_ALLOW_ORIGIN": ""}
    if origins == ("*",):
        return {"S3CACHE_CADDY_CORS": "rules", "S3CACHE_CADDY_CORS_ORIGIN_RE": "^.+$",
                "S3CACHE_CADDY_CORS_ALLOW_ORIGIN": "*"}
    return {"S3CACHE_CADDY_CORS": "rules",
            "S3CACHE_CADDY_CORS_ORIGIN_RE": "^(" + "|".join(re.escape(o) for o in origins) + ")$",
            "S3CACHE_CADDY_CORS_ALLOW_ORIGIN": "{http.request.header.Origin}"}


def _header_list(value: str) -> str:
    """Header names, comma-separated; kept as one token for Caddy (no spaces)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise ValueError(f"expected header names such as ETag,Content-Range, got {name!r}")
    return ",".join(names)


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"expected a number of seconds (0 or more), got {value!r}")
    return n


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"expected a port number (1-65535), got {value!r}")
    return int(value)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    return parse


def _admit(value: str) -> str:
    if value in ("first", "tinylfu"):
        return value
    kind, _, n = value.partition(":")
    if kind == "count" and n.isdigit() and int(n) >= 1:
        return f"count:{int(n)}"
    raise ValueError(f"expected first, tinylfu or count:N (N >= 1), got {value!r}")


def parse_signing_keys(text: str) -> dict[str, str]:
    """``AKID:SECRET`` pairs, separated by commas and/or newlines.

    Blank lines and lines starting with ``#`` are skipped (a keys file may be
    commented).  A secret may contain ':' but not ',' or whitespace.  Error
    messages name the entry by position and never repeat a secret.
    """
    keys: dict[str, str] = {}
    entry = 0
    for lineno, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            entry += 1
            where = f"signing keys: entry {entry} (line {lineno})"
            akid, sep, secret = item.partition(":")
            akid, secret = akid.strip(), secret.strip()
            if not sep:
                raise ValueError(f"{where}: expected ACCESS_KEY_ID:SECRET, found no ':'")
            if not akid:
                raise ValueError(f"{where}: the access key id before ':' is empty")
            if not secret:
                raise ValueError(f"{where}: the secret after ':' is empty")
            if any(c.isspace() for c in akid) or "/" in akid:
                raise ValueError(f"{where}: the access key id must not contain whitespace or '/'")
            if any(c.isspace() for c in secret):
                raise ValueError(f"{where}: the secret must not contain whitespace")
            if keys.get(akid, secret) != secret:
                raise ValueError(f"{where}: access key id {akid} is listed twice with different secrets")
            keys[akid] = secret
    return keys


def _signing_keys_file(value: str) -> dict[str, str]:
    if not value:
        return {}
    try:
        with open(value, encoding="utf-8") as fh:
            return parse_signing_keys(fh.read())
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from None


@dataclass(frozen=True)
class Setting:
    """One S3CACHE_* variable: its default, how its value is parsed, what it means, and what Caddy reads of it."""
    name: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    # The variables the Caddyfile reads that this setting gives, from its parsed value; None: Caddy reads none.
    caddy: Callable[[Any], dict[str, str]] | None = None

    @property
    def attr(self) -> str:
        """The Config attribute holding the parsed value: S3CACHE_FILL_WORKERS -> fill_workers."""
        return self.name.removeprefix("S3CACHE_").lower()


def setting(default: str, parse: Callable[[str], Any], doc: str,
            caddy: Callable[[Any], dict[str, str]] | None = None) -> Any:
    """A Config field and everything about its variable (named S3CACHE_ + the field's name, upper case)."""
    return field(metadata={"setting": (default, parse, doc, caddy)})


def _caddy_dir(value: str) -> dict[str, str]:
    from s3cache.layout import Layout
    layout = Layout(value)
    return {"S3CACHE_OBJECTS_DIR": str(layout.objects_dir), "S3CACHE_ACCESS_LOG": str(layout.access_log)}


@dataclass(frozen=True)
class Config:
    """Every setting, parsed. Each field declares its variable once; ``SETTINGS`` lists them in this order."""

    upstream: str = setting(
        "https://s3.amazonaws.com", _upstream,
        "S3 endpoint that misses are redirected to and fetched from (scheme://host[:port]).",
        caddy=lambda v: {"S3CACHE_UPSTREAM": v})
    domain: str | None = setting(
        "", _domain,
        "Virtual-hosted requests: Host <bucket>.<S3CACHE_DOMAIN> means that bucket (wildcard DNS to the proxy).",
        # A name that never matches a Host when virtual-hosted requests are off.
        caddy=lambda v: {"S3CACHE_DOMAIN_RE": re.escape(v) if v else "s3cache-no-domain\\.invalid"})
    bucket: str | None = setting(
        "", _bucket,
        "A proxy host that fronts one bucket: every path is a key in it.",
        caddy=lambda v: {"S3CACHE_BUCKET_DIR": f"/{v}" if v else ""})
    upstream_hosts: "UpstreamHosts" = setting(
        "", _upstream_hosts,
        "Host-in-path URLs (http://proxy/<original host>/<path>?<query>): the upstream hosts allowed as the "
        "first path segment, comma-separated [http://|https://]HOST[:PORT] (a first label * is a bucket, "
        "another * stands within one label; no port: any port; no scheme: https). Empty: AWS S3's endpoints "
        "when S3CACHE_UPSTREAM is AWS, else S3CACHE_UPSTREAM's own host. All must be one store.",
        caddy=lambda v: v.caddy_environment())
    listen: HostPort = setting(
        "127.0.0.1:8080", _host_port,
        "Address Caddy (the front door) listens on.",
        caddy=lambda v: {"S3CACHE_CADDY_BIND": v.host, "S3CACHE_CADDY_HTTP_BIND": v.host,
                         "S3CACHE_CADDY_PORT": str(v.port)})
    sidecar_listen: HostPort = setting(
        "127.0.0.1:8081", _host_port,
        "Address of the sidecar (misses, health); keep it private.",
        caddy=lambda v: {"S3CACHE_SIDECAR": str(v)})
    sidecar_workers: int = setting(
        "", _workers,
        "Sidecar processes answering misses and access checks on S3CACHE_SIDECAR_LISTEN (empty: one per "
        "core); beyond 1, fills run in a fill process of their own. 1: one process does it all.")
    dir: str = setting(
        "./cache", str,
        "Cache directory (objects/, meta/, tmp/ ... live inside).",
        caddy=_caddy_dir)
    max_object_bytes: int | None = setting(
        "", _optional_positive_int,
        "Objects larger than this are never cached (empty: no limit).")
    miss: str = setting(
        "redirect", _choice("redirect", "stream"),
        "What a miss does: redirect (to S3, then fill in the background) or stream (through the "
        "sidecar while it is cached: the object leaves S3 once instead of twice).")
    fill_workers: int = setting(
        "4", _positive_int,
        "Background fetches running at once.")
    fill_timeout: float = setting(
        "60", _positive_float,
        "Seconds a fetch may stall (connect or between reads) before it is abandoned.")
    fill_min_rate: int = setting(
        "65536", _positive_int,
        "Bytes per second a fetch must average: a fetch of N bytes is abandoned after "
        "S3CACHE_FILL_TIMEOUT + N / S3CACHE_FILL_MIN_RATE seconds in all.")
    stream_max: int = setting(
        "8", _positive_int,
        "stream mode (and SDK clients' streamed or relayed requests): misses streamed at once, per sidecar worker; beyond it a miss is redirected (and filled in the "
        "background), so hits, access checks and health always have threads of their own.")
    access: str = setting(
        "revalidate", _choice("revalidate", "verify", "open"),
        "Who may read a cached object: revalidate (ask S3 with the client's URL), verify (check the "
        "signature locally), open (anyone: public buckets only).",
        caddy=lambda v: {"S3CACHE_ACCESS": v})
    signing_keys: dict[str, str] = setting(
        "", parse_signing_keys,
        "verify mode and SDK clients (header-signed requests): ACCESS_KEY_ID:SECRET pairs, comma-separated.")
    signing_keys_file: dict[str, str] = setting(
        "", _signing_keys_file,
        "verify mode and SDK clients: a file of ACCESS_KEY_ID:SECRET pairs, one per line (# comments).")
    upstream_access_key_id: str = setting(
        "", str,
        "SDK clients (requests signed in the Authorization header): the access key id the proxy signs its "
        "own requests to S3 with. Empty: the standard AWS_* variables, shared credentials file, ... (botocore's chain).")
    upstream_secret_access_key: str = setting(
        "", str,
        "The secret of S3CACHE_UPSTREAM_ACCESS_KEY_ID.")
    upstream_session_token: str = setting(
        "", str,
        "A session token for S3CACHE_UPSTREAM_ACCESS_KEY_ID (temporary credentials), if any.")
    upstream_region: str = setting(
        "", str,
        "The region the proxy signs its requests to S3 for (SigV4). Empty: AWS_REGION / AWS_DEFAULT_REGION / "
        "the shared config, else us-east-1.")
    sdk_writes: str = setting(
        "refuse", _choice("refuse", "passthrough"),
        "SDK clients' writes and other non-read operations: refuse (one NotImplemented error) or passthrough "
        "(re-signed to S3 with the proxy's credentials; a successful write or delete drops the cached copy).")
    revalidate_on_error: str = setting(
        "closed", _choice("closed", "open"),
        "revalidate mode, when S3 cannot be reached: closed (refuse with 503) or open (serve the cached copy).")
    ttl: float | None = setting(
        "", _optional_positive_float,
        "Seconds after which a cached object is revalidated with S3 before it is served again "
        "(empty: objects are immutable).",
        # S3CACHE_CADDY_TTL picks the serve_open_ttl_* snippet: a set TTL sends open-mode hits through the check.
        caddy=lambda v: {"S3CACHE_TTL": "" if v is None else f"{v:g}", "S3CACHE_CADDY_TTL": "off" if v is None else "on"})
    cors_origins: tuple[str, ...] = setting(
        "", _cors_origins,
        "Browser origins (scheme://host[:port], comma-separated, or *) whose fetch() of an object is "
        "answered with Access-Control-* headers by the proxy itself: hits, redirects, streamed misses, and "
        "GET/HEAD preflights. Empty: only what S3 says (preflights are relayed to S3; revalidated hits and "
        "streamed misses carry S3's own Access-Control-* headers, redirects S3's verdict for the origin).",
        caddy=_caddy_cors)
    cors_expose_headers: str = setting(
        "ETag,Content-Length,Content-Range,Accept-Ranges,Last-Modified,x-amz-version-id,X-Cache",
        _header_list,
        "With S3CACHE_CORS_ORIGINS: the response headers a page's script may read "
        "(Access-Control-Expose-Headers), comma-separated.",
        caddy=lambda v: {"S3CACHE_CORS_EXPOSE_HEADERS": v})
    cors_max_age: int = setting(
        "3000", _non_negative_int,
        "With S3CACHE_CORS_ORIGINS: seconds a browser may keep a preflight's answer (Access-Control-Max-Age).")
    grant_ttl: int = setting(
        "10", _grant_ttl,
        "verify and revalidate: seconds a URL the sidecar accepted is served by Caddy alone (a grant) "
        "before it is checked again: S3's revocation latency. 0 or a power of ten; 0: check every hit.",
        caddy=_caddy_grants)
    fill_on_range: bool = setting(
        "on", _on_off,
        "Whether a Range request that misses fills the whole object (up to S3CACHE_MAX_OBJECT_BYTES).")
    evict_high: float = setting(
        "95", _percent,
        "Start evicting when the disk's usage exceeds this percent; a fill that would cross it first "
        "removes the listed next victims, else is not cached and brings the next pass forward.")
    evict_low: float = setting(
        "92", _percent,
        "Evict until usage is below this percent; from this percent of the disk or of "
        "S3CACHE_MAX_BYTES on, each pass lists the next victims fills make room from.")
    evict_policy: str = setting(
        "adaptive", _choice("adaptive", "lfu", "lru"),
        "Which objects an eviction pass removes first: adaptive (lfu or lru, whichever miniature "
        "simulations of both found better lately; under lru, tinylfu admits every miss), lfu (least "
        "often asked for lately, by the aging frequency sketch; least recently among equals) or lru "
        "(least recently used).")
    admit: str = setting(
        "tinylfu", _admit,
        "When a miss fills the cache: tinylfu (when the object is asked for more often than what "
        "the last eviction removed), count:N (once it was asked for N times lately) or first (every miss).")
    evict_interval: float = setting(
        "60", _positive_float,
        "Seconds between eviction passes.")
    max_bytes: int | None = setting(
        "", _optional_positive_int,
        "Optional cap on the cache's own bytes (for a shared disk), filled whole: a fill that would "
        "cross it removes the listed next victims first; empty: disk usage only.")
    admin_allow: tuple = setting(
        "127.0.0.0/8,::1/128", _cidrs,
        "Client addresses (CIDRs, comma-separated) allowed the status page, metrics, the objects API (list, "
        "purge) and health's details; others get 403 (health answers them its status alone).")
    trusted_proxies: tuple = setting(
        "", _cidrs,
        "Proxies in front of Caddy (CIDRs, comma-separated) whose X-Forwarded-For is believed: the client "
        "is the right-most address in it that is not one of them. Empty: the peer is the client.")
    tls: str = setting(
        "off", _choice("off", "acme", "internal", "files"),
        "HTTPS on S3CACHE_LISTEN: off (plain HTTP), acme (a public certificate for S3CACHE_TLS_NAMES, "
        "obtained and renewed by Caddy), internal (Caddy's own CA, for a private network) or files "
        "(S3CACHE_TLS_CERT_FILE and S3CACHE_TLS_KEY_FILE). With TLS on, plain HTTP on S3CACHE_HTTP_PORT "
        "redirects to HTTPS.")
    tls_names: tuple[str, ...] = setting(
        "", _tls_names,
        "With TLS on: the names clients use for the proxy (host names, *.wildcards, IPv4 addresses), "
        "comma-separated; the certificate is for them and only they are answered.")
    tls_email: str | None = setting(
        "", _email,
        "acme: the e-mail address given to the certificate authority (optional).")
    tls_cert_file: str | None = setting(
        "", _file_path,
        "files: the PEM certificate chain for S3CACHE_TLS_NAMES.")
    tls_key_file: str | None = setting(
        "", _file_path,
        "files: the PEM private key of S3CACHE_TLS_CERT_FILE.")
    http_port: int = setting(
        "80", _port,
        "With TLS on: the port on S3CACHE_LISTEN's host where plain HTTP is answered with a redirect to "
        "HTTPS (and ACME's HTTP challenge); 80 for acme.")
    egress_price_per_gb: float = setting(
        "0.09", _price,
        "Dollars S3 charges per GB (2^30 bytes) of egress, for the status page's estimate of money saved.")
    nodes: tuple[HostPort, ...] = setting(
        "", _nodes,
        "Front tier only (s3cache up --front): the cache nodes' HOST:PORT, comma-separated; each object "
        "path is routed to one of them.",
        # Caddy splits an environment value on spaces into one upstream each.
        caddy=lambda v: {"S3CACHE_CADDY_NODES": " ".join(str(node) for node in v)})

    @property
    def addressing(self) -> "Addressing":
        from s3cache.addressing import Addressing
        return Addressing(self.upstream, self.domain, self.bucket, self.upstream_hosts)

    def keys(self) -> dict[str, str]:
        """Every signing key, from the variable and the file together."""
        return {**self.signing_keys_file, **self.signing_keys}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = env.get(s.name, s.default).strip()
            try:
                values[s.attr] = s.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{s.name}: {exc}") from None
        if values["evict_low"] >= values["evict_high"]:
            raise ConfigError(
                f"S3CACHE_EVICT_LOW: must be below S3CACHE_EVICT_HIGH "
                f"({values['evict_low']:g} >= {values['evict_high']:g})")
        if values["access"] == "verify" and not (values["signing_keys"] or values["signing_keys_file"]):
            raise ConfigError("S3CACHE_SIGNING_KEYS: S3CACHE_ACCESS=verify needs keys "
                              "(S3CACHE_SIGNING_KEYS or S3CACHE_SIGNING_KEYS_FILE)")
        if bool(values["upstream_access_key_id"]) != bool(values["upstream_secret_access_key"]):
            raise ConfigError("S3CACHE_UPSTREAM_SECRET_ACCESS_KEY: S3CACHE_UPSTREAM_ACCESS_KEY_ID and its secret "
                              "go together (set both, or neither to use the AWS credential chain)")
        if values["tls"] != "off" and not values["tls_names"]:
            raise ConfigError(f"S3CACHE_TLS_NAMES: S3CACHE_TLS={values['tls']} needs the names clients use "
                              "(e.g. cache.example.com)")
        if values["tls"] == "files":
            for name in ("tls_cert_file", "tls_key_file"):
                if not values[name]:
                    raise ConfigError(f"S3CACHE_{name.upper()}: S3CACHE_TLS=files needs the certificate "
                                      "and its key (PEM files)")
        if values["tls"] != "off" and values["http_port"] == values["listen"].port:
            raise ConfigError("S3CACHE_HTTP_PORT: must differ from S3CACHE_LISTEN's port, which serves HTTPS")
        values["dir"] = os.path.abspath(values["dir"])
        if values["upstream_hosts"] is None:
            from s3cache.upstream_hosts import default_hosts
            values["upstream_hosts"] = default_hosts(values["upstream"])
        return cls(**values)


# Every variable, in the order of Config's fields: .env.example, README's table, compose and the role follow it.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f"S3CACHE_{f.name.upper()}", *f.metadata["setting"]) for f in fields(Config))


def caddy_environment(config: Config) -> dict[str, str]:
    """The variables the Caddyfiles read, derived from the settings (``s3cache caddy-env`` prints them)."""
    env: dict[str, str] = {}
    for s in SETTINGS:
        if s.caddy is not None:
            env.update(s.caddy(getattr(config, s.attr)))
    env.update(caddy_tls_environment(config))
    return env


def caddy_tls_environment(config: Config) -> dict[str, str]:
    """What the Caddyfiles read about TLS and the proxies in front, from several settings together.

    S3CACHE_CADDY_SITE is the site address (plain HTTP on the port, or https:// for each name);
    S3CACHE_CADDY_TLS picks the tls_* snippet, S3CACHE_CADDY_HTTPS the https_* one.
    """
    port = config.listen.port
    tls = config.tls != "off"
    if config.tls == "acme" and config.tls_email:
        snippet = "acme_email"
    else:
        snippet = config.tls
    return {
        "S3CACHE_CADDY_SITE": (" ".join(f"https://{name}:{port}" for name in config.tls_names) if tls
                               else f"http://:{port}"),
        "S3CACHE_CADDY_TLS": snippet,
        "S3CACHE_CADDY_HTTPS": "on" if tls else "off",
        "S3CACHE_CADDY_HTTP_PORT": str(config.http_port),
        # Caddy's idea of the HTTPS port; plain HTTP on it would "violate convention", so off keeps Caddy's own.
        "S3CACHE_CADDY_HTTPS_PORT": str(port) if tls else "443",
        # The redirect's Location names the port unless it is HTTPS's own.
        "S3CACHE_CADDY_HTTPS_SUFFIX": "" if port == 443 else f":{port}",
        "S3CACHE_TLS_EMAIL": config.tls_email or "",
        "S3CACHE_TLS_CERT_FILE": config.tls_cert_file or "",
        "S3CACHE_TLS_KEY_FILE": config.tls_key_file or "",
        "S3CACHE_CADDY_TRUSTED_PROXIES": " ".join(str(net) for net in config.trusted_proxies),
    }


def read_env_file(path: str) -> dict[str, str]:
    """Parse a docker-compose style ``.env`` file: KEY=VALUE, # comments, optional quotes.

    Hand-written rather than python-dotenv because the runtime is kept to
    flask, waitress, requests and schedule; the format we accept is the small
    subset that docker compose also reads.
    """
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):].lstrip()
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise ConfigError(f"{path}:{lineno}: expected KEY=VALUE, got {line!r}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            elif " #" in value:
                value = value.split(" #", 1)[0].rstrip()
            values[key] = value
    return values
