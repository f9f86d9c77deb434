"""`agentline-token-service`: serve the token-service with uvicorn."""

from __future__ import annotations

from agentline_common.http import serve
from agentline_common.logging import configure_logging

from agentline_token_service.app import create_app
from agentline_token_service.settings import TokenServiceSettings


def main() -> None:
    settings = TokenServiceSettings()
    configure_logging(service=settings.service_name, json=settings.json_logs, level=settings.log_level)
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
