"""The cache keeps one Redis connection pool per process (chatsite/cache.py). Django builds a
cache object per asyncio context, and each built its own pool: under ASGI every request, and
every call off the loop, opened a new connection to Redis (issue 16). A running server's reuse
is tested in tests/answers/test_redis_connections.py."""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

from chatsite.cache import RedisCache


def test_cache_objects_of_one_configuration_share_one_client() -> None:
    # Two objects, as Django makes for two requests' contexts: no connection is opened here.
    first = RedisCache("redis://127.0.0.1:6379/15", {})
    second = RedisCache("redis://127.0.0.1:6379/15", {})
    other = RedisCache("redis://127.0.0.1:6379/14", {})
    assert first._cache is second._cache
    assert other._cache is not first._cache
    # Django's own builds one per object: what the subclass is for.
    assert (DjangoRedisCache("redis://127.0.0.1:6379/15", {})._cache
            is not DjangoRedisCache("redis://127.0.0.1:6379/15", {})._cache)
