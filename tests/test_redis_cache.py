"""core.cache.PooledRedisCache against a real redis-server (the test's own, so that no other
test's connections are counted): one pool per process, whatever the thread or async
context that asks (Django's own makes one per cache instance)."""

from __future__ import annotations

import contextvars
import threading

import pytest
import redis
from django.core.cache.backends.redis import RedisCache

from core.cache import PooledRedisCache
from tests.private_redis import PrivateRedis


@pytest.fixture(scope="module")
def private_redis() -> PrivateRedis:
    with PrivateRedis() as server:
        yield server


@pytest.fixture
def server(private_redis: PrivateRedis) -> redis.Redis:
    return redis.Redis.from_url(private_redis.url)


def connections_made(server: redis.Redis, use) -> int:
    """New connections the Redis server accepted while ``use()`` ran."""
    before = server.info("stats")["total_connections_received"]
    use()
    return server.info("stats")["total_connections_received"] - before


def in_fresh_contexts_and_threads(backend: type[RedisCache], url: str) -> None:
    """Five uses from five contexts (as of five async requests) and five from five threads,
    each on its own cache instance, as ``django.core.cache.caches`` hands them out."""

    def read() -> None:
        cache = backend(url, {})
        cache.set("k", "v")
        assert cache.get("k") == "v"

    for _ in range(5):
        contextvars.copy_context().run(read)
    # One thread after another: a pool opens more connections only for commands that overlap.
    for _ in range(5):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()


def test_instances_share_one_pool(server, private_redis):
    def use() -> None:
        in_fresh_contexts_and_threads(PooledRedisCache, private_redis.url)

    assert connections_made(server, use) <= 1


def test_djangos_own_cache_connects_per_instance(server, private_redis):
    """Why core.cache exists: when this fails, Django shares its pools (tickets #33625,
    #35651) and PooledRedisCache can go."""

    def use() -> None:
        in_fresh_contexts_and_threads(RedisCache, private_redis.url)

    assert connections_made(server, use) >= 10


def test_other_servers_or_options_get_their_own_client(private_redis):
    url = private_redis.url
    one, same = PooledRedisCache(url, {}), PooledRedisCache(url, {})
    other_db = PooledRedisCache(url.replace("/0", "/1"), {})
    other_options = PooledRedisCache(url, {"OPTIONS": {"socket_timeout": 3}})
    assert one._cache is same._cache
    assert len({id(c._cache) for c in (one, other_db, other_options)}) == 3
    other_options.set("k", 1)
    assert one.get("k") == 1  # same server and database, another pool


def test_a_restarted_server_is_found_again_by_the_next_command():
    """The shared pool outlives a Redis restart: its dead connection is replaced on use
    (redis-py reconnects and retries a command that met a dead connection): no command
    fails."""
    with PrivateRedis() as private:
        cache = PooledRedisCache(private.url, {})
        cache.set("k", 1)
        private.stop()
        private.start()  # the same port, empty (no persistence)
        assert cache.get("k", "gone") == "gone"
        cache.set("k", 2)
        assert cache.get("k") == 2
