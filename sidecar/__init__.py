"""The sidecar: a small Flask app (served by waitress) that answers cache misses and fills the cache."""
