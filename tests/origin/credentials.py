"""The origin's fixed credentials table (importable without pulling in moto).

Presigned requests are checked against CREDENTIALS. The ADMIN pair is what the
fixture's boto3 client uses for setup; those requests carry an Authorization
header and are passed through unchecked, and the admin key is deliberately
*not* in CREDENTIALS, so a URL presigned with it is refused
(InvalidAccessKeyId) instead of silently working.
"""

ACCESS_KEY_1 = "AKIAS3CACHETEST1"
SECRET_KEY_1 = "s3cache/Test+Secret1"
ACCESS_KEY_2 = "AKIAS3CACHETEST2"
SECRET_KEY_2 = "s3cache/Test+Secret2"
ADMIN_ACCESS_KEY = "AKIAS3CACHEADMIN"
ADMIN_SECRET_KEY = "s3cache-admin-secret"

CREDENTIALS = {ACCESS_KEY_1: SECRET_KEY_1, ACCESS_KEY_2: SECRET_KEY_2}
REGION = "us-east-1"
# Buckets whose name starts with this are readable without any signature.
PUBLIC_BUCKET_PREFIX = "public-"
