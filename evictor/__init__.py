"""The evictor: a scheduled process that keeps the cache between its watermarks, least recently used first."""
