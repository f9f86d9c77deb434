"""Fixtures of the worker's tests, from libs/common's testing package (registered here by import)."""

from agentline_common.testing.fake_openai import fake_openai  # noqa: F401 - fixtures, used by name
from agentline_common.testing.services import (  # noqa: F401
    registry_bus,
    registry_service,
    running_registry,
    worker_models,
    worker_service,
)
