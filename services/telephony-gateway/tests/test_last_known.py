"""The last-known-agent fallback on in-memory fakes of the look-up and a clock."""

from __future__ import annotations

import uuid

import pytest
from agentline_common.agents import AgentConfig
from agentline_common.events import AgentChanged, AgentChangedData
from agentline_common.registry_client import AgentNotFound, RegistryUnavailable
from agentline_telephony.last_known import LastKnownAgents

pytestmark = pytest.mark.unit

NUMBER = "+15551239000"
DAY = 86_400.0


def make_agent(*numbers: str) -> AgentConfig:
    return AgentConfig(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        name="Front desk",
        active=True,
        instructions="Be brief.",
        first_message="Hello!",
        phone_numbers=list(numbers),
    )


class FlakyLookup:
    """The registry client's answers, or RegistryUnavailable while `down`."""

    def __init__(self, agents: dict[str, AgentConfig]) -> None:
        self.agents = agents
        self.down = False

    async def agent_by_number(self, number: str) -> AgentConfig:
        if self.down:
            raise RegistryUnavailable("the registry did not answer")
        try:
            return self.agents[number]
        except KeyError:
            raise AgentNotFound(number) from None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def fallback(lookup: FlakyLookup, clock: Clock, *, max_numbers: int = 100) -> LastKnownAgents:
    return LastKnownAgents(lookup, max_age_seconds=DAY, clock=clock, max_numbers=max_numbers)


async def test_the_last_answer_stands_in_while_the_registry_cannot_be_asked() -> None:
    agent = make_agent(NUMBER)
    lookup, clock = FlakyLookup({NUMBER: agent}), Clock()
    agents = fallback(lookup, clock)
    assert await agents.agent_by_number(NUMBER) == agent

    lookup.down = True
    clock.now += DAY - 1

    assert await agents.agent_by_number(NUMBER) == agent
    assert agents.stale_answers == 1


async def test_an_answer_older_than_the_bound_or_never_given_is_not_used() -> None:
    lookup, clock = FlakyLookup({NUMBER: make_agent(NUMBER)}), Clock()
    agents = fallback(lookup, clock)
    await agents.agent_by_number(NUMBER)
    lookup.down = True
    clock.now += DAY + 1

    with pytest.raises(RegistryUnavailable):
        await agents.agent_by_number(NUMBER)
    with pytest.raises(RegistryUnavailable):
        await agents.agent_by_number("+15551239001")
    assert agents.stale_answers == 0


async def test_a_number_the_registry_no_longer_knows_is_forgotten() -> None:
    lookup, clock = FlakyLookup({NUMBER: make_agent(NUMBER)}), Clock()
    agents = fallback(lookup, clock)
    await agents.agent_by_number(NUMBER)
    del lookup.agents[NUMBER]
    with pytest.raises(AgentNotFound):
        await agents.agent_by_number(NUMBER)

    lookup.down = True

    with pytest.raises(RegistryUnavailable):
        await agents.agent_by_number(NUMBER)


async def test_a_changed_agent_loses_the_numbers_its_event_names() -> None:
    released, kept, other = "+15551239002", "+15551239003", "+15551239004"
    agent, bystander = make_agent(released, kept), make_agent(other)
    lookup = FlakyLookup({released: agent, kept: agent, other: bystander})
    agents = fallback(lookup, Clock())
    for number in (released, kept, other):
        await agents.agent_by_number(number)

    await agents.on_agent_changed(
        AgentChanged(
            org_id=agent.org_id,
            agent_id=agent.id,
            data=AgentChangedData(change="updated", phone_numbers=[released, kept]),
        )
    )
    lookup.down = True

    for number in (released, kept):
        with pytest.raises(RegistryUnavailable):
            await agents.agent_by_number(number)
    assert await agents.agent_by_number(other) == bystander


async def test_the_oldest_numbers_go_first_beyond_the_bound() -> None:
    numbers = [f"+1555123901{digit}" for digit in range(3)]
    lookup = FlakyLookup({number: make_agent(number) for number in numbers})
    agents = fallback(lookup, Clock(), max_numbers=2)
    for number in numbers:
        await agents.agent_by_number(number)

    lookup.down = True

    with pytest.raises(RegistryUnavailable):
        await agents.agent_by_number(numbers[0])
    assert [(await agents.agent_by_number(number)).phone_numbers for number in numbers[1:]] == [
        [number] for number in numbers[1:]
    ]
