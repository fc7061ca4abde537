"""The proxy's own S3 credentials, and the SigV4 signature of each request it sends on an SDK client's behalf.

A request an SDK signed in its ``Authorization`` header was signed for the
proxy's host, so it cannot be replayed to S3: the sidecar checks it
(``sidecar.signatures``) and then sends its own request, signed here with
the proxy's credentials.

- Credentials: S3CACHE_UPSTREAM_ACCESS_KEY_ID / _SECRET_ACCESS_KEY /
  _SESSION_TOKEN when set, else botocore's chain (the standard ``AWS_*``
  variables, the shared credentials and config files, container and instance
  roles), resolved on first use -- never at start, so a proxy without SDK
  clients never asks the network for credentials -- and refreshed by botocore
  when they are temporary.
- The signer is botocore's (``S3SigV4Auth``), with ``UNSIGNED-PAYLOAD`` (or
  the payload hash the client itself signed, which S3 then checks against
  the body).  botocore signs the path and query *as written* (S3 canonicalizes
  them), so the caller hands over the target in S3's canonical encoding
  (``signatures.canonical_target``) and sends exactly that target: the
  signature is made for the very bytes ``sidecar.upstream`` sends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Mapping

from s3cache.config import Config

log = logging.getLogger("sidecar.upstream_auth")

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_REGION = "us-east-1"
RETRY_SECONDS = 30.0
# What botocore adds to a signed request: replaced, never doubled, when the caller's headers hold them.
SIGNATURE_HEADERS = ("authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token")


class NoCredentials(Exception):
    """The proxy has no S3 credentials of its own (neither the settings nor botocore's chain gives any)."""


class UpstreamSigner:
    def __init__(self, config: Config):
        self._config = config
        self._lock = threading.Lock()
        self._credentials = None
        self._region: str | None = None
        self._retry_at = float("-inf")

    def _resolve(self):
        with self._lock:
            if self._credentials is not None:
                return self._credentials, self._region
            # The chain may ask the network (an instance role): after finding nothing, not again at once.
            if time.monotonic() < self._retry_at:
                raise NoCredentials()
            self._retry_at = time.monotonic() + RETRY_SECONDS
            import botocore.session
            from botocore.credentials import Credentials

            session = botocore.session.Session()
            c = self._config
            if c.upstream_access_key_id:
                credentials = Credentials(c.upstream_access_key_id, c.upstream_secret_access_key,
                                          c.upstream_session_token or None)
            else:
                try:
                    credentials = session.get_credentials()
                except Exception as exc:  # noqa: BLE001 -- a broken credentials file: no credentials, said once
                    log.warning("AWS credential chain failed: %s", exc)
                    credentials = None
            if credentials is None:
                raise NoCredentials()
            self._region = c.upstream_region or session.get_config_variable("region") or DEFAULT_REGION
            self._credentials = credentials
            return credentials, self._region

    def available(self) -> bool:
        try:
            self._resolve()
        except NoCredentials:
            return False
        return True

    def sign(self, method: str, url: str, headers: Mapping[str, str],
             payload_hash: str = UNSIGNED_PAYLOAD) -> dict[str, str]:
        """``headers`` plus the signature headers for ``method url`` (whose target must be S3-canonical).

        Raises NoCredentials.
        """
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials, region = self._resolve()
        frozen = credentials.get_frozen_credentials()  # refreshed by botocore when temporary

        class _Signer(S3SigV4Auth):
            def payload(self, request):
                return payload_hash

        kept = {k: v for k, v in headers.items() if k.lower() not in SIGNATURE_HEADERS}
        request = AWSRequest(method=method, url=url, headers=kept)
        _Signer(frozen, "s3", region).add_auth(request)
        return dict(request.headers.items())
