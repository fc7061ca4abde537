"""The on-disk cache layout: the one place that maps an S3 object to files.

Everything that reads or writes the cache directory (Caddy via the paths this
module hands it, the sidecar's fills, the evictor) goes through here.

    S3CACHE_DIR/
      objects/<bucket>/<key>   complete objects only; the tree Caddy serves
      meta/<bucket>/<key>      JSON metadata (ETag, Content-Type, ...; s3cache/metadata.py), never served
      marks/headers/<bucket>/<key>  empty: the object has S3 headers Caddy's file_server cannot
                               send itself (sidecar/hit_headers.py); open-mode hits of it ask the sidecar
      marks/octet/<bucket>/<key>    empty: its Content-Type is S3's default binary/octet-stream and
                               nothing else needs the sidecar; Caddy sets that type itself
      grants/<bucket>/<key>/<grant>/<etag>  empty: Caddy serves this exact URL without asking the sidecar
                               until the window in its name ends (s3cache/grants.py)
      tmp/<sha256>.part        a fill in progress; its flock *is* the entry's lock (s3cache/entries.py)
      tmp/<sha256>.link.part   a fill's second name for its finished file, renamed into objects/
      run/parts.json           the supervisor's parts (front-parts.json for a front tier)
      run/evictor.json         the evictor's last pass; run/evictor-passes.jsonl the last 100
      run/frequency.sketch     how often each object was asked for lately (s3cache.sketch)
      run/adaptive.json        which eviction order wins lately: the shadow caches (evictor.adaptive)
      run/cache-bytes          the cache's bytes and files, kept by fills, removals and passes (s3cache.ledger)
      run/next-victims         what a pass would remove next, for fills to make room from (s3cache.victims)
      logs/access.log          Caddy's JSON access log (rolled beside it as access-*.log)

``tmp``, ``meta``, ``marks`` and ``grants`` are siblings of ``objects`` on the same filesystem, so the
final rename of a fill is atomic and nothing half-written is ever inside the
served tree.  S3 keys may legitimately contain ``.tmp/`` or ``meta/``; since
those names only exist *beside* the served root, no key can reach them.

A key is only cacheable when the file path it maps to reads back as exactly
that key: Caddy's file lookup cleans paths (``//`` collapses, ``.``/``..``
resolve), so keys with such segments, a trailing ``/``, or a component longer
than a filesystem name are never cached.  Rejecting them here keeps the
mapping injective: distinct (bucket, key) pairs never share a file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

# ext4, xfs, btrfs and tmpfs all cap one directory entry at 255 bytes.
MAX_NAME_BYTES = 255
# S3's own limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

OBJECTS = "objects"
META = "meta"
MARKS = "marks"
MARK_KINDS = ("headers", "octet", "app-octet")
GRANTS = "grants"
TMP = "tmp"
RUN = "run"
LOGS = "logs"
TEMP_SUFFIX = ".part"
ACCESS_LOG = "access.log"

# S3's naming rules, widened to what legacy us-east-1 buckets allowed
# (upper case, underscores, up to 255 characters).  Never "." or "..".
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


def is_valid_bucket(name: str) -> bool:
    return bool(_BUCKET_RE.fullmatch(name)) and ".." not in name


class Uncacheable(ValueError):
    """The object is valid for S3 but cannot be stored faithfully as a plain file."""


@dataclass(frozen=True)
class ObjectRef:
    """One S3 object, already percent-decoded: what a cache entry is keyed by."""

    bucket: str
    key: str

    @property
    def name(self) -> str:
        return f"{self.bucket}/{self.key}"


def uncacheable_reason(ref: ObjectRef) -> str | None:
    """Why ``ref`` cannot be stored as ``objects/<bucket>/<key>``, or None if it can."""
    key = ref.key
    if not is_valid_bucket(ref.bucket):
        return "invalid bucket name"
    if not key:
        return "empty key"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return "key longer than 1024 bytes"
    if "\x00" in key:
        return "NUL in key"
    if key.endswith("/"):
        return "trailing slash"
    for segment in key.split("/"):
        if segment == "":
            return "empty path segment ('//' or leading '/')"
        if segment in (".", ".."):
            return "dot segment"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return "path component longer than 255 bytes"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    return None


class Layout:
    """Paths inside one cache directory."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(os.path.abspath(root))
        self.objects_dir = self.root / OBJECTS
        self.meta_dir = self.root / META
        self.marks_dir = self.root / MARKS
        self.mark_dirs = {kind: self.marks_dir / kind for kind in MARK_KINDS}
        self.grants_dir = self.root / GRANTS
        self.tmp_dir = self.root / TMP
        self.run_dir = self.root / RUN
        self.logs_dir = self.root / LOGS
        # The files the parts leave for each other, named here once.
        self.access_log = self.logs_dir / ACCESS_LOG
        self.parts_file = self.run_dir / "parts.json"
        self.sidecar_file = self.run_dir / "sidecar.json"  # the sidecar's processes (sidecar.processes)
        self.front_parts_file = self.run_dir / "front-parts.json"
        self.evictor_status_file = self.run_dir / "evictor.json"
        self.evictor_passes_file = self.run_dir / "evictor-passes.jsonl"
        self.sketch_file = self.run_dir / "frequency.sketch"  # s3cache.sketch: requests per object, lately
        self.adaptive_file = self.run_dir / "adaptive.json"  # evictor.adaptive: the policy duel's shadow caches
        self.cache_bytes_file = self.run_dir / "cache-bytes"  # s3cache.ledger: the cache's bytes and files between passes
        self.victims_file = self.run_dir / "next-victims"  # s3cache.victims: what a fill may remove to make room

    def ensure(self) -> None:
        for d in (self.objects_dir, self.meta_dir, *self.mark_dirs.values(), self.grants_dir, self.tmp_dir, self.run_dir,
                  self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- object -> paths ------------------------------------------------------

    def relative_path(self, ref: ObjectRef) -> str:
        """``<bucket>/<key>``, the path shared by the object and its metadata."""
        reason = uncacheable_reason(ref)
        if reason:
            raise Uncacheable(reason)
        return f"{ref.bucket}/{ref.key}"

    def object_path(self, ref: ObjectRef) -> Path:
        return self._inside(self.objects_dir, self.relative_path(ref))

    def meta_path(self, ref: ObjectRef) -> Path:
        return self._inside(self.meta_dir, self.relative_path(ref))

    def mark_path(self, ref: ObjectRef, kind: str = "headers") -> Path:
        """Present while file_server alone would answer the object's hits wrongly (Caddy tests it)."""
        return self._inside(self.mark_dirs[kind], self.relative_path(ref))

    def grant_dir(self, ref: ObjectRef) -> Path:
        """The object's grants, one file each (named by ``s3cache.grants``); goes with the object."""
        return self._inside(self.grants_dir, self.relative_path(ref))

    def temp_path(self, ref: ObjectRef) -> Path:
        """Where a fill of ``ref`` streams to; flock on it means a fill is running."""
        digest = hashlib.sha256(ref.name.encode("utf-8")).hexdigest()
        return self.tmp_dir / f"{digest}{TEMP_SUFFIX}"

    def link_temp_path(self, ref: ObjectRef) -> Path:
        """A finished fill's second name, renamed into ``objects/`` while the temp path keeps the lock."""
        digest = hashlib.sha256(ref.name.encode("utf-8")).hexdigest()
        return self.tmp_dir / f"{digest}.link{TEMP_SUFFIX}"

    def meta_temp_path(self, ref: ObjectRef) -> Path:
        """Metadata is written here and renamed into ``meta/`` once complete."""
        digest = hashlib.sha256(ref.name.encode("utf-8")).hexdigest()
        return self.tmp_dir / f"{digest}.meta{TEMP_SUFFIX}"

    def check_lock_path(self, ref: ObjectRef, grant_name: str) -> Path:
        """flock on it: one sidecar process asks S3 about this grantable URL, the others wait for its grant."""
        digest = hashlib.sha256(f"{ref.name}\0{grant_name}".encode("utf-8", "surrogatepass")).hexdigest()
        return self.tmp_dir / f"{digest}.check{TEMP_SUFFIX}"

    # -- paths -> object (for the evictor) --------------------------------------

    def meta_path_for_object_file(self, object_file: os.PathLike | str) -> Path:
        rel = os.path.relpath(object_file, self.objects_dir)
        return self.meta_dir / rel

    def mark_paths_for_object_file(self, object_file: os.PathLike | str) -> list[Path]:
        rel = os.path.relpath(object_file, self.objects_dir)
        return [d / rel for d in self.mark_dirs.values()]

    def grant_dir_for_object_file(self, object_file: os.PathLike | str) -> Path:
        return self.grants_dir / os.path.relpath(object_file, self.objects_dir)

    def object_path_for_meta_file(self, meta_file: os.PathLike | str) -> Path:
        """The object of a metadata file, or of a mark."""
        root = next((d for d in self.mark_dirs.values() if os.path.commonpath([d, meta_file]) == str(d)),
                    self.meta_dir)
        rel = os.path.relpath(meta_file, root)
        return self.objects_dir / rel

    def ref_for_object_file(self, object_file: os.PathLike | str) -> ObjectRef:
        rel = os.path.relpath(object_file, self.objects_dir)
        bucket, _, key = rel.partition(os.sep)
        return ObjectRef(bucket, key)

    @staticmethod
    def _inside(base: Path, rel: str) -> Path:
        # uncacheable_reason already excludes every way out (dot segments,
        # empty segments, NUL); this is the belt to those braces.
        path = base / rel
        if os.path.commonpath([base, os.path.normpath(path)]) != str(base):
            raise Uncacheable("path escapes the cache directory")
        return path
