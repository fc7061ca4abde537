"""s3cache core: what every part and command shares (configuration, the cache layout, request parsing, wire names)."""
