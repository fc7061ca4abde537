"""s3cache core: configuration, the cache layout and the `s3cache` command shared by every part."""
