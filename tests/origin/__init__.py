"""Signature-enforcing S3 test origin.

This package owns the fake "real S3" that integration tests put behind
s3cache: moto's in-memory S3 wrapped in a WSGI middleware that, unlike moto,
verifies presigned URL signatures (SigV2 and SigV4) and expiry, refuses
anonymous access to private buckets, counts what it serves and injects faults
on request. Modules:

- ``sigcheck``: pure presigned-URL signature checker written from the AWS spec
  (the independent oracle; it must not import botocore).
- ``credentials``: the fixed credentials table and the ``public-`` prefix.
- ``app``: the WSGI middleware (policy, fault application, If-None-Match).
- ``state``: request counters and armed faults, shared across threads.
- ``__main__``: ``python -m tests.origin --port P`` serves it on 127.0.0.1.
- ``fixture``: ``start_origin()`` runs it as a subprocess for pytest.
"""
