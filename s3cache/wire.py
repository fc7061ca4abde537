"""Names on the wire between Caddy, the sidecar and the ``s3cache`` command: internal headers and paths.

Defined once here.  The Caddyfile cannot import them and spells them
literally; ``tests/test_caddyfile.py`` checks that its spellings are these.
"""

from __future__ import annotations

# -- headers Caddy adds on its way to the sidecar (replacing any a client sent) ----------------

# The URI exactly as the client sent it (waitress's REQUEST_URI is the fallback when the
# sidecar is reached directly).  Its presence also marks a request as one that came through Caddy.
RAW_URI_HEADER = "X-S3cache-Uri"
# The client's Host (forward_auth replaces Host with the sidecar's).
HOST_HEADER = "X-S3cache-Host"
# The client's address as Caddy saw it ({client_ip}): what S3CACHE_ADMIN_ALLOW judges.
CLIENT_IP_HEADER = "X-S3cache-Client-Ip"
# On the access check only: the file Caddy matched, relative to objects/, ended by "|" (waitress
# strips trailing spaces).  The sidecar refuses a hit unless it is the object it authorized.
SERVED_HEADER = "X-S3cache-Served"
# On the access check only: the grant Caddy looked for and did not find (window and URL part of its
# name, s3cache/grants.py, ended by "|"); the sidecar writes one only under this very name.
GRANT_HEADER = "X-S3cache-Grant"

# -- the sidecar's own endpoints ----------------------------------------------------------------

PREFIX = "/_s3cache"
AUTH_PATH = PREFIX + "/auth"          # Caddy's forward_auth, before serving a cached file
HEALTH_PATH = PREFIX + "/health"
METRICS_PATH = PREFIX + "/metrics"
STATS_PATH = PREFIX + "/stats.json"   # the snapshot the page, the metrics and `s3cache stats` render
PAGE_PATHS = ("/", PREFIX, PREFIX + "/")  # the status page
# The cached objects (admin): GET lists (?prefix=&after=&limit=) or shows /objects/<bucket>/<key>;
# DELETE purges /objects/<bucket>/<key>, or every object under ?prefix=<bucket>/<keyprefix>.
OBJECTS_PATH = PREFIX + "/objects"


def is_objects(path: str) -> bool:
    """A raw path (no query) for the objects API: ``/_s3cache/objects`` or anything below it."""
    return path == OBJECTS_PATH or path.startswith(OBJECTS_PATH + "/")


def is_internal(path: str) -> bool:
    """A raw path (no query) that names one of our endpoints, or would if it existed: never an object."""
    return path in PAGE_PATHS or path.startswith(PREFIX + "/")
