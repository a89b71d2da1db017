"""Redis clients built from Settings: async for serving, sync for bulk loading.

    settings.redis_url       redis://host:6379/0, rediss://... (TLS) or unix:///path.sock
    settings.redis_password  overrides a password in the URL when set
    settings.redis_tls       true turns redis:// into rediss:// (TLS)
    settings.redis_cluster   true -> a Redis Cluster client; so does `?cluster=true` in the URL
                             (e.g. redis://10.0.0.5:7000/0?cluster=true; any node is a seed)

Replies are decoded to str by the hiredis parser (redis-py picks it when hiredis is installed;
hiredis roughly halves the client time of a small pipeline). Failures surface quickly: one retry
with a short backoff, so a dead Redis becomes an error the caller can degrade on instead of a
request that hangs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from shared.settings import Settings

_TRUE = {"1", "true", "yes", "on"}

# What make_redis and make_redis_sync return: a client of one node or of a cluster.
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster
AsyncPipeline = redis.asyncio.client.Pipeline | redis.asyncio.cluster.ClusterPipeline


def redis_target(settings: Settings) -> tuple[str, bool]:
    """The URL redis-py should see and whether it names a cluster."""
    parts = urlsplit(settings.redis_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = settings.redis_cluster or any(
        k == "cluster" and v.lower() in _TRUE for k, v in query)
    query = [(k, v) for k, v in query if k != "cluster"]  # redis-py would reject it
    scheme = "rediss" if settings.redis_tls and parts.scheme == "redis" else parts.scheme
    url = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    return url, cluster


def _client_kwargs(settings: Settings, socket_timeout_s: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": min(1.0, socket_timeout_s),
        "socket_timeout": socket_timeout_s,
    }
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    return kwargs


def make_redis(settings: Settings, *, socket_timeout_s: float = 2.0,
               retries: int = 1) -> AsyncRedis:
    """The async client for serving. Create it in a FastAPI lifespan; `await client.aclose()`."""
    url, cluster = redis_target(settings)
    kwargs = _client_kwargs(settings, socket_timeout_s)
    retry = AsyncRetry(ExponentialBackoff(cap=0.05, base=0.01), retries)
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, retry=retry, **kwargs)
    return redis.asyncio.Redis.from_url(url, retry=retry, **kwargs)


def make_redis_sync(settings: Settings, *, socket_timeout_s: float = 30.0,
                    retries: int = 3) -> SyncRedis:
    """The blocking client for bulk loading (`vidrec load`): long timeouts, a few retries."""
    url, cluster = redis_target(settings)
    kwargs = _client_kwargs(settings, socket_timeout_s)
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, retry=retry, **kwargs)
    return redis.Redis.from_url(url, retry=retry, **kwargs)


def as_fields(mapping: Mapping[str, str | bytes | float]) -> dict[FieldT, EncodableT]:
    """`mapping` as the dict redis-py's types ask of XADD fields and HSET mappings (theirs is
    invariant, so a dict[str, str] is not one)."""
    return dict(mapping.items())


def text(reply: Any) -> str | None:
    """A string reply (or None) as what it is: every client here decodes responses
    (decode_responses=True), which redis-py's types cannot express."""
    return cast("str | None", reply)


def is_cluster(client: object) -> bool:
    return isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster)
