"""Fixtures of the worker's tests, from libs/common's testing package (registered here by import),
and a recorder of the session events on the registry's exchange."""

from __future__ import annotations

import pytest_asyncio
from agentline_common.bus import Bus
from agentline_common.testing.fake_openai import fake_openai  # noqa: F401 - fixtures, used by name
from agentline_common.testing.services import (  # noqa: F401
    SessionEvents,
    netns_worker_service,
    registry_bus,
    registry_service,
    running_registry,
    worker_models,
    worker_service,
)


@pytest_asyncio.fixture(loop_scope="session")
async def session_events(registry_bus: Bus) -> SessionEvents:  # noqa: F811
    events = SessionEvents()
    await registry_bus.subscribe(routing_keys=["session.*"], handler=events.on_event)
    return events
