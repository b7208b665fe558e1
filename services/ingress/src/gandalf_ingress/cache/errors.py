"""The one error every cache backend may raise (apart from redis-py, which is
imported only when a Redis cache is configured)."""

from __future__ import annotations


class CacheUnavailable(Exception):
    """The cache backend did not answer (in time); treat as a miss."""
