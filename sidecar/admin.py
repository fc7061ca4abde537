"""Who may use the internal endpoints: ``S3CACHE_ADMIN_ALLOW``, by the client's IP address.

The sidecar's direct peer is Caddy, so the client's address comes from the
``X-S3cache-Client-Ip`` header Caddy's ``to_sidecar`` sets (``{client_ip}``,
replacing anything a client sent: the peer, or for a peer listed in
``S3CACHE_TRUSTED_PROXIES`` the right-most ``X-Forwarded-For`` address that is
not a trusted proxy).  (waitress strips ``X-Forwarded-For`` from untrusted
peers, which is why Caddy sends a header of our own.)  It is
believed only from a loopback or private-network peer: Caddy on the same host
(``s3cache up``, systemd) or in a neighbouring container (docker compose,
where Caddy reaches ``sidecar:8081`` over the project network).  The
sidecar's port must stay private, as it always had to: whoever can reach it
directly can also ask it for misses.  A public peer's headers prove nothing.

- A request that came through Caddy (it carries ``X-S3cache-Uri``) without
  the client header is refused: a Caddyfile without that line must not make
  every client look local.
- A direct connection to the sidecar's private port has no such headers; its
  client is the peer itself (``s3cache stats`` asks that way, from loopback).
- Health's full report also goes to loopback whatever the list says: docker
  and systemd health checks run on the machine itself.  (Its bare status
  answers anyone, so a front tier on another host can probe a node:
  ``sidecar.internal``.)
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

from s3cache.wire import CLIENT_IP_HEADER, RAW_URI_HEADER as VIA_CADDY_HEADER

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]  # an IPv6 zone
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(remote_addr: str | None, headers: Mapping[str, str]) -> IPAddress | None:
    """The address to judge, or None when it cannot be known (then: refuse)."""
    peer = parse_ip(remote_addr)
    if peer is None:
        return None
    if not (peer.is_loopback or peer.is_private):
        return peer  # cannot be our Caddy: its headers prove nothing
    forwarded = headers.get(CLIENT_IP_HEADER)
    if forwarded is not None:
        return parse_ip(forwarded)
    if headers.get(VIA_CADDY_HEADER) is not None:
        return None  # through Caddy, but Caddy did not say who the client is
    return peer


def allowed(ip: IPAddress | None, networks: Iterable[IPNetwork], *, loopback_too: bool = False) -> bool:
    if ip is None:
        return False
    if loopback_too and ip.is_loopback:
        return True
    return any(ip.version == net.version and ip in net for net in networks)
