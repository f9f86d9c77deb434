"""Bus handlers of the token-service.

It consumes one thing: `agent.changed`, through the registry client's per-process subscription, so a
cached agent that was deactivated or deleted is refused here within the broker's delivery time.
"""

from __future__ import annotations

from agentline_common.registry_client import RegistryClient


async def start_consumers(registry: RegistryClient) -> None:
    """Subscribe this process to the events it acts on."""
    await registry.start()
