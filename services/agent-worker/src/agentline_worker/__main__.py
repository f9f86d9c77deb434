"""`agentline-worker`: run the LiveKit agent worker."""

from __future__ import annotations

import asyncio
import sys

import structlog
from agentline_common.logging import configure_logging

from agentline_worker.app import serve
from agentline_worker.settings import WorkerSettings


def main() -> None:
    settings = WorkerSettings()
    configure_logging(service=settings.service_name, json=settings.json_logs, level=settings.log_level)
    if not settings.livekit_configured:
        structlog.get_logger().error(
            "worker.livekit_not_configured",
            detail="set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
        )
        sys.exit(2)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
