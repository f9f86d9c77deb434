"""The last answer the registry gave for each number, for when it cannot be asked.

The look-up caches (Redis, the process) keep an agent for a minute; after that the registry must be
asked over the broker. With the broker down for longer, every call would hear "cannot connect",
against the rule that a caller is never dropped because the bus is down. So each number's last
answer is kept here too, and used only when the look-up fails (stale on error), for at most
`max_age_seconds`. The session event still goes to the outbox, and the worker checks the agent again
when it joins, so a stale "active" costs at most a short call that ends politely.

`agent.changed` drops the agent's entries, as it drops the caches' entries: an agent deactivated,
deleted or given other numbers while the broker was still up is not bridged from here afterwards.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import structlog
from agentline_common.agents import AgentConfig
from agentline_common.bus import Bus
from agentline_common.events import AgentChanged, Event
from agentline_common.registry_client import AgentNotFound, RegistryUnavailable

from agentline_telephony.service import AgentLookup

log = structlog.get_logger()

MAX_NUMBERS = 10_000


class LastKnownAgents:
    """An `AgentLookup` that answers from the number's last known agent when `lookup` cannot answer."""

    def __init__(
        self,
        lookup: AgentLookup,
        *,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_numbers: int = MAX_NUMBERS,
    ) -> None:
        self._lookup = lookup
        self._max_age = max_age_seconds
        self._clock = clock
        self._max_numbers = max_numbers
        self._known: OrderedDict[str, tuple[float, AgentConfig]] = OrderedDict()
        self.stale_answers = 0
        """Look-ups answered from here because the registry could not be asked."""

    async def start(self, bus: Bus) -> None:
        """Drop a number's entry when its agent changes (this process's own subscription)."""
        await bus.subscribe(routing_keys=["agent.changed"], handler=self.on_agent_changed)

    async def agent_by_number(self, number: str) -> AgentConfig:
        """The agent bound to `number`: from `lookup`, or, when that fails, the last one it gave
        within `max_age_seconds`. Raises AgentNotFound, or RegistryUnavailable with nothing known."""
        try:
            agent = await self._lookup.agent_by_number(number)
        except AgentNotFound:
            self._known.pop(number, None)
            raise
        except RegistryUnavailable:
            stale = self._last_known(number)
            if stale is None:
                raise
            self.stale_answers += 1
            log.warning("lookup.answered_stale", number=number, agent_id=str(stale.id))
            return stale
        self._remember(number, agent)
        return agent

    async def on_agent_changed(self, event: Event) -> None:
        """Forget the numbers the agent had before the change and has after it (the event names both)."""
        if isinstance(event, AgentChanged):
            for number in event.data.phone_numbers:
                self._known.pop(number, None)

    def _last_known(self, number: str) -> AgentConfig | None:
        entry = self._known.get(number)
        if entry is None:
            return None
        learned_at, agent = entry
        if self._clock() - learned_at > self._max_age:
            del self._known[number]
            return None
        return agent

    def _remember(self, number: str, agent: AgentConfig) -> None:
        self._known[number] = (self._clock(), agent)
        self._known.move_to_end(number)
        while len(self._known) > self._max_numbers:
            self._known.popitem(last=False)
