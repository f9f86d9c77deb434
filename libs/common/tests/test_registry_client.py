"""RegistryClient against the real registry (a subprocess), the real broker and the real Redis."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
from agentline_common.agents import AgentConfig
from agentline_common.bus import DEFAULT_RPC_TIMEOUT, Bus, RpcFailure
from agentline_common.events import AgentChanged, Event
from agentline_common.registry_client import (
    AgentNotFound,
    RegistryClient,
    RegistryUnavailable,
    agent_key,
    last_known_key,
    number_key,
)
from agentline_common.rooms import InvalidPhoneNumber
from agentline_common.testing.services import RegistryService, random_e164
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def client(registry_bus: Bus, redis: Redis) -> RegistryClient:
    registry = RegistryClient(bus=registry_bus, redis=redis)
    await registry.start()
    return registry


async def test_cold_then_warm_lookup_by_id_and_number(
    running_registry: RegistryService, client: RegistryClient, redis: Redis
) -> None:
    number = random_e164()
    tenant = running_registry.new_tenant(number=number, temperature=0.3)

    cold = await client.get_agent(tenant.agent_id)
    assert (client.misses, client.hits) == (1, 0)
    assert cold.id == tenant.agent_id
    assert cold.org_id == tenant.org_id
    assert cold.active is True
    assert cold.temperature == 0.3
    assert cold.phone_numbers == [number]
    assert await redis.exists(agent_key(tenant.agent_id)) == 1
    assert await redis.exists(number_key(number)) == 0  # cached only under the key asked for

    assert await client.agent_by_number(number) == cold
    assert await redis.exists(number_key(number)) == 1
    client.clear_local_cache()
    assert await client.get_agent(tenant.agent_id) == cold
    assert await client.agent_by_number(number) == cold
    assert (client.misses, client.hits) == (2, 2)

    metrics = CollectorRegistry()
    client.register_metrics(metrics)
    text = generate_latest(metrics).decode()
    assert 'agentline_agent_lookups_total{result="hit"} 2.0' in text
    assert 'agentline_agent_lookups_total{result="miss"} 2.0' in text


async def test_process_cache_answers_without_redis_and_expires(
    running_registry: RegistryService, registry_bus: Bus, redis: Redis
) -> None:
    tenant = running_registry.new_tenant()
    client = RegistryClient(bus=registry_bus, redis=redis, local_ttl_seconds=2.0)
    await client.get_agent(tenant.agent_id)
    await redis.delete(agent_key(tenant.agent_id))
    await client.get_agent(tenant.agent_id)
    assert (client.misses, client.hits) == (1, 1)
    await asyncio.sleep(2.1)
    await client.get_agent(tenant.agent_id)
    assert (client.misses, client.hits) == (2, 1)


async def test_cached_lookups_need_no_broker(
    running_registry: RegistryService, client: RegistryClient, redis: Redis
) -> None:
    number = random_e164()
    tenant = running_registry.new_tenant(number=number)
    warmed = await client.get_agent(tenant.agent_id)
    assert await client.agent_by_number(number) == warmed
    unconnected = Bus("amqp://guest:guest@127.0.0.1:1/", exchange="nowhere")
    reader = RegistryClient(bus=unconnected, redis=redis)

    assert await reader.cached_agent(tenant.agent_id) == warmed
    assert await reader.cached_agent_by_number(number) == warmed
    assert await reader.cached_agent(uuid.uuid4()) is None
    assert await reader.cached_agent_by_number(random_e164()) is None
    assert (reader.misses, reader.hits) == (0, 2)
    with pytest.raises(InvalidPhoneNumber, match=r"E\.164"):
        await reader.cached_agent_by_number("0800 not a number")


HOUR = 3_600


@pytest_asyncio.fixture(loop_scope="session")
async def unserved_bus(running_registry: RegistryService) -> AsyncIterator[Bus]:
    """A connected bus whose look-ups nobody answers: the registry cannot be asked."""
    bus = Bus(running_registry.amqp_url, exchange=f"unserved-{secrets.token_hex(4)}")
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


async def test_the_last_answer_stands_in_while_the_registry_cannot_be_asked(
    running_registry: RegistryService, registry_bus: Bus, unserved_bus: Bus, redis: Redis
) -> None:
    number = random_e164()
    tenant = running_registry.new_tenant(number=number)
    keeper = RegistryClient(bus=registry_bus, redis=redis, last_known_seconds=HOUR)  # as the token-service's
    answered = await keeper.get_agent(tenant.agent_id)
    assert await keeper.agent_by_number(number) == answered
    assert HOUR - 60 < await redis.ttl(last_known_key(number_key(number))) <= HOUR
    await redis.delete(agent_key(tenant.agent_id), number_key(number))  # the cache's minute is over

    stale = RegistryClient(bus=unserved_bus, redis=redis, timeout=0.3, answer_stale=True)
    assert await stale.agent_by_number(number) == answered
    assert await stale.get_agent(tenant.agent_id) == answered
    with pytest.raises(RegistryUnavailable):
        await stale.get_agent(uuid.uuid4())  # never answered: nothing to stand in
    assert (stale.misses, stale.stale, stale.hits) == (3, 2, 0)
    metrics = CollectorRegistry()
    stale.register_metrics(metrics)
    assert 'agentline_agent_lookups_total{result="stale"} 2.0' in generate_latest(metrics).decode()

    with pytest.raises(RegistryUnavailable):
        await RegistryClient(bus=unserved_bus, redis=redis, timeout=0.3).get_agent(tenant.agent_id)


async def test_a_changed_agent_is_not_answered_stale(
    running_registry: RegistryService, registry_bus: Bus, unserved_bus: Bus, redis: Redis
) -> None:
    """agent.changed drops the last known answers with the cached ones (the registry's own client
    does it, whichever services run): an agent deactivated while the broker was up does not take
    calls from its old config once the registry cannot be asked."""
    number = random_e164()
    tenant = running_registry.new_tenant(number=number)
    keeper = RegistryClient(bus=registry_bus, redis=redis)
    await keeper.agent_by_number(number)
    await keeper.get_agent(tenant.agent_id)
    kept = [last_known_key(agent_key(tenant.agent_id)), last_known_key(number_key(number))]
    assert await redis.exists(*kept) == 2

    await asyncio.to_thread(running_registry.set_active, tenant.token, tenant.agent_id, False)
    async with asyncio.timeout(5):
        while await redis.exists(*kept):
            await asyncio.sleep(0.05)
    stale = RegistryClient(bus=unserved_bus, redis=redis, timeout=0.3, answer_stale=True)
    with pytest.raises(RegistryUnavailable):
        await stale.agent_by_number(number)


async def test_a_number_the_registry_no_longer_knows_loses_its_last_known_answer(
    running_registry: RegistryService, client: RegistryClient, redis: Redis
) -> None:
    """A last known answer left behind (the number's release came as an `agent.changed` that was
    missed) goes with the registry's "not found": the number is not bridged to its old agent in a
    later outage."""
    old_agent = await client.get_agent(running_registry.new_tenant().agent_id)
    released = random_e164()
    kept = last_known_key(number_key(released))
    await redis.set(kept, old_agent.model_dump_json())

    with pytest.raises(AgentNotFound):
        await client.agent_by_number(released)
    assert not await redis.exists(kept)


class _AnswersInFlight(Bus):
    """The real registry's answers, each held on its way back until the test lets it go: the moment
    in which an agent can change under a look-up."""

    def __init__(self, url: str, *, exchange: str) -> None:
        super().__init__(url, exchange=exchange)
        self.answered = asyncio.Event()
        self.deliver = asyncio.Event()

    async def request(
        self, method: str, params: Mapping[str, Any], *, timeout: float = DEFAULT_RPC_TIMEOUT
    ) -> Any:
        answer = await super().request(method, params, timeout=timeout)
        self.answered.set()
        await self.deliver.wait()
        return answer


async def test_an_answer_overtaken_by_its_agents_change_is_asked_again_not_cached(
    running_registry: RegistryService, redis: Redis
) -> None:
    """The registry answered before the agent was deactivated, and the answer arrives after the
    change dropped the caches. Written then, the deactivated agent would take calls for the cache's
    minute, and stand in as its last known self for a day; given, it would take this call."""
    number = random_e164()
    tenant = running_registry.new_tenant(number=number)
    in_flight = _AnswersInFlight(running_registry.amqp_url, exchange=running_registry.exchange)
    await in_flight.connect()
    changes: asyncio.Queue[AgentChanged] = asyncio.Queue()

    async def keep_the_change(event: Event) -> None:
        if isinstance(event, AgentChanged) and event.agent_id == tenant.agent_id:
            changes.put_nowait(event)

    try:
        await in_flight.subscribe(routing_keys=["agent.changed"], handler=keep_the_change)
        client = RegistryClient(bus=in_flight, redis=redis)
        lookup = asyncio.create_task(client.agent_by_number(number))
        async with asyncio.timeout(5):
            await in_flight.answered.wait()
        await asyncio.to_thread(running_registry.set_active, tenant.token, tenant.agent_id, False)
        async with asyncio.timeout(5):
            change = await changes.get()
        await client.on_agent_changed(change)  # as its subscription would deliver it
        in_flight.deliver.set()

        assert (await lookup).active is False
        # Cached, or not (the registry's own client may drop the key once more meanwhile), but never
        # as the active agent the first answer described.
        kept = await redis.mget([number_key(number), last_known_key(number_key(number))])
        assert all(raw is None or not AgentConfig.model_validate_json(raw).active for raw in kept)
        assert (await client.agent_by_number(number)).active is False
    finally:
        await in_flight.close()


async def test_look_ups_leave_a_silent_redis_alone_after_it_failed_one(
    running_registry: RegistryService, registry_bus: Bus
) -> None:
    """Each try waits out the client's timeout, and a look-up makes up to four while a caller may be
    hearing silence: after one failure, the next look-ups go straight to the registry."""
    first, second = running_registry.new_tenant(), running_registry.new_tenant()
    connections = 0

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = Redis(host="127.0.0.1", port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        client = RegistryClient(bus=registry_bus, redis=silent)
        assert (await client.get_agent(first.agent_id)).id == first.agent_id
        tried = connections
        assert (await client.get_agent(second.agent_id)).id == second.agent_id
        assert tried >= 1 and connections == tried
    finally:
        await silent.aclose()
        server.close()


async def test_unknown_agent_and_number_are_not_found(client: RegistryClient) -> None:
    with pytest.raises(AgentNotFound):
        await client.get_agent(uuid.uuid4())
    with pytest.raises(AgentNotFound):
        await client.agent_by_number(random_e164())


async def test_responder_answers_bad_params_with_bad_request(registry_bus: Bus) -> None:
    with pytest.raises(RpcFailure) as not_uuid:
        await registry_bus.request("agent.get", {"id": "not-a-uuid"})
    assert not_uuid.value.code == "bad_request"
    assert "id" in not_uuid.value.message
    with pytest.raises(RpcFailure) as not_e164:
        await registry_bus.request("agent.by_number", {"number": "0155501"})
    assert not_e164.value.code == "bad_request"
    assert "number" in not_e164.value.message


async def test_lookup_carries_tools(running_registry: RegistryService, client: RegistryClient) -> None:
    tool = {
        "name": "book_table",
        "description": "Book a table",
        "parameters": {"type": "object", "properties": {"people": {"type": "integer"}}},
        "url": "http://127.0.0.1:9/book",
        "secret_ref": "booking",
    }
    tenant = running_registry.new_tenant(tools=[tool])
    agent = await client.get_agent(tenant.agent_id)
    assert [t.name for t in agent.tools] == ["book_table"]
    assert agent.tools[0].secret_ref == "booking"


async def test_deactivated_agent_is_refused_without_waiting_for_the_cache_to_lapse(
    running_registry: RegistryService, client: RegistryClient
) -> None:
    number = random_e164()
    tenant = running_registry.new_tenant(number=number)
    assert (await client.agent_by_number(number)).active is True
    assert (await client.get_agent(tenant.agent_id)).active is True

    await asyncio.to_thread(running_registry.set_active, tenant.token, tenant.agent_id, False)
    # agent.changed clears the caches within the broker's delivery time; the cache would take 60 s.
    # The bound allows for a loaded machine, not a speed goal.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        by_id = await client.get_agent(tenant.agent_id)
        by_number = await client.agent_by_number(number)
        if not by_id.active and not by_number.active:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the deactivated agent was still served as active after 5 s")


async def test_registry_down_is_unavailable_within_bound(
    running_registry: RegistryService, redis: Redis, registry_bus: Bus
) -> None:
    tenant = running_registry.new_tenant()
    client = RegistryClient(bus=registry_bus, redis=redis, timeout=2.0)
    running_registry.stop()
    try:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            await client.get_agent(tenant.agent_id)
        assert time.monotonic() - started < 3.0
    finally:
        running_registry.start()
    assert (await client.get_agent(tenant.agent_id)).id == tenant.agent_id


async def test_fixture_cli_and_http_agree(running_registry: RegistryService) -> None:
    user = running_registry.create_user(email=f"cli-{secrets.token_hex(4)}@example.test")
    me = running_registry.request("GET", "/auth/me", token=user.token)
    assert me["id"] == str(user.user_id)
    assert me["memberships"] == []
