"""s3cache test suite."""
