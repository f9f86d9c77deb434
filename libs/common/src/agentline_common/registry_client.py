"""How every service looks up agents: RPC to the registry over the bus, cached in two layers.

Redis, shared by every process, keeps an agent for `ttl_seconds`; a small map in this process keeps it
for `local_ttl_seconds` (one second), so a hot agent costs no network round trip at all. Both layers
drop an entry as soon as an `agent.changed` event arrives (`start` subscribes this process), so a
deactivated agent is refused everywhere within the broker's delivery time; were an event missed, the
process layer still forgets within a second and Redis within its TTL.

Each answer is also kept in Redis for `last_known_seconds` (a day), and a client made with
`answer_stale` gives it when the registry cannot be asked (stale on error): with the broker down for
longer than the cache's minute, a phone call still reaches the agent its number had, in the gateway
and in the worker alike, instead of an apology. `agent.changed` drops these entries too, and so does
the registry's "not found" for the key, so that a missed event (Redis or the subscriber down at that
moment) lasts only until the next look-up the registry answers. A change made while the broker is
down goes unseen until it is back. The token-service keeps answers but never gives a stale one: it
must say 503 when the registry cannot be asked. Without Redis there is no last known answer.

An answer that was on its way while its agent changed must not be cached over the change: it would be
served for the cache's minute, and kept as the last known answer for a day. So `agent.changed` also
counts, in Redis, the changes to each key it drops (`changes_key`), and an answer is written only if
its key's count has not moved since the look-up began; this process's own layer counts every change
it has seen. That is also why an answer is cached only under the key it was asked for, not under the
agent's other id or numbers: their counts were not read before asking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from uuid import UUID

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agentline_common.agents import AgentConfig
from agentline_common.bus import DEFAULT_RPC_TIMEOUT, Bus, RpcError, RpcFailure
from agentline_common.events import AgentChanged, Event
from agentline_common.rooms import require_e164
from agentline_common.settings import CommonSettings

log = structlog.get_logger()

DEFAULT_TTL_SECONDS = 60
DEFAULT_LOCAL_TTL_SECONDS = 1.0
DEFAULT_LAST_KNOWN_SECONDS = 86_400
LOCAL_CACHE_SIZE = 4096
CHANGES_KEPT_SECONDS = 3_600
REDIS_REST_SECONDS = 5.0
"""How long look-ups leave Redis alone after it failed one of their reads or writes: each try waits
out the Redis client's timeout, and a look-up makes up to four while a caller may be hearing silence.
Invalidations always try."""

# One step, so that no invalidation can fall between the check and the writes. KEYS: the key's changes
# count, the key, its last known key; ARGV: the count read before asking the registry, the answer, the
# cache's TTL, the last known answer's TTL.
_WRITE_UNLESS_CHANGED = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
return 1
"""


class AgentNotFound(Exception):
    """The registry knows no such agent (or no agent has that number)."""


class RegistryUnavailable(Exception):
    """The registry could not answer in time: the caller should answer 503, not wait."""


def agent_key(agent_id: UUID) -> str:
    return f"agentline:agent:id:{agent_id}"


def number_key(number: str) -> str:
    return f"agentline:agent:number:{number}"


def last_known_key(key: str) -> str:
    """Where the answer cached under `key` is kept for `last_known_seconds`."""
    return "agentline:last-known:" + key.removeprefix("agentline:")


def changes_key(key: str) -> str:
    """How many times `agent.changed` has dropped `key` (kept for `CHANGES_KEPT_SECONDS`, far longer
    than any look-up takes)."""
    return "agentline:changes:" + key.removeprefix("agentline:")


class RegistryClient:
    """Agent look-ups with a shared Redis cache in front of the registry's RPC."""

    def __init__(
        self,
        *,
        bus: Bus,
        redis: Redis,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        local_ttl_seconds: float = DEFAULT_LOCAL_TTL_SECONDS,
        timeout: float = DEFAULT_RPC_TIMEOUT,
        last_known_seconds: int = DEFAULT_LAST_KNOWN_SECONDS,
        answer_stale: bool = False,
    ) -> None:
        self._bus = bus
        self._redis = redis
        self._ttl = ttl_seconds
        self._local_ttl = local_ttl_seconds
        self._local: OrderedDict[str, tuple[float, AgentConfig]] = OrderedDict()
        self._timeout = timeout
        self._last_known_for = last_known_seconds
        self._answer_stale = answer_stale
        self._write_unless_changed = redis.register_script(_WRITE_UNLESS_CHANGED)
        self._changes_seen = 0
        self._redis_rests_until = 0.0
        self.hits = 0
        self.misses = 0
        self.stale = 0
        """Look-ups answered from the last known agent because the registry could not be asked."""

    @classmethod
    def configured(
        cls, settings: CommonSettings, *, bus: Bus, redis: Redis, timeout: float, answer_stale: bool = False
    ) -> RegistryClient:
        """A service's client, keeping answers as long as `settings` say."""
        return cls(
            bus=bus,
            redis=redis,
            timeout=timeout,
            last_known_seconds=settings.last_known_agent_max_age_seconds,
            answer_stale=answer_stale,
        )

    async def start(self) -> None:
        """Subscribe this process to `agent.changed` so cached entries are dropped when they change."""
        await self._bus.subscribe(routing_keys=["agent.changed"], handler=self.on_agent_changed)

    async def get_agent(self, agent_id: UUID) -> AgentConfig:
        """The agent with `agent_id`; raises AgentNotFound or RegistryUnavailable."""
        return await self._cached(agent_key(agent_id), "agent.get", {"id": str(agent_id)})

    async def agent_by_number(self, number: str) -> AgentConfig:
        """The agent bound to the E.164 `number`; raises AgentNotFound or RegistryUnavailable."""
        require_e164(number)
        return await self._cached(number_key(number), "agent.by_number", {"number": number})

    async def cached_agent(self, agent_id: UUID) -> AgentConfig | None:
        """The agent with `agent_id` if a cache holds it, else None; never asks the registry, so it
        needs no broker (the worker looks up while its bus is still connecting)."""
        return await self._peek(agent_key(agent_id))

    async def cached_agent_by_number(self, number: str) -> AgentConfig | None:
        """The agent bound to `number` if a cache holds it, else None; never asks the registry."""
        require_e164(number)
        return await self._peek(number_key(number))

    async def on_agent_changed(self, event: Event) -> None:
        if not isinstance(event, AgentChanged) or event.agent_id is None:
            return
        keys = [agent_key(event.agent_id), *(number_key(n) for n in event.data.phone_numbers)]
        self._changes_seen += 1
        self._forget_locally(keys)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.incr(changes_key(key))
                    pipe.expire(changes_key(key), CHANGES_KEPT_SECONDS)
                pipe.delete(*keys, *map(last_known_key, keys))
                await pipe.execute()
        except RedisError:
            log.warning("registry_client.invalidation_failed", agent_id=str(event.agent_id))

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export look-ups by where they were answered (cache hit rate = hit / (hit + miss); stale
        counts misses answered from the last known agent)."""
        registry.register(_LookupCollector(self))

    def clear_local_cache(self) -> None:
        """Forget what this process holds; the next look-ups go to Redis (benchmarks, tests)."""
        self._local.clear()

    async def _cached(self, key: str, method: str, params: dict[str, str]) -> AgentConfig:
        cached = await self._peek(key)
        if cached is not None:
            return cached
        self.misses += 1
        try:
            return await self._ask_and_cache(key, method, params)
        except AgentNotFound:
            await self._forget_last_known(key)
            raise
        except RegistryUnavailable as error:
            return await self._last_known(key, error)

    async def _ask_and_cache(self, key: str, method: str, params: dict[str, str]) -> AgentConfig:
        """The registry's answer for `key`, cached unless the key changed while it was asked for. Such
        an answer may predate the change, so the registry is asked once more: the second answer
        follows the change, and it is both what the caller gets and what is cached."""
        for _ in range(2):
            seen_before = self._changes_seen
            changes_before = await self._changes_so_far(key)
            agent = await self._ask_registry(method, params)
            cached = await self._cache_unless_changed(key, agent, changes_before)
            if cached and self._changes_seen == seen_before:
                self._write_local(key, agent)
                return agent
        return agent

    async def _peek(self, key: str) -> AgentConfig | None:
        cached = self._read_local(key)
        if cached is None:
            seen_before = self._changes_seen
            cached = await self._read_cache(key)
            if cached is not None and self._changes_seen == seen_before:
                self._write_local(key, cached)
        if cached is not None:
            self.hits += 1
        return cached

    def _read_local(self, key: str) -> AgentConfig | None:
        entry = self._local.get(key)
        if entry is None:
            return None
        expires_at, agent = entry
        if expires_at < time.monotonic():
            del self._local[key]
            return None
        return agent

    def _write_local(self, key: str, agent: AgentConfig) -> None:
        self._local[key] = (time.monotonic() + self._local_ttl, agent)
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_CACHE_SIZE:
            self._local.popitem(last=False)

    def _forget_locally(self, keys: list[str]) -> None:
        for key in keys:
            self._local.pop(key, None)

    async def _ask_registry(self, method: str, params: dict[str, str]) -> AgentConfig:
        try:
            result = await self._bus.request(method, params, timeout=self._timeout)
        except RpcFailure as failure:
            if failure.code == "not_found":
                raise AgentNotFound(failure.message) from failure
            raise RegistryUnavailable(f"the registry refused {method}: {failure}") from failure
        except RpcError as error:
            raise RegistryUnavailable(f"the registry did not answer: {error}") from error
        try:
            return AgentConfig.model_validate(result)
        except ValidationError as error:
            raise RegistryUnavailable(f"the registry answered {method} unreadably") from error

    async def _last_known(self, key: str, error: RegistryUnavailable) -> AgentConfig:
        """The registry's last answer for `key` within `last_known_seconds`, or `error` raised."""
        stale = await self._read_cache(last_known_key(key)) if self._answer_stale else None
        if stale is None:
            raise error
        self.stale += 1
        log.warning("registry_client.answered_stale", key=key, error=str(error))
        return stale

    async def _forget_last_known(self, key: str) -> None:
        """The number was released or the agent deleted: it must not be answered stale later."""
        try:
            await self._redis.delete(last_known_key(key))
        except RedisError:
            log.warning("registry_client.invalidation_failed", key=key)

    def _redis_resting(self) -> bool:
        return time.monotonic() < self._redis_rests_until

    def _redis_failed(self, event: str, **context: str) -> None:
        self._redis_rests_until = time.monotonic() + REDIS_REST_SECONDS
        log.warning(event, rest_seconds=REDIS_REST_SECONDS, **context)

    async def _read_cache(self, key: str) -> AgentConfig | None:
        if self._redis_resting():
            return None
        try:
            raw = await self._redis.get(key)
        except RedisError:
            self._redis_failed("registry_client.cache_unavailable", key=key)
            return None
        if raw is None:
            return None
        try:
            return AgentConfig.model_validate_json(raw)
        except ValidationError:
            return None

    async def _changes_so_far(self, key: str) -> int | None:
        """`key`'s changes count before a look-up asks the registry; None when Redis cannot say, and
        then the answer is not written there."""
        if self._redis_resting():
            return None
        try:
            return int(await self._redis.get(changes_key(key)) or 0)
        except RedisError:
            self._redis_failed("registry_client.cache_unavailable", key=key)
            return None

    async def _cache_unless_changed(self, key: str, agent: AgentConfig, changes_before: int | None) -> bool:
        """False if `key` changed since `changes_before` was read; True once written, or when Redis
        cannot be written (asking again would not help)."""
        if changes_before is None or self._redis_resting():
            return True
        try:
            written = await self._write_unless_changed(
                keys=[changes_key(key), key, last_known_key(key)],
                args=[changes_before, agent.model_dump_json(), self._ttl, self._last_known_for],
            )
        except RedisError:
            self._redis_failed("registry_client.cache_write_failed", agent_id=str(agent.id))
            return True
        return bool(written)


class _LookupCollector(Collector):
    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "agentline_agent_lookups",
            "Agent look-ups through the registry client: hit (a cache answered), miss (the registry was"
            " asked), stale (a miss the registry could not answer, answered from the last known agent).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self._client.hits)
        lookups.add_metric(["miss"], self._client.misses)
        lookups.add_metric(["stale"], self._client.stale)
        yield lookups
