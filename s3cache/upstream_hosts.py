"""Host-in-path URLs: ``http://proxy/<original host>/<path>?<query>``, and the allow-list of hosts
that may stand first in the path (S3CACHE_UPSTREAM_HOSTS).

Owns the one rule for which first path segment is an upstream host, and the regular expressions
that state it: Python (``UpstreamHosts.classify``) and Caddy (``caddy_environment``, the Caddyfile's
``{hip_file}`` map) run the same ones, built here from one list.

An entry is ``[http://|https://]HOST[:PORT]``.  HOST is a DNS name or an IP address; a label
that is ``*`` as the first one stands for a bucket name (virtual-hosted: ``*.s3.amazonaws.com``;
the bucket may contain dots), and any other ``*`` for one or more of ``[a-z0-9-]`` within a label
(``s3.*.amazonaws.com``, ``s3-*.amazonaws.com``); the last label is never a wildcard.  Without a
port an entry matches any port (a name without a dot only with one: ``minio`` alone is a bucket);
without a scheme it is ``https``.  The first entry that matches decides.

The first path segment (as sent, no percent-escapes) is compared in its canonical spelling
(ASCII lower case, trailing dots before the port dropped), as Host headers are in
``s3cache.addressing``:

1. it matches an entry: it is a host (the bucket is in it, or is the next path segment);
2. else, when it has a ``:`` or its name ends in ``.amazonaws.com``: refused (never fetched,
   never redirected to: the proxy is no open redirector);
3. else it is a bucket, path-style, as it always was.

A segment written with percent-escapes that would decode to a host of rule 1 or 2 is refused:
hosts are written as they are.  Caddy serves from disk only the canonical spelling (rule 1 with
the segment already canonical); every other spelling of rule 1 or 2 goes to the sidecar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

# The bucket of a virtual-hosted name, as the Caddyfile's Host map reads one: lower case, no "..".
BUCKET_RE = r"[a-z0-9](?:[a-z0-9-]|\.[a-z0-9-]){1,61}[a-z0-9]"
_LABEL_WILDCARD = "[a-z0-9-]+"

# AWS S3's endpoints, global before regional (``x.s3.s3.amazonaws.com`` is bucket ``x.s3``).
AWS_PATTERNS = (
    "s3.amazonaws.com",
    "*.s3.amazonaws.com",
    "s3.*.amazonaws.com",
    "*.s3.*.amazonaws.com",
    "s3.dualstack.*.amazonaws.com",
    "*.s3.dualstack.*.amazonaws.com",
    "s3-*.amazonaws.com",
    "*.s3-*.amazonaws.com",
)
# The Caddyfile concatenates at most this many capture groups ($1 ... $20): one per bucket entry, plus the rest.
MAX_BUCKET_ENTRIES = 19

_ENTRY = re.compile(r"(?:(https?)://)?(\[[0-9a-f:.]+\]|[a-z0-9*.-]+)(?::([0-9]{1,5}))?")
_SEGMENT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class HostPattern:
    """One allow-list entry."""

    scheme: str        # http or https: how the upstream is reached
    host: str          # lower case, with * wildcards
    port: str | None   # None: any port

    @property
    def has_bucket(self) -> bool:
        return self.host.startswith("*.")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")

    def _name_re(self, bucket_group: str, spell=lambda text: text) -> str:
        """``spell``: how a literal is written in the text matched (the front tier's is query-escaped)."""
        labels = self.host.split(".")
        out = []
        if self.has_bucket:
            out.append(bucket_group + r"\.")
            labels = labels[1:]
        out.append(r"\.".join(_LABEL_WILDCARD.join(re.escape(spell(part)) for part in label.split("*"))
                               for label in labels))
        return "".join(out)

    def _port_re(self, colon: str = ":") -> str:
        if self.port:
            return f"{colon}{self.port}"
        # A segment with neither a dot nor a port is a bucket: a dotless name is a host only with its port.
        return f"(?:{colon}[0-9]{{1,5}})?" if "." in self.host or self.host.startswith("[") else f"{colon}[0-9]{{1,5}}"

    def segment_re(self) -> str:
        """The canonical segment, bucket in group 1 (Python)."""
        return self._name_re(f"({BUCKET_RE})") + self._port_re()

    def caddy_re(self) -> str:
        """``/segment`` in Caddy's decoded path, its bucket captured with the slash ("/bucket")."""
        if self.has_bucket:
            return self._name_re(f"(/{BUCKET_RE})") + self._port_re()
        return "/" + self._name_re("") + self._port_re()

    def shard_re(self) -> str:
        """``caddy_re`` in ``{http.request.uri.path_escaped}``'s spelling (url.QueryEscape: "/" is %2F,
        ":" %3A, "[" "]" %5B %5D), for the front tier's shard key."""
        name = self._name_re(f"(%2F{BUCKET_RE})", lambda text: quote(text, safe=""))
        return (name if self.has_bucket else "%2F" + name) + self._port_re("%3A")

    def loose_re(self) -> str:
        """The name in any case (Caddy adds (?i) and trailing dots): spellings that must go to the sidecar.
        A dotless name is a host only with a port, which Caddy's catch-all for ":" already sends there."""
        dotless = "." not in self.host and not self.host.startswith("[")
        return self._name_re(BUCKET_RE) + (":" if dotless else "")


def parse_pattern(text: str) -> HostPattern:
    item = text.strip().translate(_ASCII_LOWER)
    m = _ENTRY.fullmatch(item)
    if not m:
        raise ValueError(f"expected [http://|https://]HOST[:PORT] (HOST may have * wildcards), got {text!r}")
    scheme, host, port = m.group(1) or "https", m.group(2).rstrip("."), m.group(3)
    labels = host.split(".")
    if not host or any(not label for label in labels) or "**" in host or labels[-1] == "*" or host == "*":
        raise ValueError(f"expected a host name such as *.s3.amazonaws.com, got {text!r}")
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"expected a port number (1-65535) in {text!r}")
    return HostPattern(scheme, host, port)


@dataclass(frozen=True)
class HostInPath:
    """A first path segment that is an allowed upstream host."""

    pattern: HostPattern
    segment: str           # as sent: the redirect and the fetch go to it byte for byte
    bucket: str | None     # from the host (virtual-hosted), else the next path segment names it

    @property
    def origin(self) -> str:
        return f"{self.pattern.scheme}://{self.segment}"


class Refused(Exception):
    """A first segment that looks like a host but is not on the allow-list (or is escaped): S3's code for it."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def canonical_segment(segment: str) -> str | None:
    """``name[:port]`` in ASCII lower case, trailing dots dropped from the name; None when not host-shaped."""
    m = _SEGMENT.fullmatch(segment)
    if not m:
        return None
    name = m.group(1).translate(_ASCII_LOWER).rstrip(".")
    return name + (f":{m.group(2)}" if m.group(2) is not None else "")


def looks_like_host(segment: str) -> bool:
    """Rule 2: a ``:`` (a port) or a name under amazonaws.com, in any spelling."""
    name = segment.translate(_ASCII_LOWER).partition(":")[0].rstrip(".")
    return ":" in segment or name.endswith(".amazonaws.com") or name == "amazonaws.com"


@dataclass(frozen=True)
class UpstreamHosts:
    patterns: tuple[HostPattern, ...]

    def __post_init__(self):
        object.__setattr__(self, "_compiled", tuple(re.compile(p.segment_re()) for p in self.patterns))

    def match(self, segment: str) -> tuple[HostPattern, str | None] | None:
        """The first entry a (decoded) segment matches, and the bucket its name holds."""
        canonical = canonical_segment(segment)
        if canonical is None:
            return None
        for pattern, regex in zip(self.patterns, self._compiled):
            m = regex.fullmatch(canonical)
            if m:
                return pattern, (m.group(1) if pattern.has_bucket else None)
        return None

    def classify(self, raw_segment: str, decoded: str) -> HostInPath | None:
        """The host-in-path reading of a first path segment (raw as sent, and percent-decoded);
        None: it is a path-style bucket.  Raises Refused for rule 2 and escaped hosts."""
        found = self.match(decoded)
        if found is not None:
            if raw_segment != decoded:
                raise Refused(400, "InvalidURI", "Write the upstream host in the path without percent-escapes.")
            return HostInPath(found[0], raw_segment, found[1])
        if looks_like_host(decoded):
            raise Refused(403, "AccessDenied", "This upstream host is not allowed here (S3CACHE_UPSTREAM_HOSTS).")
        return None

    # -- Caddy ---------------------------------------------------------------------------------

    def caddy_re(self) -> str:
        return "|".join(p.caddy_re() for p in self.patterns)

    def caddy_loose_re(self) -> str:
        return "|".join(p.loose_re() for p in self.patterns)

    def caddy_shard_re(self) -> str:
        return "|".join(p.shard_re() for p in self.patterns)

    def caddy_environment(self) -> dict[str, str]:
        return {"S3CACHE_CADDY_HOSTS_RE": self.caddy_re(), "S3CACHE_CADDY_HOSTS_LOOSE_RE": self.caddy_loose_re(),
                "S3CACHE_CADDY_HOSTS_SHARD_RE": self.caddy_shard_re()}


def parse_hosts(value: str) -> UpstreamHosts | None:
    """Comma-separated entries; empty: None (the default, derived from S3CACHE_UPSTREAM)."""
    if not value.strip():
        return None
    patterns: list[HostPattern] = []
    for n, item in enumerate(value.split(","), 1):
        if not item.strip():
            raise ValueError(f"entry {n} is empty (a stray comma?) in {value!r}")
        pattern = parse_pattern(item)
        if pattern not in patterns:
            patterns.append(pattern)
    if sum(p.has_bucket for p in patterns) > MAX_BUCKET_ENTRIES:
        raise ValueError(f"at most {MAX_BUCKET_ENTRIES} entries may start with '*.'")
    return UpstreamHosts(tuple(patterns))


def default_hosts(upstream: str) -> UpstreamHosts:
    """AWS's endpoints when S3CACHE_UPSTREAM is AWS (bucket names are global there), else its own host."""
    scheme, _, hostport = upstream.partition("://")
    host = (urlsplit(upstream).hostname or "").rstrip(".")
    if host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        return UpstreamHosts(tuple(parse_pattern(f"https://{p}") for p in AWS_PATTERNS))
    return UpstreamHosts((parse_pattern(f"{scheme}://{hostport}"),))
